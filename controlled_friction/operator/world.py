"""What the shell knows of the cluster, from kopf's watch-fed indexes: never a GET per reconcile.

kopf keeps the indexes current from its watch streams and runs no handler before their first lists
are complete, so a Rollout is never planned against a half-filled picture.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from controlled_friction import admission, names, traffic_routing
from controlled_friction.decisions import DeploymentObs, InvalidPolicy
from controlled_friction.models.policy import FrictionPolicySpec, NamedPolicy, PolicySelector
from controlled_friction.operator.indexes import first

Key = tuple[str, str]


@dataclass(frozen=True)
class PolicySet:
    valid: tuple[NamedPolicy, ...]
    invalid: tuple[InvalidPolicy, ...]


def parse_policies(raw: Mapping[str, Mapping[str, Any]]) -> PolicySet:
    valid, bad = [], []
    for name, spec in sorted(raw.items()):
        # The admission webhook's own checks (schema and PromQL), for policies that got in without it.
        problems = [p.message for p in admission.policy_spec_problems(dict(spec))]
        if not problems:
            valid.append(NamedPolicy(name=name, spec=FrictionPolicySpec.model_validate(dict(spec))))
            continue
        try:
            selector: PolicySelector | None = PolicySelector.model_validate(spec.get("selector") or {})
        except (ValidationError, AttributeError):
            selector = None
        bad.append(InvalidPolicy(name, selector, "; ".join(problems)))
    return PolicySet(tuple(valid), tuple(bad))


@dataclass(frozen=True)
class Snapshot:
    """One Rollout and what it depends on, copied out of the indexes for a worker thread."""

    body: dict[str, Any]
    stable: DeploymentObs | None
    canary: DeploymentObs | None
    service_exists: bool
    policies: PolicySet
    namespace_labels: dict[str, str]
    # The HTTPRoute the spec names (spec.trafficRouting.gatewayAPI.httpRoute); None: missing or none named.
    route: dict[str, Any] | None = None
    # Which per-track Services (`<rollout>-stable`, `<rollout>-canary`) exist, when a route is named.
    track_services: frozenset[str] = frozenset()


def _version(obj: dict[str, Any]) -> int:
    """resourceVersion as a number: opaque in the API's contract, but etcd's revision in every
    kube-apiserver, and only compared here between two reads of one object."""
    try:
        return int((obj.get("metadata") or {}).get("resourceVersion") or 0)
    except ValueError:
        return 0


class World:
    """Reads kopf's indexes (set at start-up); all methods run on the event loop."""

    def __init__(self, indexes: Mapping[str, Any]) -> None:
        self.rollouts = indexes["rollout_index"]
        self.deployments = indexes["deployment_index"]
        self.services = indexes["service_index"]
        self.policy_specs = indexes["policy_index"]
        self.namespaces = indexes["namespace_index"]
        self.routes = indexes["route_index"]
        self._policies: tuple[Any, PolicySet] | None = None
        # What the last event of each object looked like, to tell real changes from our own writes.
        self.seen: dict[Key, tuple[Any, ...]] = {}
        self.namespace_seen: dict[str, str] = {}

    def policies(self) -> PolicySet:
        raw = {name: first(store) for name, store in self.policy_specs.items()}
        cached = self._policies
        if cached is None or cached[0] != raw:  # re-parsed only when a policy changed
            self._policies = (raw, parse_policies(raw))
        assert self._policies is not None
        return self._policies[1]

    def rollout_keys(self, namespace: str | None = None) -> list[Key]:
        return [k for k in self.rollouts if namespace is None or k[0] == namespace]

    def snapshot(self, key: Key, written: dict[Key, dict[str, Any]] | None = None) -> Snapshot | None:
        body = first(self.rollouts.get(key))
        if body is None:
            return None
        mine = (written or {}).get(key)
        if mine is not None:
            if _version(mine) > _version(body):
                body = mine  # the watch has not delivered our own last write yet
            elif written is not None:
                written.pop(key, None)  # the watch caught up
        ns, name = key
        spec = body.get("spec") or {}
        service = (spec.get("service") or {}).get("name") if isinstance(spec.get("service"), dict) else None
        route = route_name(body)
        tracks = [traffic_routing.service_name(name, t) for t in ("stable", "canary")] if route else []
        return Snapshot(
            body=body,
            stable=first(self.deployments.get((ns, names.deployment_name(name, "stable")))),
            canary=first(self.deployments.get((ns, names.deployment_name(name, "canary")))),
            service_exists=service is None or (ns, service) in self.services,
            policies=self.policies(),
            namespace_labels=dict(first(self.namespaces.get(ns)) or {}),
            route=first(self.routes.get((ns, route))) if route else None,
            track_services=frozenset(t for t in tracks if (ns, t) in self.services),
        )

    def routed_by(self, namespace: str, route: str) -> list[Key]:
        """The Rollouts of `namespace` that name the HTTPRoute `route`."""
        return [k for k in self.rollout_keys(namespace) if route_name(first(self.rollouts.get(k)) or {}) == route]


def route_name(body: Mapping[str, Any]) -> str | None:
    """spec.trafficRouting.gatewayAPI.httpRoute of a raw Rollout body (None if absent or malformed)."""
    spec = body.get("spec")
    routing = spec.get("trafficRouting") if isinstance(spec, Mapping) else None
    gateway = routing.get("gatewayAPI") if isinstance(routing, Mapping) else None
    name = gateway.get("httpRoute") if isinstance(gateway, Mapping) else None
    return name if isinstance(name, str) and name else None
