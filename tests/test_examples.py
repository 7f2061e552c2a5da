"""Every example in examples/ is a valid object for the models (and so for the operator)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from controlled_friction import names, traffic_routing
from controlled_friction.analysis import validate_query
from controlled_friction.effective_plan import compute_effective_plan
from controlled_friction.models.policy import FrictionPolicySpec, NamedPolicy
from controlled_friction.models.rollout import RolloutSpec

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
FILES = sorted(EXAMPLES.glob("*.yaml"))


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _example(name: str) -> dict[str, Any]:
    (doc,) = _docs(EXAMPLES / name)
    return doc


def test_the_documented_examples_exist() -> None:
    assert [p.name for p in FILES] == [
        "frictionpolicy-critical.yaml", "rollout-critical.yaml", "rollout-custom-query.yaml",
        "rollout-gateway.yaml", "rollout-noncritical.yaml",
    ]


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_example_validates_with_the_models(path: Path) -> None:
    for doc in _docs(path):
        if doc["kind"] == "HTTPRoute":
            assert doc["apiVersion"] == f"{traffic_routing.GATEWAY_GROUP}/{traffic_routing.HTTPROUTE_VERSION}"
            continue  # checked with its Rollout below (and against the real CRD in the e2e suite)
        assert doc["apiVersion"] == names.API_VERSION
        if doc["kind"] == "Rollout":
            spec = RolloutSpec.model_validate(doc["spec"])
            assert doc["metadata"]["namespace"] == "shop"
            for metric in spec.analysis.metrics:
                if metric.query is not None:
                    assert validate_query(metric.query) is None
        else:
            assert doc["kind"] == "FrictionPolicy"
            assert "namespace" not in doc["metadata"]  # cluster-scoped
            FrictionPolicySpec.model_validate(doc["spec"])


def test_critical_rollout_follows_the_documented_plan() -> None:
    doc = _example("rollout-critical.yaml")
    assert doc["metadata"]["name"] == "checkout"
    assert doc["metadata"]["labels"][names.LABEL_TIER] == "critical"
    spec = RolloutSpec.model_validate(doc["spec"])
    steps = [(s.kind, s.set_weight if s.kind == "setWeight" else s.pause.duration if s.pause else None)
             for s in spec.strategy.canary.steps]
    assert steps == [("setWeight", 5), ("pause", 120.0), ("approval", None), ("setWeight", 25),
                     ("pause", 300.0), ("setWeight", 50), ("pause", None)]
    assert {m.kind for m in spec.analysis.metrics} == {"errorRatio", "orderRateDrop"}


def test_policy_selects_the_critical_example_only() -> None:
    policy = FrictionPolicySpec.model_validate(_example("frictionpolicy-critical.yaml")["spec"])
    critical = _example("rollout-critical.yaml")["metadata"].get("labels", {})
    other = _example("rollout-noncritical.yaml")["metadata"].get("labels", {})
    assert policy.selector.matches(critical, {})
    assert not policy.selector.matches(other, {})
    assert policy.selector.matches(other, {names.LABEL_TIER: "critical"})  # or via its namespace


def test_policy_leaves_the_critical_example_plan_as_strict_as_written() -> None:
    """The example already meets the policy, so the merge adds nothing but the required metric."""
    spec = RolloutSpec.model_validate(_example("rollout-critical.yaml")["spec"])
    policy = NamedPolicy(name="critical-services",
                         spec=FrictionPolicySpec.model_validate(_example("frictionpolicy-critical.yaml")["spec"]))
    plan = compute_effective_plan(spec, [policy], ai_assisted=False)
    weights = [s.set_weight for s in plan.steps if s.kind == "setWeight"]
    assert weights == [5, 25, 50]
    (gate,) = [s for s in plan.steps if s.kind == "approval"]
    assert max(a.count for a in gate.approvals) == 2
    ai_plan = compute_effective_plan(spec, [policy], ai_assisted=True)
    (ai_gate,) = [s for s in ai_plan.steps if s.kind == "approval"]
    assert max(a.count for a in ai_gate.approvals) == 3


def test_gateway_example_routes_its_rollout_and_keeps_the_users_rule() -> None:
    route, rollout = _docs(EXAMPLES / "rollout-gateway.yaml")
    spec = RolloutSpec.model_validate(rollout["spec"])
    assert spec.traffic_routing is not None and spec.traffic_routing.gateway_api is not None
    assert spec.traffic_routing.gateway_api.http_route == route["metadata"]["name"]
    assert route["metadata"]["namespace"] == rollout["metadata"]["namespace"]
    name = rollout["metadata"]["name"]
    stable, canary = (traffic_routing.service_name(name, t) for t in (names.TRACK_STABLE, names.TRACK_CANARY))
    weights = traffic_routing.route_weights(route, stable, canary)
    assert isinstance(weights, traffic_routing.RouteWeights)
    assert [r.index for r in weights.rules] == [0] and weights.weight == 0
    patch = traffic_routing.route_weight_patch(route, stable, canary, 5)
    assert isinstance(patch, traffic_routing.RoutePatch)
    after = traffic_routing.apply_json_patch(route, patch.patch)
    assert after["spec"]["rules"][1] == route["spec"]["rules"][1]
    assert traffic_routing.route_weights(after, stable, canary).weight == 5  # type: ignore[union-attr]
    # Every weight step is exact with a router, including above 50% and with only 4 replicas.
    assert any((s.set_weight or 0) > 50 for s in spec.strategy.canary.steps)


def test_the_critical_example_carries_a_valid_change_record_and_its_policy_guards_deletion() -> None:
    from controlled_friction import change_record

    record = _example("rollout-critical.yaml")["metadata"]["annotations"][names.ANN_CHANGE_RECORD]
    assert change_record.parse(record)[1] is None
    policy = FrictionPolicySpec.model_validate(_example("frictionpolicy-critical.yaml")["spec"])
    assert policy.rules.require_change_record
    assert policy.rules.deletion is not None and policy.rules.deletion.count == 2
