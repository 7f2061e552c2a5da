"""One reconcile of one Rollout: read, observe, measure, call the planner, write. No rules here."""

from __future__ import annotations

import copy
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import structlog
from pydantic import ValidationError

from controlled_friction import admission, errors, names
from controlled_friction.adapters.kube import Conflict, Kube
from controlled_friction.adapters.prometheus import PrometheusClient, measure, resolve_url
from controlled_friction.analysis import QueryContext, error_measurement
from controlled_friction.models import approval
from controlled_friction.models.policy import FrictionPolicySpec, NamedPolicy, PolicySelector
from controlled_friction.models.rollout import Measurement, RolloutSpec, RolloutStatus
from controlled_friction.operator import metrics
from controlled_friction.planner import (
    ApplyDeployment,
    ApprovalObs,
    ClearAction,
    Decision,
    EnsureService,
    InvalidPolicy,
    Observations,
    RecordEvent,
    RolloutInput,
    ScaleDeployment,
    due_metrics,
    invalid,
    plan,
    policy_hold,
)
from controlled_friction.revision import revision_of
from controlled_friction.workloads import deployment_body, observe_deployment, service_body

log = structlog.get_logger("controlled_friction.reconcile")
MAX_CONFLICT_RETRIES = 3


@dataclass
class Context:
    kube: Kube
    key: bytes
    now: Callable[[], datetime] = lambda: datetime.now(UTC)
    prometheus_timeout: float = float(os.environ.get("CF_PROMETHEUS_TIMEOUT", "5"))
    _local: threading.local = field(default_factory=threading.local)

    def prometheus(self, url: str) -> PrometheusClient:
        # One client per worker thread: the HTTP session underneath is not thread-safe.
        clients: dict[str, PrometheusClient] = self._local.__dict__.setdefault("clients", {})
        if url not in clients:
            clients[url] = PrometheusClient(url, timeout=self.prometheus_timeout)
        return clients[url]


@dataclass(frozen=True)
class PolicySet:
    valid: tuple[NamedPolicy, ...]
    invalid: tuple[InvalidPolicy, ...]


def parse_policies(raw: dict[str, dict[str, Any]]) -> PolicySet:
    valid, bad = [], []
    for name, spec in sorted(raw.items()):
        # The admission webhook's own checks (schema and PromQL), for policies that got in without it.
        problems = [p.message for p in admission.policy_spec_problems(spec)]
        if not problems:
            valid.append(NamedPolicy(name=name, spec=FrictionPolicySpec.model_validate(spec)))
            continue
        try:
            selector: PolicySelector | None = PolicySelector.model_validate(spec.get("selector") or {})
        except (ValidationError, AttributeError):
            selector = None
        bad.append(InvalidPolicy(name, selector, "; ".join(problems)))
    return PolicySet(tuple(valid), tuple(bad))


def _approvals(annotations: dict[str, str], key: bytes) -> tuple[tuple[ApprovalObs, ...], tuple[str, ...]]:
    entries, problems = approval.parse_record(annotations.get(names.ANN_APPROVALS))
    return tuple(ApprovalObs(e, approval.verify(e, key)) for e in entries), tuple(problems)


def _measure(ctx: Context, spec: RolloutSpec, status: RolloutStatus, policies: PolicySet, meta: dict[str, Any],
             now: datetime) -> tuple[Measurement, ...]:
    due = due_metrics(spec, status, now)
    if not due:
        return ()
    assert status.effective_plan is not None and status.canary_revision is not None
    url = resolve_url(
        spec.analysis.prometheus.address,
        [p.spec.prometheus.address for p in policies.valid
         if p.name in status.effective_plan.policies and p.spec.prometheus.address],
    )
    if url is None:
        return tuple(error_measurement(m, f"no Prometheus address: set spec.analysis.prometheus.address "
                                          f"or {names.ENV_PROMETHEUS_URL}", now) for m in due)
    qctx = QueryContext(
        namespace=meta["namespace"],
        service=spec.analysis.service or meta["name"],
        rollout=meta["name"],
        canary_revision=status.canary_revision,
        stable_revision=status.stable_revision,
        window_seconds=spec.analysis.window,
        interval_seconds=spec.analysis.interval,
        min_requests=spec.analysis.min_requests,
        rollout_started_at=status.rollout_started_at,
    )
    results = tuple(measure(ctx.prometheus(url), due, qctx, now))
    for m in results:
        metrics.VERDICTS.labels(m.metric, m.verdict).inc()
    return results


def reconcile(
    ctx: Context,
    body: dict[str, Any],
    policies_raw: dict[str, dict[str, Any]],
    namespace_labels: dict[str, str],
) -> Decision:
    """Reconcile once; on a 409 re-read the Rollout and re-plan with the same measurements."""
    now = ctx.now()
    measurements: tuple[Measurement, ...] | None = None
    carried_action: str | None = None
    policies = parse_policies(policies_raw)
    for attempt in range(MAX_CONFLICT_RETRIES):
        if attempt:
            # The re-read object may hold writes made after the first `now` (an approval): timing a
            # step from before them would let it start before the gate was really passed.
            now = ctx.now()
        meta = body["metadata"]
        ns, name = meta["namespace"], meta["name"]
        annotations = dict(meta.get("annotations") or {})
        if carried_action is not None:
            annotations[names.ANN_ACTION] = carried_action
        raw_status = copy.deepcopy(body.get("status") or {})
        status = _read_status(raw_status)
        try:
            spec = RolloutSpec.model_validate(body.get("spec") or {})
        except ValidationError as exc:
            decision = invalid(status, "; ".join(errors.describe(exc)), int(meta.get("generation") or 0), now)
            spec = None
        if spec is not None:
            held = policy_hold(policies.invalid, dict(meta.get("labels") or {}), namespace_labels)
            if measurements is None and not held:  # a held rollout is not analysed
                measurements = _measure(ctx, spec, status, policies, meta, now)
            inp = _input(ctx, body, annotations, spec, status, policies, namespace_labels, measurements or (), now)
            decision = plan(inp)
            rejected = _dry_run(ctx, body, spec, decision)
            if rejected:  # a template the API server refuses: the planner marks the Rollout Invalid
                decision = plan(replace(inp, obs=replace(inp.obs, workload_rejected=rejected)))
        cleared: list[str] = []
        try:
            _apply(ctx, body, spec, decision, raw_status, cleared)
            _observe_metrics(ns, name, status, decision, now)
            return decision
        except Conflict:
            metrics.CONFLICTS.inc()
            log.info("conflict; re-reading and re-planning", namespace=ns, rollout=name, attempt=attempt)
            if cleared:
                carried_action = cleared[0]  # we consumed it before the status write failed: keep it
            body = ctx.kube.get_rollout(ns, name)
    raise Conflict(f"gave up after {MAX_CONFLICT_RETRIES} conflicts")


def _read_status(raw: dict[str, Any]) -> RolloutStatus:
    try:
        return RolloutStatus.model_validate(raw)
    except ValidationError as exc:
        log.warning("unreadable status; starting from an empty one", errors=errors.describe(exc, "status"))
        return RolloutStatus()


def _input(ctx: Context, body: dict[str, Any], annotations: dict[str, str], spec: RolloutSpec,
           status: RolloutStatus, policies: PolicySet, namespace_labels: dict[str, str],
           measurements: tuple[Measurement, ...], now: datetime) -> RolloutInput:
    meta = body["metadata"]
    ns, name = meta["namespace"], meta["name"]
    approvals, problems = _approvals(annotations, ctx.key)
    return RolloutInput(
        namespace=ns,
        name=name,
        generation=int(meta.get("generation") or 0),
        labels=dict(meta.get("labels") or {}),
        annotations=annotations,
        spec=spec,
        status=status,
        obs=Observations(
            stable=observe_deployment(ctx.kube.get_deployment(ns, names.deployment_name(name, "stable"))),
            canary=observe_deployment(ctx.kube.get_deployment(ns, names.deployment_name(name, "canary"))),
            service_exists=spec.service is None or ctx.kube.service_exists(ns, spec.service.name),
            namespace_labels=namespace_labels,
            policies=policies.valid,
            invalid_policies=policies.invalid,
            approvals=approvals,
            approval_problems=problems,
            author_verified=approval.verify_author(
                annotations.get(names.ANN_AUTHOR_SIGNATURE), f"{ns}/{name}", revision_of(spec.template),
                annotations.get(names.ANN_AUTHOR), ctx.key,
            ),
            measurements=measurements,
        ),
        now=now,
    )


def _dry_run(ctx: Context, body: dict[str, Any], spec: RolloutSpec, decision: Decision) -> str | None:
    """Why the API server would refuse a Deployment the decision asks for (checked before the status
    is written, so a template it refuses never shows up as progress)."""
    for a in decision.actions:
        if isinstance(a, ApplyDeployment):
            why = ctx.kube.dry_run_deployment(body["metadata"]["namespace"], deployment_body(body, spec, a))
            if why:
                return why
    return None


def _apply(ctx: Context, body: dict[str, Any], spec: RolloutSpec | None, decision: Decision,
           raw_status: dict[str, Any], cleared: list[str]) -> None:
    """Write in the order that keeps promises across a crash: consume the action, persist the decision
    in status (optimistically locked), then make the workloads match it (idempotent)."""
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
        kube.write_rollout_status(ns, name, raw_status, new_status, rv)
    for a in decision.actions:
        if isinstance(a, ApplyDeployment) and spec is not None:
            dep = deployment_body(body, spec, a)
            if kube.get_deployment(ns, dep["metadata"]["name"]) is None:
                try:
                    kube.create_deployment(ns, dep)
                    continue
                except Conflict:
                    pass
            kube.replace_deployment_template(ns, dep["metadata"]["name"], dep["spec"]["template"], a.replicas)
        elif isinstance(a, ScaleDeployment):
            kube.scale_deployment(ns, names.deployment_name(name, a.track), a.replicas)
        elif isinstance(a, EnsureService):
            kube.create_service(ns, service_body(body, a))
    for ev in decision.events():
        _event(kube, body, ev)


def _event(kube: Kube, body: dict[str, Any], ev: RecordEvent) -> None:
    try:
        kube.record_event(body, ev.type, ev.reason, ev.message)
    except Exception as exc:  # an Event is best effort; never let it undo a decision
        log.warning("could not record event", reason=ev.reason, error=str(exc))


def _observe_metrics(ns: str, name: str, before: RolloutStatus, decision: Decision, now: datetime) -> None:
    after = decision.status
    metrics.set_phase(ns, name, after.phase)
    if after.phase == "RolledBack" and before.phase != "RolledBack":
        reason = "abort" if "abort action" in after.message else "analysis"
        metrics.ROLLBACKS.labels(ns, reason).inc()
    if after.phase == "Healthy" and before.phase == "Promoting":
        metrics.PROMOTIONS.labels(ns).inc()
    if before.phase == "AwaitingApproval" and after.phase != "AwaitingApproval" and before.step_started_at:
        metrics.GATE_WAIT.observe((now - before.step_started_at).total_seconds())
