"""The effective plan: table tests of each policy rule, plus properties over generated plans and policies."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controlled_friction.effective_plan import (
    active_freeze,
    compute_effective_plan,
    is_ai_assisted,
    matching_policies,
)
from controlled_friction.models.policy import FrictionRules, NamedPolicy
from controlled_friction.models.rollout import (
    AddedBy,
    EffectivePlan,
    MetricSpec,
    PlannedApproval,
    PlannedStep,
    RolloutSpec,
)
from controlled_friction.names import ANN_AI_ASSISTED, LABEL_TIER, SENIOR_GROUP

CRITICAL = {LABEL_TIER: "critical"}


def make_spec(
    steps: list[dict[str, Any]], metrics: list[dict[str, Any]] | None = None, interval: Any = "10s"
) -> RolloutSpec:
    return RolloutSpec.model_validate(
        {
            "selector": {"matchLabels": {"app": "shop"}},
            "template": {
                "metadata": {"labels": {"app": "shop"}},
                "spec": {"containers": [{"name": "shop", "image": "shop:1"}]},
            },
            "strategy": {"canary": {"steps": steps}},
            "analysis": {"interval": interval, "metrics": metrics or []},
        }
    )


def make_policy(
    name: str,
    rules: dict[str, Any] | None = None,
    ai: dict[str, Any] | None = None,
    freeze: list[dict[str, Any]] | None = None,
    selector: dict[str, Any] | None = None,
) -> NamedPolicy:
    spec: dict[str, Any] = {
        "selector": selector or {"rolloutSelector": {"matchLabels": CRITICAL}},
        "rules": rules or {},
        "freezeWindows": freeze or [],
    }
    if ai is not None:
        spec["aiAssisted"] = ai
    return NamedPolicy.model_validate({"name": name, "spec": spec})


def weights(plan: EffectivePlan) -> list[int]:
    return [s.set_weight or 0 for s in plan.steps if s.kind == "setWeight"]


def kinds(plan: EffectivePlan) -> list[str]:
    return [s.kind for s in plan.steps]


def by(policy: str, rule: str) -> AddedBy:
    return AddedBy(policy=policy, rule=rule)


# ---------------------------------------------------------------- selection and flags


def test_matching_policies_by_rollout_or_namespace_labels_sorted_by_name() -> None:
    by_rollout = make_policy("zz-rollout")
    by_ns = make_policy("aa-namespace", selector={"namespaceSelector": {"matchLabels": CRITICAL}})
    other = make_policy("mm-other", selector={"rolloutSelector": {"matchLabels": {"team": "payments"}}})
    policies = [by_rollout, other, by_ns]
    assert [p.name for p in matching_policies(policies, CRITICAL, {})] == ["zz-rollout"]
    assert [p.name for p in matching_policies(policies, {}, CRITICAL)] == ["aa-namespace"]
    assert [p.name for p in matching_policies(policies, CRITICAL, CRITICAL)] == ["aa-namespace", "zz-rollout"]
    assert matching_policies(policies, {"app": "shop"}, {"kubernetes.io/metadata.name": "shop"}) == []


@pytest.mark.parametrize(
    ("annotations", "expected"),
    [
        ({ANN_AI_ASSISTED: "true"}, True),
        ({ANN_AI_ASSISTED: "True"}, True),
        ({ANN_AI_ASSISTED: "false"}, False),
        ({ANN_AI_ASSISTED: "yes"}, False),
        ({}, False),
    ],
)
def test_is_ai_assisted(annotations: dict[str, str], expected: bool) -> None:
    assert is_ai_assisted(annotations) is expected


# ---------------------------------------------------------------- no policy: the Rollout's own plan


def test_unmatched_rollout_gets_exactly_its_own_plan() -> None:
    spec = make_spec(
        [
            {"setWeight": 20},
            {"pause": {"duration": "2m"}},
            {"approval": {"count": 0}},
            {"analysis": {"metrics": ["errors"], "duration": "1m"}},
            {"setWeight": 50},
            {"approval": {"count": 1, "approverGroups": ["sre"]}},
            {"pause": {}},
        ],
        metrics=[{"name": "errors", "kind": "errorRatio", "maxRatio": 0.05}],
        interval="15s",
    )
    plan = compute_effective_plan(spec, [], ai_assisted=False)
    assert plan.steps == [
        PlannedStep(kind="setWeight", set_weight=20),
        PlannedStep(kind="pause", pause_seconds=120.0),
        PlannedStep(kind="analysis", metrics=["errors"], analysis_seconds=60.0),
        PlannedStep(kind="setWeight", set_weight=50),
        PlannedStep(kind="approval", approvals=[PlannedApproval(count=1, groups=["sre"], source="rollout")]),
        PlannedStep(kind="pause", pause_seconds=None),
    ]
    assert plan.policies == []
    assert plan.metrics == spec.analysis.metrics
    assert plan.metric_sources == {"errors": ["rollout"]}
    assert plan.analysis_interval_seconds == 15.0
    assert plan.approval_expiry_seconds is None
    assert plan.ai_assisted is False


def test_policy_without_rules_changes_nothing_but_is_listed() -> None:
    spec = make_spec([{"setWeight": 40}, {"pause": {"duration": "1m"}}])
    plan = compute_effective_plan(spec, [make_policy("empty")], ai_assisted=True)
    assert plan.steps == compute_effective_plan(spec, [], ai_assisted=True).steps
    assert plan.policies == ["empty"]


# ---------------------------------------------------------------- maxFirstWeight


def test_max_first_weight_lowers_first_step_and_keeps_original_weight_next() -> None:
    spec = make_spec([{"setWeight": 50}, {"pause": {"duration": "1m"}}, {"setWeight": 100}])
    plan = compute_effective_plan(spec, [make_policy("p", {"maxFirstWeight": 10})], ai_assisted=False)
    assert weights(plan) == [10, 50, 100]
    assert kinds(plan) == ["setWeight", "setWeight", "pause", "setWeight"]
    assert plan.steps[0].added_by == [by("p", "maxFirstWeight")]
    assert plan.steps[1].added_by == [by("p", "maxFirstWeight")]
    assert plan.steps[3].added_by == []


def test_max_first_weight_strictest_policy_wins_and_names_every_rule_that_asked() -> None:
    spec = make_spec([{"setWeight": 50}])
    policies = [make_policy("a", {"maxFirstWeight": 20}), make_policy("b", {"maxFirstWeight": 5})]
    plan = compute_effective_plan(spec, policies, ai_assisted=False)
    assert weights(plan) == [5, 50]
    assert plan.steps[0].added_by == [by("a", "maxFirstWeight"), by("b", "maxFirstWeight")]


@pytest.mark.parametrize(("first", "expected"), [(10, [10]), (11, [10, 11]), (9, [9])])
def test_max_first_weight_boundary(first: int, expected: list[int]) -> None:
    spec = make_spec([{"setWeight": first}])
    plan = compute_effective_plan(spec, [make_policy("p", {"maxFirstWeight": 10})], ai_assisted=False)
    assert weights(plan) == expected


def test_max_first_weight_already_met_changes_nothing() -> None:
    spec = make_spec([{"setWeight": 5}, {"setWeight": 100}])
    plan = compute_effective_plan(spec, [make_policy("p", {"maxFirstWeight": 10})], ai_assisted=False)
    assert weights(plan) == [5, 100]
    assert all(not s.added_by for s in plan.steps)


def test_max_first_weight_inserts_a_first_step_when_rollout_has_none() -> None:
    spec = make_spec([{"pause": {"duration": "1m"}}])
    plan = compute_effective_plan(spec, [make_policy("p", {"maxFirstWeight": 10})], ai_assisted=False)
    assert kinds(plan) == ["setWeight", "pause"]
    assert plan.steps[0] == PlannedStep(kind="setWeight", set_weight=10, added_by=[by("p", "maxFirstWeight")])


def test_max_first_weight_looks_past_set_weight_zero() -> None:
    # setWeight 0 exposes nothing: the 100 after it is the real first exposure.
    spec = make_spec([{"setWeight": 0}, {"pause": {"duration": "1m"}}, {"setWeight": 100}])
    plan = compute_effective_plan(spec, [make_policy("p", {"maxFirstWeight": 10})], ai_assisted=False)
    assert weights(plan) == [0, 10, 100]


# ---------------------------------------------------------------- minSteps


def test_min_steps_splits_largest_gap_including_promotion() -> None:
    spec = make_spec([{"setWeight": 20}, {"setWeight": 100}])
    plan = compute_effective_plan(spec, [make_policy("p", {"minSteps": 4})], ai_assisted=False)
    # 20..100 is split at 60, then the first of the equal gaps (20..60) at 40.
    assert weights(plan) == [20, 40, 60, 100]
    assert [s.added_by for s in plan.steps] == [[], [by("p", "minSteps")], [by("p", "minSteps")], []]


def test_min_steps_gap_to_promotion() -> None:
    spec = make_spec([{"setWeight": 10}, {"pause": {"duration": "1m"}}])
    plan = compute_effective_plan(spec, [make_policy("p", {"minSteps": 3})], ai_assisted=False)
    # 10..100 is split at 55; then 10..55 and 55..100 are equal and the lower one goes first.
    assert weights(plan) == [10, 32, 55]
    assert kinds(plan) == ["setWeight", "pause", "setWeight", "setWeight"]


def test_min_steps_counts_distinct_weights() -> None:
    spec = make_spec([{"setWeight": 20}, {"pause": {"duration": "1m"}}, {"setWeight": 20}])
    plan = compute_effective_plan(spec, [make_policy("p", {"minSteps": 2})], ai_assisted=False)
    assert weights(plan) == [20, 20, 60]


def test_min_steps_falls_back_to_gap_below_first_weight() -> None:
    spec = make_spec([{"setWeight": 99}, {"setWeight": 100}])
    plan = compute_effective_plan(spec, [make_policy("p", {"minSteps": 3})], ai_assisted=False)
    assert weights(plan) == [49, 99, 100]


def test_min_steps_records_only_policies_that_still_needed_the_step() -> None:
    spec = make_spec([{"setWeight": 10}])
    policies = [make_policy("a", {"minSteps": 2}), make_policy("b", {"minSteps": 3})]
    plan = compute_effective_plan(spec, policies, ai_assisted=False)
    assert weights(plan) == [10, 32, 55]
    assert plan.steps[2].added_by == [by("a", "minSteps"), by("b", "minSteps")]  # 55, added first
    assert plan.steps[1].added_by == [by("b", "minSteps")]


def test_min_steps_beyond_available_weights_stops_at_every_integer() -> None:
    # The CRD caps minSteps at 20; a rule that bypassed validation must still terminate, with every
    # integer weight below 100 used (100 itself is promotion).
    rules = FrictionRules.model_construct(min_steps=150)
    huge = NamedPolicy(name="huge", spec=make_policy("huge").spec.model_copy(update={"rules": rules}))
    plan = compute_effective_plan(make_spec([{"setWeight": 10}]), [huge], ai_assisted=False)
    assert weights(plan) == list(range(1, 100))


# ---------------------------------------------------------------- minBake


def test_min_bake_inserts_pause_after_every_weight_and_lengthens_short_ones() -> None:
    spec = make_spec(
        [{"setWeight": 10}, {"pause": {"duration": "1m"}}, {"setWeight": 50}, {"pause": {"duration": "20m"}}]
    )
    plan = compute_effective_plan(spec, [make_policy("p", {"minBake": "10m"})], ai_assisted=False)
    assert [(s.kind, s.set_weight, s.pause_seconds) for s in plan.steps] == [
        ("setWeight", 10, None),
        ("pause", None, 600.0),
        ("setWeight", 50, None),
        ("pause", None, 1200.0),
    ]
    assert plan.steps[1].added_by == [by("p", "minBake")]
    assert plan.steps[3].added_by == []


@pytest.mark.parametrize(("pause", "expected"), [(299, 300.0), (300, 300.0), (301, 301.0)])
def test_min_bake_boundary(pause: int, expected: float) -> None:
    spec = make_spec([{"setWeight": 10}, {"pause": {"duration": pause}}])
    plan = compute_effective_plan(spec, [make_policy("p", {"minBake": "5m"})], ai_assisted=False)
    assert [s.pause_seconds for s in plan.steps] == [None, expected]
    assert (plan.steps[1].added_by == [by("p", "minBake")]) is (pause < 300)


def test_min_bake_untimed_pause_is_kept_but_is_not_bake() -> None:
    spec = make_spec([{"setWeight": 10}, {"pause": {}}])
    plan = compute_effective_plan(spec, [make_policy("p", {"minBake": "5m"})], ai_assisted=False)
    assert [(s.kind, s.pause_seconds) for s in plan.steps] == [("setWeight", None), ("pause", 300.0), ("pause", None)]


def test_min_bake_must_come_before_an_approval_step() -> None:
    spec = make_spec([{"setWeight": 10}, {"approval": {"count": 1}}, {"pause": {"duration": "1h"}}])
    plan = compute_effective_plan(spec, [make_policy("p", {"minBake": "5m"})], ai_assisted=False)
    assert [(s.kind, s.pause_seconds) for s in plan.steps] == [
        ("setWeight", None),
        ("pause", 300.0),
        ("approval", None),
        ("pause", 3600.0),
    ]


def test_min_bake_follows_weights_added_by_other_rules() -> None:
    spec = make_spec([{"setWeight": 50}])
    plan = compute_effective_plan(
        spec, [make_policy("p", {"maxFirstWeight": 10, "minSteps": 3, "minBake": "1m"})], ai_assisted=False
    )
    assert [(s.kind, s.set_weight or s.pause_seconds) for s in plan.steps] == [
        ("setWeight", 10),
        ("pause", 60.0),
        ("setWeight", 50),
        ("pause", 60.0),
        ("setWeight", 75),
        ("pause", 60.0),
    ]


# ---------------------------------------------------------------- approvals


def test_approval_gate_goes_after_first_bake_and_before_second_weight() -> None:
    spec = make_spec([{"setWeight": 10}, {"pause": {"duration": "5m"}}, {"setWeight": 50}])
    rules = {"approvals": {"count": 2, "approverGroups": ["senior-engineers"], "expiry": "1h"}}
    plan = compute_effective_plan(spec, [make_policy("critical", rules)], ai_assisted=False)
    assert kinds(plan) == ["setWeight", "pause", "approval", "setWeight"]
    gate = plan.steps[2]
    assert gate.approvals == [PlannedApproval(count=2, groups=["senior-engineers"], source="critical")]
    assert gate.added_by == [by("critical", "approvals")]
    assert plan.approval_expiry_seconds == 3600.0


def test_approval_gate_before_promotion_with_a_single_weight() -> None:
    spec = make_spec([{"setWeight": 100}, {"pause": {"duration": "5m"}}])
    plan = compute_effective_plan(spec, [make_policy("p", {"approvals": {}})], ai_assisted=False)
    assert kinds(plan) == ["setWeight", "pause", "approval"]


def test_approval_requirement_attaches_to_rollouts_own_gate() -> None:
    spec = make_spec(
        [
            {"setWeight": 10},
            {"approval": {"count": 1, "approverGroups": ["payments"]}},
            {"pause": {"duration": "5m"}},
            {"setWeight": 50},
        ]
    )
    policies = [
        make_policy("a", {"approvals": {"count": 2, "expiry": "2h"}}),
        make_policy("b", {"approvals": {"count": 1, "approverGroups": ["security"], "expiry": "30m"}}),
    ]
    plan = compute_effective_plan(spec, policies, ai_assisted=False)
    assert kinds(plan) == ["setWeight", "approval", "pause", "setWeight"]
    assert plan.steps[1].approvals == [
        PlannedApproval(count=1, groups=["payments"], source="rollout"),
        PlannedApproval(count=2, groups=["senior-engineers"], source="a"),
        PlannedApproval(count=1, groups=["security"], source="b"),
    ]
    assert plan.approval_expiry_seconds == 1800.0


def test_approval_requirement_attaches_to_rollouts_count_zero_gate() -> None:
    spec = make_spec([{"setWeight": 10}, {"pause": {"duration": "5m"}}, {"approval": {}}, {"setWeight": 50}])
    plan = compute_effective_plan(spec, [make_policy("p", {"approvals": {"count": 2}})], ai_assisted=False)
    assert kinds(plan) == ["setWeight", "pause", "approval", "setWeight"]
    assert [a.source for a in plan.steps[2].approvals] == ["p"]


def test_rollout_gate_before_first_weight_does_not_count() -> None:
    spec = make_spec([{"approval": {"count": 1}}, {"setWeight": 10}, {"setWeight": 50}])
    plan = compute_effective_plan(spec, [make_policy("p", {"approvals": {}})], ai_assisted=False)
    assert kinds(plan) == ["approval", "setWeight", "approval", "setWeight"]
    assert [a.source for a in plan.steps[0].approvals] == ["rollout"]
    assert [a.source for a in plan.steps[2].approvals] == ["p"]


# ---------------------------------------------------------------- aiAssisted


def test_ai_rules_apply_only_when_flagged_and_are_prefixed() -> None:
    spec = make_spec([{"setWeight": 10}, {"setWeight": 50}])
    policy = make_policy(
        "critical",
        {"minBake": "5m", "approvals": {"count": 2}},
        ai={"minBake": "30m", "approvals": {"count": 3, "expiry": "1h"}},
    )
    plain = compute_effective_plan(spec, [policy], ai_assisted=False)
    ai = compute_effective_plan(spec, [policy], ai_assisted=True)
    assert [s.pause_seconds for s in plain.steps if s.kind == "pause"] == [300.0, 300.0]
    assert [s.pause_seconds for s in ai.steps if s.kind == "pause"] == [1800.0, 1800.0]
    assert ai.steps[1].added_by == [by("critical", "minBake"), by("critical", "aiAssisted.minBake")]
    gate = next(s for s in ai.steps if s.kind == "approval")
    # Same policy, same groups: the higher count covers both rules.
    assert gate.approvals == [PlannedApproval(count=3, groups=["senior-engineers"], source="critical")]
    assert gate.added_by == [by("critical", "approvals"), by("critical", "aiAssisted.approvals")]
    assert plain.approval_expiry_seconds == 86400.0
    assert ai.approval_expiry_seconds == 3600.0
    assert ai.ai_assisted is True


def test_ai_rules_never_loosen_the_plain_rules() -> None:
    spec = make_spec([{"setWeight": 50}])
    policy = make_policy("p", {"maxFirstWeight": 5}, ai={"maxFirstWeight": 20})
    assert weights(compute_effective_plan(spec, [policy], ai_assisted=True))[0] == 5


# ---------------------------------------------------------------- requiredMetrics and interval


def test_required_metrics_added_merged_or_kept_apart() -> None:
    spec = make_spec(
        [{"setWeight": 10}, {"analysis": {"metrics": ["latency"]}}, {"analysis": {}}],
        metrics=[
            {"name": "errors", "kind": "errorRatio", "maxRatio": 0.05},
            {"name": "latency", "kind": "query", "query": "q", "max": 0.5},
            {"name": "orders", "kind": "query", "query": "sum(rate(orders_total[1m]))", "min": 1},
        ],
    )
    required = [
        {"name": "errors", "kind": "errorRatio", "maxRatio": 0.1, "maxIncreaseOverStable": 0.02},
        {"name": "orders", "kind": "orderRateDrop", "maxDrop": 0.2},
        {"name": "saturation", "kind": "query", "query": "s", "min": 0.1, "max": 0.9},
    ]
    plan = compute_effective_plan(spec, [make_policy("critical", {"requiredMetrics": required})], False)
    got = {m.name: m for m in plan.metrics}
    assert list(got) == ["errors", "latency", "orders", "critical-orders", "saturation"]
    assert (got["errors"].max_ratio, got["errors"].max_increase_over_stable) == (0.05, 0.02)
    assert got["orders"].kind == "query"  # the Rollout's own check stays
    assert got["critical-orders"].kind == "orderRateDrop"
    assert plan.metric_sources == {
        "errors": ["rollout", "critical"],
        "latency": ["rollout"],
        "orders": ["rollout"],
        "critical-orders": ["critical"],
        "saturation": ["critical"],
    }
    explicit, everything = (s for s in plan.steps if s.kind == "analysis")
    assert explicit.metrics == ["latency", "errors", "critical-orders", "saturation"]
    assert explicit.added_by == [by("critical", "requiredMetrics")]
    assert everything.metrics == []


def test_required_query_metric_keeps_stricter_bounds() -> None:
    spec = make_spec([{"setWeight": 10}], metrics=[{"name": "q", "kind": "query", "query": "x", "min": 1, "max": 9}])
    policies = [
        make_policy("a", {"requiredMetrics": [{"name": "q", "kind": "query", "query": " x ", "min": 3}]}),
        make_policy("b", {"requiredMetrics": [{"name": "q", "kind": "query", "query": "x", "min": 2, "max": 5}]}),
    ]
    plan = compute_effective_plan(spec, policies, ai_assisted=False)
    assert [(m.name, m.min, m.max) for m in plan.metrics] == [("q", 3, 5)]
    assert plan.metric_sources == {"q": ["rollout", "a", "b"]}


def test_analysis_interval_is_the_smallest() -> None:
    spec = make_spec([{"setWeight": 10}], interval="30s")
    policies = [make_policy("a", {"maxAnalysisInterval": "20s"}), make_policy("b", {"maxAnalysisInterval": "1m"})]
    assert compute_effective_plan(spec, policies, False).analysis_interval_seconds == 20.0
    assert compute_effective_plan(spec, policies[1:], False).analysis_interval_seconds == 30.0


# ---------------------------------------------------------------- freeze windows


def test_active_freeze_absolute_and_weekly_windows() -> None:
    policies = [
        make_policy(
            "critical",
            freeze=[{"name": "black-friday", "start": "2024-11-29T00:00:00Z", "end": "2024-12-02T00:00:00Z"}],
        ),
        make_policy(
            "weekend", freeze=[{"name": "friday-evening", "days": ["Fri"], "startTime": "16:00", "endTime": "24:00"}]
        ),
    ]
    at = datetime.fromisoformat
    assert (
        active_freeze(policies, at("2024-11-30T12:00:00+00:00")) == "freeze window 'black-friday' of policy 'critical'"
    )
    assert active_freeze(policies, at("2024-12-02T00:00:00+00:00")) is None  # end is exclusive
    assert active_freeze(policies, at("2024-12-06T16:00:00+00:00")) == (
        "freeze window 'friday-evening' of policy 'weekend'"
    )
    assert active_freeze(policies, at("2024-12-06T15:59:59+00:00")) is None
    assert active_freeze(policies, at("2024-12-07T10:00:00+00:00")) is None  # Saturday
    # 17:30 in UTC+2 is 15:30 UTC: outside the window.
    assert active_freeze(policies, at("2024-12-06T17:30:00+02:00")) is None
    # Naive times are taken as UTC.
    assert active_freeze(policies, datetime(2024, 12, 6, 23, 59)) is not None
    assert active_freeze([], datetime(2024, 11, 30, tzinfo=UTC)) is None


# ---------------------------------------------------------------- properties

GROUPS = ["senior-engineers", "sre", "security"]
METRIC_POOL = [
    {"name": "errors", "kind": "errorRatio", "maxRatio": 0.05},
    {"name": "errors", "kind": "errorRatio", "maxRatio": 0.01, "maxIncreaseOverStable": 0.02},
    {"name": "errors", "kind": "query", "query": "e", "max": 3},
    {"name": "orders", "kind": "orderRateDrop", "maxDrop": 0.3},
    {"name": "orders", "kind": "orderRateDrop", "maxDrop": 0.1, "maxBaselineDrop": 0.5},
    {"name": "apdex", "kind": "query", "query": "a", "min": 0.9},
    {"name": "apdex", "kind": "query", "query": "a", "min": 0.8, "max": 1},
]

# Values cluster around each other so boundaries (equal, one below, one above) are hit often.
durations = st.one_of(
    st.none(),
    st.sampled_from([0, 1, 59, 60, 61, 299, 300, 301, 600, 3600]).map(float),
    st.integers(min_value=0, max_value=7200).map(float),
)
weight_values = st.one_of(st.sampled_from([0, 1, 9, 10, 11, 49, 50, 51, 99, 100]), st.integers(0, 100))


@st.composite
def rollout_steps(draw: st.DrawFn) -> list[dict[str, Any]]:
    shapes = draw(st.lists(st.sampled_from(["setWeight", "pause", "approval", "analysis"]), min_size=1, max_size=10))
    ws = sorted(draw(st.lists(weight_values, min_size=len(shapes), max_size=len(shapes))))
    steps: list[dict[str, Any]] = []
    for i, shape in enumerate(shapes):
        if shape == "setWeight":
            steps.append({"setWeight": ws[i]})
        elif shape == "pause":
            steps.append({"pause": {"duration": draw(durations)} if draw(st.booleans()) else {}})
        elif shape == "approval":
            steps.append(
                {
                    "approval": {
                        "count": draw(st.integers(0, 3)),
                        "approverGroups": draw(st.lists(st.sampled_from(GROUPS), unique=True)),
                    }
                }
            )
        else:
            steps.append(
                {
                    "analysis": {
                        "metrics": draw(st.lists(st.sampled_from(["errors", "apdex"]), unique=True)),
                        "duration": draw(st.integers(1, 600)),
                    }
                }
            )
    return steps


@st.composite
def friction_rules(draw: st.DrawFn) -> dict[str, Any]:
    rules: dict[str, Any] = {}
    if draw(st.booleans()):
        rules["maxFirstWeight"] = draw(st.one_of(st.sampled_from([1, 10, 50, 99, 100]), st.integers(1, 100)))
    if draw(st.booleans()):
        rules["minSteps"] = draw(st.integers(1, 20))
    if draw(st.booleans()):
        rules["minBake"] = draw(st.one_of(st.sampled_from([0, 1, 60, 300, 600]), st.integers(0, 3600)))
    if draw(st.booleans()):
        rules["approvals"] = {
            "count": draw(st.integers(1, 4)),
            "approverGroups": draw(st.lists(st.sampled_from(GROUPS), min_size=1, unique=True)),
            "expiry": draw(st.integers(60, 86400)),
        }
    metrics = draw(st.lists(st.sampled_from(METRIC_POOL), max_size=3))
    rules["requiredMetrics"] = list({m["name"]: m for m in metrics}.values())  # unique names per rule set
    if draw(st.booleans()):
        rules["maxAnalysisInterval"] = draw(st.integers(1, 120))
    return rules


@st.composite
def policy_sets(draw: st.DrawFn) -> list[NamedPolicy]:
    names = draw(st.lists(st.sampled_from(["critical", "payments", "ai-guard", "x.y"]), unique=True, max_size=3))
    return [
        make_policy(name, draw(friction_rules()), ai=draw(st.one_of(st.none(), friction_rules()))) for name in names
    ]


own_metrics = st.lists(st.sampled_from(METRIC_POOL), max_size=3).map(
    lambda ms: list({m["name"]: m for m in ms}.values())
)
PROPS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def own_plan(spec: RolloutSpec, unnamed: list[str] | None = None) -> list[PlannedStep]:
    """The Rollout's own plan, written out independently of the module under test; an approval step
    naming no groups requires `unnamed` (left empty when None)."""
    out = []
    for s in spec.strategy.canary.steps:
        if s.set_weight is not None:
            out.append(PlannedStep(kind="setWeight", set_weight=s.set_weight))
        elif s.pause is not None:
            out.append(PlannedStep(kind="pause", pause_seconds=s.pause.duration))
        elif s.approval is not None and s.approval.count > 0:
            groups = s.approval.approver_groups or (unnamed or [])
            req = PlannedApproval(count=s.approval.count, groups=groups, source="rollout")
            out.append(PlannedStep(kind="approval", approvals=[req]))
        elif s.analysis is not None:
            out.append(PlannedStep(kind="analysis", metrics=s.analysis.metrics, analysis_seconds=s.analysis.duration))
    return out


def rule_sets(policies: list[NamedPolicy], ai: bool) -> list[tuple[str, FrictionRules]]:
    out = [(p.name, p.spec.rules) for p in policies]
    out += [(p.name, p.spec.ai_assisted) for p in policies if ai and p.spec.ai_assisted is not None]
    return out


def exposures(steps: list[PlannedStep]) -> list[int]:
    return [i for i, s in enumerate(steps) if s.kind == "setWeight" and (s.set_weight or 0) > 0]


def at_least_as_strict(eff: PlannedStep, own: PlannedStep) -> bool:
    if eff.kind != own.kind:
        return False
    if own.kind == "setWeight":
        return eff.set_weight == own.set_weight
    if own.kind == "pause":
        if own.pause_seconds is None:
            return eff.pause_seconds is None
        return eff.pause_seconds is not None and eff.pause_seconds >= own.pause_seconds
    if own.kind == "approval":
        # Kept as its own requirement; naming no groups it gets some (never "anyone"), see test_approvers.
        return all(
            any(e.count == r.count and e.source == r.source and (set(e.groups) == set(r.groups) or not r.groups)
                and e.groups for e in eff.approvals)
            for r in own.approvals
        )
    return (
        eff.analysis_seconds == own.analysis_seconds
        and set(own.metrics) <= set(eff.metrics)
        and bool(own.metrics) == bool(eff.metrics)
    )


def metric_covers(plan_metric: MetricSpec, wanted: MetricSpec) -> bool:
    if plan_metric.kind != wanted.kind or (plan_metric.query or "").strip() != (wanted.query or "").strip():
        return False
    for field in ("max_ratio", "max_increase_over_stable", "max_drop", "max_baseline_drop", "max"):
        w, p = getattr(wanted, field), getattr(plan_metric, field)
        if w is not None and (p is None or p > w):
            return False
    return wanted.min is None or (plan_metric.min is not None and plan_metric.min >= wanted.min)


@PROPS
@given(steps=rollout_steps(), metrics=own_metrics, policies=policy_sets(), ai=st.booleans())
def test_never_looser_than_any_matching_policy(steps, metrics, policies, ai) -> None:
    spec = make_spec(steps, metrics)
    assert_never_looser_than_policies(compute_effective_plan(spec, policies, ai), policies, ai)


@PROPS
@given(steps=rollout_steps(), data=st.data())
def test_never_looser_than_a_policy_at_the_rollouts_own_boundaries(steps, data) -> None:
    """Rules drawn right at (and one off) the Rollout's own first weight, pauses and step count."""
    spec = make_spec(steps)
    own = own_plan(spec)
    first = next((x.set_weight for x in own if x.kind == "setWeight" and (x.set_weight or 0) > 0), 50)
    pauses = [x.pause_seconds for x in own if x.kind == "pause" and x.pause_seconds is not None] or [60.0]
    count = len({x.set_weight for x in own if x.kind == "setWeight" and (x.set_weight or 0) > 0})
    off = st.sampled_from([-1, 0, 1])
    rules = {
        "maxFirstWeight": min(100, max(1, (first or 50) + data.draw(off))),
        "minBake": max(0.0, data.draw(st.sampled_from(pauses)) + data.draw(off)),
        "minSteps": min(20, max(1, count + data.draw(off))),
    }
    policies = [make_policy("edge", rules)]
    assert_never_looser_than_policies(compute_effective_plan(spec, policies, False), policies, False)


def assert_never_looser_than_policies(plan: EffectivePlan, policies: list[NamedPolicy], ai: bool) -> None:
    s = plan.steps
    exp = exposures(s)
    distinct = {s[i].set_weight for i in exp}
    for name, rules in rule_sets(policies, ai):
        if rules.max_first_weight is not None:
            assert exp and (s[exp[0]].set_weight or 0) <= rules.max_first_weight
        if rules.min_steps is not None:
            # Always achievable: 100 integer weights exist and minSteps is at most 20.
            assert len(distinct) >= rules.min_steps
            assert len(weights(plan)) >= rules.min_steps
        if rules.min_bake:
            bake = rules.min_bake
            for i in exp:
                end = next((j for j in range(i + 1, len(s)) if s[j].kind in ("setWeight", "approval")), len(s))
                assert any(s[j].kind == "pause" and (s[j].pause_seconds or 0.0) >= bake for j in range(i + 1, end)), (
                    f"weight {s[i].set_weight} lacks a {rules.min_bake}s bake"
                )
        if rules.approvals is not None:
            start = exp[0] + 1 if exp else 0
            end = next((j for j in range(start, len(s)) if s[j].kind == "setWeight"), len(s)) if exp else len(s)
            assert any(
                r.source == name
                and set(r.groups) == set(rules.approvals.approver_groups)
                and r.count >= rules.approvals.count
                for j in range(start, end)
                if s[j].kind == "approval"
                for r in s[j].approvals
            )
            assert plan.approval_expiry_seconds is not None
            assert plan.approval_expiry_seconds <= rules.approvals.expiry
        for wanted in rules.required_metrics:
            assert any(metric_covers(m, wanted) for m in plan.metrics)
        if rules.max_analysis_interval is not None:
            assert plan.analysis_interval_seconds is not None
            assert plan.analysis_interval_seconds <= rules.max_analysis_interval
    assert plan.policies == sorted(p.name for p in policies)
    assert len({m.name for m in plan.metrics}) == len(plan.metrics)
    assert set(plan.metric_sources) == {m.name for m in plan.metrics}
    # Every gate in the plan asks for something.
    assert all(step.approvals for step in s if step.kind == "approval")


@PROPS
@given(steps=rollout_steps(), metrics=own_metrics, policies=policy_sets(), ai=st.booleans())
def test_never_looser_than_the_rollout_itself(steps, metrics, policies, ai) -> None:
    spec = make_spec(steps, metrics)
    plan = compute_effective_plan(spec, policies, ai)
    ws = weights(plan)
    assert ws == sorted(ws), "weights must never decrease"
    # Every own step is still there, in order, and at least as strict (greedy subsequence embedding).
    j = 0
    for own in own_plan(spec):
        while j < len(plan.steps) and not at_least_as_strict(plan.steps[j], own):
            j += 1
        assert j < len(plan.steps), f"own step {own} lost or loosened"
        j += 1
    for own_metric in spec.analysis.metrics:
        same_name = next(m for m in plan.metrics if m.name == own_metric.name)
        assert metric_covers(same_name, own_metric)
        assert plan.metric_sources[own_metric.name][0] == "rollout"
    assert plan.analysis_interval_seconds is not None
    assert plan.analysis_interval_seconds <= spec.analysis.interval


@PROPS
@given(steps=rollout_steps(), metrics=own_metrics, policies=policy_sets(), ai=st.booleans())
def test_unmatched_plan_equals_rollouts_own_plan(steps, metrics, policies, ai) -> None:
    spec = make_spec(steps, metrics)
    labels = {"app": "shop", LABEL_TIER: "standard"}
    assert matching_policies(policies, labels, {"kubernetes.io/metadata.name": "shop"}) == []
    plan = compute_effective_plan(spec, matching_policies(policies, labels, {}), ai)
    # With no policy, an approval step naming no groups takes the other steps' groups, or the default.
    named = sorted({g for s in spec.strategy.canary.steps if s.approval and s.approval.count
                    for g in s.approval.approver_groups})
    assert plan.steps == own_plan(spec, named or [SENIOR_GROUP])
    assert plan.metrics == spec.analysis.metrics
    assert plan.analysis_interval_seconds == spec.analysis.interval
    assert plan.approval_expiry_seconds is None
    assert plan.policies == []


@PROPS
@given(steps=rollout_steps(), metrics=own_metrics, policies=policy_sets(), ai=st.booleans(), seed=st.integers())
def test_deterministic_whatever_the_policy_order(steps, metrics, policies, ai, seed) -> None:
    spec = make_spec(steps, metrics)
    shuffled = list(policies)
    random.Random(seed).shuffle(shuffled)
    first = compute_effective_plan(spec, policies, ai)
    assert compute_effective_plan(spec, shuffled, ai) == first
    assert compute_effective_plan(spec, policies, ai).wire() == first.wire()
    # The plan survives a round trip through the status (wire form, re-read).
    assert EffectivePlan.model_validate(first.wire()) == first


@PROPS
@given(steps=rollout_steps(), metrics=own_metrics, policies=policy_sets())
def test_ai_rules_ignored_unless_flagged(steps, metrics, policies) -> None:
    spec = make_spec(steps, metrics)
    without_ai = [NamedPolicy(name=p.name, spec=p.spec.model_copy(update={"ai_assisted": None})) for p in policies]
    assert compute_effective_plan(spec, policies, False).steps == compute_effective_plan(spec, without_ai, True).steps
