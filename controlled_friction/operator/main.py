"""`controlled-friction run`: start the operator (kopf) with this process's settings."""

from __future__ import annotations

import os
import secrets

import kopf

from controlled_friction import logs
from controlled_friction.operator.settings import RUN, WebhookMode


def run(
    *,
    kubeconfig: str | None = None,
    peering: str | None = None,
    priority: int = 0,
    webhook_mode: WebhookMode = "none",
    webhook_host: str = "127.0.0.1",
    webhook_port: int = 9443,
    metrics_port: int | None = 8080,
    health_port: int | None = 8081,
    verbose: bool = False,
) -> None:
    if kubeconfig:
        os.environ["KUBECONFIG"] = kubeconfig
    if peering is not None and priority == 0:
        # kopf pauses every operator that sees a live peer of the same priority, so replicas started
        # alike (a Deployment) would all stand by: give each its own, and the highest one acts.
        priority = 1 + secrets.randbelow(2**31 - 1)
    RUN.peering, RUN.priority = peering, priority
    RUN.webhook_mode, RUN.webhook_host, RUN.webhook_port = webhook_mode, webhook_host, webhook_port
    RUN.metrics_port = metrics_port
    from controlled_friction.operator import handlers  # noqa: F401  (registers the handlers)

    kopf.configure(verbose=verbose, log_format=kopf.LogFormat.JSON, log_prefix=False)
    logs.configure(verbose)  # after kopf: one JSON handler on the root logger, not two
    kopf.run(
        clusterwide=True,
        standalone=peering is None,
        peering_name=peering,
        priority=priority,
        liveness_endpoint=f"http://0.0.0.0:{health_port}/healthz" if health_port else None,
    )
