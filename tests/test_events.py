"""Events are recorded in the background: a reconcile never waits for them, and a backlog beyond
EVENT_BACKLOG is dropped and counted rather than queued without bound (they are best effort)."""

from __future__ import annotations

import threading
import time
from typing import Any

from prometheus_client import REGISTRY

from controlled_friction.decisions import RecordEvent
from controlled_friction.operator.reconcile import Context

BODY = {"apiVersion": "controlled-friction.io/v1alpha1", "kind": "Rollout",
        "metadata": {"name": "checkout", "namespace": "shop", "uid": "u-1"}, "spec": {"big": "x" * 100}}


class SlowKube:
    def __init__(self) -> None:
        self.gate = threading.Event()
        self.recorded: list[tuple[dict[str, Any], str]] = []
        self.done = threading.Semaphore(0)

    def record_event(self, involved: dict[str, Any], type_: str, reason: str, message: str) -> None:
        self.gate.wait(5)
        self.recorded.append((involved, reason))
        self.done.release()


def dropped() -> float:
    return REGISTRY.get_sample_value("controlled_friction_events_dropped_total") or 0.0


def test_posting_an_event_does_not_wait_for_the_api_server():
    kube = SlowKube()
    ctx = Context(kube=kube, key=b"k")  # type: ignore[arg-type]
    ctx.post_event(BODY, RecordEvent("Normal", "CanaryStarted", "new template"))
    assert kube.recorded == [], "the reconcile waited for the Event"
    kube.gate.set()
    assert kube.done.acquire(timeout=5)
    involved, reason = kube.recorded[0]
    assert reason == "CanaryStarted"
    assert involved == {"apiVersion": BODY["apiVersion"], "kind": "Rollout",
                        "metadata": {"name": "checkout", "namespace": "shop", "uid": "u-1"}}


def test_a_backlog_beyond_its_bound_is_dropped_and_counted():
    kube = SlowKube()
    ctx = Context(kube=kube, key=b"k")  # type: ignore[arg-type]
    ctx._event_slots = threading.BoundedSemaphore(3)
    before = dropped()
    for i in range(5):
        ctx.post_event(BODY, RecordEvent("Normal", "Progressing", f"look {i}"))
    assert dropped() == before + 2
    kube.gate.set()
    for _ in range(3):
        assert kube.done.acquire(timeout=5)
    deadline = time.monotonic() + 5
    while ctx._event_slots._value < 3 and time.monotonic() < deadline:  # type: ignore[attr-defined]
        time.sleep(0.01)  # the slots come back just after each Event is recorded
    ctx.post_event(BODY, RecordEvent("Normal", "Healthy", "after the backlog drained"))
    assert kube.done.acquire(timeout=5)
    assert [r for _i, r in kube.recorded].count("Healthy") == 1
