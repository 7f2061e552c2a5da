"""Watch-fed indexes that both the controller and the admission webhooks read (kopf keeps them current)."""

from __future__ import annotations

from typing import Any

import kopf

from controlled_friction import names


def first(store: Any) -> Any:
    """The single value kopf stored under an index key (None if absent)."""
    for item in store or ():
        return item
    return None


@kopf.index(names.GROUP, names.VERSION, names.POLICY_PLURAL)
def policy_index(name: str, spec: kopf.Spec, **_: Any) -> dict[str, dict[str, Any]]:
    return {name: dict(spec)}


@kopf.index("", "v1", "namespaces")
def namespace_index(name: str, labels: kopf.Labels, **_: Any) -> dict[str, dict[str, str]]:
    return {name: dict(labels)}
