"""kopf admission webhooks for Rollouts and FrictionPolicies: adapt kopf's kwargs, decide in `admission`.

All webhooks fail closed (`failurePolicy: Fail`) and are persistent: kopf leaves them registered when
the operator stops, so while it is down Rollouts cannot be changed rather than changed unchecked.
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import kopf

from controlled_friction import admission, names
from controlled_friction.models.policy import NamedPolicy
from controlled_friction.operator.indexes import first

MANAGED_NAME = names.GROUP  # name of the Mutating/ValidatingWebhookConfiguration kopf maintains
WRITES: list[kopf.Operation] = ["CREATE", "UPDATE"]



def _key(memo: kopf.Memo) -> bytes:
    key = memo.get("approval_key")
    if key is None:  # start-up has not loaded it yet: refuse rather than sign with nothing
        raise kopf.AdmissionError("the operator is starting; try again shortly", code=503)
    return bytes(key)


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
    req = admission_input(operation, userinfo, old, new, subresource)
    result = admission.mutate_rollout(req, _key(memo), datetime.now(UTC))
    for name, value in result.annotations.items():
        patch.meta.annotations[name] = value
    warnings.extend(result.warnings)


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
    policy_index: kopf.Index[str, dict[str, Any]] | None = None,
    namespace_index: kopf.Index[str, dict[str, str]] | None = None,
    **_: Any,
) -> None:
    req = admission_input(operation, userinfo, old, new, subresource)
    policies: list[NamedPolicy] = []
    ns_labels: dict[str, str] = {}
    if admission.needs_policy_context(req):
        namespace = str(((req.new or {}).get("metadata") or {}).get("namespace") or "")
        policies, ns_labels = _context(namespace, policy_index, namespace_index)
    _deny(admission.validate_rollout(req, _key(memo), policies, ns_labels, datetime.now(UTC)))


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


class ServiceWebhookServer(kopf.WebhookServer):
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
        server = kopf.WebhookServer(host=host, **common)
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
