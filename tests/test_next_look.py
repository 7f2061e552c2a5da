"""The planner says when it must look again: bake ends, analysis grid, approval expiry; never for a
settled Rollout (no timer for Healthy ones)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from controlled_friction import names
from controlled_friction.models.policy import FrictionPolicySpec, NamedPolicy
from controlled_friction.planner import next_analysis_at
from tests.planner_world import World, approval, passing, spec
from tests.test_planner import ERRORS, deployed

SHORT_EXPIRY = NamedPolicy(name="critical", spec=FrictionPolicySpec.model_validate({
    "selector": {"rolloutSelector": {"matchLabels": {names.LABEL_TIER: "critical"}}},
    "rules": {"approvals": {"count": 2, "approverGroups": ["senior-engineers"], "expiry": "30s"}},
}))


def test_a_healthy_rollout_asks_for_no_wake_up():
    w = World(spec([{"setWeight": 20}]))
    w.tick()
    d = w.tick()
    assert d.status.phase == "Healthy"
    assert d.next_look is None


def test_a_bake_asks_to_be_woken_at_its_end():
    w = deployed([{"setWeight": 20}, {"pause": {"duration": "30s"}}, {"setWeight": 50}])
    w.tick()
    d = w.tick()
    assert d.status.current_step_index == 1
    assert d.next_look == d.status.step_started_at + timedelta(seconds=30)


def test_analysis_wakes_on_the_shared_grid():
    w = deployed([{"setWeight": 20}, {"pause": {"duration": "10m"}}], metrics=[ERRORS], interval="10s")
    w.tick()
    w.tick()
    d = w.tick(passing("errors"), advance=3.3)
    assert d.next_look is not None
    assert d.next_look.timestamp() % 10 == 0, "not on the 10 s grid shared by every rollout"
    assert 5 <= (d.next_look - w.now).total_seconds() <= 15


def test_next_analysis_is_never_bunched_after_an_off_grid_look():
    last = datetime(2026, 3, 1, 12, 0, 9, 900000, tzinfo=UTC)
    nxt = next_analysis_at(last, 10, last)
    assert nxt == datetime(2026, 3, 1, 12, 0, 20, tzinfo=UTC)
    assert next_analysis_at(None, 10, last) == last


def test_a_gate_wakes_when_a_counted_approval_expires():
    w = deployed([{"setWeight": 10}, {"pause": {"duration": "10s"}}, {"setWeight": 50}])
    w.labels = {names.LABEL_TIER: "critical"}
    w.policies = (SHORT_EXPIRY,)  # two approvals, expiry 30 s
    w.annotations[names.ANN_AUTHOR] = "carol"
    for _ in range(3):
        w.tick(advance=11)
    assert w.status.phase == "AwaitingApproval"
    given = w.now
    w.approvals.append(approval("alice", w.revision, at=given))
    d = w.tick(advance=1)
    assert d.status.phase == "AwaitingApproval"
    assert d.next_look == given + timedelta(seconds=30)


def test_analysis_looks_are_routine_and_a_bake_end_is_a_deadline():
    """The shell runs changes and deadlines before routine looks when it cannot run everything."""
    w = deployed([{"setWeight": 20}, {"pause": {"duration": "10m"}}], metrics=[ERRORS], interval="10s")
    w.tick()
    w.tick()
    d = w.tick(passing("errors"), advance=3.3)
    assert d.next_look is not None and d.next_look.timestamp() % 10 == 0 and d.next_look_routine
    b = deployed([{"setWeight": 20}, {"pause": {"duration": "30s"}}, {"setWeight": 50}])
    b.tick()
    d = b.tick()
    assert d.next_look == d.status.step_started_at + timedelta(seconds=30) and not d.next_look_routine


def test_a_bake_held_for_analysis_makes_its_next_look_a_deadline():
    """Its time is up and only a look can move it on: under load that look must not wait behind
    routine looks of rollouts that are not waiting for anything."""
    from tests.planner_world import verdicts

    w = deployed([{"setWeight": 20}, {"pause": {"duration": "10s"}}, {"setWeight": 50}], metrics=[ERRORS],
                 interval="10s")
    w.tick()
    w.tick()  # the bake starts
    d = w.tick(verdicts("inconclusive", "errors"), advance=11)
    assert "bake done, holding" in d.status.message, d.status.message
    assert d.next_look is not None and d.next_look.timestamp() % 10 == 0
    assert not d.next_look_routine
