"""kopf wiring: read, call reconcile (which calls the planner), write. Nothing is decided here."""

from __future__ import annotations

import logging
import os
from typing import Any

import kopf
import structlog

from controlled_friction import admission, names
from controlled_friction.adapters.kube import Conflict, Kube
from controlled_friction.operator import metrics
from controlled_friction.operator.reconcile import Context, reconcile
from controlled_friction.operator.settings import RUN

log = structlog.get_logger("controlled_friction.operator")
TICK_SECONDS = float(os.environ.get("CF_TICK_SECONDS", "2"))


@kopf.on.startup()
def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 60
    settings.watching.client_timeout = 90
    settings.watching.connect_timeout = 10
    settings.networking.error_backoffs = [1, 2, 5, 10]
    settings.execution.max_workers = 32
    settings.peering.name = RUN.peering or "controlled-friction"
    settings.peering.standalone = RUN.peering is None
    settings.peering.priority = RUN.priority
    kube = Kube()
    memo["ctx"] = Context(kube=kube, key=RUN.load_key(kube))
    if RUN.webhook_mode != "none":
        from controlled_friction.operator import webhooks  # registers the admission handlers

        webhooks.configure_admission(settings, key=memo["ctx"].key, **RUN.webhook_options())
    if RUN.metrics_port:
        metrics.serve(RUN.metrics_port, RUN.metrics_addr)
    log.info("operator started", tick_seconds=TICK_SECONDS, webhooks=RUN.webhook_mode, peering=RUN.peering)


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    # kopf's own client-library login reads $KUBECONFIG at import time; `run --kubeconfig` sets it later.
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


@kopf.index(names.GROUP, names.VERSION, names.POLICY_PLURAL)
def policy_index(name: str, spec: kopf.Spec, **_: Any) -> dict[str, dict[str, Any]]:
    return {name: dict(spec)}


@kopf.index("", "v1", "namespaces")
def namespace_index(name: str, labels: kopf.Labels, **_: Any) -> dict[str, dict[str, str]]:
    return {name: dict(labels)}


def _first(store: kopf.Store[Any] | None) -> Any:
    for item in store or ():
        return item
    return None


@kopf.timer(names.GROUP, names.VERSION, names.ROLLOUT_PLURAL, interval=TICK_SECONDS, initial_delay=0)  # type: ignore[arg-type]
def tick(
    body: kopf.Body,
    namespace: str,
    name: str,
    memo: kopf.Memo,
    policy_index: kopf.Index[str, dict[str, Any]],
    namespace_index: kopf.Index[str, dict[str, str]],
    **_: Any,
) -> None:
    bound = log.bind(namespace=namespace, rollout=name)
    ctx: Context = memo["ctx"]
    policies = {key: _first(store) for key, store in policy_index.items()}
    ns_labels = _first(namespace_index.get(namespace)) or {}
    with metrics.RECONCILE_SECONDS.time():
        try:
            decision = reconcile(ctx, dict(body), policies, ns_labels)
        except Conflict as exc:
            metrics.RECONCILE_ERRORS.labels("conflict").inc()
            bound.warning("still conflicting; next tick re-plans", error=str(exc))
            return
        except Exception as exc:
            # One bad object must never stop the operator: log, count, and try again next tick.
            metrics.RECONCILE_ERRORS.labels(type(exc).__name__).inc()
            bound.exception("reconcile failed; retrying next tick")
            return
    st = decision.status
    bound.bind(revision=st.canary_revision or st.stable_revision).debug(
        "reconciled", phase=st.phase, step=st.current_step_index, weight=st.canary_weight
    )


@kopf.on.event(names.GROUP, names.VERSION, names.ROLLOUT_PLURAL)  # type: ignore[arg-type]
def forget_deleted(type: str, namespace: str, name: str, **_: Any) -> None:
    if type == "DELETED":
        metrics.forget(namespace, name)


@kopf.on.event(names.GROUP, names.VERSION, names.POLICY_PLURAL)
def policy_status(type: str, name: str, spec: kopf.Spec, status: kopf.Status, memo: kopf.Memo, **_: Any) -> None:
    """Say on the policy itself whether it is valid (invalid matching policies hold rollouts)."""
    if type == "DELETED" or "ctx" not in memo:
        return
    problems = [p.message for p in admission.policy_spec_problems(dict(spec))]
    want = {"valid": not problems, "message": "; ".join(problems) or "policy is valid"}
    if dict(status).get("valid") != want["valid"] or dict(status).get("message") != want["message"]:
        try:
            memo["ctx"].kube.patch_policy_status(name, want)
        except Exception:
            log.exception("could not write policy status", policy=name)
