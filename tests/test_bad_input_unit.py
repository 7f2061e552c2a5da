"""Malformed Rollouts and FrictionPolicies, pure part: what admission says and what the operator does.

The corpus below is shared with `tests/e2e/test_bad_input.py`, which sends the same objects to the
real API server. Here each case goes through the two pure decision paths the shell uses:

* admission (`admission.rollout_spec_problems` / `policy_spec_problems`, what the validating webhook
  answers): the object is refused and the message names the field;
* the operator's own path for an object that got in anyway (webhook bypassed): the spec is parsed
  as `reconcile` does and, failing that or the planner's checks, the Rollout becomes `Invalid` with a
  message naming the field and no workload is touched; an invalid policy is set aside with its
  reason (and, if its selector cannot be read, holds every rollout: fail closed).

A property test then throws random junk at random places of a valid spec: neither path may raise,
and the two must agree (admission refuses exactly what the operator would mark Invalid).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from controlled_friction import admission, errors, names
from controlled_friction.models.approval import sign_author
from controlled_friction.models.policy import FrictionPolicySpec, NamedPolicy
from controlled_friction.models.rollout import RolloutSpec, RolloutStatus
from controlled_friction.operator.world import parse_policies
from controlled_friction.planner import (
    Decision,
    Observations,
    RecordEvent,
    RolloutInput,
    invalid,
    plan,
)
from controlled_friction.revision import revision_of

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
KEY = b"bad-input-test-key-0123456789abcdef"
Kind = Literal["Rollout", "FrictionPolicy"]
Path = tuple[str | int, ...]

# ---------------------------------------------------------------- valid objects the cases break


def valid_rollout(name: str = "bad", namespace: str = "default") -> dict[str, Any]:
    return {
        "apiVersion": names.API_VERSION,
        "kind": "Rollout",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": "shop/app:1"}]},
            },
            "strategy": {
                "canary": {
                    "steps": [
                        {"setWeight": 20},
                        {"pause": {"duration": "30s"}},
                        {"setWeight": 50},
                        {"analysis": {"metrics": ["errors"], "duration": "1m"}},
                    ]
                }
            },
            "analysis": {
                "interval": "10s",
                "metrics": [{"name": "errors", "kind": "errorRatio", "maxRatio": 0.05}],
            },
        },
    }


def valid_policy(name: str = "bad-policy", ns_label: str = "never-matches") -> dict[str, Any]:
    # Matches only Namespaces carrying a label no real namespace has, so an invalid policy that got
    # in (webhook bypassed) holds nobody else's rollouts.
    return {
        "apiVersion": names.API_VERSION,
        "kind": "FrictionPolicy",
        "metadata": {"name": name},
        "spec": {
            "selector": {"namespaceSelector": {"matchLabels": {"cf-e2e-bad-input": ns_label}}},
            "rules": {
                "maxFirstWeight": 25,
                "minBake": "1m",
                "approvals": {"count": 2, "approverGroups": [names.SENIOR_GROUP], "expiry": "1h"},
            },
        },
    }


# ---------------------------------------------------------------- edits


Edit = Callable[[dict[str, Any]], None]


def _parent(obj: Any, path: Path) -> Any:
    node = obj
    for part in path[:-1]:
        node = node[part]
    return node


def put(*path: str | int, value: Any) -> Edit:
    def edit(obj: dict[str, Any]) -> None:
        _parent(obj, path)[path[-1]] = value

    return edit


def drop(*path: str | int) -> Edit:
    def edit(obj: dict[str, Any]) -> None:
        del _parent(obj, path)[path[-1]]

    return edit


def both(*edits: Edit) -> Edit:
    def edit(obj: dict[str, Any]) -> None:
        for e in edits:
            e(obj)

    return edit


STEPS: Path = ("spec", "strategy", "canary", "steps")
METRICS: Path = ("spec", "analysis", "metrics")
RULES: Path = ("spec", "rules")


def steps(*items: dict[str, Any]) -> Edit:
    return put(*STEPS, value=list(items))


def metric(**fields: Any) -> Edit:
    return put(*METRICS, value=[fields])


def rename(new: str) -> Edit:
    return put("metadata", "name", value=new)


def change_record(value: str) -> Edit:
    return put("metadata", "annotations", value={names.ANN_CHANGE_RECORD: value})


@dataclass(frozen=True)
class BadInput:
    id: str
    kind: Kind
    edit: Edit
    # What the message must mention so a person knows where to look (a field path, or the rule).
    names_: tuple[str, ...]
    # "spec": the pure checks see it; "meta": only the API server checks it (names, annotation size);
    # "workload": only the API server's checks of the Deployment the operator would create see it;
    # "record": only admission checks it (a change record is the people's part: a malformed one that got
    # in with the webhook bypassed is shown as it is, and the operator does not hold the rollout for it).
    layer: Literal["spec", "meta", "workload", "record"] = "spec"
    rejected_by_schema: bool = field(default=False)  # informational; the e2e test finds out for real

    def build(self, name: str, namespace: str = "default", ns_label: str = "never-matches") -> dict[str, Any]:
        obj = valid_rollout(name, namespace) if self.kind == "Rollout" else valid_policy(name, ns_label)
        obj = copy.deepcopy(obj)
        self.edit(obj)
        return obj


R: Kind = "Rollout"
P: Kind = "FrictionPolicy"
HUGE_QUERY = "sum(rate(http_requests_total{service=\"{{service}}\"}[1m]))" + " + 0" * 1500
ROLLOUT_CASES: list[BadInput] = [
    BadInput("replicas-string", R, put("spec", "replicas", value="three"), ("spec.replicas",)),
    BadInput("replicas-negative", R, put("spec", "replicas", value=-1), ("spec.replicas",)),
    BadInput("replicas-absurd", R, put("spec", "replicas", value=1_000_000), ("spec.replicas",)),
    BadInput("replicas-float", R, put("spec", "replicas", value=1.5), ("spec.replicas",)),
    BadInput("selector-missing", R, drop("spec", "selector"), ("spec.selector",)),
    BadInput("selector-empty", R, put("spec", "selector", value={}), ("selector",)),
    BadInput("selector-mismatch", R, put("spec", "selector", value={"matchLabels": {"app": "other"}}),
             ("selector", "template.metadata.labels")),
    BadInput("selector-bad-operator", R,
             put("spec", "selector", value={"matchExpressions": [{"key": "app", "operator": "Equals"}]}),
             ("spec.selector.matchExpressions[0].operator",)),
    BadInput("template-empty", R, put("spec", "template", value={}), ("template.spec.containers",)),
    BadInput("template-no-containers", R, put("spec", "template", "spec", "containers", value=[]),
             ("template.spec.containers",)),
    BadInput("template-not-object", R, put("spec", "template", value="nginx:latest"), ("spec.template",)),
    BadInput("strategy-missing", R, drop("spec", "strategy"), ("spec.strategy",)),
    BadInput("steps-empty", R, steps(), ("spec.strategy.canary.steps",)),
    BadInput("steps-huge", R, steps(*([{"setWeight": 10}] * 101)), ("spec.strategy.canary.steps",)),
    BadInput("weight-over-100", R, put(*STEPS, 0, value={"setWeight": 150}), ("steps[0].setWeight",)),
    BadInput("weight-negative", R, put(*STEPS, 0, value={"setWeight": -10}), ("steps[0].setWeight",)),
    BadInput("weight-percent-string", R, put(*STEPS, 0, value={"setWeight": "20%"}), ("steps[0].setWeight",)),
    BadInput("weights-decreasing", R, steps({"setWeight": 50}, {"pause": {"duration": "10s"}}, {"setWeight": 20}),
             ("steps[2].setWeight",)),
    BadInput("step-two-kinds", R, put(*STEPS, 0, value={"setWeight": 10, "pause": {"duration": "5s"}}),
             ("steps[0]",)),
    BadInput("step-empty", R, put(*STEPS, 1, value={}), ("steps[1]",)),
    BadInput("step-unknown-kind", R, put(*STEPS, 1, value={"bake": {"duration": "5s"}}), ("steps[1]",)),
    BadInput("pause-negative", R, put(*STEPS, 1, value={"pause": {"duration": -30}}), ("steps[1].pause.duration",)),
    BadInput("pause-absurd", R, put(*STEPS, 1, value={"pause": {"duration": "9999h"}}),
             ("steps[1].pause.duration",)),
    BadInput("pause-garbage", R, put(*STEPS, 1, value={"pause": {"duration": "a while"}}),
             ("steps[1].pause.duration",)),
    BadInput("approval-count-absurd", R, put(*STEPS, 1, value={"approval": {"count": 11}}),
             ("steps[1].approval.count",)),
    BadInput("analysis-step-unknown-metric", R, put(*STEPS, 3, value={"analysis": {"metrics": ["latency"]}}),
             ("steps[3].analysis.metrics",)),
    BadInput("window-negative", R, put("spec", "analysis", "window", value="-1m"), ("spec.analysis.window",)),
    BadInput("interval-absurd", R, put("spec", "analysis", "interval", value="400h"), ("spec.analysis.interval",)),
    BadInput("failure-limit-zero", R, put("spec", "analysis", "failureLimit", value=0),
             ("spec.analysis.failureLimit",)),
    BadInput("min-requests-negative", R, put("spec", "analysis", "minRequests", value=-5),
             ("spec.analysis.minRequests",)),
    BadInput("prometheus-address-no-scheme", R, put("spec", "analysis", "prometheus", value={"address": "prom:9090"}),
             ("spec.analysis.prometheus.address",)),
    BadInput("metric-kind-unknown", R, metric(name="latency", kind="latencyP99", max=0.5),
             ("spec.analysis.metrics[0].kind",)),
    BadInput("metric-name-odd", R, metric(name="Error_Rate", kind="errorRatio", maxRatio=0.05),
             ("spec.analysis.metrics[0].name",)),
    BadInput("metric-errorratio-no-bound", R, metric(name="errors", kind="errorRatio"), ("errorRatio needs maxRatio",)),
    BadInput("metric-ratio-out-of-range", R, metric(name="errors", kind="errorRatio", maxRatio=1.5),
             ("spec.analysis.metrics[0].maxRatio",)),
    BadInput("metric-duplicate-names", R,
             put(*METRICS, value=[{"name": "errors", "kind": "errorRatio", "maxRatio": 0.05},
                                  {"name": "errors", "kind": "orderRateDrop", "maxDrop": 0.2}]),
             ("spec.analysis.metrics", "errors")),
    BadInput("query-missing", R, metric(name="errors", kind="query", max=1), ("kind query needs a `query`",)),
    BadInput("query-not-promql", R, metric(name="errors", kind="query", query="sum(rate(http_requests_total[1m]",
                                           max=1), ("metrics", "query", "not valid PromQL")),
    BadInput("query-range-vector", R, metric(name="errors", kind="query", query="http_requests_total[5m]", max=1),
             ("metrics", "query", "range vector")),
    BadInput("query-unknown-variable", R, metric(name="errors", kind="query", query="up{cluster=\"{{cluster}}\"}",
                                                 max=1), ("cluster",)),
    BadInput("query-huge", R, metric(name="errors", kind="query", query=HUGE_QUERY, max=1),
             ("spec.analysis.metrics[0].query",)),
    BadInput("service-port-out-of-range", R, put("spec", "service", value={"name": "shop", "port": 70000}),
             ("spec.service.port",)),
    BadInput("unknown-spec-field", R, put("spec", "replica", value=3), ("replica",)),
    BadInput("template-container-without-image", R,
             put("spec", "template", "spec", "containers", value=[{"name": "app"}]),
             ("spec.template", "containers[0].image"), layer="workload"),
    BadInput("name-longer-than-a-label", R, rename("checkout-" + "x" * 60), ("metadata.name", "63")),
    BadInput("name-odd", R, rename("Checkout_V2"), ("metadata.name",), layer="meta"),
    BadInput("name-too-long", R, rename("x" * 300), ("metadata.name",), layer="meta"),
    BadInput("annotation-huge", R, put("metadata", "annotations", value={"note": "x" * 300_000}),
             ("metadata.annotations",), layer="meta"),
]
CHG = names.ANN_CHANGE_RECORD
RECORD_CASES: list[BadInput] = [
    BadInput("change-record-empty", R, change_record(""), (CHG, "empty"), layer="record"),
    BadInput("change-record-blank", R, change_record("   "), (CHG, "empty"), layer="record"),
    BadInput("change-record-ticket-only", R, change_record("CHG-1234"), (CHG, "summary"), layer="record"),
    BadInput("change-record-summary-only", R, change_record("fixed the checkout bug"), (CHG, "ticket id"),
             layer="record"),
    BadInput("change-record-summary-too-short", R, change_record("CHG-1 fix"), (CHG, "summary"), layer="record"),
    BadInput("change-record-two-lines", R, change_record("CHG-1 fix the order drop\nand the latency"),
             (CHG, "one line"), layer="record"),
    BadInput("change-record-too-long", R, change_record("CHG-1 " + "x" * 400), (CHG, "300"), layer="record"),
    BadInput("change-record-not-http", R, change_record("ftp://tickets/1 rotate the TLS keys"), (CHG, "ticket id"),
             layer="record"),
    BadInput("change-record-placeholder", R, change_record("<TICKET-ID> <one-line summary>"), (CHG, "ticket id"),
             layer="record"),
    BadInput("change-record-ticket-without-number", R, change_record("CHG-next rotate the TLS keys"),
             (CHG, "ticket id"), layer="record"),
    BadInput("change-record-summary-no-words", R, change_record("CHG-12 1234567890"), (CHG, "summary"),
             layer="record"),
]
ROLLOUT_CASES += RECORD_CASES

POLICY_CASES: list[BadInput] = [
    BadInput("policy-selector-missing", P, drop("spec", "selector"), ("spec.selector",)),
    BadInput("policy-selector-empty", P, put("spec", "selector", value={}), ("spec.selector",)),
    BadInput("policy-approvals-zero", P, put(*RULES, "approvals", "count", value=0), ("spec.rules.approvals.count",)),
    BadInput("policy-approvals-string", P, put(*RULES, "approvals", "count", value="two"),
             ("spec.rules.approvals.count",)),
    BadInput("policy-approver-groups-empty", P, put(*RULES, "approvals", "approverGroups", value=[]),
             ("spec.rules.approvals.approverGroups",)),
    BadInput("policy-min-bake-negative", P, put(*RULES, "minBake", value=-30), ("spec.rules.minBake",)),
    BadInput("policy-min-bake-garbage", P, put(*RULES, "minBake", value="forever"), ("spec.rules.minBake",)),
    BadInput("policy-first-weight-out-of-range", P, put(*RULES, "maxFirstWeight", value=150),
             ("spec.rules.maxFirstWeight",)),
    BadInput("policy-expiry-absurd", P, put(*RULES, "approvals", "expiry", value="5000h"),
             ("spec.rules.approvals.expiry",)),
    BadInput("policy-freeze-backwards", P,
             put("spec", "freezeWindows", value=[{"name": "xmas", "start": "2026-12-27T00:00:00Z",
                                                  "end": "2026-12-20T00:00:00Z"}]),
             ("spec.freezeWindows[0]", "xmas")),
    BadInput("policy-freeze-bad-time", P,
             put("spec", "freezeWindows", value=[{"days": ["Fri"], "startTime": "25:00", "endTime": "23:00"}]),
             ("spec.freezeWindows[0].startTime",)),
    BadInput("policy-required-metric-not-promql", P,
             put(*RULES, "requiredMetrics", value=[{"name": "q", "kind": "query", "query": "rate(x)", "max": 1}]),
             ("spec.rules.requiredMetrics[0].query", "not valid PromQL")),
    BadInput("policy-unknown-rule", P, put(*RULES, "maxCanaries", value=3), ("maxCanaries",)),
    BadInput("policy-name-odd", P, rename("Critical Services!"), ("metadata.name",), layer="meta"),
]

ALL_CASES = ROLLOUT_CASES + POLICY_CASES
SPEC_CASES = [c for c in ALL_CASES if c.layer == "spec"]


def mentions(message: str, case: BadInput) -> bool:
    return all(part in message for part in case.names_)


# ---------------------------------------------------------------- the two pure paths


def admission_message(obj: dict[str, Any], user: str = "dave") -> str:
    """What the webhooks answer to `user` creating this object ('' = allowed): for a Rollout the
    mutating webhook runs first (it records the author), then the validating one decides."""
    obj = copy.deepcopy(obj)
    groups = ("engineers", "system:authenticated")
    if obj["kind"] == "FrictionPolicy":
        problems = admission.validate_policy(admission.AdmissionInput("CREATE", user, groups, None, obj))
    else:
        mutation = admission.mutate_rollout(admission.AdmissionInput("CREATE", user, groups, None, obj), KEY, NOW)
        annotations = obj["metadata"].setdefault("annotations", {})
        for name, value in mutation.annotations.items():
            if value is None:
                annotations.pop(name, None)
            else:
                annotations[name] = value
        req = admission.AdmissionInput("CREATE", user, groups, None, obj)
        problems = admission.validate_rollout(req, KEY, [], {}, NOW)
    return "\n".join(p.message for p in problems)


def operator_decision(obj: dict[str, Any], status: RolloutStatus | None = None) -> Decision:
    """What the operator decides for a Rollout it finds in the cluster (reconcile's pure steps)."""
    status = status or RolloutStatus()
    meta = obj["metadata"]
    try:
        spec = RolloutSpec.model_validate(obj.get("spec") or {})
    except ValidationError as exc:
        return invalid(status, "; ".join(errors.describe(exc)), 1, NOW)
    return plan(
        RolloutInput(
            namespace=meta.get("namespace", "default"),
            name=meta["name"],
            generation=1,
            labels={},
            annotations={},
            spec=spec,
            status=status,
            obs=Observations(),
            now=NOW,
        )
    )


def _no_workload_actions(decision: Decision) -> bool:
    return all(isinstance(a, RecordEvent) for a in decision.actions)


# ---------------------------------------------------------------- tests


def test_corpus_is_big_enough_and_the_base_objects_are_valid():
    print(f"\nbad inputs in the corpus: {len(ROLLOUT_CASES)} Rollouts, {len(POLICY_CASES)} FrictionPolicies")
    assert len(ALL_CASES) >= 30
    assert len({c.id for c in ALL_CASES}) == len(ALL_CASES)
    assert admission_message(valid_rollout()) == ""
    assert admission_message(valid_policy()) == ""
    ok = operator_decision(valid_rollout())
    assert ok.status.phase != "Invalid", ok.status.message
    assert parse_policies({"p": valid_policy()["spec"]}).invalid == ()


@pytest.mark.parametrize("case", SPEC_CASES, ids=lambda c: c.id)
def test_admission_refuses_and_names_the_field(case: BadInput):
    message = admission_message(case.build("bad"))
    assert message, f"{case.id}: admission let it through"
    assert mentions(message, case), f"{case.id}: message does not name {case.names_}: {message}"
    assert "pydantic" not in message and "Value error" not in message, message


@pytest.mark.parametrize("case", [c for c in SPEC_CASES if c.kind == "Rollout"], ids=lambda c: c.id)
def test_operator_marks_a_rollout_that_got_in_invalid_and_touches_nothing(case: BadInput):
    decision = operator_decision(case.build("bad"))
    st_ = decision.status
    assert st_.phase == "Invalid", f"{case.id}: {st_.phase} {st_.message}"
    assert st_.message.startswith("invalid spec: ") and mentions(st_.message, case), st_.message
    assert _no_workload_actions(decision), decision.actions
    assert [e.reason for e in decision.events()] == ["InvalidSpec"]
    valid = {c.type: c.status for c in st_.conditions}
    assert valid["Valid"] == "False"
    # Re-reconciling the same bad spec neither flips the phase nor repeats the Event.
    again = operator_decision(case.build("bad"), RolloutStatus.model_validate(st_.wire()))
    assert again.status.phase == "Invalid" and again.events() == []


def test_a_template_the_api_server_refuses_makes_the_rollout_invalid():
    """Pod-template rules live in the API server; the shell dry-runs the Deployment and reports why."""
    case = next(c for c in ROLLOUT_CASES if c.id == "template-container-without-image")
    obj = case.build("bad")
    assert admission_message(obj) == ""  # the webhook cannot know: this is the operator's job
    plain = operator_decision(obj)
    assert plain.status.phase != "Invalid"
    assert any(not isinstance(a, RecordEvent) for a in plain.actions)  # it would create a Deployment
    why = ('Deployment.apps "bad-stable" is invalid: spec.template.spec.containers[0].image: Required value')
    meta = obj["metadata"]
    decision = plan(RolloutInput(namespace=meta["namespace"], name=meta["name"], generation=1, labels={},
                                 annotations={}, spec=RolloutSpec.model_validate(obj["spec"]),
                                 status=RolloutStatus(), obs=Observations(workload_rejected=why), now=NOW))
    assert decision.status.phase == "Invalid"
    assert mentions(decision.status.message, case) and why in decision.status.message
    assert _no_workload_actions(decision)


@pytest.mark.parametrize("case", RECORD_CASES, ids=lambda c: c.id)
def test_admission_refuses_a_malformed_change_record(case: BadInput):
    message = admission_message(case.build("bad"))
    assert message and mentions(message, case), f"{case.id}: {message!r}"


def test_a_policy_can_require_a_change_record_on_every_template_change():
    policy = NamedPolicy(name="records", spec=FrictionPolicySpec.model_validate({
        "selector": {"namespaceSelector": {"matchLabels": {"tier": "critical"}}},
        "rules": {"requireChangeRecord": True},
    }))
    obj = valid_rollout()
    obj["metadata"]["annotations"] = {names.ANN_AUTHOR: "dave", names.ANN_AUTHOR_SIGNATURE: sign_author(
        "default/bad", revision_of(obj["spec"]["template"]), "dave", KEY)}
    req = admission.AdmissionInput("CREATE", "dave", ("engineers",), None, obj)
    [problem] = admission.validate_rollout(req, KEY, [policy], {"tier": "critical"}, NOW)
    assert names.ANN_CHANGE_RECORD in problem.message and "required by policy records" in problem.message
    assert admission.validate_rollout(req, KEY, [policy], {}, NOW) == []


def test_an_invalid_spec_never_loses_what_the_status_knew():
    """A running rollout whose spec turns bad keeps its stable revision and counters for when it is fixed."""
    status = RolloutStatus(phase="Healthy", stable_revision="abcdef0123", current_step_index=0)
    bad = next(c for c in ROLLOUT_CASES if c.id == "weights-decreasing").build("bad")
    decision = operator_decision(bad, status)
    assert decision.status.phase == "Invalid"
    assert decision.status.stable_revision == "abcdef0123"
    assert _no_workload_actions(decision)


@pytest.mark.parametrize("case", [c for c in SPEC_CASES if c.kind == "FrictionPolicy"], ids=lambda c: c.id)
def test_operator_sets_an_invalid_policy_aside_with_its_reason(case: BadInput):
    obj = case.build("p")
    policies = parse_policies({"p": obj.get("spec") or {}})
    assert policies.valid == ()
    [(name, _selector, message)] = policies.invalid
    assert name == "p" and mentions(message, case), message


def test_an_invalid_policy_with_an_unreadable_selector_holds_every_rollout():
    # reconcile holds rollouts matched by an invalid policy's selector, and all of them when the
    # selector itself cannot be read: fail closed, never silently drop a policy's friction.
    spec = valid_policy()["spec"]
    spec["selector"] = {"rolloutSelector": {"matchLabels": "tier=critical"}}
    [(_, selector, message)] = parse_policies({"p": spec}).invalid
    assert selector is None
    assert "spec.selector.rolloutSelector.matchLabels" in message
    spec_ok_selector = valid_policy(ns_label="x")["spec"]
    spec_ok_selector["rules"]["minBake"] = -1
    [(_, selector, _)] = parse_policies({"p": spec_ok_selector}).invalid
    assert selector is not None and selector.matches({}, {"cf-e2e-bad-input": "x"})
    assert not selector.matches({}, {})


# ---------------------------------------------------------------- random junk never crashes anything

JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(["", "-1s", "1e9h", "0", "NaN", "{{window}}", "sum(", "9999999h", "10%", "\x00"]),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=8), st.integers(), max_size=3),
)


def _paths(obj: Any, prefix: Path = ()) -> list[Path]:
    out: list[Path] = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.append((*prefix, k))
            out += _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out.append((*prefix, i))
            out += _paths(v, (*prefix, i))
    return out


SPEC_PATHS = _paths(valid_rollout()["spec"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(SPEC_PATHS), JUNK), min_size=1, max_size=3))
def test_random_junk_anywhere_in_a_spec_never_crashes_and_both_paths_agree(edits):
    obj = valid_rollout()
    for path, value in edits:
        try:
            _parent(obj["spec"], path)[path[-1]] = value
        except (KeyError, IndexError, TypeError):
            continue  # an earlier edit replaced a parent: nothing to change there
    refused = admission_message(obj)  # must not raise
    decision = operator_decision(obj)  # must not raise
    if decision.status.phase == "Invalid":
        assert refused, f"operator says {decision.status.message!r} but admission allowed {obj['spec']}"
        assert _no_workload_actions(decision)
    else:
        assert not refused, f"admission refused ({refused}) what the operator runs: {obj['spec']}"
        # A spec that is valid must plan something finite: no NaN weights or negative replicas.
        weights = [s.set_weight for s in decision.status.effective_plan.steps] if decision.status.effective_plan else []
        assert all(w is None or 0 <= w <= 100 for w in weights)
        assert not math.isnan(decision.status.effective_weight)
