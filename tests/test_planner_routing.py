"""The planner with a Gateway API router (route weights follow the steps) and without one (honest
replica weights: fits, surge, hold, never above a policy bound), and autoscaling mid-canary."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from controlled_friction import names, traffic_routing
from controlled_friction.decisions import ApplyDeployment, EnsureService, PatchRoute, ScaleDeployment
from controlled_friction.models.policy import FrictionPolicySpec, NamedPolicy
from controlled_friction.models.rollout import RolloutSpec
from controlled_friction.planner.traffic import replica_plan, selector_string
from tests.planner_world import World, spec

ROUTE_NAME = "checkout"
STABLE, CANARY = "checkout-stable", "checkout-canary"
USER_RULE = {"matches": [{"path": {"type": "PathPrefix", "value": "/static"}}],
             "backendRefs": [{"name": "assets", "port": 80}]}


def route(with_canary: bool = True) -> dict[str, Any]:
    refs: list[dict[str, Any]] = [{"name": STABLE, "port": 80, "weight": 100}]
    if with_canary:
        refs.append({"name": CANARY, "port": 80, "weight": 0})
    return {
        "metadata": {"namespace": "shop", "name": ROUTE_NAME},
        "spec": {"rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}], "backendRefs": refs},
                           copy.deepcopy(USER_RULE)]},
    }


def make_spec(steps: list[dict[str, Any]], image: str, replicas: int = 10, router: bool = True,
              **canary: Any) -> RolloutSpec:
    raw = spec(steps, image=image, replicas=replicas).model_dump(by_alias=True, exclude_none=True, mode="json")
    raw["strategy"]["canary"].update(canary)
    if router:
        raw["trafficRouting"] = {"gatewayAPI": {"httpRoute": ROUTE_NAME}}
    return RolloutSpec.model_validate(raw)


def deployed(steps: list[dict[str, Any]], **kw: Any) -> World:
    """v1 stable and Healthy; v2's template just applied."""
    w = World(make_spec(steps, "shop/checkout:1", **kw))
    if kw.get("router", True):
        w.route = route()
    w.tick()
    w.tick()
    assert w.status.phase == "Healthy", w.status.message
    w.spec = make_spec(steps, "shop/checkout:2", **kw)
    return w


def weight_of(w: World) -> int | None:
    state = traffic_routing.route_weights(w.route, STABLE, CANARY)
    assert isinstance(state, traffic_routing.RouteWeights)
    return state.weight


def run_until(w: World, predicate: Any, ticks: int = 20, advance: float = 1.0) -> None:
    for _ in range(ticks):
        if predicate(w):
            return
        w.tick(advance=advance)
    raise AssertionError(f"not reached: phase {w.status.phase}: {w.status.message}")


# ---------------------------------------------------------------- with a router


def test_the_route_weights_follow_the_steps_exactly_and_the_user_rule_is_untouched():
    w = deployed([{"setWeight": 5}, {"pause": {"duration": "10s"}}, {"setWeight": 20},
                  {"pause": {"duration": "10s"}}, {"setWeight": 80}])
    assert {a.name for a in w.last.actions if isinstance(a, EnsureService)} >= set() and w.services == {STABLE, CANARY}
    seen: list[tuple[int, int, int]] = []
    for _ in range(40):
        d = w.tick(advance=1)
        assert w.stable is not None and w.stable.replicas == 10  # stable keeps its full size
        if w.status.phase == "Healthy":
            break
        if w.status.canary_weight and (not seen or seen[-1][0] != w.status.canary_weight):
            assert w.canary is not None
            seen.append((w.status.canary_weight, weight_of(w) or 0, w.canary.replicas))
            assert w.status.route_weight == w.status.canary_weight
            assert w.status.effective_weight == float(w.status.canary_weight)
        assert w.route is not None and w.route["spec"]["rules"][1] == USER_RULE
        for a in d.actions:  # a weight only ever points at pods that serve
            if isinstance(a, PatchRoute) and a.weight > 0:
                assert w.canary is not None and w.canary.ready_replicas >= traffic_routing.router_canary_replicas(
                    10, a.weight)
    # 5% of 10 pods is 1 pod (the floor), 20% 2 pods, 80% 8 pods; the route says the weight exactly.
    assert seen == [(5, 5, 1), (20, 20, 2), (80, 80, 8)]
    assert w.status.phase == "Healthy" and weight_of(w) == 0 and w.canary is not None and w.canary.replicas == 0
    assert w.stable is not None and w.stable.revision == w.revision


def test_the_route_moves_to_a_step_only_after_the_canary_pods_serve():
    w = deployed([{"setWeight": 30}])
    w.ready = False
    for _ in range(3):
        d = w.tick(advance=1)
        assert not any(isinstance(a, PatchRoute) for a in d.actions)
        assert w.status.phase == "Progressing" and "HTTPRoute checkout" in w.status.message
    assert weight_of(w) == 0
    w.ready = True
    w.canary = w._dep(w.revision, 3)
    d = w.tick(advance=1)
    assert [a.weight for a in d.actions if isinstance(a, PatchRoute)] == [30]


def test_a_missing_canary_backend_is_added_next_to_stable():
    w = deployed([{"setWeight": 10}])
    w.route = route(with_canary=False)
    run_until(w, lambda w: w.status.canary_weight == 10)
    refs = w.route["spec"]["rules"][0]["backendRefs"]
    assert refs == [{"name": STABLE, "port": 80, "weight": 90}, {"name": CANARY, "port": 80, "weight": 10}]


def test_rollback_sets_weight_zero_first_in_one_write_and_leaves_stable_untouched():
    w = deployed([{"setWeight": 20}, {"pause": {}}])
    run_until(w, lambda w: w.status.phase == "Paused")
    assert weight_of(w) == 20 and w.canary is not None and w.canary.replicas == 2
    stable_before = w.stable
    w.annotations[names.ANN_ACTION] = "abort"
    d = w.tick(advance=1)
    assert d.status.phase == "RolledBack"
    writes = [a for a in d.actions if isinstance(a, (PatchRoute, ScaleDeployment, ApplyDeployment))]
    assert len(writes) == 1 and isinstance(writes[0], PatchRoute) and writes[0].weight == 0
    assert d.status.canary_weight == 0 and weight_of(w) == 0
    d = w.tick(advance=1)  # the route shows 0: now the canary pods go
    assert [a for a in d.actions if isinstance(a, ScaleDeployment)] == [ScaleDeployment("canary", 0)]
    assert w.stable == stable_before


def test_a_deleted_route_holds_the_canary_and_never_promotes():
    w = deployed([{"setWeight": 20}, {"pause": {"duration": "5s"}}, {"setWeight": 50}])
    run_until(w, lambda w: w.status.canary_weight == 20)
    w.route = None
    for _ in range(10):
        d = w.tick(advance=5)
        assert d.status.phase == "Paused" and "not found" in d.status.message and "create the route" in d.status.message
        assert d.status.current_step_index == 1 and d.status.canary_weight == 20
        assert d.status.route_weight is None and d.status.effective_weight == 0.0
        assert not any(isinstance(a, (ApplyDeployment, ScaleDeployment, PatchRoute)) for a in d.actions)
    w.route = route()  # recreated at weight 0: the operator puts the step's weight back, then goes on
    w.route_follows = True
    run_until(w, lambda w: w.status.phase == "Healthy", ticks=30)


def test_a_route_without_the_operator_rule_holds_with_the_fix():
    w = deployed([{"setWeight": 20}])
    w.route = {"metadata": {"namespace": "shop", "name": ROUTE_NAME}, "spec": {"rules": [copy.deepcopy(USER_RULE)]}}
    d = w.tick()
    assert d.status.phase == "Paused" and STABLE in d.status.message and "add a rule" in d.status.message


def test_a_restart_mid_step_resumes_the_same_weight_without_a_write():
    w = deployed([{"setWeight": 20}, {"pause": {}}])
    run_until(w, lambda w: w.status.phase == "Paused")
    writes = len(w.route_writes)
    for _ in range(3):  # every tick re-reads the status from its wire form, as a restarted operator does
        w.tick(advance=30)
    assert len(w.route_writes) == writes and weight_of(w) == 20 and w.status.canary_weight == 20


def test_autoscaling_mid_canary_resizes_the_canary_for_its_share():
    w = deployed([{"setWeight": 25}, {"pause": {}}])
    run_until(w, lambda w: w.status.phase == "Paused")
    assert w.canary is not None and w.canary.replicas == 3  # ceil(10 * 25%)
    w.spec = w.spec.model_copy(update={"replicas": 20})  # kubectl scale / an HPA wrote spec.replicas
    run_until(w, lambda w: w.canary is not None and w.canary.replicas == 5 and w.status.phase == "Paused")
    assert w.stable is not None and w.stable.replicas == 20 and weight_of(w) == 25
    w.tick()
    assert w.status.replicas == 20  # what the stable Deployment runs, as last observed


def test_status_carries_the_scale_subresource_fields():
    w = deployed([{"setWeight": 25}])
    assert w.status.replicas == 10
    assert w.status.selector == (f"app=checkout,{names.LABEL_ROLLOUT}=checkout,{names.LABEL_TRACK}=stable")
    assert selector_string({}, {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["b", "a"]},
                                                     {"key": "x", "operator": "DoesNotExist"}]}, "r") == (
        f"{names.LABEL_ROLLOUT}=r,{names.LABEL_TRACK}=stable,tier in (a,b),!x")


# ---------------------------------------------------------------- without a router (honest weights)

CRITICAL_5 = NamedPolicy(name="critical", spec=FrictionPolicySpec.model_validate({
    "selector": {"rolloutSelector": {"matchLabels": {names.LABEL_TIER: "critical"}}},
    "rules": {"maxFirstWeight": 5},
}))


def plain(steps: list[dict[str, Any]], replicas: int = 10, **canary: Any) -> World:
    w = deployed(steps, replicas=replicas, router=False, **canary)
    w.labels = {names.LABEL_TIER: "critical"}
    w.policies = (CRITICAL_5,)
    return w


def test_a_policy_bound_replicas_cannot_meet_holds_naming_the_achievable_weight_and_the_fix():
    w = plain([{"setWeight": 20}, {"pause": {}}])
    d = w.tick()
    assert d.status.phase == "Paused"
    assert "1 canary next to 10 stable pods = 9.1%" in d.status.message
    assert "policy bound 5%" in d.status.message and "raise spec.replicas to" in d.status.message
    assert "allow a stable surge of" in d.status.message and "trafficRouting" in d.status.message
    assert w.canary is None or w.canary.replicas == 0


def test_a_surge_grows_stable_before_the_canary_and_is_scaled_back_at_promotion():
    w = plain([{"setWeight": 20}, {"pause": {"duration": "5s"}}], maxSurge=10)
    d = w.tick()
    assert ScaleDeployment("stable", 19) in d.actions and not any(
        isinstance(a, ApplyDeployment) and a.track == "canary" for a in d.actions)
    # 1 canary next to 19 stable = 5.0% for the policy's first step (then 20% follows: 3 next to 12).
    run_until(w, lambda w: w.canary is not None and w.stable is not None
              and (w.stable.replicas, w.canary.replicas) == (19, 1))
    w.tick()
    assert w.status.canary_weight == 5 and w.status.effective_weight == 5.0
    run_until(w, lambda w: w.status.phase == "Healthy", ticks=30)
    assert w.stable is not None and w.stable.replicas == 10


def test_rollback_scales_a_surge_back():
    w = plain([{"setWeight": 20}, {"pause": {}}], maxSurge=10)
    run_until(w, lambda w: w.status.phase == "Paused")
    w.annotations[names.ANN_ACTION] = "abort"
    d = w.tick()
    assert ScaleDeployment("stable", 10) in d.actions and ScaleDeployment("canary", 0) in d.actions


def test_a_weight_that_fits_runs_as_before():
    w = deployed([{"setWeight": 50}], router=False)
    run_until(w, lambda w: w.status.canary_weight == 50)
    assert w.canary is not None and w.canary.replicas == 10 and w.status.effective_weight == 50.0


def test_too_few_replicas_for_the_rollouts_own_step_serve_one_pod_and_say_so_and_below_it_is_served():
    w = deployed([{"setWeight": 25}, {"pause": {}}], replicas=1, router=False)  # 1 canary next to 1 = 50%
    run_until(w, lambda w: w.status.phase == "Paused")
    assert w.status.canary_weight == 25 and w.status.effective_weight == 50.0
    assert w.canary is not None and w.canary.replicas == 1
    w = deployed([{"setWeight": 20}, {"pause": {}}], router=False)  # 2 next to 10 = 16.7%: below, served
    run_until(w, lambda w: w.status.phase == "Paused")
    assert w.status.canary_weight == 20 and w.status.effective_weight == 16.7
    w = deployed([{"setWeight": 25}], replicas=1, router=False, weightTolerance=25)
    run_until(w, lambda w: w.status.canary_weight == 25)


@pytest.mark.parametrize("replicas", [1, 2, 3, 4, 7, 10, 19, 33])
@pytest.mark.parametrize("surge", [0, 3, 30])
@pytest.mark.parametrize("bound", [1, 5, 10])
def test_the_share_never_exceeds_a_policy_bound(replicas, surge, bound):
    policy = NamedPolicy(name="critical", spec=FrictionPolicySpec.model_validate({
        "selector": {"rolloutSelector": {"matchLabels": {names.LABEL_TIER: "critical"}}},
        "rules": {"maxFirstWeight": bound},
    }))
    w = deployed([{"setWeight": 40}, {"pause": {"duration": "5s"}}], replicas=replicas, router=False,
                 maxSurge=surge)
    w.labels, w.policies = {names.LABEL_TIER: "critical"}, (policy,)
    for _ in range(12):
        d = w.tick(advance=1)
        if d.status.current_step_index == 0 and d.status.canary_revision == w.revision:
            c = w.canary.ready_replicas if w.canary and w.canary.revision == w.revision else 0
            s = w.stable.ready_replicas if w.stable else 0
            assert c == 0 or 100.0 * c / (c + s) <= bound, (c, s)
            assert d.status.effective_weight <= bound


def test_replica_plan_reads_the_bound_from_the_effective_plan():
    from controlled_friction.models.rollout import AddedBy, PlannedStep

    step = PlannedStep(kind="setWeight", set_weight=5, added_by=[AddedBy(policy="p", rule="maxFirstWeight")])
    assert replica_plan(10, step, 2.0, 0).decision == "hold"
    assert replica_plan(10, step, 2.0, 10).decision == "surge"
    ai = PlannedStep(kind="setWeight", set_weight=5, added_by=[AddedBy(policy="p", rule="aiAssisted.maxFirstWeight")])
    assert replica_plan(10, ai, 2.0, 0).bound == 5
    own = PlannedStep(kind="setWeight", set_weight=20)
    assert replica_plan(10, own, 2.0, 0).bound is None


def test_explain_shows_requested_vs_achievable_weight_per_step():
    from rich.console import Console

    from controlled_friction.cli import views

    def text(w: World) -> str:
        obj = {"metadata": {"namespace": "shop", "name": "checkout", "labels": w.labels},
               "spec": w.spec.model_dump(by_alias=True, exclude_none=True, mode="json"), "status": w.status.wire()}
        console = Console(width=240, record=True)
        console.print(views.explain_view(obj))
        return console.export_text()

    w = plain([{"setWeight": 20}, {"pause": {}}, {"setWeight": 50}])
    w.tick()
    out = text(w)
    assert "requested vs achievable" in out
    line = next(x for x in out.splitlines() if "hold:" in x)
    assert "5%" in line and "9.1% (held)" in line
    assert any("16.7%" in x and "20%" in x for x in out.splitlines())
    assert any("50.0%" in x and "fits" in x for x in out.splitlines())
    r = deployed([{"setWeight": 20}])
    r.tick()
    assert "exact: HTTPRoute checkout weights" in text(r)


def test_scaling_mid_pause_without_a_router_serves_the_nearest_share_not_above_the_step():
    w = deployed([{"setWeight": 25}, {"pause": {}}, {"setWeight": 50}], replicas=4, router=False)
    run_until(w, lambda w: w.status.phase == "Paused")
    assert w.canary is not None and w.canary.replicas == 1  # 1 next to 4 = 20%
    w.spec = w.spec.model_copy(update={"replicas": 8})  # 3 next to 8 = 27.3% would overshoot
    run_until(w, lambda w: w.stable is not None and w.stable.replicas == 8 and w.canary is not None
              and w.canary.replicas == 2)
    w.tick()
    assert w.status.phase == "Paused" and w.status.effective_weight == 20.0
    w.annotations[names.ANN_ACTION] = "promote"
    run_until(w, lambda w: w.status.phase == "Healthy")
    assert w.stable is not None and w.stable.replicas == 8


def test_a_hold_mid_step_still_follows_a_scale_up_of_stable_and_never_shrinks_it():
    w = plain([{"setWeight": 5}, {"pause": {}}], replicas=19)  # 1 next to 19 = 5.0%
    run_until(w, lambda w: w.status.phase == "Paused" and w.status.canary_weight == 5)
    w.spec = w.spec.model_copy(update={"replicas": 25})  # 1 next to 25 = 3.8%: still within ±2
    run_until(w, lambda w: w.stable is not None and w.stable.replicas == 25)
    w.spec = w.spec.model_copy(update={"replicas": 10})  # 1 next to 10 = 9.1%: too much, hold
    for _ in range(3):
        d = w.tick(advance=1)
        assert d.status.phase == "Paused" and "9.1%" in d.status.message, d.status.message
    assert w.stable is not None and w.stable.replicas == 25 and w.canary is not None and w.canary.replicas == 1
