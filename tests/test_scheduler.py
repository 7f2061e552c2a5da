"""The scheduler: wake-ups on change or at the planner's instant, batches of due keys, never one
key twice at once, and nothing at all while this replica stands by."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from controlled_friction.operator.peering import is_active
from controlled_friction.operator.scheduler import Scheduler


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def run(coro):
    return asyncio.run(coro)


def test_due_keys_are_processed_together_and_rescheduled_at_the_planners_instant():
    async def main() -> list[list[tuple[str, str]]]:
        clock = Clock()
        batches: list[list[tuple[str, str]]] = []

        async def process(keys, release=None):
            batches.append(sorted(keys))
            return {k: (clock.t + 30 if k[1] == "baking" else None) for k in keys}

        s = Scheduler(process, lambda: True, clock)
        task = asyncio.create_task(s.run())
        s.wake_all([("ns", "baking"), ("ns", "healthy"), ("ns", "other")])
        await asyncio.sleep(0.2)
        assert s.pending() == 1, "only the baking rollout asked to be woken"
        clock.t += 31
        s.wake(("ns", "noise"), at=clock.t + 100)  # a later wake-up does not postpone the bake
        await asyncio.sleep(1.2)
        task.cancel()
        return batches

    batches = run(main())
    assert batches[0] == [("ns", "baking"), ("ns", "healthy"), ("ns", "other")]
    assert [("ns", "baking")] in batches[1:]
    assert all(("ns", "healthy") not in b for b in batches[1:])


def test_a_wake_up_during_processing_runs_the_key_again_afterwards():
    async def main() -> int:
        runs = 0
        gate = asyncio.Event()

        async def process(keys, release=None):
            nonlocal runs
            runs += 1
            if runs == 1:
                await gate.wait()
            return {}

        s = Scheduler(process, lambda: True)
        task = asyncio.create_task(s.run())
        s.wake(("ns", "a"))
        await asyncio.sleep(0.2)
        s.wake(("ns", "a"))  # arrives while the first run is in flight
        await asyncio.sleep(0.2)
        assert runs == 1, "the same key ran twice at once"
        gate.set()
        await asyncio.sleep(0.3)
        task.cancel()
        return runs

    assert run(main()) == 2


def test_a_standby_replica_processes_nothing():
    async def main() -> int:
        runs = 0

        async def process(keys, release=None):
            nonlocal runs
            runs += 1
            return {}

        s = Scheduler(process, lambda: False)
        task = asyncio.create_task(s.run())
        s.wake(("ns", "a"))
        await asyncio.sleep(0.3)
        task.cancel()
        return runs

    assert run(main()) == 0


def test_peering_rule_matches_kopf():
    now = datetime(2026, 3, 1, tzinfo=UTC)
    fresh = (now - timedelta(seconds=5)).isoformat()
    stale = (now - timedelta(seconds=120)).isoformat()
    me = {"priority": 10, "lifetime": 60, "lastseen": fresh}
    assert is_active({"me": me}, "me", 10, now)
    assert not is_active({"me": me, "b": {"priority": 20, "lifetime": 60, "lastseen": fresh}}, "me", 10, now)
    assert not is_active({"me": me, "b": {"priority": 10, "lifetime": 60, "lastseen": fresh}}, "me", 10, now)
    assert is_active({"me": me, "b": {"priority": 5, "lifetime": 60, "lastseen": fresh}}, "me", 10, now)
    assert is_active({"me": me, "b": {"priority": 99, "lifetime": 60, "lastseen": stale}}, "me", 10, now)


def test_wake_up_handlers_run_on_the_schedulers_loop():
    """kopf runs sync handlers in threads; a wake-up from a thread may not wake the loop (seen: a
    canary waited for the 60 s resync instead of its Deployment's readiness event)."""
    import inspect

    from controlled_friction.operator import handlers, indexes

    for fn in (handlers.rollout_changed, handlers.deployment_changed, handlers.service_changed,
               handlers.route_changed, handlers.namespace_changed, handlers.policy_changed,
               # and the indexes, so an admission burst in kopf's thread pool never holds up the watches
               handlers.rollout_index, handlers.deployment_index, handlers.service_index, handlers.route_index,
               indexes.policy_index, indexes.namespace_index, indexes.owner_index, indexes.rollout_uid_index,
               indexes.terminating_namespace_index):
        assert inspect.iscoroutinefunction(fn), fn.__name__


def test_a_wake_up_interrupts_a_long_wait():
    async def main() -> float:
        clock = Clock()
        seen: list[float] = []

        async def process(keys, release=None):
            seen.append(asyncio.get_running_loop().time())
            return {}

        s = Scheduler(process, lambda: True, clock)
        s.wake(("ns", "later"), at=clock.t + 50)  # the loop now sleeps up to 50 s
        task = asyncio.create_task(s.run())
        await asyncio.sleep(0.2)
        start = asyncio.get_running_loop().time()
        s.wake(("ns", "now"))
        for _ in range(50):  # well under the 50 s it would otherwise sleep, even on a loaded machine
            if seen:
                break
            await asyncio.sleep(0.1)
        task.cancel()
        return seen[0] - start if seen else 99.0

    assert run(main()) < 5


def test_a_key_done_early_runs_again_without_waiting_for_its_batch():
    """A wake-up for a key whose reconcile is done runs at once, though a slow key of its batch still runs."""

    async def main() -> list[list[tuple[str, str]]]:
        slow_gate = asyncio.Event()
        batches: list[list[tuple[str, str]]] = []

        async def process(keys, release):
            batches.append(sorted(keys))
            if ("ns", "slow") in keys:
                release(("ns", "fast"), None)  # the fast one finished first
                await slow_gate.wait()
            return {k: None for k in keys}

        s = Scheduler(process, lambda: True)
        task = asyncio.create_task(s.run())
        s.wake_all([("ns", "fast"), ("ns", "slow")])
        await asyncio.sleep(0.2)
        s.wake(("ns", "fast"))  # e.g. its canary Deployment turned ready
        await asyncio.sleep(0.3)
        seen = list(batches)
        slow_gate.set()
        await asyncio.sleep(0.1)
        task.cancel()
        return seen

    batches = run(main())
    assert batches[0] == [("ns", "fast"), ("ns", "slow")]
    assert [("ns", "fast")] in batches[1:], "the fast key waited for the slow one's batch"


def test_a_key_released_early_is_never_reconciled_twice_at_once():
    """The batch that released a key early must not release it again when it ends: by then the key
    may be running in a later batch, and a wake-up would start a second reconcile of it alongside."""

    async def main() -> int:
        slow_gate, fast_gate = asyncio.Event(), asyncio.Event()
        running: dict[tuple[str, str], int] = {}
        most = 0

        async def process(keys, release):
            nonlocal most
            for k in keys:
                running[k] = running.get(k, 0) + 1
                most = max(most, running[k])
            if ("ns", "slow") in keys:
                running[("ns", "fast")] -= 1
                release(("ns", "fast"), None)
                await slow_gate.wait()
            elif ("ns", "fast") in keys:
                await fast_gate.wait()  # the second run of the fast key is still going
            for k in keys:
                if k != ("ns", "fast") or ("ns", "slow") not in keys:
                    running[k] -= 1
            return {k: None for k in keys}

        s = Scheduler(process, lambda: True)
        task = asyncio.create_task(s.run())
        s.wake_all([("ns", "fast"), ("ns", "slow")])
        await asyncio.sleep(0.2)
        s.wake(("ns", "fast"))  # second run starts and holds
        await asyncio.sleep(0.2)
        slow_gate.set()  # the first batch ends while the fast key's second run is in progress
        await asyncio.sleep(0.1)
        s.wake(("ns", "fast"))  # must wait for the second run, not start a third alongside it
        await asyncio.sleep(0.3)
        fast_gate.set()
        await asyncio.sleep(0.2)
        task.cancel()
        return most

    assert run(main()) == 1


def test_a_handed_over_key_says_when_it_was_due_once():
    """The queue-time histogram reads it: a bake end due at t and picked up late reports t, not the
    moment it was picked up."""
    async def main() -> list[float | None]:
        clock = Clock()
        seen: list[float | None] = []
        s: Scheduler

        async def process(keys, release=None):
            seen.extend(s.due_since(k) for k in keys)
            seen.append(s.due_since(keys[0]))  # asked twice: the second time it is gone
            return {}

        s = Scheduler(process, lambda: True, clock)
        due = clock.t + 5
        s.wake(("ns", "baking"), at=due)
        task = asyncio.create_task(s.run())
        await asyncio.sleep(0.1)
        clock.t = due + 3  # picked up 3 s late
        s.wake(("ns", "other"), at=clock.t + 60)  # nudges the loop to look again
        await asyncio.sleep(0.3)
        task.cancel()
        return seen

    assert run(main()) == [1005.0, None]


def test_with_a_capacity_changes_go_first_then_deadlines_then_routine_looks():
    """A ready canary or a template change is not queued behind the analysis grid's looks."""
    async def main() -> list[str]:
        clock = Clock()
        order: list[str] = []

        async def process(keys, release=None):
            order.extend(k[1] for k in keys)
            await asyncio.sleep(0.01)
            return {}

        s = Scheduler(process, lambda: True, clock, capacity=1)
        s.wake(("ns", "look-1"), at=clock.t - 2, routine=True)  # due first, but only routine
        s.wake(("ns", "bake-end"), at=clock.t - 1)
        s.wake(("ns", "look-2"), at=clock.t - 3, routine=True)
        s.wake(("ns", "canary-ready"))
        task = asyncio.create_task(s.run())
        await asyncio.sleep(0.6)
        task.cancel()
        return order

    assert run(main()) == ["canary-ready", "bake-end", "look-2", "look-1"]


def test_no_more_keys_run_at_once_than_the_capacity():
    async def main() -> tuple[int, int]:
        running = peak = done = 0

        async def process(keys, release=None):
            nonlocal running, peak, done
            running += len(keys)
            peak = max(peak, running)
            await asyncio.sleep(0.05)
            running -= len(keys)
            done += len(keys)
            return {}

        s = Scheduler(process, lambda: True, capacity=3)
        task = asyncio.create_task(s.run())
        s.wake_all([("ns", f"r{i}") for i in range(10)])
        await asyncio.sleep(1.0)
        task.cancel()
        return peak, done

    assert run(main()) == (3, 10)


def test_a_change_to_a_key_waiting_for_a_routine_look_makes_it_urgent():
    async def main() -> list[str]:
        clock = Clock()
        order: list[str] = []
        gate = asyncio.Event()

        async def process(keys, release=None):
            order.extend(k[1] for k in keys)
            if keys == [("ns", "busy")]:
                await gate.wait()
            return {}

        s = Scheduler(process, lambda: True, clock, capacity=1)
        s.wake(("ns", "busy"))
        task = asyncio.create_task(s.run())
        await asyncio.sleep(0.1)  # "busy" holds the only worker
        s.wake(("ns", "look"), at=clock.t - 5, routine=True)
        s.wake(("ns", "bake-end"), at=clock.t - 1)
        await asyncio.sleep(0.1)  # both wait now
        s.wake(("ns", "look"))  # ... and then the look's Rollout changes
        gate.set()
        await asyncio.sleep(0.4)
        task.cancel()
        return order

    assert run(main()) == ["busy", "look", "bake-end"]
