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
from controlled_friction.operator import indexes, webhook_filters, webhooks
from controlled_friction.operator.settings import RUN

log = structlog.get_logger("controlled_friction.admission")
__all__ = ["indexes", "webhooks"]  # importing them registers the indexes and the admission handlers


@kopf.on.startup()
async def admission_startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    loop = asyncio.get_running_loop()
    kube = Kube()
    memo["approval_key"] = await loop.run_in_executor(None, RUN.load_key, kube)
    memo["operator_username"] = await loop.run_in_executor(None, kube.whoami)
    webhook_filters.install(memo["operator_username"])
    webhooks.configure_admission(settings, **RUN.webhook_options())
    log.info("admission webhooks configured", mode=RUN.webhook_mode, operator=memo["operator_username"])
