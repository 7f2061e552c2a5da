"""When to measure, what to ask Prometheus, and how verdicts add up to a rollback or a pass.

Analysis runs on a clock grid shared by every Rollout with the same interval (multiples of the
interval since the epoch), so rollouts due together are measured together in one batch of queries.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

from controlled_friction.analysis import BASELINE_ORDER_RATE, QueryContext, error_measurement, evaluate
from controlled_friction.decisions import InvalidPolicy
from controlled_friction.measurement import MeasurementRequest, Samples, resolve_url
from controlled_friction.models.policy import NamedPolicy
from controlled_friction.models.rollout import (
    AnalysisState,
    EffectivePlan,
    Measurement,
    MetricSpec,
    MetricState,
    RolloutSpec,
    RolloutStatus,
)
from controlled_friction.planner.base import Base
from controlled_friction.validation import policy_hold

ANALYSED_PHASES = ("Progressing", "Paused", "AwaitingApproval")
EARLY = 0.05  # seconds: a wake-up a hair before the grid instant still counts as on time


def analysis_interval(spec: RolloutSpec, plan: EffectivePlan | None) -> float:
    interval = spec.analysis.interval
    if plan is not None and plan.analysis_interval_seconds:
        interval = min(interval, plan.analysis_interval_seconds)
    return max(interval, 1.0)


def next_analysis_at(last: datetime | None, interval: float, now: datetime) -> datetime:
    """The grid instant after `last` at least half an interval on (so two looks are never bunched)."""
    if last is None:
        return now
    epoch = last.timestamp() + interval / 2
    slot = math.ceil(epoch / interval) * interval
    return datetime.fromtimestamp(slot, tz=UTC)


def _analysing(status: RolloutStatus) -> bool:
    plan = status.effective_plan
    return (plan is not None and bool(plan.metrics) and status.canary_revision is not None
            and status.phase in ANALYSED_PHASES and status.canary_weight > 0)


def due_metrics(spec: RolloutSpec, status: RolloutStatus, now: datetime) -> list[MetricSpec]:
    """Metrics to measure now (empty when the canary gets no traffic or none is due yet)."""
    if not _analysing(status):
        return []
    assert status.effective_plan is not None
    due = next_analysis_at(status.analysis.last_run_at, analysis_interval(spec, status.effective_plan), now)
    if (due - now).total_seconds() > EARLY:
        return []
    return list(status.effective_plan.metrics)


def query_context(namespace: str, name: str, spec: RolloutSpec, status: RolloutStatus) -> QueryContext:
    assert status.canary_revision is not None
    return QueryContext(
        namespace=namespace,
        service=spec.analysis.service or name,
        rollout=name,
        canary_revision=status.canary_revision,
        stable_revision=status.stable_revision,
        window_seconds=spec.analysis.window,
        interval_seconds=spec.analysis.interval,
        min_requests=spec.analysis.min_requests,
        rollout_started_at=status.rollout_started_at,
    )


def request_for(
    namespace: str,
    name: str,
    spec: RolloutSpec,
    status: RolloutStatus,
    labels: dict[str, str],
    namespace_labels: dict[str, str],
    policies: tuple[NamedPolicy, ...],
    invalid_policies: tuple[InvalidPolicy, ...],
    default_url: str | None,
    now: datetime,
) -> MeasurementRequest | None:
    """What to ask Prometheus for this rollout now, or None (nothing due, or held by a policy)."""
    if policy_hold(invalid_policies, labels, namespace_labels):
        return None  # a held rollout is not analysed
    due = due_metrics(spec, status, now)
    if not due:
        return None
    plan = status.effective_plan
    assert plan is not None
    url = resolve_url(
        spec.analysis.prometheus.address,
        [p.spec.prometheus.address for p in policies if p.name in plan.policies and p.spec.prometheus.address],
        default_url,
    )
    known = {m.metric for m in status.analysis.metrics if m.baseline_known}
    baselines = tuple(m.name for m in due if m.kind == "orderRateDrop" and m.max_baseline_drop is not None
                      and m.name not in known)
    return MeasurementRequest((namespace, name), url, query_context(namespace, name, spec, status),
                              tuple(due), baselines)


def judge(metrics: list[MetricSpec], samples: Samples, state: AnalysisState, now: datetime) -> list[Measurement]:
    """A verdict per metric from what Prometheus answered (its errors are `error` verdicts)."""
    known = {m.metric: m.baseline for m in state.metrics if m.baseline_known}
    out = []
    for metric in metrics:
        if metric.name in samples.errors:
            out.append(error_measurement(metric, samples.errors[metric.name], now))
        elif metric.name in samples.values:
            values = dict(samples.values[metric.name])
            if metric.name in known and BASELINE_ORDER_RATE not in values:
                values[BASELINE_ORDER_RATE] = known[metric.name]
            out.append(evaluate(metric, values, samples.context, now))
    return out


def record_measurements(state: AnalysisState, measurements: tuple[Measurement, ...], now: datetime,
                        baselines: dict[str, float | None] | None = None) -> AnalysisState:
    """Fold this round's measurements into the per-metric consecutive counters."""
    if not measurements and not baselines:
        return state
    by_name = {m.metric: m.model_copy() for m in state.metrics}
    for metric, value in (baselines or {}).items():
        cur = by_name.get(metric) or MetricState(metric=metric)
        cur.baseline, cur.baseline_known = value, True
        by_name[metric] = cur
    for meas in measurements:
        cur = by_name.get(meas.metric) or MetricState(metric=meas.metric)
        if meas.verdict == "pass":
            cur.consecutive_failures = cur.consecutive_inconclusive = cur.consecutive_errors = 0
            cur.passes_in_step += 1
        elif meas.verdict == "fail":
            cur.consecutive_failures += 1
            cur.consecutive_inconclusive = cur.consecutive_errors = 0
        elif meas.verdict == "inconclusive":
            cur.consecutive_inconclusive += 1
            cur.consecutive_errors = 0
        else:
            cur.consecutive_errors += 1
        cur.last = meas
        by_name[meas.metric] = cur
    last = now if measurements else state.last_run_at
    return AnalysisState(last_run_at=last, metrics=sorted(by_name.values(), key=lambda m: m.metric))


class Analysis(Base):
    """Folding measurements in, and what they mean for the step and for a rollback."""

    def fold_measurements(self) -> None:
        plan = self.st.effective_plan
        assert plan is not None
        measurements = list(self.obs.measurements)
        baselines: dict[str, float | None] = {}
        samples = self.obs.samples
        if samples is not None and samples.context.canary_revision == self.st.canary_revision:
            due = [m for m in plan.metrics if m.name in samples.values or m.name in samples.errors]
            measurements += judge(due, samples, self.st.analysis, self.now)
            baselines = dict(samples.baselines)
        self.st.analysis = record_measurements(self.st.analysis, tuple(measurements), self.now, baselines)
        if _analysing(self.st):
            interval = analysis_interval(self.spec, plan)
            self.wake_at(next_analysis_at(self.st.analysis.last_run_at, interval, self.now))

    def analysis_rollback_reason(self) -> str | None:
        a = self.spec.analysis
        for ms in self.st.analysis.metrics:
            last = ms.last
            detail = f"{last.message} (value {last.value}, bound {last.bound})" if last else ""
            if ms.consecutive_failures >= a.failure_limit:
                return f"metric {ms.metric} failed {ms.consecutive_failures}x: {detail}"
            if ms.consecutive_errors >= a.error_limit:
                return f"metric {ms.metric}: Prometheus unavailable for {ms.consecutive_errors} measurements"
            if ms.consecutive_inconclusive >= a.inconclusive_limit:
                return f"metric {ms.metric}: inconclusive {ms.consecutive_inconclusive}x in a row: {detail}"
        return None

    def analysis_ok(self, names_: list[str] | None = None, in_step: bool = False) -> tuple[bool, str]:
        plan = self.st.effective_plan
        assert plan is not None
        wanted = [m.name for m in plan.metrics if names_ is None or not names_ or m.name in names_]
        states = {m.metric: m for m in self.st.analysis.metrics}
        for name in wanted:
            ms = states.get(name)
            if ms is None or ms.last is None:
                return False, f"waiting for a first measurement of {name}"
            if ms.last.verdict != "pass":
                return False, f"{name} is {ms.last.verdict}: {ms.last.message}"
            if in_step and ms.passes_in_step < 1:
                return False, f"waiting for a passing measurement of {name} in this step"
        return True, ""
