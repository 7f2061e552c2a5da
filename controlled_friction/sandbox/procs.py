"""Background processes with a PID file and a log, stopped only if they are still what we started.

A PID file records the PID, the process start time (from /proc, in clock ticks since boot) and the
argv. A PID counts as ours only if all three still match, so a recycled PID is never signalled.
Linux only (reads /proc), like the rest of the sandbox.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

# Popen handles of children started by this Python process: kept so they are reaped (no zombies
# while e.g. a pytest session lives on) and so Popen's destructor does not warn.
_children: dict[int, subprocess.Popen[bytes]] = {}


@dataclass(frozen=True)
class ProcRecord:
    pid: int
    start_ticks: int
    argv: list[str]

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(asdict(self)))
        tmp.replace(path)

    @staticmethod
    def load(path: Path) -> ProcRecord | None:
        try:
            raw = json.loads(path.read_text())
            return ProcRecord(int(raw["pid"]), int(raw["start_ticks"]), [str(a) for a in raw["argv"]])
        except (OSError, ValueError, KeyError, TypeError):
            return None


def _stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in ticks) of a live PID, or None."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()  # after "pid (comm) "; comm may contain spaces
    return fields[0], int(fields[19])


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


def _reap(pid: int) -> None:
    # poll() reaps a dead child; the handle stays so `exited_early` can report its exit code.
    child = _children.get(pid)
    if child is not None:
        child.poll()


def is_ours(rec: ProcRecord) -> bool:
    """True if the recorded PID is alive and still runs the command we started."""
    _reap(rec.pid)
    stat = _stat(rec.pid)
    if stat is None or stat[0] in ("Z", "X"):
        return False
    return stat[1] == rec.start_ticks and _cmdline(rec.pid) == rec.argv


def spawn(argv: list[str], log: Path, pid_file: Path, env: dict[str, str] | None = None) -> ProcRecord:
    """Start argv detached (own session, stdin closed, output appended to log) and record it."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        out.write(f"\n=== {time.strftime('%Y-%m-%dT%H:%M:%S')} starting: {' '.join(argv)}\n".encode())
        out.flush()
        child = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # survives our exit and the terminal's signals
            env={**os.environ, **(env or {})},
        )
    _children[child.pid] = child
    # The start time is readable as soon as the PID exists; argv as /proc reports it after exec.
    deadline = time.monotonic() + 5
    while True:
        stat = _stat(child.pid)
        cmd = _cmdline(child.pid)
        if stat is not None and cmd == argv:
            break
        if child.poll() is not None:
            raise RuntimeError(f"{argv[0]} exited at once with code {child.returncode}; see {log}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{argv[0]} (pid {child.pid}) did not exec within 5s")
        time.sleep(0.01)
    rec = ProcRecord(child.pid, stat[1], argv)
    rec.save(pid_file)
    return rec


def exited_early(rec: ProcRecord) -> int | None:
    """Exit code if the process was started by us in this Python process and has exited."""
    child = _children.get(rec.pid)
    return None if child is None else child.poll()


def _wait_gone(rec: ProcRecord, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while is_ours(rec):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def terminate(rec: ProcRecord, grace: float = 10.0) -> bool:
    """SIGTERM, then SIGKILL after `grace` seconds. Returns False if the PID was not ours to stop."""
    if not is_ours(rec):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(rec.pid, signal.SIGTERM)
    if _wait_gone(rec, grace):
        return True
    with contextlib.suppress(ProcessLookupError):
        os.kill(rec.pid, signal.SIGKILL)
    if not _wait_gone(rec, 5.0):
        raise RuntimeError(f"pid {rec.pid} ({rec.argv[0]}) survived SIGKILL")
    return True
