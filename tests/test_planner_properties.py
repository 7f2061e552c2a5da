"""Property tests of the planner's promises, over generated plans and event sequences."""

from __future__ import annotations

from datetime import timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controlled_friction import names
from controlled_friction.models.policy import FrictionPolicySpec, NamedPolicy
from controlled_friction.planner import ApplyDeployment, canary_replicas, count_approvals
from tests.planner_world import World, approval, spec, verdicts

USERS = ["alice", "bob", "carol", "dave"]


@st.composite
def plans(draw):
    steps, weight = [], 0
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["setWeight", "pause", "untimed", "approval"]))
        if kind == "setWeight":
            weight = draw(st.integers(weight, 100))
            steps.append({"setWeight": weight})
        elif kind == "pause":
            steps.append({"pause": {"duration": draw(st.integers(0, 120))}})
        elif kind == "untimed":
            steps.append({"pause": {}})
        else:
            steps.append({"approval": {"count": draw(st.integers(0, 2))}})
    return steps


@st.composite
def policies(draw):
    if not draw(st.booleans()):
        return ()
    rules = {"approvals": {"count": draw(st.integers(1, 3)), "approverGroups": ["senior-engineers"]}}
    if draw(st.booleans()):
        rules["minBake"] = draw(st.integers(1, 60))
    if draw(st.booleans()):
        rules["maxFirstWeight"] = draw(st.integers(1, 20))
    return (
        NamedPolicy(
            name="critical",
            spec=FrictionPolicySpec.model_validate(
                {"selector": {"rolloutSelector": {"matchLabels": {names.LABEL_TIER: "critical"}}}, "rules": rules}
            ),
        ),
    )


events = st.lists(
    st.one_of(
        st.tuples(st.just("advance"), st.one_of(st.integers(1, 6), st.integers(1, 90))),
        st.tuples(st.just("approve"), st.sampled_from(USERS)),
        st.tuples(st.just("measure"), st.sampled_from(["pass", "pass", "pass", "fail", "inconclusive", "error"])),
        st.tuples(st.just("action"), st.sampled_from(["promote", "abort", "retry"])),
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plans(), policies(), events, st.booleans())
def test_planner_keeps_its_promises(steps, pols, evs, with_metric):
    metrics = [{"name": "errors", "kind": "errorRatio", "maxRatio": 0.02}] if with_metric else []
    w = World(spec(steps, image="app:1", metrics=metrics))
    w.tick()
    w.tick()
    w.spec = spec(steps, image="app:2", metrics=metrics)
    w.labels = {names.LABEL_TIER: "critical"}
    w.policies = pols
    w.annotations[names.ANN_AUTHOR] = "carol"
    stable_revision = w.stable.revision if w.stable else None
    for kind, arg in [("advance", 0), *evs]:
        measurements = ()
        if kind == "advance":
            w.now += timedelta(seconds=arg)
        elif kind == "approve":
            w.approvals.append(approval(arg, w.revision, at=w.now))
        elif kind == "measure" and with_metric:
            measurements = verdicts(arg, "errors")
        elif kind == "action":
            w.annotations[names.ANN_ACTION] = arg
        before = w.status.model_copy(deep=True)
        d = w.tick(measurements)
        after = d.status
        plan = after.effective_plan
        if plan is None or before.effective_plan is None or after.canary_revision != before.canary_revision:
            stable_revision = w.stable.revision if w.stable else stable_revision
            continue
        # 1. Steps are left only when their condition held at this instant.
        if after.current_step_index > before.current_step_index and after.canary_revision is not None:
            for k in range(before.current_step_index, min(after.current_step_index, len(plan.steps))):
                step = plan.steps[k]
                started = before.step_started_at if k == before.current_step_index else w.now
                if step.kind == "pause" and step.pause_seconds is not None:
                    assert (w.now - started).total_seconds() >= step.pause_seconds, "left a bake early"
                if step.kind == "approval":
                    count = count_approvals(
                        step.approvals,
                        d_inputs_approvals(w),
                        rollout_key="shop/checkout",
                        revision=w.revision,
                        annotations={names.ANN_AUTHOR: "carol"},
                        expiry_seconds=plan.approval_expiry_seconds,
                        now=w.now,
                    )
                    assert count.met, "passed an unmet approval gate"
        # 2. The canary never gets more than the weight of the steps reached so far.
        reached = [s.set_weight or 0 for s in plan.steps[: after.current_step_index + 1] if s.kind == "setWeight"]
        if w.canary is not None and w.canary.revision == w.revision:
            assert w.canary.replicas <= canary_replicas(10, max(reached, default=0))
        # 3. The stable template changes only on promotion, after every step.
        for a in d.actions:
            if isinstance(a, ApplyDeployment) and a.track == "stable":
                assert before.current_step_index >= len(plan.steps) or after.current_step_index >= len(plan.steps)
                assert a.revision == w.revision
        if w.stable and w.stable.revision != stable_revision:
            assert w.stable.revision == w.revision
            stable_revision = w.stable.revision


def d_inputs_approvals(w: World):
    from controlled_friction.models.approval import verify
    from controlled_friction.planner import ApprovalObs

    return tuple(ApprovalObs(a, verify(a, b"test-key")) for a in w.approvals)
