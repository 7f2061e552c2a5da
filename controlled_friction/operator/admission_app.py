"""The admission side of the operator: load what the webhooks need and serve them.

Imported by `run` for `--component all` (one process does both) or `--component webhooks` (a process
that only serves admission, scaled on its own, so no reconcile wave can starve it). It reads the
policies and namespaces from the watch-fed indexes, never from the API per request.
"""

from __future__ import annotations

import asyncio
from typing import Any

import kopf
import structlog

from controlled_friction.adapters.kube import Kube
from controlled_friction.operator import indexes, login, webhook_filters, webhooks
from controlled_friction.operator.settings import RUN
from controlled_friction.operator.webhooks import MANAGED_NAME

log = structlog.get_logger("controlled_friction.admission")
__all__ = ["indexes", "login", "webhooks"]  # importing them registers the indexes and the admission handlers


@kopf.on.startup()
async def admission_startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    loop = asyncio.get_running_loop()
    kube = Kube()
    memo["approval_key"] = await loop.run_in_executor(None, RUN.load_key, kube)
    memo["operator_username"] = await loop.run_in_executor(None, kube.whoami)
    webhook_filters.install(memo["operator_username"])
    webhooks.configure_admission(settings, **RUN.webhook_options())
    log.info("admission webhooks configured", mode=RUN.webhook_mode, operator=memo["operator_username"])
    if RUN.webhook_owner:
        memo["webhook_owner_task"] = asyncio.create_task(_own_configurations(kube, RUN.webhook_owner))


async def _own_configurations(kube: Kube, peering: str) -> None:
    """Tie the webhook configurations (which kopf creates and keeps) to the installation's peering
    object, so uninstalling removes them too: webhooks that fail closed must not outlive the operator,
    or every Rollout, owned Deployment and their namespaces could no longer be changed or deleted."""
    loop = asyncio.get_running_loop()
    for _ in range(120):
        try:
            obj = await loop.run_in_executor(None, kube.peering_object, peering)
            if obj is not None:
                owner = {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering",
                         "name": obj["metadata"]["name"], "uid": obj["metadata"]["uid"]}
                done = await loop.run_in_executor(None, kube.own_webhook_configurations, MANAGED_NAME, owner)
                if len(done) == 2:
                    log.info("webhook configurations owned by the peering object", peering=peering)
                    return
        except Exception as exc:  # not fatal: the webhooks work, only their clean-up would be manual
            log.warning("could not set the webhook configurations' owner yet", error=str(exc))
        await asyncio.sleep(2)
    log.error("webhook configurations have no owner: remove them by hand after uninstalling", peering=peering)
