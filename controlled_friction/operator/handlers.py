"""kopf wiring: watch-fed indexes, wake-ups on change, and the scheduler that reconciles. Nothing is
decided here.

A Rollout is reconciled when something it reads changes (itself, its Deployments, its Service, its
HTTPRoute, a FrictionPolicy, its Namespace's labels) or at the instant the planner asked for (bake end, next
analysis, approval expiry). There is no per-Rollout timer and no finalizer: a settled Rollout costs
nothing between events, and a stopped operator never blocks a deletion.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import kopf
import structlog

from controlled_friction import admission, names, traffic_routing
from controlled_friction.adapters.kube import Conflict, Kube
from controlled_friction.decisions import DeploymentObs
from controlled_friction.measurement import Samples
from controlled_friction.operator import indexes, login, metrics
from controlled_friction.operator.peering import PeeringGate
from controlled_friction.operator.reconcile import Context, fetch_samples, measurement_request, reconcile
from controlled_friction.operator.scheduler import Key, Look, Next, Release, Scheduler
from controlled_friction.operator.settings import RUN
from controlled_friction.operator.world import Snapshot, World
from controlled_friction.workloads import observe_deployment

log = structlog.get_logger("controlled_friction.operator")
IndexKey = tuple[str | None, str]  # kopf passes namespace None for cluster-scoped objects
__all__ = ["indexes", "login"]  # importing them registers their handlers


@dataclass
class Operator:
    """Everything the handlers share, built once at start-up and kept in kopf's memo."""

    kube: Kube
    ctx: Context
    world: World
    scheduler: Scheduler
    gate: PeeringGate
    pool: ThreadPoolExecutor


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **kwargs: Any) -> None:
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 60
    settings.watching.client_timeout = 90
    settings.watching.connect_timeout = 10
    settings.networking.error_backoffs = [1, 2, 5, 10]
    # kopf runs sync handlers (the admission webhooks) in this pool; indexes and wake-ups are async and
    # run on the loop, so no admission burst can hold up the watches. Reconciles use their own `pool`.
    settings.execution.max_workers = 16
    settings.peering.name = RUN.peering or "controlled-friction"
    settings.peering.standalone = RUN.peering is None
    settings.peering.priority = RUN.priority
    if RUN.selector:
        settings.watching.label_selectors[names.GROUP, names.ROLLOUT_PLURAL] = RUN.selector
    # Only the operator's own Deployments are watched (server-side selector), never the whole cluster's.
    settings.watching.label_selectors["apps", "deployments"] = names.LABEL_ROLLOUT
    kube = Kube(pool_size=RUN.workers + 4,
                observe=lambda verb, resource, seconds: metrics.KUBE_REQUEST_SECONDS.labels(verb, resource).observe(
                    seconds))
    ctx = Context(kube=kube, key=RUN.load_key(kube))
    pool = ThreadPoolExecutor(max_workers=RUN.workers, thread_name_prefix="reconcile")
    gate = PeeringGate(
        (lambda: kube.peering_status(settings.peering.name)) if RUN.peering else None, RUN.identity, RUN.priority
    )
    world = World(kwargs)
    # At most one key per worker is handed over: the rest wait in the scheduler, most urgent first.
    scheduler = Scheduler(lambda keys, release: _process(op, keys, release), gate.active, capacity=RUN.workers)
    op = Operator(kube, ctx, world, scheduler, gate, pool)
    # Becoming the active replica: everything may have moved while we stood by.
    loop = asyncio.get_running_loop()

    def wake_everything() -> None:
        loop.call_soon_threadsafe(lambda: op.scheduler.wake_all(world.rollout_keys()))

    gate.on_activate = wake_everything
    gate.start()
    memo["operator"] = op
    memo["scheduler_task"] = asyncio.create_task(op.scheduler.run())
    if RUN.metrics_port:
        metrics.serve(RUN.metrics_port, RUN.metrics_addr)
    log.info("operator started", webhooks=RUN.webhook_mode, peering=RUN.peering, selector=RUN.selector,
             workers=RUN.workers)


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    task = memo.get("scheduler_task")
    if task is not None:
        task.cancel()
    op: Operator | None = memo.get("operator")
    if op is not None:
        op.gate.stop()
        op.pool.shutdown(wait=False, cancel_futures=True)


# ---------------------------------------------------------------- indexes (kopf keeps them current)


@kopf.index(names.GROUP, names.VERSION, names.ROLLOUT_PLURAL)
async def rollout_index(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[IndexKey, dict[str, Any]]:
    return {(namespace, name): dict(body)}


@kopf.index("apps", "v1", "deployments", labels={names.LABEL_ROLLOUT: kopf.PRESENT})
async def deployment_index(
    namespace: str | None, name: str, body: kopf.Body, **_: Any
) -> dict[IndexKey, DeploymentObs | None]:
    return {(namespace, name): observe_deployment(dict(body))}


@kopf.index("", "v1", "services")
async def service_index(namespace: str | None, name: str, **_: Any) -> dict[IndexKey, bool]:
    return {(namespace, name): True}


@kopf.index(traffic_routing.GATEWAY_GROUP, traffic_routing.HTTPROUTE_VERSION, traffic_routing.HTTPROUTE_PLURAL)
async def route_index(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[IndexKey, dict[str, Any]]:
    """HTTPRoutes (spec.trafficRouting), whole: the planner reads their rules' backendRef weights. Without
    the Gateway API CRDs kopf leaves the resource unserved and the index empty."""
    return {(namespace, name): {"metadata": {"namespace": namespace, "name": name,
                                             "resourceVersion": body.get("metadata", {}).get("resourceVersion")},
                                "spec": dict(body.get("spec") or {})}}


# ---------------------------------------------------------------- wake-ups
# These handlers are async on purpose: kopf runs sync handlers in threads, and the scheduler (an
# asyncio loop) must only be touched from its own loop, or a wake-up may sleep until a timeout.


def _op(memo: kopf.Memo) -> Operator | None:
    return memo.get("operator")


@kopf.on.event(names.GROUP, names.VERSION, names.ROLLOUT_PLURAL)  # type: ignore[arg-type]
async def rollout_changed(type: str, namespace: str, name: str, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    op = _op(memo)
    if op is None:
        return
    key = (namespace, name)
    if type == "DELETED":
        op.scheduler.forget(key)
        op.world.seen.pop(key, None)
        op.ctx.written.pop(key, None)
        metrics.forget(namespace, name)
        return
    # Our own status writes come back as events too; those change neither generation nor metadata.
    meta = body.get("metadata") or {}
    seen = (meta.get("generation"), repr(meta.get("annotations")), repr(meta.get("labels")))
    if op.world.seen.get(key) != seen or type is None:
        op.world.seen[key] = seen
        op.scheduler.wake(key)


@kopf.on.event("apps", "v1", "deployments", labels={names.LABEL_ROLLOUT: kopf.PRESENT})  # type: ignore[arg-type]
async def deployment_changed(namespace: str, labels: kopf.Labels, memo: kopf.Memo, **_: Any) -> None:
    op = _op(memo)
    if op is not None and labels.get(names.LABEL_ROLLOUT):
        op.scheduler.wake((namespace, str(labels[names.LABEL_ROLLOUT])))


@kopf.on.event("", "v1", "services")  # type: ignore[arg-type]
async def service_changed(type: str, namespace: str, memo: kopf.Memo, **_: Any) -> None:
    op = _op(memo)
    if op is not None and type in ("DELETED", "ADDED"):
        op.scheduler.wake_all(op.world.rollout_keys(namespace))


@kopf.on.event(traffic_routing.GATEWAY_GROUP, traffic_routing.HTTPROUTE_VERSION,  # type: ignore[arg-type]
               traffic_routing.HTTPROUTE_PLURAL)
async def route_changed(namespace: str, name: str, memo: kopf.Memo, **_: Any) -> None:
    """A route's weights moved (our own write read back, or someone else's) or it came or went."""
    op = _op(memo)
    if op is not None:
        op.scheduler.wake_all(op.world.routed_by(namespace, name))


@kopf.on.event("", "v1", "namespaces")
async def namespace_changed(name: str, labels: kopf.Labels, memo: kopf.Memo, **_: Any) -> None:
    op = _op(memo)
    if op is None:
        return
    seen = repr(sorted(dict(labels).items()))
    if op.world.namespace_seen.get(name) != seen:
        op.world.namespace_seen[name] = seen
        op.scheduler.wake_all(op.world.rollout_keys(name))


@kopf.on.event(names.GROUP, names.VERSION, names.POLICY_PLURAL)
async def policy_changed(type: str, name: str, spec: kopf.Spec, status: kopf.Status, memo: kopf.Memo, **_: Any) -> None:
    """Every Rollout may be affected; also say on the policy itself whether it is valid."""
    op = _op(memo)
    if op is None:
        return
    op.scheduler.wake_all(op.world.rollout_keys())
    if type == "DELETED" or not op.gate.active():
        return
    problems = [p.message for p in admission.policy_spec_problems(dict(spec))]
    want = {"valid": not problems, "message": "; ".join(problems) or "policy is valid"}
    if dict(status).get("valid") != want["valid"] or dict(status).get("message") != want["message"]:
        try:
            await asyncio.get_running_loop().run_in_executor(op.pool, op.kube.patch_policy_status, name, want)
        except Exception:
            log.exception("could not write policy status", policy=name)


# ---------------------------------------------------------------- the work


async def _process(op: Operator, keys: list[Key], release: Release) -> dict[Key, Look]:
    """Measure every due rollout of the batch together, then reconcile each in the pool, releasing
    each key to the scheduler as soon as its own reconcile is done."""
    loop = asyncio.get_running_loop()
    now = op.ctx.now()
    due = {k: op.scheduler.due_since(k) for k in keys}
    snaps = {k: s for k in keys if (s := op.world.snapshot(k, op.ctx.written)) is not None}
    # Parsing specs and asking Prometheus happen off the event loop, which also serves the watches.
    samples = await loop.run_in_executor(op.pool, _measure_batch, op.ctx, list(snaps.values()), now)

    async def one(key: Key, snap: Snapshot) -> Look:
        at = await loop.run_in_executor(op.pool, _one, op, snap, samples.get(key), due.get(key))
        release(key, at)
        return at

    results = await asyncio.gather(*(one(key, snap) for key, snap in snaps.items()))
    return dict(zip(snaps, results, strict=True))


def _measure_batch(ctx: Context, snaps: list[Snapshot], now: datetime) -> dict[Key, Samples]:
    requests = [r for s in snaps if (r := measurement_request(ctx, s, now)) is not None]
    return fetch_samples(ctx, requests) if requests else {}


def _one(op: Operator, snap: Snapshot, samples: Samples | None, due: float | None = None) -> Look:
    if due is not None:
        metrics.QUEUE_SECONDS.observe(max(0.0, time.time() - due))
    meta = snap.body["metadata"]
    bound = log.bind(namespace=meta["namespace"], rollout=meta["name"])
    with metrics.RECONCILE_SECONDS.time():
        try:
            decision = reconcile(op.ctx, snap, samples)
        except Conflict as exc:
            metrics.RECONCILE_ERRORS.labels("conflict").inc()
            bound.warning("still conflicting; trying again shortly", error=str(exc))
            return op.ctx.now().timestamp() + 1
        except Exception as exc:
            # One bad object must never stop the operator: log, count, and try again shortly.
            metrics.RECONCILE_ERRORS.labels(type(exc).__name__).inc()
            bound.exception("reconcile failed; retrying shortly")
            return op.ctx.now().timestamp() + 2
    st = decision.status
    bound.bind(revision=st.canary_revision or st.stable_revision).debug(
        "reconciled", phase=st.phase, step=st.current_step_index, weight=st.canary_weight
    )
    if decision.next_look is None:
        return None
    return Next(decision.next_look.timestamp(), decision.next_look_routine)
