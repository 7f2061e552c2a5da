"""How a step's weight becomes traffic: HTTPRoute weights with a router, replica counts without.

Pure (no I/O, no clock); the planner decides with it and the shell writes what it returns.

**With a Gateway API router** (`spec.trafficRouting.gatewayAPI.httpRoute`) the operator owns the
backendRef *weights* of its rule(s) — every rule of the route with a backendRef to the Service
`<rollout>-stable` — and nothing else. It sets stable to `100 - w` and canary to `w`, adding the
`<rollout>-canary` backendRef to such a rule when it is missing (same port as stable's).

Why a JSON patch (RFC 6902) and not server-side apply: in the Gateway API CRDs `spec.rules` and
`rules[].backendRefs` are `x-kubernetes-list-type: atomic`. Server-side apply can only own an
atomic list as a whole, so applying "our" weights would take over every rule and backend the user
wrote (and conflict with their field manager, or with `--force-conflicts` silently wipe them).
A JSON patch addresses exactly `/spec/rules/<i>/backendRefs/<j>/weight`. Each touched rule's
`backendRefs` is first `test`ed against the value the patch was computed from, so if someone
reorders or edits that rule concurrently the API server rejects the whole patch (HTTP 422) and the
next reconcile recomputes it from a fresh read; other rules are neither tested nor written.
Send it with `Content-Type: application/json-patch+json` (`JSON_PATCH_CONTENT_TYPE`; the Python
client's `patch_namespaced_custom_object` defaults to a merge patch, so pass `_content_type`).

A backendRef counts as the rollout's when it names the Service (`group` "" and `kind` Service, or
omitted) in the route's own namespace. Backends of other Services in the operator's rule keep their
weights: the canary's share of that rule is then `w / (100 + their weights)`, which
`route_weights` reports as `share`.

**Without a router** the split is replica counts next to a full stable
(`canary / (canary + stable)` ready pods; see `honest_split`): it reports the share the counts
really give, whether that meets the request within a tolerance, and the options — a temporary stable
surge, or a hold naming the achievable weight and the fix — never exceeding a policy bound.

**With a router** the canary Deployment only needs capacity for its share (`router_canary_replicas`);
stable stays at full size until promotion, so a rollback is one route write.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from controlled_friction import names

GATEWAY_GROUP = "gateway.networking.k8s.io"
HTTPROUTE_VERSION = "v1"
HTTPROUTE_PLURAL = "httproutes"
WEIGHT_TOTAL = 100  # stable + canary weights the operator writes
DEFAULT_BACKEND_WEIGHT = 1  # Gateway API: an unspecified weight is 1
# Percentage points a replica-count share may differ from the requested weight and still "meet" it.
DEFAULT_TOLERANCE = 2.0
CANARY_FLOOR = 1  # canary pods at any weight above 0 (with a router)

JsonPatch = list[dict[str, Any]]
JSON_PATCH_CONTENT_TYPE = "application/json-patch+json"  # clients must send route patches with it


def service_name(rollout: str, track: str) -> str:
    """`<rollout>-stable` / `<rollout>-canary`: the Services the route's backendRefs name (contract)."""
    return f"{rollout}-{track}"


def service_selector(rollout: str, track: str) -> dict[str, str]:
    """The selector of the per-track Service: exactly one track of one rollout (contract labels)."""
    return {names.LABEL_ROLLOUT: rollout, names.LABEL_TRACK: track}


# ---------------------------------------------------------------- reading a route


def is_service_ref(ref: Mapping[str, Any], service: str, route_namespace: str | None) -> bool:
    """Whether a backendRef points at the Service `service` in the route's namespace."""
    if ref.get("name") != service:
        return False
    if (ref.get("group") or "") != "" or (ref.get("kind") or "Service") != "Service":
        return False
    ns = ref.get("namespace")
    return ns is None or route_namespace is None or ns == route_namespace


def ref_weight(ref: Mapping[str, Any]) -> int:
    w = ref.get("weight")
    return DEFAULT_BACKEND_WEIGHT if w is None else int(w)


def _rules(route: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    rules = (route.get("spec") or {}).get("rules") or []
    return [r if isinstance(r, Mapping) else {} for r in rules]


def _refs(rule: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    refs = rule.get("backendRefs") or []
    return [r if isinstance(r, Mapping) else {} for r in refs]


def _route_ref(route: Mapping[str, Any]) -> str:
    meta = route.get("metadata") or {}
    return f"HTTPRoute {meta.get('namespace', '?')}/{meta.get('name', '?')}"


def operator_rules(route: Mapping[str, Any], stable_service: str) -> list[int]:
    """Indexes of the rules that reference the stable Service: the rules whose weights the operator owns."""
    ns = (route.get("metadata") or {}).get("namespace")
    rules = enumerate(_rules(route))
    return [i for i, rule in rules if any(is_service_ref(r, stable_service, ns) for r in _refs(rule))]


@dataclass(frozen=True)
class RouteHold:
    """The route cannot carry the rollout's weights; hold (at the weight in force) with `message`."""

    reason: Literal["RouteNotFound", "NoOperatorRule", "DuplicateBackend"]
    message: str


@dataclass(frozen=True)
class RuleWeights:
    index: int  # position in spec.rules
    stable: int  # weight of the stable backendRef
    canary: int  # weight of the canary backendRef (0 when it is absent)
    others: int  # sum of the weights of backends that are not the rollout's
    share: float  # canary percent of the rule's traffic


@dataclass(frozen=True)
class RouteWeights:
    rules: tuple[RuleWeights, ...]

    @property
    def weight(self) -> int | None:
        """The canary weight in force: the operator rules' canary weight if they all agree and the
        operator's weights are in place (stable + canary = 100), else None (not set, or mixed)."""
        values = {(r.stable + r.canary, r.canary) for r in self.rules}
        if len(values) != 1:
            return None
        ((total, canary),) = values
        return canary if total == WEIGHT_TOTAL else None

    @property
    def share(self) -> float:
        """The canary's share of the operator rules' traffic, percent (the smallest if they differ)."""
        return min(r.share for r in self.rules)


def _duplicate(route: Mapping[str, Any], rule: Mapping[str, Any], services: Sequence[str]) -> str | None:
    ns = (route.get("metadata") or {}).get("namespace")
    for svc in services:
        if sum(is_service_ref(r, svc, ns) for r in _refs(rule)) > 1:
            return svc
    return None


def _hold_for(route: Mapping[str, Any] | None, stable_service: str, canary_service: str, route_name: str | None,
              namespace: str | None) -> tuple[RouteHold | None, list[int]]:
    if route is None:
        where = f"{namespace}/{route_name}" if namespace and route_name else (route_name or "?")
        return RouteHold(
            "RouteNotFound",
            f"HTTPRoute {where} (spec.trafficRouting.gatewayAPI.httpRoute) not found: holding the canary weight; "
            "create the route or remove spec.trafficRouting",
        ), []
    idx = operator_rules(route, stable_service)
    if not idx:
        return RouteHold(
            "NoOperatorRule",
            f"{_route_ref(route)} has no rule with a backendRef to Service {stable_service}: holding the canary "
            f"weight; add a rule with backendRefs {stable_service} and {canary_service} "
            "(see examples/rollout-gateway.yaml)",
        ), []
    rules = _rules(route)
    for i in idx:
        dup = _duplicate(route, rules[i], (stable_service, canary_service))
        if dup is not None:
            return RouteHold(
                "DuplicateBackend",
                f"{_route_ref(route)} rule {i} lists Service {dup} more than once: holding the canary weight; "
                "keep one backendRef per Service",
            ), []
    return None, idx


def route_weights(
    route: Mapping[str, Any] | None,
    stable_service: str,
    canary_service: str,
    *,
    route_name: str | None = None,
    namespace: str | None = None,
) -> RouteWeights | RouteHold:
    """The weights in force on the route's operator rules (read back after a write, or at startup)."""
    hold, idx = _hold_for(route, stable_service, canary_service, route_name, namespace)
    if hold is not None:
        return hold
    assert route is not None
    ns = (route.get("metadata") or {}).get("namespace")
    out = []
    for i in idx:
        stable = canary = others = 0
        for ref in _refs(_rules(route)[i]):
            if is_service_ref(ref, stable_service, ns):
                stable = ref_weight(ref)
            elif is_service_ref(ref, canary_service, ns):
                canary = ref_weight(ref)
            else:
                others += ref_weight(ref)
        total = stable + canary + others
        out.append(RuleWeights(i, stable, canary, others, round(100.0 * canary / total, 2) if total else 0.0))
    return RouteWeights(tuple(out))


# ---------------------------------------------------------------- writing a route


@dataclass(frozen=True)
class RoutePatch:
    """A JSON patch setting the operator rules' weights to `weight`; empty when already in force."""

    weight: int
    patch: JsonPatch

    @property
    def changed(self) -> bool:
        return bool(self.patch)


def route_weight_patch(
    route: Mapping[str, Any] | None,
    stable_service: str,
    canary_service: str,
    weight: int,
    *,
    route_name: str | None = None,
    namespace: str | None = None,
) -> RoutePatch | RouteHold:
    """The minimal JSON patch that gives the canary `weight` (0..100) percent in the operator rules.

    Only `weight` fields of the rollout's two backendRefs change (plus, at a weight above 0, the
    canary backendRef is appended to an operator rule that lacks it); everything else in the route
    stays as it was. After applying it, `route_weights(...).weight == weight`. A RouteHold when the
    route is missing (`route=None`) or has no usable operator rule.
    """
    if not 0 <= weight <= WEIGHT_TOTAL:
        raise ValueError(f"weight must be within 0..{WEIGHT_TOTAL}, got {weight}")
    hold, idx = _hold_for(route, stable_service, canary_service, route_name, namespace)
    if hold is not None:
        return hold
    assert route is not None
    ns = (route.get("metadata") or {}).get("namespace")
    rules = _rules(route)
    patch: JsonPatch = []
    for i in idx:
        refs = _refs(rules[i])
        base = f"/spec/rules/{i}/backendRefs"
        ops: JsonPatch = []
        stable_j = next(j for j, r in enumerate(refs) if is_service_ref(r, stable_service, ns))
        canary_j = next((j for j, r in enumerate(refs) if is_service_ref(r, canary_service, ns)), None)
        for j, want in ((stable_j, WEIGHT_TOTAL - weight), (canary_j, weight)):
            if j is None:
                continue
            if refs[j].get("weight") != want:  # an omitted weight is 1, never what we want to leave implicit
                op = "replace" if "weight" in refs[j] else "add"
                ops.append({"op": op, "path": f"{base}/{j}/weight", "value": want})
        if canary_j is None and weight > 0:  # at weight 0 a missing canary backend is already right
            new_ref: dict[str, Any] = {"name": canary_service, "weight": weight}
            for key in ("group", "kind", "port"):
                if key in refs[stable_j]:
                    new_ref[key] = refs[stable_j][key]
            ops.append({"op": "add", "path": f"{base}/-", "value": new_ref})
        if ops:
            patch.append({"op": "test", "path": base, "value": copy.deepcopy([dict(r) for r in refs])})
            patch.extend(ops)
    return RoutePatch(weight, patch)


def apply_json_patch(doc: Mapping[str, Any], patch: JsonPatch) -> dict[str, Any]:
    """Apply the subset of RFC 6902 `route_weight_patch` emits (test, add, replace) to a copy of `doc`.

    For tests and dry runs; raises ValueError when a `test` fails, like the API server would.
    """
    out: dict[str, Any] = copy.deepcopy(dict(doc))
    for op in patch:
        *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].lstrip("/").split("/")]
        node: Any = out
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if op["op"] == "test":
            current = node[int(last)] if isinstance(node, list) else node.get(last)
            if current != op["value"]:
                raise ValueError(f"test failed at {op['path']}")
        elif op["op"] in ("add", "replace"):
            value = copy.deepcopy(op["value"])
            if isinstance(node, list):
                if last == "-":
                    node.append(value)
                elif op["op"] == "add":
                    node.insert(int(last), value)
                else:
                    node[int(last)] = value
            else:
                if op["op"] == "replace" and last not in node:
                    raise ValueError(f"replace of a missing member {op['path']}")
                node[last] = value
        else:
            raise ValueError(f"unsupported op {op['op']!r}")
    return out


# ---------------------------------------------------------------- replicas with a router


def router_canary_replicas(replicas: int, weight: int, floor: int = CANARY_FLOOR) -> int:
    """Canary pods for `weight` percent of the traffic of `replicas` pods, when a router sets the split.

    ceil(replicas * w / 100) so the canary has at least its share's capacity, at least `floor` for any
    w > 0 (and at most max(replicas, 1)); 0 at weight 0. Stable keeps all `replicas` until promotion.
    """
    if weight <= 0:
        return 0
    cap = max(replicas, 1)
    return min(cap, max(floor, 1, math.ceil(replicas * min(weight, WEIGHT_TOTAL) / WEIGHT_TOTAL)))


# ---------------------------------------------------------------- honest weights without a router


@dataclass(frozen=True)
class ReplicaSplit:
    canary: int
    stable: int

    @property
    def share(self) -> float:
        """Canary percent of ready pods (= of traffic, when every pod serves alike)."""
        total = self.canary + self.stable
        return 100.0 * self.canary / total if total else 0.0


def natural_canary(replicas: int, weight: int) -> int:
    """The replica rule next to a full stable: round(replicas * w / (100 - w)), in [1, replicas] for
    w > 0 (the planner's `canary_replicas`; weights above 50 give 50%)."""
    if weight <= 0 or replicas <= 0:
        return 0
    if weight >= WEIGHT_TOTAL:
        return replicas
    return max(1, min(replicas, round(replicas * weight / (WEIGHT_TOTAL - weight))))


def _best_canary(stable: int, target: float, limit: float, max_canary: int) -> ReplicaSplit | None:
    """The canary count in [1, max_canary] next to `stable` closest to `target`, never above `limit`."""
    best: ReplicaSplit | None = None
    ideal = stable * target / (WEIGHT_TOTAL - target) if target < WEIGHT_TOTAL else max_canary
    for c in {max(1, min(max_canary, math.floor(ideal))), max(1, min(max_canary, math.ceil(ideal)))}:
        split = ReplicaSplit(c, stable)
        if split.share > limit + 1e-9:
            continue
        if best is None or abs(split.share - target) < abs(best.share - target):
            best = split
    return best


@dataclass(frozen=True)
class WeightPlan:
    """What replica counts can do for a requested weight, and what to do about it.

    `decision`: `fits` (use `split`: the replica rule meets the target), `surge` (use `split`: stable
    is temporarily above spec.replicas by `surge` pods so the share fits), or `hold` (`split` is None;
    do not move to this weight; `message` names the achievable weight and the fix).
    """

    requested: int
    target: int  # min(requested, bound)
    bound: int | None
    replicas: int
    natural: ReplicaSplit  # the replica rule's split, no surge
    split: ReplicaSplit | None  # what to run; None when holding
    decision: Literal["fits", "surge", "hold"]
    message: str

    @property
    def surge(self) -> int:
        return max(0, self.split.stable - self.replicas) if self.split else 0

    @property
    def share(self) -> float | None:
        """The canary share the chosen split gives (None when holding)."""
        return self.split.share if self.split else None

    @property
    def achievable(self) -> float:
        """The nearest share replica counts give without surge (reported in the hold message)."""
        return self.natural.share


def _meets(split: ReplicaSplit, target: int, bound: int | None, tolerance: float) -> bool:
    if bound is not None and split.share > bound + 1e-9:
        return False
    return abs(split.share - target) <= tolerance + 1e-9


def replicas_needed(target: int, tolerance: float, bound: int | None, limit: int = 1000) -> int | None:
    """Smallest spec.replicas whose replica rule meets `target` within `tolerance` (None above `limit`)."""
    for r in range(1, limit + 1):
        if _meets(ReplicaSplit(natural_canary(r, target), r), target, bound, tolerance):
            return r
    return None


def honest_split(
    replicas: int,
    weight: int,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    max_surge: int = 0,
    bound: int | None = None,
) -> WeightPlan:
    """The replica split for `weight` without a traffic router, told honestly.

    - `bound` (e.g. a policy's maxFirstWeight) caps the target and is never exceeded by the share.
    - `fits` when the replica rule's share is within `tolerance` points of the target (and ≤ bound).
    - else `surge` when some stable count in (replicas, replicas + max_surge] with a canary of at most
      `replicas` pods meets it — the fewest extra stable pods win;
    - else `hold`, with a message naming the achievable share and the fix.
    Weight 0 (or replicas 0: nothing serves) always fits with no canary.
    """
    if not 0 <= weight <= WEIGHT_TOTAL:
        raise ValueError(f"weight must be within 0..{WEIGHT_TOTAL}, got {weight}")
    target = weight if bound is None else min(weight, bound)
    natural = ReplicaSplit(natural_canary(replicas, target), max(replicas, 0))

    def plan(split: ReplicaSplit | None, decision: Literal["fits", "surge", "hold"], message: str) -> WeightPlan:
        return WeightPlan(weight, target, bound, replicas, natural, split, decision, message)

    if target == 0 or replicas <= 0:
        return plan(ReplicaSplit(0, max(replicas, 0)), "fits",
                    "no canary traffic" if target == 0 else "no replicas: nothing serves")
    if _meets(natural, target, bound, tolerance):
        return plan(natural, "fits", _split_message(natural, target))
    limit = float(WEIGHT_TOTAL) if bound is None else float(bound)
    for stable in range(replicas, replicas + max(0, max_surge) + 1):
        split = _best_canary(stable, target, limit, replicas)
        if split is None or not _meets(split, target, bound, tolerance):
            continue
        if stable == replicas:  # rounding the other way fits (e.g. down, below the bound)
            return plan(split, "fits", _split_message(split, target))
        return plan(split, "surge", f"{split.canary} canary next to {stable} stable pods ({stable - replicas} "
                    f"above spec.replicas until promotion) = {split.share:.1f}% for weight {target}%")
    return plan(None, "hold", _hold_message(replicas, weight, target, bound, tolerance, natural, max_surge))


def _split_message(split: ReplicaSplit, target: int) -> str:
    return f"{split.canary} canary next to {split.stable} stable pods = {split.share:.1f}% for weight {target}%"


def _hold_message(replicas: int, requested: int, target: int, bound: int | None, tolerance: float,
                  natural: ReplicaSplit, max_surge: int) -> str:
    if bound is not None and bound < requested:
        about = f" (step {requested}%, capped at the policy bound {bound}%)"
    elif bound is not None:
        about = f" (policy bound {bound}%)"
    else:
        about = ""
    head = (f"weight {target}%{about} cannot be met within ±{tolerance:g} points by replica counts: with "
            f"spec.replicas {replicas} the nearest is {natural.canary} canary next to {natural.stable} stable pods "
            f"= {natural.share:.1f}%")
    if target > WEIGHT_TOTAL // 2:
        return (f"{head}; next to a full stable replicas give at most 50%: use a traffic router "
                "(spec.trafficRouting.gatewayAPI.httpRoute) for weights above 50%")
    fixes = []
    need = replicas_needed(target, tolerance, bound)
    if need is not None and need > replicas:
        fixes.append(f"raise spec.replicas to {need}")
    # Extra stable pods the search would have needed (at most 1000 looked at).
    limit = float(WEIGHT_TOTAL) if bound is None else float(bound)
    for stable in range(replicas + max(0, max_surge) + 1, replicas + 1001):
        split = _best_canary(stable, target, limit, replicas)
        if split is not None and _meets(split, target, bound, tolerance):
            fixes.append(f"allow a stable surge of {stable - replicas} pods (allowed: {max(0, max_surge)})")
            break
    fixes.append("route traffic with spec.trafficRouting.gatewayAPI.httpRoute")
    return f"{head}; holding. Fix: " + ", or ".join(fixes)
