"""The simulator's data plane: which Rollouts sit behind an HTTPRoute, and the split it asks for.

A Rollout is routed when it names a route (`spec.trafficRouting.gatewayAPI.httpRoute`) that exists
in its namespace and has a rule with a backendRef to its stable Service `<rollout>-stable` (the
rule the operator owns, `traffic_routing.operator_rules`; with several such rules the first carries
the simulated traffic). That rule's backendRefs are mapped to tracks through the Services they
name: a Service in the route's namespace whose selector picks `controlled-friction.io/rollout:
<rollout>` and a `controlled-friction.io/track` is that track, whatever its name. Backends that are
not (another app's Service, a missing Service, another kind) keep their share of the weights but
serve it elsewhere: those requests are not this service's.

Not routed (no field, route missing, no operator rule): the split is by ready replicas, as the
plain Service in front of both tracks would give. Pure: the cluster objects are passed in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from controlled_friction import names, traffic_routing
from controlled_friction.sandbox.traffic import RouteSplit

Obj = Mapping[str, Any]
RolloutKey = tuple[str, str]  # namespace, rollout name


def _meta(obj: Obj) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace", "")), str(meta.get("name", ""))


def route_name(rollout: Obj) -> str | None:
    """The HTTPRoute the Rollout names, if any."""
    spec = rollout.get("spec") or {}
    gateway = ((spec.get("trafficRouting") or {}).get("gatewayAPI")) or {}
    name = gateway.get("httpRoute")
    return str(name) if name else None


def service_tracks(services: Iterable[Obj]) -> dict[tuple[str, str], tuple[str, str]]:
    """(namespace, Service name) -> (rollout, track) for Services selecting exactly one track."""
    out = {}
    for svc in services:
        selector = (svc.get("spec") or {}).get("selector") or {}
        rollout, track = selector.get(names.LABEL_ROLLOUT), selector.get(names.LABEL_TRACK)
        if rollout and track:
            out[_meta(svc)] = (str(rollout), str(track))
    return out


def route_splits(
    rollouts: Iterable[Obj], services: Iterable[Obj], routes: Iterable[Obj]
) -> tuple[dict[RolloutKey, RouteSplit], list[str]]:
    """The split of every routed Rollout, and why a Rollout that names a route is not routed."""
    by_name = {_meta(r): r for r in routes}
    tracks = service_tracks(services)
    splits: dict[RolloutKey, RouteSplit] = {}
    problems: list[str] = []
    for rollout in rollouts:
        ns, name = _meta(rollout)
        wanted = route_name(rollout)
        if not wanted:
            continue
        route = by_name.get((ns, wanted))
        stable = traffic_routing.service_name(name, names.TRACK_STABLE)
        rules = traffic_routing.operator_rules(route, stable) if route is not None else []
        if route is None or not rules:
            why = "not found" if route is None else f"has no rule with a backendRef to Service {stable}"
            problems.append(f"rollout {ns}/{name}: HTTPRoute {ns}/{wanted} {why}; splitting by ready replicas")
            continue
        rule = ((route.get("spec") or {}).get("rules") or [])[rules[0]]
        weights: dict[str, int] = {}
        elsewhere = 0
        for ref in rule.get("backendRefs") or []:
            weight, svc = traffic_routing.ref_weight(ref), str(ref.get("name"))
            target = tracks.get((ns, svc)) if traffic_routing.is_service_ref(ref, svc, ns) else None
            if target is not None and target[0] == name:
                weights[target[1]] = weights.get(target[1], 0) + weight
            else:
                elsewhere += weight
        splits[(ns, name)] = RouteSplit(weights, elsewhere)
    return splits, problems


def list_routing_objects(list_items: Callable[..., list[dict[str, Any]]], api: Any) -> tuple[list[Obj], list[Obj]]:
    """Services and HTTPRoutes of every namespace (no routes when the Gateway API CRDs are absent).

    `list_items(call, *args, **kwargs)` performs a kubernetes-client list call and returns its items.
    """
    from kubernetes import client  # only the cluster process needs it

    services = list_items(client.CoreV1Api(api).list_service_for_all_namespaces)
    try:
        routes = list_items(
            client.CustomObjectsApi(api).list_cluster_custom_object,
            traffic_routing.GATEWAY_GROUP,
            traffic_routing.HTTPROUTE_VERSION,
            traffic_routing.HTTPROUTE_PLURAL,
        )
    except client.ApiException as exc:
        if exc.status not in (403, 404):
            raise
        routes = []
    return list(services), list(routes)
