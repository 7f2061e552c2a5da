"""When each Rollout is reconciled: on a change of something it reads, or at the instant the planner
asked for. No per-object timer: a settled Rollout costs nothing until an event arrives.

Keys due at the same moment are handed over together, so their measurements can be asked from
Prometheus in one batch. A key is never processed twice at once; a wake-up that arrives while it is
being processed runs it again right after. Each key is released as soon as its own reconcile is done
(`release`), not when the whole batch is: a Deployment turning ready must not wait behind the slowest
of a hundred reconciles that happened to be due with it.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from collections.abc import Awaitable, Callable

Key = tuple[str, str]
Release = Callable[[Key, float | None], None]
COALESCE_SECONDS = 0.05  # gather keys woken within this of each other into one batch
MAX_BATCH = 500


class Scheduler:
    def __init__(self, process: Callable[[list[Key], Release], Awaitable[dict[Key, float | None]]],
                 active: Callable[[], bool], clock: Callable[[], float] = time.time) -> None:
        self._process = process
        self._active = active
        self._clock = clock
        self._due: dict[Key, float] = {}
        self._heap: list[tuple[float, Key]] = []
        self._busy: set[Key] = set()
        self._dirty: set[Key] = set()
        self._since: dict[Key, float] = {}  # keys handed over -> the instant they were due
        self._changed = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    # -- called from the event loop

    def wake(self, key: Key, at: float | None = None) -> None:
        """Reconcile `key` at `at` (now if None), or earlier if it is already due earlier.
        Call it on the scheduler's event loop (asyncio primitives are not thread-safe)."""
        when = self._clock() if at is None else at
        if key in self._busy and at is None:
            self._dirty.add(key)
            return
        if key in self._due and self._due[key] <= when:
            return
        self._due[key] = when
        heapq.heappush(self._heap, (when, key))
        self._changed.set()

    def wake_all(self, keys: list[Key]) -> None:
        for key in keys:
            self.wake(key)

    def forget(self, key: Key) -> None:
        self._due.pop(key, None)
        self._dirty.discard(key)
        self._since.pop(key, None)

    def pending(self) -> int:
        return len(self._due)

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

    def _pop_ready(self, now: float) -> list[Key]:
        ready: list[Key] = []
        while self._heap and len(ready) < MAX_BATCH:
            when, key = self._heap[0]
            if self._due.get(key) != when:  # superseded by an earlier wake-up, or forgotten
                heapq.heappop(self._heap)
                continue
            if when > now + COALESCE_SECONDS:
                break
            heapq.heappop(self._heap)
            del self._due[key]
            if key in self._busy:
                self._dirty.add(key)
                continue
            ready.append(key)
            self._since[key] = when
        return ready

    def due_since(self, key: Key) -> float | None:
        """The instant a key just handed over was due (once; for the queue-time histogram)."""
        return self._since.pop(key, None)

    def _next_delay(self, now: float) -> float:
        while self._heap and self._due.get(self._heap[0][1]) != self._heap[0][0]:
            heapq.heappop(self._heap)
        if not self._heap:
            return 60.0
        return max(0.0, min(60.0, self._heap[0][0] - now))

    async def _run_batch(self, keys: list[Key]) -> None:
        self._busy.update(keys)
        released: set[Key] = set()

        def release(key: Key, at: float | None) -> None:
            # Once per key and batch: a key released early may already be busy in a later batch, and
            # releasing it again here would let a third wake-up reconcile it twice at once.
            if key not in released:
                released.add(key)
                self.release(key, at)

        try:
            next_looks = await self._process(keys, release)
        except Exception:
            next_looks = {k: self._clock() + 5.0 for k in keys}  # the batch failed as a whole: try soon
        for key in keys:
            release(key, next_looks.get(key))

    def release(self, key: Key, at: float | None) -> None:
        """`key` is done: run it again now if it was woken meanwhile, and at `at` (on the loop)."""
        if key not in self._busy:
            return  # released already
        self._busy.discard(key)
        if key in self._dirty:
            self._dirty.discard(key)
            self.wake(key)
        if at is not None:
            self.wake(key, at)
