"""When each Rollout is reconciled: on a change of something it reads, or at the instant the planner
asked for. No per-object timer: a settled Rollout costs nothing until an event arrives.

Keys due at the same moment are handed over together, so their measurements can be asked from
Prometheus in one batch. A key is never processed twice at once; a wake-up that arrives while it is
being processed runs it again right after. Each key is released as soon as its own reconcile is done
(`release`), not when the whole batch is: a Deployment turning ready must not wait behind the slowest
of a hundred reconciles that happened to be due with it.

With a `capacity` (the reconcile workers), no more keys are handed over than can run, and the due ones
wait here in priority order rather than in the workers' FIFO queue: first what changed (a template,
a ready canary, an approval), then the planner's deadlines (a bake's end, an expiry), last its
routine looks (the analysis grid, the resync). Under load a wave's next steps are not queued behind a
thousand routine looks, and the looks, which measure the latest grid instant when they run late,
thin out on their own (as controller-runtime's priority queue puts resyncs behind real changes).
"""

from __future__ import annotations

import asyncio
import heapq
import time
from collections.abc import Awaitable, Callable
from typing import NamedTuple

Key = tuple[str, str]
CHANGE, DEADLINE, ROUTINE = 0, 1, 2  # priorities, most urgent first
COALESCE_SECONDS = 0.05  # gather keys woken within this of each other into one batch
MAX_BATCH = 500


class Next(NamedTuple):
    """When the planner wants to look again, and whether that is only a routine look."""

    at: float
    routine: bool = False


Look = Next | float | None  # a bare instant is a deadline
Release = Callable[[Key, Look], None]


def _split(look: Look) -> tuple[float, int] | None:
    if look is None:
        return None
    if isinstance(look, Next):
        return look.at, ROUTINE if look.routine else DEADLINE
    return float(look), DEADLINE


class Scheduler:
    def __init__(self, process: Callable[[list[Key], Release], Awaitable[dict[Key, Look]]],
                 active: Callable[[], bool], clock: Callable[[], float] = time.time,
                 capacity: int | None = None) -> None:
        self._process = process
        self._active = active
        self._clock = clock
        self._capacity = capacity
        self._due: dict[Key, tuple[float, int]] = {}  # future (or just due) wake-ups: (instant, priority)
        self._heap: list[tuple[float, Key]] = []
        self._waiting: dict[Key, tuple[int, float]] = {}  # due, not handed over yet: (priority, instant)
        self._busy: set[Key] = set()
        self._dirty: set[Key] = set()
        self._since: dict[Key, float] = {}  # keys handed over -> the instant they were due
        self._changed = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    # -- called from the event loop

    def wake(self, key: Key, at: float | None = None, routine: bool = False) -> None:
        """Reconcile `key` at `at` (now, as a change, if None), or earlier if it is already due earlier.
        Call it on the scheduler's event loop (asyncio primitives are not thread-safe)."""
        now = self._clock()
        when = now if at is None else at
        prio = CHANGE if at is None else ROUTINE if routine else DEADLINE
        if key in self._busy and at is None:
            self._dirty.add(key)
            return
        if key in self._waiting:
            if when <= now + COALESCE_SECONDS:  # due now as well: it may only become more urgent
                p, since = self._waiting[key]
                self._waiting[key] = (min(p, prio), since)
            return  # a later instant: the reconcile it is waiting for plans again anyway
        current = self._due.get(key)
        if current is not None and (current[0], current[1]) <= (when, prio):
            return
        self._due[key] = (when, prio)
        heapq.heappush(self._heap, (when, key))
        self._changed.set()

    def wake_all(self, keys: list[Key]) -> None:
        for key in keys:
            self.wake(key)

    def forget(self, key: Key) -> None:
        self._due.pop(key, None)
        self._waiting.pop(key, None)
        self._dirty.discard(key)
        self._since.pop(key, None)

    def pending(self) -> int:
        return len(self._due) + len(self._waiting)

    async def run(self) -> None:
        while True:
            now = self._clock()
            ready = self._pop_ready(now) if self._active() else []
            if ready:
                task = asyncio.create_task(self._run_batch(ready))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
                continue
            delay = self._next_delay(now) if self._active() else 1.0
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), timeout=delay)
                await asyncio.sleep(COALESCE_SECONDS)
            except TimeoutError:
                pass

    def _free(self) -> int:
        if self._capacity is None:
            return MAX_BATCH
        return max(0, min(MAX_BATCH, self._capacity - len(self._busy)))

    def _pop_ready(self, now: float) -> list[Key]:
        while self._heap:
            when, key = self._heap[0]
            current = self._due.get(key)
            if current is None or current[0] != when:  # superseded by an earlier wake-up, or forgotten
                heapq.heappop(self._heap)
                continue
            if when > now + COALESCE_SECONDS:
                break
            heapq.heappop(self._heap)
            del self._due[key]
            if key in self._busy:
                self._dirty.add(key)
                continue
            self._waiting[key] = (current[1], when)
        free = self._free()
        if not free or not self._waiting:
            return []
        if len(self._waiting) <= free:
            ready = list(self._waiting)
        else:
            ready = [k for _p, _w, k in heapq.nsmallest(free, ((p, w, k) for k, (p, w) in self._waiting.items()))]
        for key in ready:
            self._since[key] = self._waiting.pop(key)[1]
        self._busy.update(ready)  # now, not when the batch's task starts: the next pass counts them
        return ready

    def due_since(self, key: Key) -> float | None:
        """The instant a key just handed over was due (once; for the queue-time histogram)."""
        return self._since.pop(key, None)

    def _next_delay(self, now: float) -> float:
        if self._waiting and self._free():
            return 0.0
        while self._heap and (self._due.get(self._heap[0][1]) or (None,))[0] != self._heap[0][0]:
            heapq.heappop(self._heap)
        if not self._heap:
            return 60.0
        return max(0.0, min(60.0, self._heap[0][0] - now))

    async def _run_batch(self, keys: list[Key]) -> None:
        released: set[Key] = set()

        def release(key: Key, look: Look) -> None:
            # Once per key and batch: a key released early may already be busy in a later batch, and
            # releasing it again here would let a third wake-up reconcile it twice at once.
            if key not in released:
                released.add(key)
                self.release(key, look)

        try:
            next_looks = await self._process(keys, release)
        except Exception:
            next_looks = {k: self._clock() + 5.0 for k in keys}  # the batch failed as a whole: try soon
        for key in keys:
            release(key, next_looks.get(key))

    def release(self, key: Key, look: Look) -> None:
        """`key` is done: run it again now if it was woken meanwhile, and at its next look (on the loop)."""
        if key not in self._busy:
            return  # released already
        self._busy.discard(key)
        self._changed.set()  # a worker is free: a waiting key may go
        if key in self._dirty:
            self._dirty.discard(key)
            self.wake(key)
        nxt = _split(look)
        if nxt is not None:
            self.wake(key, nxt[0], routine=nxt[1] == ROUTINE)
