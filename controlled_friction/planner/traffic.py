"""How a step's weight is put in force: HTTPRoute weights with a router, honest replica counts without.

Argo Rollouts' `trafficrouting.go` for this planner; the arithmetic is `traffic_routing` (pure).

**With a router** (`spec.trafficRouting.gatewayAPI.httpRoute`) the canary Deployment is sized for
its share (`router_canary_replicas`, at least 1 pod) and stable keeps `spec.replicas` until
promotion. A step's weight is in force once the canary pods serve *and* the route, as the watch
shows it, carries the weight; the route is written only after the pods serve, so a weight never
points at pods that are not there. Retiring the canary (rollback, promotion, a reverted template)
sets the route's canary weight to 0 first — one write — and scales the canary down only once the
route shows 0. A route that cannot carry the weights (deleted, no rule referencing
`<rollout>-stable`, a Service listed twice) holds the rollout where it is: never promoted past.

**Without a router** the share is replica counts next to a full stable, and `honest_split` says
what they really give: `fits` (within `weightTolerance`), `surge` (stable temporarily above
`spec.replicas`, at most `maxSurge` pods, grown *before* the canary so the share never overshoots),
or `hold` (Paused, with the achievable weight and the fix). A setWeight that a policy's
`maxFirstWeight` added or lowered is a bound the share must never exceed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from controlled_friction import traffic_routing as tr
from controlled_friction.decisions import ApplyDeployment, EnsureService, PatchRoute, ScaleDeployment
from controlled_friction.effective_plan import is_ai_assisted, matching_policies
from controlled_friction.models.rollout import PlannedStep
from controlled_friction.planner.base import Base

DEFAULT_SERVICE_PORT = 80  # the per-track Services' port when spec.service names none
DEFAULT_TARGET_PORT = 8080
BOUND_RULE = "maxFirstWeight"  # an effective-plan step changed by this rule carries a policy bound


def policy_bound(step: PlannedStep) -> int | None:
    """The weight a step must never exceed because a policy's maxFirstWeight set it (None: no bound)."""
    if step.kind != "setWeight" or step.set_weight is None:
        return None
    if any(a.rule.split(".")[-1] == BOUND_RULE for a in step.added_by):
        return step.set_weight
    return None


def replica_plan(replicas: int, step: PlannedStep, tolerance: float, max_surge: int,
                 bound: int | None = None) -> tr.WeightPlan:
    """What replica counts do for one setWeight step (also what `explain` shows).

    `honest_split`, with one leniency: where it would hold, the largest share *not above* the step's
    weight (e.g. 20% asked, 2 canary next to 10 stable = 16.7%) is served instead — it never widens the
    blast radius, and status.effectiveWeight and the message say what is served. Where even one canary
    pod is above the Rollout's own step (1 canary next to 2 stable = 33% for 20%), one pod is served and
    the message says so. Above a policy bound by any amount is never served: a surge or a hold.
    """
    bound = policy_bound(step) if bound is None else bound
    plan = tr.honest_split(replicas, step.set_weight or 0, tolerance=tolerance, max_surge=max_surge, bound=bound)
    if plan.decision != "hold":
        return plan
    below = below_split(replicas, plan.target)
    if below is not None:
        message = (f"{below.canary} canary next to {below.stable} stable pods = {below.share:.1f}% for weight "
                   f"{plan.target}% (below it: replica counts cannot come closer without exceeding it; a traffic "
                   "router gives it exactly)")
        return replace(plan, split=below, decision="fits", message=message)
    if bound is None and replicas > 0 and plan.target > 0:
        # The Rollout's own step with too few replicas for any share at or below it: one canary pod is
        # the smallest canary there is (as before, and as Argo Rollouts does). A policy's bound is
        # never exceeded: that holds.
        least = tr.ReplicaSplit(1, replicas)
        message = (f"1 canary next to {replicas} stable pods = {least.share:.1f}% for weight {plan.target}% "
                   f"(above it: the smallest canary there is; raise spec.replicas or route traffic with "
                   "spec.trafficRouting.gatewayAPI.httpRoute for the exact weight)")
        return replace(plan, split=least, decision="fits", message=message)
    return plan


def below_split(replicas: int, target: int) -> tr.ReplicaSplit | None:
    """The most canary pods (1..replicas) next to a full stable whose share is not above `target`."""
    if replicas <= 0 or target <= 0:
        return None
    most = replicas if target >= tr.WEIGHT_TOTAL else math.floor(replicas * target / (tr.WEIGHT_TOTAL - target) + 1e-9)
    canary = min(most, replicas)
    return tr.ReplicaSplit(canary, replicas) if canary >= 1 else None


class Traffic(Base):
    # -- what the rollout routes with

    @property
    def route_name(self) -> str | None:
        tr_spec = self.spec.traffic_routing
        return tr_spec.gateway_api.http_route if tr_spec and tr_spec.gateway_api else None

    def track_service(self, track: str) -> str:
        return tr.service_name(self.inp.name, track)

    def route_state(self) -> tr.RouteWeights | tr.RouteHold:
        return tr.route_weights(self.obs.route, self.track_service("stable"), self.track_service("canary"),
                                route_name=self.route_name, namespace=self.inp.namespace)

    def route_patch(self, weight: int) -> tr.RoutePatch | tr.RouteHold:
        return tr.route_weight_patch(self.obs.route, self.track_service("stable"), self.track_service("canary"),
                                     weight, route_name=self.route_name, namespace=self.inp.namespace)

    def ensure_track_services(self) -> None:
        """The Services the route's backendRefs name, one track each (router only)."""
        if self.route_name is None:
            return
        svc = self.spec.service
        port, target = (svc.port, svc.target_port) if svc else (DEFAULT_SERVICE_PORT, DEFAULT_TARGET_PORT)
        for track in ("stable", "canary"):
            name = self.track_service(track)
            if name not in self.obs.track_services:
                self.actions.append(EnsureService(name, port, target, tr.service_selector(self.inp.name, track)))

    def route_hold(self) -> str | None:
        """Why the route cannot carry the rollout's weights now (None: it can)."""
        if self.route_name is None:
            return None
        state = self.route_state()
        return state.message if isinstance(state, tr.RouteHold) else None

    # -- putting a weight in force

    def weight_hold(self, step: PlannedStep) -> str | None:
        """Why this setWeight cannot be served honestly without a router (None: it can)."""
        if self.route_name is not None:
            return None
        plan = self.replica_plan(step)
        return plan.message if plan.decision == "hold" else None

    def replica_plan(self, step: PlannedStep) -> tr.WeightPlan:
        canary = self.spec.strategy.canary
        return replica_plan(self.spec.replicas, step, canary.weight_tolerance, canary.max_surge,
                            self.first_weight_bound(step))

    def first_weight_bound(self, step: PlannedStep) -> int | None:
        """A matching policy's maxFirstWeight binds the first positive setWeight even when the Rollout's
        own weight was already within it (so the plan did not change it)."""
        plan = self.st.effective_plan
        first = next((s for s in (plan.steps if plan else []) if s.kind == "setWeight" and (s.set_weight or 0) > 0),
                     None)
        if first is not step:
            return None
        ai = is_ai_assisted(self.inp.annotations)
        rules = [r for p in matching_policies(list(self.obs.policies), self.inp.labels, self.obs.namespace_labels)
                 for r in (p.spec.rules, p.spec.ai_assisted if ai else None) if r is not None]
        limits = [r.max_first_weight for r in rules if r.max_first_weight is not None]
        return min(limits) if limits else None

    def canary_at_step(self, step: PlannedStep) -> bool:
        """Ask for what `step`'s weight needs; True once it is in force."""
        weight = step.set_weight or 0
        if self.route_name is not None:
            return self._routed_at(weight)
        plan = self.replica_plan(step)
        assert plan.split is not None  # a hold never gets here (weight_hold)
        return self._replicas_at(plan.split.canary, plan.split.stable)

    def keep_in_force(self, step: PlannedStep) -> str | None:
        """Between setWeights, keep `step`'s weight in force while spec.replicas moves (`kubectl scale`,
        an HPA): the canary follows its share (router) or the honest rule (none). A hold message when
        replica counts can no longer serve the weight honestly."""
        if self.route_name is not None:
            canary = self.obs.canary
            want = tr.router_canary_replicas(self.spec.replicas, step.set_weight or 0)
            if canary is not None and canary.revision == self.revision and canary.replicas != want:
                self.actions.append(ScaleDeployment("canary", want))
            self.ensure_stable_replicas()
            return None
        held = self.weight_hold(step)
        if held:
            stable = self.obs.stable  # more stable pods only lower the canary's share: follow a scale-up
            if stable is not None and stable.replicas < self.spec.replicas:
                self.actions.append(ScaleDeployment("stable", self.spec.replicas))
            return held
        plan = self.replica_plan(step)
        assert plan.split is not None
        self._replicas_at(plan.split.canary, plan.split.stable)
        return None

    def _canary_pods(self, want: int) -> bool:
        canary = self.obs.canary
        if canary is None or canary.revision != self.revision:
            self.actions.append(ApplyDeployment("canary", self.revision, self.spec.template, want))
            return False
        if canary.replicas != want:
            self.actions.append(ScaleDeployment("canary", want))
            return False
        return canary.serving(want)

    def _routed_at(self, weight: int) -> bool:
        pods = self._canary_pods(tr.router_canary_replicas(self.spec.replicas, weight))
        self.ensure_stable_replicas()
        if not pods:
            return False  # the route moves only once the pods it points at serve
        patch = self.route_patch(weight)
        if isinstance(patch, tr.RouteHold):
            return False
        if patch.changed:
            self._patch_route(patch)
            return False
        state = self.route_state()
        return isinstance(state, tr.RouteWeights) and state.weight == weight

    def _replicas_at(self, canary_want: int, stable_want: int) -> bool:
        stable = self.obs.stable
        if stable is not None and stable.ready_replicas < stable_want:
            # A surge: stable grows first, so the canary's share never overshoots on the way.
            if stable.replicas != stable_want:
                self.actions.append(ScaleDeployment("stable", stable_want))
            canary = self.obs.canary
            if canary is not None and canary.revision == self.revision and canary.replicas > canary_want:
                self.actions.append(ScaleDeployment("canary", canary_want))
            return False
        if stable is not None and stable.replicas != stable_want:
            self.actions.append(ScaleDeployment("stable", stable_want))
        pods = self._canary_pods(canary_want)
        return pods and stable is not None and stable.serving(stable_want)

    def _patch_route(self, patch: tr.RoutePatch) -> None:
        assert self.route_name is not None
        self.actions.append(PatchRoute(self.route_name, patch.weight, tuple(patch.patch)))

    # -- taking the canary out

    def retire_canary(self) -> bool:
        """Canary weight 0, then 0 pods. With a router the route goes to 0 first (one write) and the
        pods follow once the route shows it; a route that is gone or unusable routes nothing to the
        canary, so its pods go at once. True once no traffic can reach the canary."""
        if self.route_name is not None:
            patch = self.route_patch(0)
            if isinstance(patch, tr.RoutePatch) and patch.changed:
                self._patch_route(patch)
                return False
        self.scale_canary_to_zero()
        return True

    # -- status

    def traffic_status(self) -> None:
        """status.routeWeight / effectiveWeight (route share with a router) and the scale subresource's
        status.replicas / status.selector."""
        st = self.st
        stable = self.obs.stable
        st.replicas = stable.replicas if stable is not None else 0
        st.selector = selector_string(self.spec.selector.match_labels, self.spec.selector.wire(), self.inp.name)
        if self.route_name is None:
            st.route_weight = None
            return
        state = self.route_state()
        if isinstance(state, tr.RouteHold):
            st.route_weight = None
            st.effective_weight = 0.0
        else:
            st.route_weight = state.weight
            st.effective_weight = state.share


def selector_string(match_labels: Mapping[str, str], wire: Mapping[str, Any], rollout: str) -> str:
    """The stable pods' label selector as a string (`k=v,k in (a,b)`), for the scale subresource."""
    labels = {**match_labels, **tr.service_selector(rollout, "stable")}
    parts = [f"{k}={v}" for k, v in sorted(labels.items())]
    for expr in wire.get("matchExpressions") or []:
        key, op, values = expr.get("key"), expr.get("operator"), sorted(expr.get("values") or [])
        if op == "In":
            parts.append(f"{key} in ({','.join(values)})")
        elif op == "NotIn":
            parts.append(f"{key} notin ({','.join(values)})")
        elif op == "Exists":
            parts.append(str(key))
        elif op == "DoesNotExist":
            parts.append(f"!{key}")
    return ",".join(parts)
