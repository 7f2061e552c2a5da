"""Watch-fed indexes that both the controller and the admission webhooks read (kopf keeps them current).

Index functions are async (they do no I/O): kopf runs sync handlers in a thread pool shared with the
admission webhooks, and an admission burst must never delay the watches that feed the indexes."""

from __future__ import annotations

from typing import Any

import kopf

from controlled_friction import names
from controlled_friction.guard import owning_rollout


def first(store: Any) -> Any:
    """The single value kopf stored under an index key (None if absent)."""
    for item in store or ():
        return item
    return None


@kopf.index(names.GROUP, names.VERSION, names.POLICY_PLURAL)
async def policy_index(name: str, spec: kopf.Spec, **_: Any) -> dict[str, dict[str, Any]]:
    return {name: dict(spec)}


@kopf.index("", "v1", "namespaces")
async def namespace_index(name: str, labels: kopf.Labels, **_: Any) -> dict[str, dict[str, str]]:
    return {name: dict(labels)}


@kopf.index("apps", "v1", "deployments", labels={names.LABEL_ROLLOUT: kopf.PRESENT})
async def owner_index(namespace: str | None, name: str, meta: kopf.Meta, **_: Any) -> dict[tuple[str | None, str], Any]:
    """(namespace, name) of each labelled Deployment -> its owning Rollout's (name, uid), or None: the
    scale subresource's body carries neither labels nor ownerReferences, so its webhook looks here."""
    owner = owning_rollout({"metadata": dict(meta)})
    return {(namespace, name): None if owner is None else (owner.name, owner.uid)}


@kopf.index(names.GROUP, names.VERSION, names.ROLLOUT_PLURAL)
async def rollout_uid_index(
    namespace: str | None, name: str, meta: kopf.Meta, **_: Any
) -> dict[tuple[str | None, str], Any]:
    """(namespace, name) of each Rollout -> (uid, being deleted): whether the owner of a workload is
    still there, for the owned-workload webhooks (in whichever process serves them)."""
    return {(namespace, name): (str(meta.get("uid") or ""), bool(meta.get("deletionTimestamp")))}


@kopf.index("", "v1", "namespaces")
async def terminating_namespace_index(name: str, meta: kopf.Meta, **_: Any) -> dict[str, bool]:
    """Namespaces being deleted: the namespace controller then removes their Rollouts (out of scope)."""
    return {name: True} if meta.get("deletionTimestamp") else {}
