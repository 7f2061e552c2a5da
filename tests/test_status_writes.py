"""The status changes only when something happened, so the operator writes it only then: a wake-up for
an unrelated reason (an approval arriving, a pod starting) during a bake or a promotion must plan the
same status. At 1,000 Rollouts every needless write is API-server load that slows every other one."""

from __future__ import annotations

from dataclasses import replace

from controlled_friction.decisions import DeploymentObs
from tests.planner_world import World, spec
from tests.test_planner import deployed

STEPS = [{"setWeight": 50}, {"pause": {"duration": "30s"}}]


def test_a_bake_plans_the_same_status_at_every_look_until_it_ends():
    w = deployed(STEPS)
    w.tick()
    first = w.tick().status.wire()
    assert w.status.current_step_index == 1 and "until" in w.status.message
    for _ in range(5):  # woken five times in the bake (approvals, pod events): nothing to write
        assert w.tick(advance=3).status.wire() == first


def test_a_promotion_does_not_follow_the_pods_one_by_one():
    w = deployed(STEPS, replicas=4)
    w.tick()
    w.tick()
    w.tick(advance=30)
    assert w.status.phase == "Promoting"
    promoting = w.status.wire()
    assert w.stable is not None and w.canary is not None
    # The stable Deployment rolls to the promoted revision: its ready pods change at every event.
    for ready in (1, 3, 2, 3):
        w.stable = replace(w.stable, ready_replicas=ready, available_replicas=ready, updated_replicas=4)
        assert w.tick(advance=1).status.wire() == promoting, f"a status write for {ready} ready stable pods"
    w.stable = replace(w.stable, ready_replicas=4, available_replicas=4)
    w.tick(advance=1)
    assert w.status.phase == "Healthy"


def test_a_promoted_rollout_settles_in_one_write():
    w = deployed(STEPS)
    w.tick()
    w.tick()
    w.tick(advance=30)
    while w.status.phase == "Promoting":
        w.tick(advance=1)
    healthy = w.status.wire()
    assert healthy["phase"] == "Healthy" and healthy["effectiveWeight"] == 0
    # The retired canary's Deployment reports its pods going: each event wakes the rollout, none writes.
    assert w.canary is not None
    for ready in (1, 0):
        w.canary = DeploymentObs(w.canary.revision, 0, ready, ready, ready, True)
        assert w.tick(advance=1).status.wire() == healthy


def test_a_first_revision_is_healthy_with_no_canary_share():
    w = World(spec(STEPS))
    w.tick()
    assert w.tick().status.effective_weight == 0.0
