"""One reconcile of one Rollout: plan from a snapshot and Prometheus's numbers, then write. No rules here.

Writes happen in the order that keeps promises across a crash: consume the one-shot action, write
status with optimistic locking (resourceVersion), then make the workloads match (idempotent). On a
409 the Rollout is re-read and re-planned with the same numbers, never patched with a stale body; a
refused HTTPRoute patch (422: the route changed since it was read) is answered the same way, with the
route re-read too.
"""

from __future__ import annotations

import copy
import os
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import structlog
from pydantic import ValidationError

from controlled_friction import errors, measurement, names
from controlled_friction.adapters.kube import Conflict, Kube, NotFound, RouteConflict
from controlled_friction.adapters.prometheus import PrometheusClient
from controlled_friction.analysis import QueryContext
from controlled_friction.decisions import (
    ApplyDeployment,
    ApprovalObs,
    ClearAction,
    Decision,
    EnsureService,
    Observations,
    PatchRoute,
    RecordEvent,
    RolloutInput,
    ScaleDeployment,
)
from controlled_friction.measurement import Answer, MeasurementRequest, Query, Samples
from controlled_friction.models import approval
from controlled_friction.models.rollout import AnalysisState, Measurement, MetricSpec, RolloutSpec, RolloutStatus
from controlled_friction.operator import metrics
from controlled_friction.operator.world import Snapshot
from controlled_friction.planner import invalid, plan, request_for
from controlled_friction.planner.measuring import judge, record_measurements
from controlled_friction.revision import revision_of
from controlled_friction.workloads import deployment_body, service_body

log = structlog.get_logger("controlled_friction.reconcile")
MAX_CONFLICT_RETRIES = 3
# Answers of no grid instant (ad-hoc looks) younger than this are reused. Below half the shortest
# analysis interval (1 s), so two looks of one rollout never share one, and about the scrape interval.
ANSWER_TTL = 0.4
# Answers of a grid instant are kept this long: a look late by more than an interval measures a newer
# instant, so an older answer is never asked for again.
ANSWER_KEEP = 30.0
EVENT_BACKLOG = 2000


@dataclass
class Context:
    kube: Kube
    key: bytes
    now: Callable[[], datetime] = lambda: datetime.now(UTC)
    default_prometheus: str | None = field(default_factory=lambda: os.environ.get(names.ENV_PROMETHEUS_URL))
    prometheus_timeout: float = float(os.environ.get("CF_PROMETHEUS_TIMEOUT", "5"))
    _local: threading.local = field(default_factory=threading.local)
    # The Rollout as our last status write returned it: newer than the watch-fed index until the watch
    # catches up, so the next reconcile does not plan from (and 409 on) a body older than its own write.
    written: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    # url -> (query key, the instant it is of or None) -> (fetched at, monotonic; answer)
    _answers: dict[str, dict[tuple[str, float | None], tuple[float, Answer]]] = field(default_factory=dict)
    _answer_locks: dict[str, threading.Lock] = field(default_factory=dict)
    # Events are posted off the reconcile's path: they are best effort, and under API-server load two
    # of them could double a reconcile's time and hold its Rollout's next look back.
    _event_pool: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=4, thread_name_prefix="events"))
    _event_slots: threading.BoundedSemaphore = field(
        default_factory=lambda: threading.BoundedSemaphore(EVENT_BACKLOG))

    def post_event(self, body: dict[str, Any], ev: RecordEvent) -> None:
        """Record an Event soon, in the background; dropped (and counted) beyond EVENT_BACKLOG pending."""
        if not self._event_slots.acquire(blocking=False):
            metrics.EVENTS_DROPPED.inc()
            return

        meta = body["metadata"]
        involved = {k: body[k] for k in ("apiVersion", "kind") if body.get(k)}
        involved["metadata"] = {k: meta.get(k) for k in ("name", "namespace", "uid")}

        def post() -> None:
            try:
                _event(self.kube, involved, ev)
            finally:
                self._event_slots.release()

        self._event_pool.submit(post)

    def answers(self, url: str, queries: Mapping[str, Query], at: datetime | None = None) -> dict[str, Answer]:
        """Prometheus's answers at the grid instant `at`, shared by every batch that measures it: a
        grouped query answers for every service at once, so the batches a grid instant is split into,
        and rollouts looked at late under load, must not each ask it again. One fetch per URL at a
        time; the rest wait and reuse it. Without an instant (tests, tools) answers live ANSWER_TTL."""
        lock = self._answer_locks.setdefault(url, threading.Lock())
        with lock:
            now = time.monotonic()
            cache = self._answers.setdefault(url, {})
            stamp = None if at is None else at.timestamp()

            def fresh(key: str) -> bool:
                hit = cache.get((key, stamp))
                return hit is not None and now - hit[0] <= (ANSWER_TTL if stamp is None else ANSWER_KEEP)

            missing = {k: q for k, q in queries.items() if not fresh(k)}
            if missing:
                for key, answer in self.prometheus(url).run(missing, at).items():
                    cache[(key, stamp)] = (now, answer)
                metrics.PROMETHEUS_QUERIES.inc(len(missing))
            out = {k: cache[(k, stamp)][1] for k in queries}
            for gone in [k for k, (t, _a) in cache.items() if now - t > ANSWER_KEEP]:
                del cache[gone]  # instants passed, and queries no rollout asks any more
            return out

    def prometheus(self, url: str) -> PrometheusClient:
        # One client per worker thread: the HTTP session underneath is not thread-safe.
        clients: dict[str, PrometheusClient] = self._local.__dict__.setdefault("clients", {})
        if url not in clients:
            clients[url] = PrometheusClient(url, timeout=self.prometheus_timeout)
        return clients[url]


def read_status(raw: dict[str, Any]) -> RolloutStatus:
    try:
        return RolloutStatus.model_validate(raw)
    except ValidationError as exc:
        log.warning("unreadable status; starting from an empty one", errors=errors.describe(exc, "status"))
        return RolloutStatus()


def _spec(body: dict[str, Any]) -> RolloutSpec | None:
    try:
        return RolloutSpec.model_validate(body.get("spec") or {})
    except ValidationError:
        return None


def measurement_request(ctx: Context, snap: Snapshot, now: datetime) -> MeasurementRequest | None:
    """What this rollout needs from Prometheus now (the planner's rule; None when nothing is due)."""
    spec = _spec(snap.body)
    if spec is None:
        return None
    meta = snap.body["metadata"]
    return request_for(meta["namespace"], meta["name"], spec, read_status(copy.deepcopy(snap.body.get("status") or {})),
                       dict(meta.get("labels") or {}), snap.namespace_labels, snap.policies.valid,
                       snap.policies.invalid, ctx.default_prometheus, now)


def fetch_samples(ctx: Context, requests: list[MeasurementRequest]) -> dict[tuple[str, str], Samples]:
    """Ask Prometheus once per distinct query for every request, and split the answers per rollout."""
    out: dict[tuple[str, str], Samples] = {}
    by_instant: dict[datetime | None, list[MeasurementRequest]] = {}
    for req in requests:
        by_instant.setdefault(req.at, []).append(req)
    for at, reqs in by_instant.items():
        for url, queries in measurement.queries(reqs).items():
            answers = ctx.answers(url, queries, at)
            for req in reqs:
                if req.url == url:
                    out[req.key] = measurement.samples_for(req, answers)
    for req in requests:
        if req.url is None:
            out[req.key] = measurement.samples_for(req, {})
    return out


def sample(client: PrometheusClient, metrics_: list[MetricSpec], qctx: QueryContext,
           baselines: bool = True) -> Samples:
    """One rollout's numbers, asked the way the operator does (for tests and benchmarks)."""
    wanted = tuple(m.name for m in metrics_ if m.kind == "orderRateDrop" and m.max_baseline_drop) if baselines else ()
    req = MeasurementRequest((qctx.namespace, qctx.rollout), client.url, qctx, tuple(metrics_), wanted)
    return measurement.samples_for(req, client.run(measurement.queries([req])[client.url]))


def measure(client: PrometheusClient, metrics_: list[MetricSpec], qctx: QueryContext, now: datetime,
            state: AnalysisState | None = None) -> tuple[list[Measurement], AnalysisState]:
    """One look at one rollout, judged the way the planner does: its verdicts, and the analysis state
    to pass to the next look (sequential tests continue from it)."""
    before = state or AnalysisState()
    samples = sample(client, metrics_, qctx, baselines=not any(m.baseline_known for m in before.metrics))
    judged = judge(metrics_, samples, before, now)
    after = record_measurements(before, (), now, samples.baselines, tuple(judged))
    return [j.measurement for j in judged], after


def reconcile(ctx: Context, snap: Snapshot, samples: Samples | None) -> Decision:
    """Reconcile once; on a 409 re-read the Rollout and re-plan with the same samples."""
    body = snap.body
    carried_action: str | None = None
    for attempt in range(MAX_CONFLICT_RETRIES):
        # Re-read objects may hold writes made after a first `now` (an approval): timing a step from
        # before them would let it start before the gate was really passed.
        now = ctx.now()
        meta = body["metadata"]
        ns, name = meta["namespace"], meta["name"]
        annotations = dict(meta.get("annotations") or {})
        if carried_action is not None:
            annotations[names.ANN_ACTION] = carried_action
        raw_status = copy.deepcopy(body.get("status") or {})
        status = read_status(raw_status)
        spec = _spec(body)
        if spec is None:
            try:
                RolloutSpec.model_validate(body.get("spec") or {})
                problems = "unreadable spec"
            except ValidationError as exc:
                problems = "; ".join(errors.describe(exc))
            decision = invalid(status, problems, int(meta.get("generation") or 0), now)
        else:
            inp = _input(ctx, body, annotations, spec, status, snap, samples, now)
            decision = plan(inp)
            rejected = _dry_run(ctx, body, spec, decision, snap)
            if rejected:  # a template the API server refuses: the planner marks the Rollout Invalid
                decision = plan(replace(inp, obs=replace(inp.obs, workload_rejected=rejected)))
        cleared: list[str] = []
        try:
            _apply(ctx, body, spec, decision, raw_status, cleared, snap)
            _observe_metrics(ns, name, status, decision, now)
            return decision
        except Conflict as exc:
            metrics.CONFLICTS.inc()
            log.info("conflict; re-reading and re-planning", namespace=ns, rollout=name, attempt=attempt)
            if cleared:
                carried_action = cleared[0]  # we consumed it before the status write failed: keep it
            body = ctx.kube.get_rollout(ns, name)
            if isinstance(exc, RouteConflict) and snap.route is not None:
                # The route changed under our patch (its `test` failed, 422): plan from a fresh read.
                route = (snap.route.get("metadata") or {}).get("name")
                snap = replace(snap, route=ctx.kube.get_route(ns, str(route)))
    raise Conflict(f"gave up after {MAX_CONFLICT_RETRIES} conflicts")


def _input(ctx: Context, body: dict[str, Any], annotations: dict[str, str], spec: RolloutSpec,
           status: RolloutStatus, snap: Snapshot, samples: Samples | None, now: datetime) -> RolloutInput:
    meta = body["metadata"]
    ns, name = meta["namespace"], meta["name"]
    entries, problems = approval.parse_record(annotations.get(names.ANN_APPROVALS))
    return RolloutInput(
        namespace=ns,
        name=name,
        generation=int(meta.get("generation") or 0),
        labels=dict(meta.get("labels") or {}),
        annotations=annotations,
        spec=spec,
        status=status,
        obs=Observations(
            stable=snap.stable,
            canary=snap.canary,
            service_exists=snap.service_exists,
            namespace_labels=snap.namespace_labels,
            policies=snap.policies.valid,
            invalid_policies=snap.policies.invalid,
            approvals=tuple(ApprovalObs(e, approval.verify(e, ctx.key)) for e in entries),
            approval_problems=tuple(problems),
            author_verified=approval.verify_author(
                annotations.get(names.ANN_AUTHOR_SIGNATURE), f"{ns}/{name}", revision_of(spec.template),
                annotations.get(names.ANN_AUTHOR), ctx.key,
            ),
            samples=samples,
            route=snap.route,
            track_services=snap.track_services,
        ),
        now=now,
    )


def _dry_run(ctx: Context, body: dict[str, Any], spec: RolloutSpec, decision: Decision, snap: Snapshot) -> str | None:
    """Why the API server would refuse a Deployment the decision asks for (checked before the status
    is written, so a template it refuses never shows up as progress)."""
    held = {d.revision for d in (snap.stable, snap.canary) if d is not None}
    for a in decision.actions:
        # A revision one of its Deployments already holds was accepted by the API server (a promotion
        # copies the canary's template): asking again would only cost a request per promotion.
        if isinstance(a, ApplyDeployment) and a.revision not in held:
            exists = (snap.stable if a.track == "stable" else snap.canary) is not None
            why = ctx.kube.dry_run_deployment(body["metadata"]["namespace"], deployment_body(body, spec, a), exists)
            if why:
                return why
    return None


def _apply(ctx: Context, body: dict[str, Any], spec: RolloutSpec | None, decision: Decision,
           raw_status: dict[str, Any], cleared: list[str], snap: Snapshot) -> None:
    kube, meta = ctx.kube, body["metadata"]
    ns, name, rv = meta["namespace"], meta["name"], meta["resourceVersion"]
    for a in decision.actions:
        if isinstance(a, ClearAction):
            current = (meta.get("annotations") or {}).get(names.ANN_ACTION)
            if current is not None:
                rv = kube.patch_rollout_annotations(ns, name, {names.ANN_ACTION: None}, rv)["metadata"][
                    "resourceVersion"
                ]
                cleared.append(a.value)
    new_status = decision.status.wire()
    if new_status != raw_status:
        ctx.written[(ns, name)] = kube.write_rollout_status(ns, name, raw_status, new_status, rv)
    for a in decision.actions:
        if isinstance(a, ApplyDeployment) and spec is not None:
            dep = deployment_body(body, spec, a)
            exists = (snap.stable if a.track == "stable" else snap.canary) is not None
            if not exists:
                try:
                    kube.create_deployment(ns, dep)
                    continue
                except Conflict:
                    pass  # the cache lagged: it exists, so put the template in place
            kube.replace_deployment_template(ns, dep["metadata"]["name"], dep["spec"]["template"], a.replicas)
        elif isinstance(a, ScaleDeployment):
            kube.scale_deployment(ns, names.deployment_name(name, a.track), a.replicas)
        elif isinstance(a, EnsureService):
            kube.create_service(ns, service_body(body, a))
        elif isinstance(a, PatchRoute):
            try:
                kube.patch_route(ns, a.name, list(a.patch))
            except NotFound:  # deleted meanwhile: its DELETED event wakes the rollout, which then holds
                log.info("HTTPRoute gone before its patch", namespace=ns, route=a.name)
    for ev in decision.events():
        ctx.post_event(body, ev)


def _event(kube: Kube, body: dict[str, Any], ev: RecordEvent) -> None:
    try:
        kube.record_event(body, ev.type, ev.reason, ev.message)
    except Exception as exc:  # an Event is best effort; never let it undo a decision
        log.warning("could not record event", reason=ev.reason, error=str(exc))


def _observe_metrics(ns: str, name: str, before: RolloutStatus, decision: Decision, now: datetime) -> None:
    after = decision.status
    metrics.set_phase(ns, name, after.phase)
    for track in decision.drift:
        metrics.DRIFT_REVERTED.labels(ns, track).inc()
    if decision.rollback is not None:
        metrics.ROLLBACKS.labels(ns, decision.rollback).inc()
    if after.phase == "Healthy" and before.phase == "Promoting":
        metrics.PROMOTIONS.labels(ns).inc()
    if before.phase == "AwaitingApproval" and after.phase != "AwaitingApproval" and before.step_started_at:
        metrics.GATE_WAIT.observe((now - before.step_started_at).total_seconds())
    watched = after.watch.analysis.metrics if after.watch is not None else []
    for m in [*after.analysis.metrics, *watched]:
        if m.last is not None and m.last.time == now and before.analysis.last_run_at != now:
            metrics.VERDICTS.labels(m.metric, m.last.verdict, m.mode).inc()
