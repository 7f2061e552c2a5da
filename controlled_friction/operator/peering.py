"""Whether this replica is the active one under kopf peering (so the scheduler acts only then).

kopf pauses its own handlers when a live peer of higher (or equal) priority is in the peering
object's status; our scheduler runs beside kopf, so it applies the same rule to the same object,
read from the API every few seconds. A brief overlap while a takeover settles is harmless: status
writes are optimistically locked and workload writes are declarative.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

log = structlog.get_logger("controlled_friction.peering")
POLL_SECONDS = 2.0


def is_active(peers: Mapping[str, Any], identity: str, priority: int, now: datetime) -> bool:
    """kopf's rule: pause while any other live peer has a priority at least ours."""
    for peer_id, info in peers.items():
        if peer_id == identity or not isinstance(info, Mapping):
            continue
        try:
            seen = datetime.fromisoformat(str(info.get("lastseen")))
            lifetime = timedelta(seconds=int(info.get("lifetime", 60)))
            other = int(info.get("priority", 0))
        except (TypeError, ValueError):
            continue
        if seen.tzinfo is None:
            seen = seen.replace(tzinfo=UTC)
        if seen + lifetime > now and other >= priority:
            return False
    return True


class PeeringGate:
    """`active()` is True for a standalone operator, else while the rule above says so."""

    def __init__(self, read_peers: Callable[[], Mapping[str, Any] | None] | None, identity: str,
                 priority: int) -> None:
        self._read = read_peers
        self.identity = identity
        self.priority = priority
        self._active = read_peers is None
        self._stop = threading.Event()
        self.on_activate: Callable[[], None] = lambda: None

    def active(self) -> bool:
        return self._active

    def start(self) -> None:
        if self._read is not None:
            threading.Thread(target=self._loop, name="peering-gate", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        assert self._read is not None
        while not self._stop.is_set():
            try:
                peers = self._read()
                now_active = peers is not None and is_active(peers, self.identity, self.priority, datetime.now(UTC))
            except Exception as exc:  # the API is away: keep the last verdict, kopf cannot decide either
                log.warning("could not read the peering object", error=str(exc))
                now_active = self._active
            if now_active != self._active:
                log.info("peering: " + ("active" if now_active else "standing by"), identity=self.identity)
                self._active = now_active
                if now_active:
                    self.on_activate()
            self._stop.wait(POLL_SECONDS)
