"""Unit tests of the pure planner, driven through a tiny pure world (no cluster)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from controlled_friction import names
from controlled_friction.models.policy import FrictionPolicySpec, NamedPolicy
from controlled_friction.planner import ApplyDeployment, InvalidPolicy, RecordEvent, ScaleDeployment, canary_replicas
from tests.planner_world import T0, World, approval, passing, spec, verdicts

ERRORS = {"name": "errors", "kind": "errorRatio", "maxRatio": 0.02}
CRITICAL = NamedPolicy(
    name="critical",
    spec=FrictionPolicySpec.model_validate(
        {
            "selector": {"rolloutSelector": {"matchLabels": {names.LABEL_TIER: "critical"}}},
            "rules": {"approvals": {"count": 2, "approverGroups": ["senior-engineers"], "expiry": "1h"}},
        }
    ),
)


def deployed(steps, metrics=None, **kw) -> World:
    """A world where v1 is stable and v2's template has just been applied."""
    w = World(spec(steps, image="shop/checkout:1", metrics=metrics, **kw))
    w.tick()
    w.tick()
    assert w.status.phase == "Healthy"
    w.spec = spec(steps, image="shop/checkout:2", metrics=metrics, **kw)
    return w


def test_first_revision_goes_straight_to_stable():
    w = World(spec([{"setWeight": 20}]))
    d = w.tick()
    assert [a for a in d.actions if isinstance(a, ApplyDeployment)] == [
        ApplyDeployment("stable", w.revision, w.spec.template, 10)
    ]
    assert d.status.stable_revision == w.revision
    assert w.tick().status.phase == "Healthy"
    assert w.status.canary_revision is None


def test_canary_walks_to_promotion_without_policies():
    w = deployed([{"setWeight": 20}, {"pause": {"duration": "30s"}}, {"setWeight": 50}])
    d = w.tick()
    assert d.status.canary_revision == w.revision and d.status.phase == "Progressing"
    assert w.canary is not None and w.canary.replicas == canary_replicas(10, 20)
    w.tick()
    assert w.status.canary_weight == 20 and w.status.current_step_index == 1
    w.tick(advance=29)
    assert w.status.current_step_index == 1, "left the bake early"
    w.tick(advance=1)
    assert w.status.current_step_index == 2
    for _ in range(4):
        w.tick(advance=1)
    assert w.status.phase == "Healthy" and w.status.stable_revision == w.revision
    assert w.canary is not None and w.canary.replicas == 0
    assert w.status.history[-1].outcome == "Promoted"
    assert w.stable_template_revision_history[-1] == w.revision


def test_canary_replicas_formula_realises_weight():
    assert canary_replicas(10, 0) == 0
    assert canary_replicas(10, 5) == 1
    assert canary_replicas(10, 25) == 3
    assert canary_replicas(10, 50) == 10
    assert canary_replicas(10, 90) == 10  # capped: >50% waits for promotion
    assert canary_replicas(1, 1) == 1


def test_approval_gate_counts_only_verified_distinct_non_author_approvals():
    w = deployed([{"setWeight": 10}, {"pause": {"duration": "10s"}}, {"setWeight": 50}])
    w.labels = {names.LABEL_TIER: "critical"}
    w.policies = (CRITICAL,)
    w.annotations[names.ANN_AUTHOR] = "carol"
    w.tick()
    w.tick(advance=1)
    w.tick(advance=10)
    assert w.status.phase == "AwaitingApproval"
    rev = w.revision
    forged = approval("bob", rev).model_copy(update={"signature": "0" * 64})
    w.approvals = [
        approval("carol", rev),  # the author
        forged,
        approval("dave", rev, groups=("engineers",)),
        approval("alice", "0000000000"),  # another revision
        approval("bob", rev, rollout="other/checkout"),  # another rollout
        approval("alice", rev),
        approval("alice", rev, at=T0 + timedelta(seconds=1)),  # same person twice
    ]
    for _ in range(3):
        w.tick(advance=1)
    assert w.status.phase == "AwaitingApproval"
    assert [a.user for a in w.status.approvals] == ["alice"]
    assert w.status.approvals_summary == "1/2"
    assert w.canary is not None and w.canary.replicas == canary_replicas(10, 5)
    w.approvals.append(approval("bob", rev, at=w.now))
    w.tick(advance=1)
    assert w.status.current_step_index > 2
    assert {a.user for a in w.status.approvals} == {"alice", "bob"}


def test_no_approval_counts_while_the_author_is_not_verified():
    """A template changed behind the webhook's back (break-glass) has no signed author, so nobody
    can be excluded: the gate stays shut even with two valid approvals, and says why."""
    w = deployed([{"setWeight": 10}, {"setWeight": 50}])
    w.labels = {names.LABEL_TIER: "critical"}
    w.policies = (CRITICAL,)
    w.annotations[names.ANN_AUTHOR] = "alice"  # claimed; the real author may be bob or anyone
    w.author_verified = False
    w.approvals = [approval("bob", w.revision, at=T0), approval("carol", w.revision, at=T0)]
    for _ in range(3):
        d = w.tick(advance=1)
    assert w.status.phase == "AwaitingApproval"
    assert w.status.approvals == [] and w.status.approvals_summary == "0/2"
    assert f"the author of revision {w.revision} was not recorded by the admission webhook" in w.status.message
    assert any(e.reason == "AuthorNotVerified" for e in d.actions if isinstance(e, RecordEvent))
    w.author_verified = True
    w.tick(advance=1)
    assert w.status.current_step_index > 1 and {a.user for a in w.status.approvals} == {"bob", "carol"}


def test_an_invalid_matching_policy_holds_the_canary_untouched():
    w = deployed([{"setWeight": 20}, {"pause": {"duration": "30s"}}])
    w.labels = {names.LABEL_TIER: "critical"}
    w.tick()
    w.tick()
    assert w.status.canary_weight == 20
    canary_before = w.canary
    selector = CRITICAL.spec.selector
    w.invalid_policies = (InvalidPolicy("critical", selector, "spec.rules.minBake: must be ≥ 0"),)
    d = w.tick(advance=60)
    assert d.status.phase == "Invalid"
    assert d.status.message == ("invalid policy: policy critical is invalid (spec.rules.minBake: must be ≥ 0)"
                                " — held until the policy is fixed")
    assert not [a for a in d.actions if isinstance(a, ApplyDeployment | ScaleDeployment)]
    assert w.canary == canary_before
    w.labels = {}  # no longer selected: the policy's problem is not this rollout's
    w.invalid_policies = (InvalidPolicy("critical", selector, "bad"),)
    assert w.tick().status.phase != "Invalid"


def test_expired_approval_does_not_count():
    w = deployed([{"setWeight": 10}, {"setWeight": 50}])
    w.labels = {names.LABEL_TIER: "critical"}
    w.policies = (CRITICAL,)
    w.approvals = [approval("alice", w.revision, at=T0), approval("bob", w.revision, at=T0)]
    w.tick(advance=3601)
    w.tick(advance=1)
    w.tick(advance=1)
    assert w.status.phase == "AwaitingApproval"
    assert w.status.approvals == []


def test_failing_metric_rolls_back_canary_only():
    w = deployed([{"setWeight": 20}, {"pause": {"duration": "5m"}}], metrics=[ERRORS])
    w.tick()
    w.tick(advance=1)
    stable_before = w.stable
    w.tick(verdicts("fail", "errors", value=0.3), advance=10)
    assert w.status.phase == "Progressing"  # failureLimit 2
    d = w.tick(verdicts("fail", "errors", value=0.3), advance=10)
    assert d.status.phase == "RolledBack"
    assert ScaleDeployment("canary", 0) in d.actions
    assert not any(isinstance(a, ApplyDeployment) and a.track == "stable" for a in d.actions)
    assert w.stable == stable_before
    assert "errors" in d.status.message and "0.3" in d.status.message
    assert any(e.reason == "RollbackTriggered" for e in d.events())
    # The same bad revision is not retried by itself...
    for _ in range(3):
        w.tick(advance=10)
    assert w.status.phase == "RolledBack" and w.canary is not None and w.canary.replicas == 0
    # ...until a retry action.
    w.annotations[names.ANN_ACTION] = "retry"
    w.tick(advance=1)
    assert w.status.phase == "Progressing" and w.status.aborted_revision is None


def test_new_template_after_rollback_starts_a_new_canary():
    w = deployed([{"setWeight": 20}, {"pause": {"duration": "5m"}}], metrics=[ERRORS])
    w.tick()
    w.tick(advance=1)
    w.annotations[names.ANN_ACTION] = "abort"
    assert w.tick(advance=1).status.phase == "RolledBack"
    assert w.status.history[-1].outcome == "Aborted"
    w.spec = spec([{"setWeight": 20}, {"pause": {"duration": "5m"}}], image="shop/checkout:3", metrics=[ERRORS])
    d = w.tick(advance=1)
    assert d.status.canary_revision == w.revision and d.status.phase == "Progressing"


@pytest.mark.parametrize(
    ("verdict", "limit_field", "limit"),
    [("inconclusive", "inconclusiveLimit", 3), ("error", "errorLimit", 2)],
)
def test_missing_data_never_promotes_and_rolls_back_at_the_limit(verdict, limit_field, limit):
    w = deployed([{"setWeight": 20}, {"pause": {"duration": "10s"}}], metrics=[ERRORS], **{limit_field: limit})
    w.tick()
    w.tick(advance=1)
    for _ in range(limit - 1):
        w.tick(verdicts(verdict, "errors"), advance=20)
        assert w.status.phase == "Progressing", "advanced on missing data"
        assert w.status.current_step_index == 1
    assert w.tick(verdicts(verdict, "errors"), advance=20).status.phase == "RolledBack"


def test_bake_waits_for_passing_analysis_before_promotion():
    w = deployed([{"setWeight": 20}, {"pause": {"duration": "10s"}}], metrics=[ERRORS])
    w.tick()
    w.tick(advance=1)
    w.tick(advance=20)
    assert w.status.current_step_index == 1 and "holding" in w.status.message
    w.tick(passing("errors"), advance=1)
    w.tick(advance=1)
    w.tick(advance=1)
    assert w.status.phase == "Healthy"


def test_promote_action_ends_untimed_pause_only():
    w = deployed([{"setWeight": 20}, {"pause": {"duration": "1h"}}, {"pause": {}}, {"setWeight": 50}])
    w.tick()
    w.tick(advance=1)
    w.annotations[names.ANN_ACTION] = "promote"
    w.tick(advance=1)
    assert w.status.current_step_index == 1, "promote skipped a timed bake"
    w.tick(advance=3600)
    assert w.status.phase == "Paused"
    w.annotations[names.ANN_ACTION] = "promote"
    w.tick(advance=1)
    assert w.status.current_step_index >= 3


def test_invalid_query_marks_invalid_and_touches_nothing():
    bad = {"name": "q", "kind": "query", "query": "sum(rate(x[1m]", "max": 1}
    w = deployed([{"setWeight": 20}])
    w.spec = spec([{"setWeight": 20}], image="shop/checkout:2", metrics=[bad])
    d = w.tick()
    assert d.status.phase == "Invalid"
    assert "q" in d.status.message
    assert not [a for a in d.actions if isinstance(a, ApplyDeployment | ScaleDeployment)]


def test_freeze_window_holds_progress():
    freeze = NamedPolicy(
        name="freeze",
        spec=FrictionPolicySpec.model_validate(
            {
                "selector": {"namespaceSelector": {}},
                "freezeWindows": [{"name": "peak", "start": "2026-03-01T00:00:00Z", "end": "2026-03-02T00:00:00Z"}],
            }
        ),
    )
    w = deployed([{"setWeight": 20}])
    w.policies = (freeze,)
    for _ in range(3):
        w.tick(advance=1)
    assert w.status.phase == "Paused" and "peak" in w.status.message
    assert w.canary is None
    w.tick(advance=86400)
    w.tick(advance=1)
    w.tick(advance=1)
    assert w.status.phase in ("Promoting", "Healthy")


def test_template_reverted_to_stable_abandons_canary():
    w = deployed([{"setWeight": 20}, {"pause": {"duration": "1h"}}])
    w.tick()
    w.tick(advance=1)
    w.spec = spec([{"setWeight": 20}, {"pause": {"duration": "1h"}}], image="shop/checkout:1")
    d = w.tick(advance=1)
    assert d.status.phase == "Healthy" and d.status.canary_revision is None
    assert w.canary is not None and w.canary.replicas == 0
    assert d.status.history[-1].outcome == "Superseded"


def test_unknown_action_is_reported_and_cleared():
    w = deployed([{"setWeight": 20}])
    w.annotations[names.ANN_ACTION] = "yolo"
    d = w.tick()
    assert any(e.reason == "UnknownAction" for e in d.events())


def test_analysis_step_needs_time_and_a_passing_measurement_in_the_step():
    steps = [{"setWeight": 20}, {"analysis": {"metrics": ["errors"], "duration": "30s"}}]
    w = deployed(steps, metrics=[ERRORS])
    w.tick()
    w.tick(passing("errors"), advance=1)  # a pass before the step started does not count
    assert w.status.current_step_index == 1
    w.tick(advance=31)
    assert w.status.current_step_index == 1 and "holding" in w.status.message
    w.tick(passing("errors"), advance=2)
    assert w.status.current_step_index == 2


def test_service_is_created_when_named_and_missing():
    from dataclasses import replace

    from controlled_friction.models.rollout import RolloutSpec
    from controlled_friction.planner import EnsureService, RolloutInput, plan

    w = World(spec([{"setWeight": 20}]))
    with_service = RolloutSpec.model_validate({**w.spec.wire(), "service": {"name": "checkout", "port": 80}})
    w.spec = with_service
    d = w.tick()
    assert EnsureService("checkout", 80, 8080, {"app": "checkout"}) not in d.actions  # World says it exists
    inp = RolloutInput("shop", "checkout", 1, {}, {}, with_service, w.status,
                       replace(w.last_observations(), service_exists=False), w.now)
    assert EnsureService("checkout", 80, 8080, {"app": "checkout"}) in plan(inp).actions
