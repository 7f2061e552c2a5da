"""Pure builders for the objects the operator owns, and readers of what it observes."""

from __future__ import annotations

import copy
from typing import Any

from controlled_friction import names
from controlled_friction.decisions import ApplyDeployment, DeploymentObs, EnsureService
from controlled_friction.models.rollout import RolloutSpec


def owner_reference(rollout: dict[str, Any]) -> dict[str, Any]:
    meta = rollout["metadata"]
    return {
        "apiVersion": names.API_VERSION,
        "kind": "Rollout",
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def pod_template(template: dict[str, Any], rollout: str, track: str, revision: str) -> dict[str, Any]:
    out = copy.deepcopy(template)
    labels = out.setdefault("metadata", {}).setdefault("labels", {})
    labels.update({names.LABEL_ROLLOUT: rollout, names.LABEL_TRACK: track, names.LABEL_REVISION: revision})
    return out


def deployment_selector(spec: RolloutSpec, rollout: str, track: str) -> dict[str, Any]:
    # The revision stays out of the selector: selectors are immutable, revisions are not.
    sel = spec.selector.wire()
    sel["matchLabels"] = {**sel.get("matchLabels", {}), names.LABEL_ROLLOUT: rollout, names.LABEL_TRACK: track}
    if not sel.get("matchExpressions"):
        sel.pop("matchExpressions", None)
    return sel


def deployment_body(rollout: dict[str, Any], spec: RolloutSpec, action: ApplyDeployment) -> dict[str, Any]:
    name = rollout["metadata"]["name"]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": names.deployment_name(name, action.track),
            "namespace": rollout["metadata"]["namespace"],
            "labels": {names.LABEL_ROLLOUT: name, names.LABEL_TRACK: action.track},
            "ownerReferences": [owner_reference(rollout)],
        },
        "spec": {
            "replicas": action.replicas,
            "selector": deployment_selector(spec, name, action.track),
            "template": pod_template(dict(action.template), name, action.track, action.revision),
        },
    }


def service_body(rollout: dict[str, Any], action: EnsureService) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": action.name,
            "namespace": rollout["metadata"]["namespace"],
            "labels": {names.LABEL_ROLLOUT: rollout["metadata"]["name"]},
            "ownerReferences": [owner_reference(rollout)],
        },
        "spec": {
            "selector": action.selector,
            "ports": [{"name": "http", "port": action.port, "targetPort": action.target_port}],
        },
    }


def observe_deployment(dep: dict[str, Any] | None) -> DeploymentObs | None:
    if dep is None:
        return None
    spec, status, meta = dep.get("spec", {}), dep.get("status", {}) or {}, dep.get("metadata", {})
    labels = (spec.get("template", {}).get("metadata") or {}).get("labels") or {}
    return DeploymentObs(
        revision=labels.get(names.LABEL_REVISION),
        replicas=int(spec.get("replicas", 1)),
        ready_replicas=int(status.get("readyReplicas") or 0),
        available_replicas=int(status.get("availableReplicas") or 0),
        updated_replicas=int(status.get("updatedReplicas") or 0),
        up_to_date=int(status.get("observedGeneration") or 0) >= int(meta.get("generation") or 0),
        template=spec.get("template"),
    )
