"""Send the admission webhooks only the requests that matter (CEL `matchConditions`, GA since 1.30).

The operator's own writes (clearing a one-shot action, restoring a drifted Deployment) and updates
that touch neither the spec, the labels nor the annotations of a Rollout (finalizers, managed-fields
churn) are decided by the API server alone, so a reconcile wave never queues behind admission and
admission never waits on the operator's own traffic. Status writes never reach the webhooks at all
(their rules name the main resource only).

kopf builds the webhook configurations it manages; its builder is wrapped once so every entry it
writes carries our conditions and a short timeout.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kopf._core.engines import admission as kopf_admission

from controlled_friction import names

TIMEOUT_SECONDS = 10  # fail closed fast rather than hold a kubectl for kopf's 30 s

_NOT_OPERATOR = "request.userInfo.username != '{user}'"
# CEL: a map that may be absent is compared as empty.
_META_CHANGED = (
    "(has(object.metadata.{f}) ? object.metadata.{f} : {{}}) != "
    "(has(oldObject.metadata.{f}) ? oldObject.metadata.{f} : {{}})"
)
_OWNED_NAME = (f"request.name.endsWith('-{names.TRACK_STABLE}') || "
               f"request.name.endsWith('-{names.TRACK_CANARY}')")
_ROLLOUT_CHANGED = (
    "request.operation != 'UPDATE' || object.spec != oldObject.spec || "
    + _META_CHANGED.format(f="annotations") + " || " + _META_CHANGED.format(f="labels")
)


def conditions(webhook_name: str, operator_user: str) -> list[dict[str, str]]:
    """The matchConditions for one of our webhooks (by the name kopf gives it)."""
    not_operator = {"name": "not-the-operator",
                    "expression": _NOT_OPERATOR.format(user=operator_user.replace("'", ""))}
    if webhook_name.startswith(("approvals.", "rollout-rules.")):
        return [not_operator, {"name": "rollout-changed", "expression": _ROLLOUT_CHANGED}]
    if webhook_name.startswith("policy-rules."):
        return []
    if webhook_name.startswith("owned-deployments-scale."):
        # The scale subresource has no labels to select on: at least only the names the operator uses.
        return [not_operator, {"name": "operator-deployment-name", "expression": _OWNED_NAME}]
    return [not_operator]  # the guards on owned workloads: the operator may change what it owns


# The guards of owned workloads see only objects carrying the contract label, in the old or the new
# object. (kopf's own `labels=` filter also checks the new object in the webhook, so a request that
# removes the label would slip past the guard; the selector is set here instead.)
OWNED_SELECTOR = {"matchExpressions": [{"key": names.LABEL_ROLLOUT, "operator": "Exists"}]}
OWNED_WEBHOOKS = ("owned-deployments.", "owned-services.")


def install(operator_user: str) -> None:
    """Wrap kopf's webhook builder (idempotent)."""
    original: Callable[..., list[dict[str, Any]]] = getattr(
        kopf_admission.build_webhooks, "__wrapped__", kopf_admission.build_webhooks
    )

    def build(*args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        hooks = original(*args, **kwargs)
        for hook in hooks:
            match = conditions(str(hook.get("name", "")), operator_user)
            if match:
                hook["matchConditions"] = match
            if str(hook.get("name", "")).startswith(OWNED_WEBHOOKS):
                hook["objectSelector"] = OWNED_SELECTOR
            hook["timeoutSeconds"] = TIMEOUT_SECONDS
        return hooks

    build.__wrapped__ = original  # type: ignore[attr-defined]
    kopf_admission.build_webhooks = build
