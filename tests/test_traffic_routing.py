"""traffic_routing: HTTPRoute weight patches, honest replica weights, router sizing.

Properties: a route patch touches nothing but the rollout's own backendRefs' weights (other rules
and backends survive), after it the weight read back is the weight asked for, and it is empty when
already in force; a replica split never exceeds a policy bound, meets its target within the
tolerance whenever it does not hold, and a hold names the achievable weight and the fixes.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controlled_friction import traffic_routing as tr
from controlled_friction.traffic_routing import (
    ReplicaSplit,
    RouteHold,
    RoutePatch,
    RouteWeights,
    apply_json_patch,
    honest_split,
    natural_canary,
    route_weight_patch,
    route_weights,
    router_canary_replicas,
)

STABLE, CANARY = "checkout-stable", "checkout-canary"


def route(*rules: list[dict[str, Any]], ns: str = "shop") -> dict[str, Any]:
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "checkout", "namespace": ns, "resourceVersion": "7"},
        "spec": {"parentRefs": [{"name": "gw"}], "rules": [{"backendRefs": refs} for refs in rules]},
    }


def ref(name: str, weight: int | None = None, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "port": 80, **extra}
    if weight is not None:
        out["weight"] = weight
    return out


def patched(obj: dict[str, Any], weight: int) -> dict[str, Any]:
    patch = route_weight_patch(obj, STABLE, CANARY, weight)
    assert isinstance(patch, RoutePatch), patch
    return apply_json_patch(obj, patch.patch)


# ---------------------------------------------------------------- route patches


def test_patch_sets_only_the_two_weights_and_tests_the_rule_first() -> None:
    obj = route([ref(STABLE, 100), ref(CANARY, 0)], [ref("assets")])
    patch = route_weight_patch(obj, STABLE, CANARY, 5)
    assert isinstance(patch, RoutePatch)
    assert patch.patch == [
        {"op": "test", "path": "/spec/rules/0/backendRefs", "value": obj["spec"]["rules"][0]["backendRefs"]},
        {"op": "replace", "path": "/spec/rules/0/backendRefs/0/weight", "value": 95},
        {"op": "replace", "path": "/spec/rules/0/backendRefs/1/weight", "value": 5},
    ]
    after = apply_json_patch(obj, patch.patch)
    assert after["spec"]["rules"][1] == obj["spec"]["rules"][1]
    weights = route_weights(after, STABLE, CANARY)
    assert isinstance(weights, RouteWeights) and weights.weight == 5 and weights.share == 5.0


def test_a_missing_canary_backend_is_added_with_the_stable_port_and_implicit_weights_made_explicit() -> None:
    obj = route([ref(STABLE, group="", kind="Service")])
    after = patched(obj, 30)
    assert after["spec"]["rules"][0]["backendRefs"] == [
        ref(STABLE, 70, group="", kind="Service"), ref(CANARY, 30, group="", kind="Service"),
    ]
    # At weight 0 the canary backend is not needed; the stable weight is made explicit.
    assert patched(obj, 0)["spec"]["rules"][0]["backendRefs"] == [ref(STABLE, 100, group="", kind="Service")]


def test_a_weight_already_in_force_needs_no_write() -> None:
    obj = route([ref(STABLE, 80), ref(CANARY, 20)])
    patch = route_weight_patch(obj, STABLE, CANARY, 20)
    assert isinstance(patch, RoutePatch) and not patch.changed and patch.patch == []


def test_a_concurrent_edit_of_the_rule_makes_the_patch_fail_as_a_whole() -> None:
    obj = route([ref(STABLE, 100), ref(CANARY, 0)])
    patch = route_weight_patch(obj, STABLE, CANARY, 10)
    assert isinstance(patch, RoutePatch)
    edited = copy.deepcopy(obj)
    edited["spec"]["rules"][0]["backendRefs"].insert(0, ref("mirror", 1))
    with pytest.raises(ValueError, match="test failed"):
        apply_json_patch(edited, patch.patch)


def test_every_rule_referencing_stable_is_the_operators_and_foreign_backends_dilute_the_share() -> None:
    obj = route([ref(STABLE, 100), ref("legacy", 100)], [ref("assets")], [ref(STABLE), ref(CANARY)])
    after = patched(obj, 50)
    assert after["spec"]["rules"][0]["backendRefs"] == [ref(STABLE, 50), ref("legacy", 100), ref(CANARY, 50)]
    assert after["spec"]["rules"][1] == obj["spec"]["rules"][1]
    assert after["spec"]["rules"][2]["backendRefs"] == [ref(STABLE, 50), ref(CANARY, 50)]
    weights = route_weights(after, STABLE, CANARY)
    assert isinstance(weights, RouteWeights)
    assert weights.weight == 50
    assert [r.share for r in weights.rules] == [25.0, 50.0] and weights.share == 25.0


def test_backends_of_another_kind_or_namespace_are_not_the_rollouts() -> None:
    obj = route([ref(STABLE, 1, namespace="other"), ref(STABLE, 1, group="example.com", kind="Backend")])
    hold = route_weight_patch(obj, STABLE, CANARY, 10)
    assert isinstance(hold, RouteHold) and hold.reason == "NoOperatorRule"


def test_holds_name_the_route_and_the_fix() -> None:
    missing = route_weight_patch(None, STABLE, CANARY, 10, route_name="checkout", namespace="shop")
    assert isinstance(missing, RouteHold) and missing.reason == "RouteNotFound"
    assert "HTTPRoute shop/checkout" in missing.message and "not found" in missing.message
    no_rule = route_weights(route([ref("assets")]), STABLE, CANARY)
    assert isinstance(no_rule, RouteHold) and no_rule.reason == "NoOperatorRule"
    assert STABLE in no_rule.message and "holding" in no_rule.message
    dup = route_weight_patch(route([ref(STABLE, 50), ref(STABLE, 50)]), STABLE, CANARY, 10)
    assert isinstance(dup, RouteHold) and dup.reason == "DuplicateBackend"


def test_weight_read_back_is_none_until_the_operator_set_it() -> None:
    weights = route_weights(route([ref(STABLE)]), STABLE, CANARY)  # stable weight 1 by default
    assert isinstance(weights, RouteWeights) and weights.weight is None and weights.share == 0.0


def test_weights_outside_0_to_100_are_refused() -> None:
    with pytest.raises(ValueError):
        route_weight_patch(route([ref(STABLE)]), STABLE, CANARY, 101)


names_ = st.sampled_from([STABLE, CANARY, "assets", "legacy", "mirror"])
refs_ = st.lists(
    st.builds(ref, names_, st.one_of(st.none(), st.integers(0, 1000))), min_size=1, max_size=4
)
routes_ = st.lists(refs_, min_size=1, max_size=4).map(lambda rules: route(*rules))


def _foreign(obj: dict[str, Any]) -> list[Any]:
    """Everything the operator does not own: whole rules without stable, other backends as written."""
    out: list[Any] = [{k: v for k, v in obj.items() if k != "spec"}, {**obj["spec"], "rules": None}]
    for rule in obj["spec"]["rules"]:
        ours = any(r["name"] == STABLE for r in rule["backendRefs"])
        out.append(
            [r for r in rule["backendRefs"] if r["name"] not in (STABLE, CANARY)] if ours else rule
        )
    return out


@settings(max_examples=300, deadline=None)
@given(routes_, st.integers(0, 100))
def test_route_patches_never_touch_foreign_rules_or_backends(obj: dict[str, Any], weight: int) -> None:
    result = route_weight_patch(obj, STABLE, CANARY, weight)
    if isinstance(result, RouteHold):
        has_stable = [sum(r["name"] == STABLE for r in rule["backendRefs"]) for rule in obj["spec"]["rules"]]
        assert not any(has_stable) or any(
            n > 1 or sum(r["name"] == CANARY for r in rule["backendRefs"]) > 1
            for n, rule in zip(has_stable, obj["spec"]["rules"], strict=True) if n
        )
        return
    for op in result.patch:
        assert op["op"] in ("test", "add", "replace")
        if op["op"] != "test":
            assert op["path"].endswith("/weight") or (op["path"].endswith("/backendRefs/-")
                                                     and op["value"]["name"] == CANARY)
    after = apply_json_patch(obj, result.patch)
    assert _foreign(after) == _foreign(obj)
    weights = route_weights(after, STABLE, CANARY)
    assert isinstance(weights, RouteWeights) and weights.weight == weight
    again = route_weight_patch(after, STABLE, CANARY, weight)
    assert isinstance(again, RoutePatch) and not again.changed  # idempotent


# ---------------------------------------------------------------- honest weights without a router


def test_the_issue_examples_are_told_honestly() -> None:
    # 10 replicas, a policy's maxFirstWeight 5: 1 canary pod of 11 is 9.1%, above the bound.
    plan = honest_split(10, 5, bound=5)
    assert plan.decision == "hold" and plan.split is None
    assert "9.1%" in plan.message and "spec.replicas to 19" in plan.message
    assert "surge of 9" in plan.message and "gatewayAPI" in plan.message
    surge = honest_split(10, 5, bound=5, max_surge=10)
    assert surge.decision == "surge" and surge.split == ReplicaSplit(1, 19) and surge.surge == 9
    assert surge.share == 5.0
    # 4 replicas at 10% would be 20%.
    assert honest_split(4, 10).decision == "hold" and "20.0%" in honest_split(4, 10).message
    # 25% of 10 replicas is 3 of 13 = 23.1%, within the default 2 points.
    fits = honest_split(10, 25)
    assert fits.decision == "fits" and fits.split == ReplicaSplit(3, 10)
    # Above 50% replicas next to a full stable cannot go: the message says to use a router.
    high = honest_split(10, 80)
    assert high.decision == "hold" and "at most 50%" in high.message


def test_a_step_above_the_bound_is_capped_and_the_message_says_so() -> None:
    plan = honest_split(19, 25, bound=5)
    assert plan.target == 5 and plan.decision == "fits" and plan.share == 5.0
    held = honest_split(10, 25, bound=5)
    assert "step 25%, capped at the policy bound 5%" in held.message


def test_weight_zero_and_no_replicas_fit_without_a_canary() -> None:
    assert honest_split(10, 0).split == ReplicaSplit(0, 10)
    assert honest_split(0, 30).split == ReplicaSplit(0, 0)


@settings(max_examples=400, deadline=None)
@given(
    st.integers(0, 60), st.integers(0, 100), st.one_of(st.none(), st.integers(1, 100)),
    st.integers(0, 40), st.sampled_from([0.5, 1.0, 2.0, 5.0]),
)
def test_effective_share_never_exceeds_the_bound_and_meets_the_target_unless_held(
    replicas: int, weight: int, bound: int | None, max_surge: int, tolerance: float
) -> None:
    plan = honest_split(replicas, weight, bound=bound, max_surge=max_surge, tolerance=tolerance)
    assert plan.target == (weight if bound is None else min(weight, bound))
    if plan.decision == "hold":
        assert plan.split is None and plan.share is None
        assert f"{plan.natural.share:.1f}%" in plan.message  # the achievable weight
        assert "holding" in plan.message or "at most 50%" in plan.message
        assert "spec.trafficRouting.gatewayAPI.httpRoute" in plan.message  # the fix
        return
    split = plan.split
    assert split is not None
    if bound is not None:
        assert split.share <= bound + 1e-9
    if plan.target > 0 and replicas > 0:
        assert abs(split.share - plan.target) <= tolerance + 1e-9
    assert 0 <= split.canary <= max(replicas, 0)
    assert replicas <= split.stable <= replicas + max_surge
    assert (plan.decision == "surge") == (split.stable > replicas)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 200), st.integers(0, 100))
def test_natural_canary_is_the_planners_replica_rule(replicas: int, weight: int) -> None:
    from controlled_friction.planner import canary_replicas

    assert natural_canary(replicas, weight) == canary_replicas(replicas, weight)


# ---------------------------------------------------------------- sizing with a router


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 200), st.integers(0, 100), st.integers(1, 5))
def test_router_canary_has_capacity_for_its_share_within_bounds(replicas: int, weight: int, floor: int) -> None:
    c = router_canary_replicas(replicas, weight, floor)
    if weight == 0:
        assert c == 0
        return
    assert 1 <= c <= max(replicas, 1)
    assert c >= min(floor, max(replicas, 1))
    assert c * 100 >= replicas * weight or c == max(replicas, 1)  # at least its share of the pods
    assert c * 100 < replicas * weight + 100 or c == min(floor, max(replicas, 1))  # no more than one extra


def test_router_sizing_examples() -> None:
    assert router_canary_replicas(10, 5) == 1
    assert router_canary_replicas(10, 25) == 3
    assert router_canary_replicas(10, 80) == 8
    assert router_canary_replicas(4, 100) == 4
    assert router_canary_replicas(10, 1, floor=2) == 2
    assert tr.service_name("checkout", "canary") == CANARY
