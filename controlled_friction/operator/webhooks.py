"""kopf admission webhooks: adapt kopf's kwargs, decide in `admission` (Rollouts, FrictionPolicies,
deletion approvals, change records) and `guard` (the workloads a Rollout owns).

The webhooks are persistent: kopf leaves them registered when the operator stops, so while it is
down Rollouts and owned workloads cannot be changed rather than changed unchecked. All fail closed
(`failurePolicy: Fail`) except the one on `deployments/scale`: the scale subresource carries no
labels, so that webhook cannot be scoped by an object selector and sees every Deployment's scaling
(HPAs included); it fails open so that an outage never blocks unrelated workloads, and a stable or
canary scaled meanwhile is put back by the operator (drift) when it returns. The owned-workload
webhooks are scoped by an object selector on the contract label `controlled-friction.io/rollout`
(`webhook_filters.OWNED_SELECTOR`), so unrelated Deployments and Services never reach them.
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import kopf

from controlled_friction import admission, guard, names
from controlled_friction.adapters.kube import NotFound
from controlled_friction.models.policy import NamedPolicy
from controlled_friction.operator.indexes import first
from controlled_friction.operator.webhook_direct import ANSWERS, DirectPath

MANAGED_NAME = names.GROUP  # name of the Mutating/ValidatingWebhookConfiguration kopf maintains
WRITES: list[kopf.Operation] = ["CREATE", "UPDATE"]
CHANGES: list[kopf.Operation] = ["UPDATE", "DELETE"]
DELETES: list[kopf.Operation] = ["DELETE"]


def _key(memo: Mapping[str, Any]) -> bytes:
    key = memo.get("approval_key")
    if key is None:  # start-up has not loaded it yet: refuse rather than sign with nothing
        raise kopf.AdmissionError("the operator is starting; try again shortly", code=503)
    return bytes(key)


def operator_users(memo: kopf.Memo) -> frozenset[str]:
    """Who the operator is: the identity it authenticates as (put in memo at start-up), else the
    ServiceAccount of the contract."""
    return frozenset({str(memo.get("operator_username") or names.OPERATOR_USERNAME)})


def _context(namespace: str, policy_index: kopf.Index[str, dict[str, Any]] | None,
             namespace_index: kopf.Index[str, dict[str, str]] | None) -> tuple[list[NamedPolicy], dict[str, str]]:
    """Policies and namespace labels from the watch-fed indexes (kopf serves no request before their
    first lists are in); never an API call per admission request, so admission stays fast under load."""
    if policy_index is None or namespace_index is None:
        # Fail closed: without the policies we cannot know who may approve.
        raise kopf.AdmissionError("cannot check the approval: the policy cache is not ready; try again shortly",
                                  code=503)
    items = [{"metadata": {"name": name}, "spec": first(store)} for name, store in policy_index.items()]
    labels = dict(first(namespace_index.get(namespace)) or {})
    return admission.policies_from_objects(items), labels


def _raw(body: Mapping[str, Any] | None) -> dict[str, Any] | None:
    return None if body is None else copy.deepcopy(dict(body))


def admission_input(
    operation: str | None,
    userinfo: Mapping[str, Any],
    old: Mapping[str, Any] | None,
    new: Mapping[str, Any] | None,
    subresource: str | None,
) -> admission.AdmissionInput:
    return admission.AdmissionInput(
        operation=operation or "",
        user=str(userinfo.get("username") or ""),
        groups=tuple(str(g) for g in userinfo.get("groups") or ()),
        old=_raw(old),
        new=_raw(new),
        subresource=subresource or None,
    )


def _namespace_of(req: admission.AdmissionInput) -> str:
    return str(((req.new or req.old or {}).get("metadata") or {}).get("namespace") or "")


def _deny(problems: list[admission.Problem]) -> None:
    verdict = admission.denial(problems)
    if verdict is not None:
        message, code = verdict
        raise kopf.AdmissionError(message, code=code)


@kopf.on.mutate(
    names.GROUP,
    names.VERSION,
    names.ROLLOUT_PLURAL,
    id="approvals",
    operations=WRITES,
    persistent=True,
    side_effects=False,
    ignore_failures=False,
)
def mutate_rollout(
    *,
    userinfo: kopf.UserInfo,
    subresource: str | None,
    operation: str | None = None,
    old: kopf.Body | None = None,
    new: kopf.Body | None = None,
    patch: kopf.Patch,
    warnings: list[str],
    memo: kopf.Memo,
    **_: Any,
) -> None:
    result = approvals(admission_input(operation, userinfo, old, new, subresource), memo)
    for name, value in result.annotations.items():
        patch.meta.annotations[name] = value
    warnings.extend(result.warnings)


def approvals(req: admission.AdmissionInput, memo: Mapping[str, Any]) -> admission.Mutation:
    """The `approvals` webhook's answer (kopf's handler above and the direct path share it)."""
    return admission.mutate_rollout(req, _key(memo), datetime.now(UTC))


@kopf.on.validate(
    names.GROUP,
    names.VERSION,
    names.ROLLOUT_PLURAL,
    id="rollout-rules",
    operations=WRITES,
    persistent=True,
    side_effects=False,
    ignore_failures=False,
)
def validate_rollout(
    *,
    userinfo: kopf.UserInfo,
    subresource: str | None,
    operation: str | None = None,
    old: kopf.Body | None = None,
    new: kopf.Body | None = None,
    memo: kopf.Memo,
    warnings: list[str],
    policy_index: kopf.Index[str, dict[str, Any]] | None = None,
    namespace_index: kopf.Index[str, dict[str, str]] | None = None,
    **_: Any,
) -> None:
    req = admission_input(operation, userinfo, old, new, subresource)
    warnings.extend(rollout_rules(req, memo, policy_index, namespace_index))


def rollout_rules(req: admission.AdmissionInput, memo: Mapping[str, Any],
                  policy_index: kopf.Index[str, dict[str, Any]] | None,
                  namespace_index: kopf.Index[str, dict[str, str]] | None) -> list[str]:
    """The `rollout-rules` webhook: raises AdmissionError to refuse, else returns the warnings."""
    policies: list[NamedPolicy] = []
    ns_labels: dict[str, str] = {}
    if admission.needs_policy_context(req):
        policies, ns_labels = _context(_namespace_of(req), policy_index, namespace_index)
    _deny(admission.validate_rollout(req, _key(memo), policies, ns_labels, datetime.now(UTC)))
    return admission.acceptance_notes(req)


def _approvals_answer(req: admission.AdmissionInput, memo: Mapping[str, Any],
                      indices: Mapping[str, Any]) -> tuple[Mapping[str, str | None], list[str]]:
    result = approvals(req, memo)
    return result.annotations, list(result.warnings)


def _rules_answer(req: admission.AdmissionInput, memo: Mapping[str, Any],
                  indices: Mapping[str, Any]) -> tuple[Mapping[str, str | None], list[str]]:
    return {}, rollout_rules(req, memo, indices.get("policy_index"), indices.get("namespace_index"))


# Every approval and template change passes these two: answered without kopf's per-request work.
ANSWERS.update({"approvals": _approvals_answer, "rollout-rules": _rules_answer})


@kopf.on.validate(
    names.GROUP,
    names.VERSION,
    names.ROLLOUT_PLURAL,
    id="rollout-deletion",
    operations=DELETES,
    persistent=True,
    side_effects=False,
    ignore_failures=False,
)
def validate_rollout_delete(
    *,
    userinfo: kopf.UserInfo,
    subresource: str | None,
    operation: str | None = None,
    old: kopf.Body | None = None,
    memo: kopf.Memo,
    policy_index: kopf.Index[str, dict[str, Any]] | None = None,
    namespace_index: kopf.Index[str, dict[str, str]] | None = None,
    terminating_namespace_index: kopf.Index[str, bool] | None = None,
    **_: Any,
) -> None:
    req = admission_input(operation, userinfo, old, None, subresource)
    namespace = _namespace_of(req)
    policies, ns_labels = _context(namespace, policy_index, namespace_index)
    terminating = terminating_namespace_index is not None and namespace in terminating_namespace_index
    _deny(admission.validate_rollout_delete(req, _key(memo), policies, ns_labels, datetime.now(UTC), terminating))


# ---------------------------------------------------------------- the workloads a Rollout owns


def _owner_live(memo: kopf.Memo, namespace: str, owner: guard.Owner, rollout_uid_index: Any) -> bool:
    """Whether the owning Rollout (same uid) exists and is not being deleted, from the watch-fed index.
    A Rollout the index does not hold is asked of the API when this process has a client (a shard
    does not watch every Rollout); when that read fails the owner counts as live (fail closed)."""
    found = first(rollout_uid_index.get((namespace, owner.name))) if rollout_uid_index is not None else None
    if found is not None and found[0] == owner.uid:
        return not found[1]
    op = memo.get("operator")
    kube = memo.get("kube") or (op.kube if op is not None else None)
    if kube is None:
        return False  # the index is complete where no client is kept (the webhooks-only process)
    try:
        meta = kube.get_rollout(namespace, owner.name).get("metadata") or {}
    except NotFound:
        return False
    except Exception:  # unreachable API: keep the workload guarded
        return True
    return bool(meta.get("uid") == owner.uid and not meta.get("deletionTimestamp"))


def _guard(kind: str, req: admission.AdmissionInput, memo: kopf.Memo, owner: guard.Owner | None,
           rollout_uid_index: Any, terminating_namespace_index: Any) -> None:
    if owner is None or req.user in operator_users(memo):
        return
    namespace = _namespace_of(req)
    # A terminating namespace is emptied by the namespace controller, in any order (out of scope).
    terminating = terminating_namespace_index is not None and namespace in terminating_namespace_index
    live = not terminating and _owner_live(memo, namespace, owner, rollout_uid_index)
    _deny(guard.workload_problems(req, kind=kind, owner=owner, owner_live=live, operator_users=operator_users(memo)))


@kopf.on.validate("apps", "v1", "deployments", id="owned-deployments", operations=CHANGES,
                  persistent=True, side_effects=False, ignore_failures=False)
def guard_deployment(
    *,
    userinfo: kopf.UserInfo,
    subresource: str | None,
    operation: str | None = None,
    old: kopf.Body | None = None,
    new: kopf.Body | None = None,
    memo: kopf.Memo,
    rollout_uid_index: Any = None,
    terminating_namespace_index: Any = None,
    **_: Any,
) -> None:
    req = admission_input(operation, userinfo, old, new, subresource)
    _guard("Deployment", req, memo, guard.owning_rollout(req.old or req.new), rollout_uid_index,
           terminating_namespace_index)


@kopf.on.validate("apps", "v1", "deployments", id="owned-deployments-scale", subresource=guard.SCALE,
                  operations=["UPDATE"], persistent=True, side_effects=False, ignore_failures=True)
def guard_deployment_scale(
    *,
    userinfo: kopf.UserInfo,
    subresource: str | None,
    operation: str | None = None,
    old: kopf.Body | None = None,
    new: kopf.Body | None = None,
    memo: kopf.Memo,
    owner_index: kopf.Index[tuple[str | None, str], Any] | None = None,
    rollout_uid_index: Any = None,
    terminating_namespace_index: Any = None,
    **_: Any,
) -> None:
    req = admission_input(operation, userinfo, old, new, subresource)
    meta = (req.new or req.old or {}).get("metadata") or {}
    found = first(owner_index.get((meta.get("namespace"), str(meta.get("name") or "")))) if owner_index else None
    owner = guard.Owner(*found) if found else None
    _guard("Deployment", req, memo, owner, rollout_uid_index, terminating_namespace_index)


@kopf.on.validate("", "v1", "services", id="owned-services", operations=CHANGES,
                  persistent=True, side_effects=False, ignore_failures=False)
def guard_service(
    *,
    userinfo: kopf.UserInfo,
    subresource: str | None,
    operation: str | None = None,
    old: kopf.Body | None = None,
    new: kopf.Body | None = None,
    memo: kopf.Memo,
    rollout_uid_index: Any = None,
    terminating_namespace_index: Any = None,
    **_: Any,
) -> None:
    req = admission_input(operation, userinfo, old, new, subresource)
    _guard("Service", req, memo, guard.owning_rollout(req.old or req.new), rollout_uid_index,
           terminating_namespace_index)


@kopf.on.validate(
    names.GROUP,
    names.VERSION,
    names.POLICY_PLURAL,
    id="policy-rules",
    operations=WRITES,
    persistent=True,
    side_effects=False,
    ignore_failures=False,
)
def validate_policy(
    *,
    userinfo: kopf.UserInfo,
    subresource: str | None,
    operation: str | None = None,
    old: kopf.Body | None = None,
    new: kopf.Body | None = None,
    **_: Any,
) -> None:
    _deny(admission.validate_policy(admission_input(operation, userinfo, old, new, subresource)))


# ---------------------------------------------------------------- webhook server


class LocalWebhookServer(DirectPath, kopf.WebhookServer):
    """`kopf.WebhookServer`, answering the hot Rollout webhooks directly (`webhook_direct`)."""


class ServiceWebhookServer(DirectPath, kopf.WebhookServer):
    """Serves like `kopf.WebhookServer`, but tells the API server to reach it through a Service."""

    def __init__(self, *, service_name: str, service_namespace: str, service_port: int = 443, **kw: Any) -> None:
        super().__init__(**kw)
        self.service_name = service_name
        self.service_namespace = service_namespace
        self.service_port = service_port

    async def __call__(self, fn: kopf.WebhookFn) -> AsyncIterator[kopf.WebhookClientConfig]:
        async for config in super().__call__(fn):
            service: dict[str, Any] = {
                "namespace": self.service_namespace,
                "name": self.service_name,
                "port": self.service_port,
            }
            if self.path:
                service["path"] = self.path.rstrip("/")  # kopf appends "/<handler id>"
            out: dict[str, Any] = {"service": service}
            if config.get("caBundle"):
                out["caBundle"] = config["caBundle"]
            yield out  # type: ignore[misc]


def configure_admission(
    settings: kopf.OperatorSettings,
    *,
    host: str,
    port: int,
    certfile: str | Path,
    keyfile: str | Path,
    cafile: str | Path,
    mode: Literal["local", "service"],
    service_name: str | None = None,
    service_namespace: str | None = None,
    service_port: int = 443,
) -> None:
    """Serve the webhooks over HTTPS and let kopf keep the webhook configurations registered.

    `local`: the API server calls https://<host>:<port> (sandbox). `service`: it calls the Service
    `<service_name>.<service_namespace>:<service_port>`, which must route to `port` on the operator.
    """
    common: dict[str, Any] = {
        "addr": host,
        "port": port,
        "certfile": str(certfile),
        "pkeyfile": str(keyfile),
        "cafile": str(cafile),
    }
    server: kopf.WebhookServer
    if mode == "local":
        server = LocalWebhookServer(host=host, **common)
    elif mode == "service":
        if not service_name or not service_namespace:
            raise ValueError("service mode needs service_name and service_namespace")
        server = ServiceWebhookServer(
            service_name=service_name, service_namespace=service_namespace, service_port=service_port, **common
        )
    else:
        raise ValueError(f"unknown webhook mode {mode!r}; use 'local' or 'service'")
    settings.admission.server = server
    settings.admission.managed = MANAGED_NAME
