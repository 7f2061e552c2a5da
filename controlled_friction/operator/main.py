"""`controlled-friction run`: start the operator (kopf) with this process's settings."""

from __future__ import annotations

import os
import secrets

import kopf
import structlog

from controlled_friction import logs
from controlled_friction.operator.settings import RUN, Component, WebhookMode, default_webhook_mode


def run(
    *,
    kubeconfig: str | None = None,
    peering: str | None = None,
    priority: int = 0,
    webhook_mode: WebhookMode | None = None,
    webhook_host: str = "127.0.0.1",
    webhook_port: int = 9443,
    metrics_port: int | None = 8080,
    health_port: int | None = 8081,
    selector: str | None = None,
    namespaces: tuple[str, ...] = (),
    workers: int | None = None,
    component: Component = "all",
    verbose: bool = False,
) -> None:
    if kubeconfig:
        os.environ["KUBECONFIG"] = kubeconfig
    if peering is not None and priority == 0:
        # kopf pauses every operator that sees a live peer of the same priority, so replicas started
        # alike (a Deployment) would all stand by: give each its own, and the highest one acts.
        priority = 1 + secrets.randbelow(2**31 - 1)
    mode = webhook_mode or default_webhook_mode()
    RUN.peering, RUN.priority = peering, priority
    RUN.webhook_mode, RUN.webhook_host, RUN.webhook_port = mode, webhook_host, webhook_port
    RUN.metrics_port = metrics_port
    RUN.selector, RUN.namespaces = selector or None, tuple(namespaces)
    if workers:
        RUN.workers = workers
    # Importing a module registers its kopf handlers.
    if component in ("all", "controller"):
        from controlled_friction.operator import handlers  # noqa: F401
    if component in ("all", "webhooks") and mode != "none":
        from controlled_friction.operator import admission_app  # noqa: F401
    if component == "webhooks" and metrics_port:
        from controlled_friction.operator import metrics  # the controller's start-up serves them otherwise

        metrics.serve(metrics_port, RUN.metrics_addr)

    kopf.configure(verbose=verbose, log_format=kopf.LogFormat.JSON, log_prefix=False)
    logs.configure(verbose)  # after kopf: one JSON handler on the root logger, not two
    if webhook_mode is None:
        structlog.get_logger("controlled_friction.operator").info(
            "webhook mode chosen by default", webhook_mode=mode,
            why="in a pod: the API server calls the chart's Service" if mode == "service"
            else "outside a cluster: the API server calls this process on " + webhook_host)
    kopf.run(
        clusterwide=not namespaces,
        namespaces=list(namespaces),
        standalone=peering is None or component == "webhooks",  # every webhook replica serves
        peering_name=peering,
        priority=priority,
        identity=RUN.identity,  # type: ignore[arg-type]  # kopf's Identity is a NewType of str
        liveness_endpoint=f"http://0.0.0.0:{health_port}/healthz" if health_port else None,
    )
