"""The workloads a Rollout owns are the operator's alone: what the owned-workload webhook refuses.

Changing `<rollout>-stable` by hand (`kubectl set image`, `kubectl scale`, `kubectl edit`) would ship
a template or a size with no canary, bake, analysis or approval, and deleting it would take the
service down; so for a Deployment or Service owned by a Rollout (an ownerReference to a
`controlled-friction.io` Rollout) the webhook refuses, for anyone but the operator:

* changes to a Deployment's `spec.template`, `spec.replicas` (also through the `scale`
  subresource) or `spec.selector`, and to a Service's `spec`;
* changes to the ownership itself: the Rollout's ownerReference and the `controlled-friction.io/`
  labels (removing the label would take the object out of the webhook's object selector);
* `DELETE`, unless the owning Rollout is gone or being deleted (the garbage collector's clean-up)
  or the garbage collector itself asks.

Everything else passes: status writes and other subresources, metadata the controllers and tools
write (annotations, other labels), and objects no Rollout owns. Pure; `operator/webhooks.py` adapts.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from controlled_friction import names
from controlled_friction.admission import AdmissionInput, Problem

ROLLOUT_KIND = "Rollout"
SCALE = "scale"
# What only the operator may change, per kind, as paths into the object.
GUARDED: dict[str, tuple[tuple[str, ...], ...]] = {
    "Deployment": (("spec", "template"), ("spec", "replicas"), ("spec", "selector")),
    "Service": (("spec",),),
}


@dataclass(frozen=True)
class Owner:
    """The Rollout named in an object's ownerReferences."""

    name: str
    uid: str


def owning_rollout(obj: Mapping[str, Any] | None) -> Owner | None:
    for ref in ((obj or {}).get("metadata") or {}).get("ownerReferences") or ():
        if not isinstance(ref, Mapping):
            continue
        api_version = str(ref.get("apiVersion") or "")
        if ref.get("kind") == ROLLOUT_KIND and api_version.split("/")[0] == names.GROUP:
            return Owner(str(ref.get("name") or ""), str(ref.get("uid") or ""))
    return None


def _get(obj: Mapping[str, Any] | None, path: tuple[str, ...]) -> Any:
    node: Any = obj or {}
    for part in path:
        node = node.get(part) if isinstance(node, Mapping) else None
    return node


def _ownership(obj: Mapping[str, Any] | None) -> tuple[Any, dict[str, Any]]:
    meta = (obj or {}).get("metadata") or {}
    refs = [r for r in meta.get("ownerReferences") or () if isinstance(r, Mapping) and r.get("kind") == ROLLOUT_KIND]
    labels = {k: v for k, v in (meta.get("labels") or {}).items() if str(k).startswith(names.PREFIX)}
    return refs, labels


def changed_fields(kind: str, old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> list[str]:
    """The operator-only fields an update changes (dotted paths)."""
    out = [".".join(path) for path in GUARDED.get(kind, ()) if _get(old, path) != _get(new, path)]
    old_refs, old_labels = _ownership(old)
    new_refs, new_labels = _ownership(new)
    if old_refs != new_refs:
        out.append("metadata.ownerReferences")
    if old_labels != new_labels:
        out.append(f"metadata.labels ({names.PREFIX}*)")
    return out


def _remedy(kind: str, fields: list[str], ns: str, rollout: str) -> str:
    if fields == ["spec.replicas"]:
        return (f"to scale, set the Rollout's spec.replicas (the operator splits it between stable and canary): "
                f"kubectl patch rollout {rollout} -n {ns} --type merge -p '{{\"spec\":{{\"replicas\":N}}}}'")
    if kind == "Deployment":
        return (f"change the Rollout instead, and its canary steps, analysis and approvals apply: "
                f"kubectl edit rollout {rollout} -n {ns}")
    return f"change the Rollout instead (spec.service, spec.trafficRouting): kubectl edit rollout {rollout} -n {ns}"


def workload_problems(
    req: AdmissionInput,
    *,
    kind: str,
    owner: Owner | None,
    owner_live: bool,
    operator_users: Collection[str],
) -> list[Problem]:
    """Why this write to an owned workload is refused (empty: allowed).

    `kind` is the object's kind (Deployment, Service); `owner` the owning Rollout, found by the shell
    (from the body, or for the scale subresource from its index); `owner_live` whether that Rollout
    (same uid) still exists and is not being deleted.
    """
    if owner is None or req.user in operator_users:
        return []
    body = req.old if req.old is not None else req.new
    meta = (body or {}).get("metadata") or {}
    ns, name = str(meta.get("namespace") or ""), str(meta.get("name") or "")
    what = f"{kind.lower()} {ns}/{name} belongs to Rollout {ns}/{owner.name}"
    if req.operation == "DELETE":
        if req.subresource or not owner_live or req.user == names.GARBAGE_COLLECTOR_USERNAME:
            return []
        return [
            Problem(
                f"{what}, and only the controlled-friction operator removes it (with the Rollout). To roll a "
                f"canary back: controlled-friction abort {owner.name} -n {ns}; to retire the service: "
                f"kubectl delete rollout {owner.name} -n {ns} (a critical Rollout needs approved deletion)"
            )
        ]
    if req.operation != "UPDATE" or not owner_live:
        return []
    if req.subresource == SCALE:
        fields = ["spec.replicas"] if _get(req.old, ("spec", "replicas")) != _get(req.new, ("spec", "replicas")) else []
    elif req.subresource:
        return []  # status and the like: the Kubernetes controllers' writes
    else:
        fields = changed_fields(kind, req.old, req.new)
    if not fields:
        return []
    return [
        Problem(
            f"{what}: only the controlled-friction operator may change its {', '.join(fields)} (a change here "
            f"would skip the canary steps, analysis and approvals); {_remedy(kind, fields, ns, owner.name)}"
        )
    ]
