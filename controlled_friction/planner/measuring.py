"""When to measure, what to ask Prometheus, and how verdicts add up to a rollback, a hold or a pass.

Analysis runs on a clock grid shared by every Rollout with the same interval (multiples of the
interval since the epoch), and each look measures at a grid instant (`look_instant`), even when it
runs late or is a canary's first: every look of one instant asks Prometheus the same questions, and
one answer serves them all.
errorRatio and orderRateDrop are judged by sequential tests (`sequential_analysis`): a rejection
rolls back at once. Threshold checks (maxBaselineDrop, custom queries) roll back after failureLimit
fails in a row; Prometheus errors after errorLimit; a metric quiet for longer than the quiet limit
rolls back too. Shadow metrics (`mode: observe`) are judged and recorded, never acted on.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

from controlled_friction.analysis import BASELINE_ORDER_RATE, QueryContext, error_measurement, evaluate
from controlled_friction.decisions import InvalidPolicy, RollbackReason
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
from controlled_friction.names import TRACK_CANARY, TRACK_STABLE
from controlled_friction.planner.base import Base
from controlled_friction.planner.sequential_analysis import Judged, judge_builtin
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


def grid_floor(now: datetime, interval: float) -> datetime:
    """The latest grid instant at or before `now`."""
    return datetime.fromtimestamp(math.floor(now.timestamp() / interval) * interval, tz=UTC)


def look_instant(last: datetime | None, interval: float, now: datetime) -> datetime:
    """The grid instant a look that is due now measures: its own (a hair ahead when woken early), or,
    for a late or first look, the latest one passed; a look that is late by more than an interval
    measures the present rather than catch up on every instant it missed."""
    latest = grid_floor(now, interval)
    if last is None:
        return latest  # the canary has no traffic yet: any instant since it started is as good
    return max(next_analysis_at(last, interval, now), latest)


def _analysing(status: RolloutStatus) -> bool:
    plan = status.effective_plan
    # Also at weight 0 while the canary's pods start: that look records stable's counters, so the first
    # look after the canary serves already compares the two tracks over the same seconds.
    return (plan is not None and bool(plan.metrics) and status.canary_revision is not None
            and status.phase in ANALYSED_PHASES)


def watching(status: RolloutStatus, now: datetime) -> bool:
    """A post-promotion watch is judging the promoted revision now."""
    w = status.watch
    return (w is not None and status.phase == "Healthy" and status.stable_revision == w.revision
            and status.effective_plan is not None and now < w.until)


def watch_metrics(plan: EffectivePlan) -> list[MetricSpec]:
    """What the post-promotion watch judges, from the plan's enforced metrics: the promoted revision's 5xx
    share against errorRatio's maxRatio ceiling (a sequential test on its own counts; there is no
    stable to compare with), and the service's order rate against the pre-rollout baseline."""
    out = []
    for m in plan.metrics:
        if m.mode == "observe":
            continue
        if m.kind == "errorRatio" and m.max_ratio is not None:
            out.append(MetricSpec(name=m.name, kind="errorRatio", max_ratio=m.max_ratio, window=m.window))
        elif m.kind == "orderRateDrop" and m.max_baseline_drop is not None:
            out.append(MetricSpec(name=m.name, kind="orderRateDrop", max_baseline_drop=m.max_baseline_drop,
                                  window=m.window))
    return out


def due_metrics(spec: RolloutSpec, status: RolloutStatus, now: datetime) -> list[MetricSpec]:
    """Metrics to measure now (empty when the canary gets no traffic or none is due yet)."""
    due = _due(spec, status, now)
    return due[0] if due is not None else []


def _due(spec: RolloutSpec, status: RolloutStatus, now: datetime) -> tuple[list[MetricSpec], datetime] | None:
    """Metrics to measure now and the grid instant to measure them at; None when nothing is due."""
    if watching(status, now):
        assert status.watch is not None and status.effective_plan is not None
        last = status.watch.analysis.last_run_at
        metrics = watch_metrics(status.effective_plan)
    elif _analysing(status):
        assert status.effective_plan is not None
        last = status.analysis.last_run_at
        metrics = list(status.effective_plan.metrics)
    else:
        return None
    interval = analysis_interval(spec, status.effective_plan)
    if (next_analysis_at(last, interval, now) - now).total_seconds() > EARLY or not metrics:
        return None
    return metrics, look_instant(last, interval, now)


def query_context(namespace: str, name: str, spec: RolloutSpec, status: RolloutStatus) -> QueryContext:
    watch = status.watch if status.canary_revision is None else None
    revision = watch.revision if watch is not None else status.canary_revision
    assert revision is not None
    return QueryContext(
        namespace=namespace,
        service=spec.analysis.service or name,
        rollout=name,
        canary_revision=revision,
        stable_revision=status.stable_revision,
        window_seconds=spec.analysis.window,
        interval_seconds=spec.analysis.interval,
        min_requests=spec.analysis.min_requests,
        rollout_started_at=status.rollout_started_at,
        canary_track=TRACK_STABLE if watch is not None else TRACK_CANARY,
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
    found = _due(spec, status, now)
    if found is None:
        return None
    due, at = found
    plan = status.effective_plan
    assert plan is not None
    url = resolve_url(
        spec.analysis.prometheus.address,
        [p.spec.prometheus.address for p in policies if p.name in plan.policies and p.spec.prometheus.address],
        default_url,
    )
    state = status.watch.analysis if watching(status, now) and status.watch is not None else status.analysis
    known = {m.metric for m in state.metrics if m.baseline_known}
    baselines = tuple(m.name for m in due if m.kind == "orderRateDrop" and m.max_baseline_drop is not None
                      and m.name not in known)
    return MeasurementRequest((namespace, name), url, query_context(namespace, name, spec, status),
                              tuple(due), baselines, at)


def judge(metrics: list[MetricSpec], samples: Samples, state: AnalysisState, now: datetime) -> list[Judged]:
    """A verdict per metric from what Prometheus answered (its errors are `error` verdicts), with the
    sequential test and counter totals each built-in metric keeps for its next look."""
    known = {m.metric: m.baseline for m in state.metrics if m.baseline_known}
    prev = {m.metric: m for m in state.metrics}
    out = []
    for metric in metrics:
        if metric.name in samples.errors:
            out.append(Judged(error_measurement(metric, samples.errors[metric.name], now)))
        elif metric.name in samples.values:
            values = dict(samples.values[metric.name])
            if metric.kind == "query":
                out.append(Judged(evaluate(metric, values, now)))
                continue
            if metric.name in known and BASELINE_ORDER_RATE not in values:
                values[BASELINE_ORDER_RATE] = known[metric.name]
            out.append(judge_builtin(metric, values, samples.context, prev.get(metric.name), now))
    return out


def record_measurements(state: AnalysisState, measurements: tuple[Measurement, ...], now: datetime,
                        baselines: dict[str, float | None] | None = None,
                        judged: tuple[Judged, ...] = (), at: datetime | None = None) -> AnalysisState:
    """Fold this round's measurements into the per-metric counters (and keep each sequential test).
    `lastRunAt` becomes the instant measured (`at`, else now): the next look is the grid instant after it."""
    everything = (*measurements, *(j.measurement for j in judged))
    if not everything and not baselines:
        return state
    by_name = {m.metric: m.model_copy() for m in state.metrics}
    for metric, value in (baselines or {}).items():
        cur = by_name.get(metric) or MetricState(metric=metric)
        cur.baseline, cur.baseline_known = value, True
        by_name[metric] = cur
    for j in judged:
        cur = by_name.get(j.measurement.metric) or MetricState(metric=j.measurement.metric)
        if j.sequential is not None:
            cur.sequential = j.sequential
            cur.restarts = list(j.restarts)
        if j.totals is not None:
            cur.totals = j.totals
        by_name[cur.metric] = cur
    for meas in everything:
        cur = by_name.get(meas.metric) or MetricState(metric=meas.metric)
        if meas.verdict == "pass":
            cur.consecutive_failures = cur.consecutive_inconclusive = cur.consecutive_errors = 0
            cur.passes_in_step += 1
        elif meas.verdict == "fail":
            cur.consecutive_failures += 1
            cur.consecutive_inconclusive = cur.consecutive_errors = 0
        elif meas.verdict == "quiet":
            cur.consecutive_errors = 0
        elif meas.verdict == "inconclusive":
            cur.consecutive_inconclusive += 1
            cur.consecutive_errors = 0
        else:
            cur.consecutive_errors += 1
        if meas.verdict == "quiet":
            cur.quiet_since = cur.quiet_since or meas.time or now
        elif meas.verdict in ("pass", "fail"):
            cur.quiet_since = None
        cur.last = meas
        by_name[meas.metric] = cur
    last = (at or now) if everything else state.last_run_at
    if last is not None and state.last_run_at is not None:
        last = max(last, state.last_run_at)
    return AnalysisState(last_run_at=last, metrics=sorted(by_name.values(), key=lambda m: m.metric))


def quiet_limit(spec: RolloutSpec, plan: EffectivePlan | None) -> float:
    if plan is not None and plan.quiet_limit_seconds is not None:
        return plan.quiet_limit_seconds
    return spec.analysis.quiet_limit


class Analysis(Base):
    """Folding measurements in, and what they mean for the step and for a rollback."""

    def fold_measurements(self) -> None:
        plan = self.st.effective_plan
        assert plan is not None
        measurements = list(self.obs.measurements)
        judged: list[Judged] = []
        baselines: dict[str, float | None] = {}
        samples = self.obs.samples
        if samples is not None and samples.context.canary_revision == self.st.canary_revision:
            due = [m for m in plan.metrics if m.name in samples.values or m.name in samples.errors]
            judged = judge(due, samples, self.st.analysis, self.now)
            baselines = dict(samples.baselines)
        before = {m.metric: m.last for m in self.st.analysis.metrics}
        self.st.analysis = record_measurements(self.st.analysis, tuple(measurements), self.now, baselines,
                                               tuple(judged), samples.at if judged and samples else None)
        modes = {m.name: m.mode for m in plan.metrics}
        for ms in self.st.analysis.metrics:
            ms.mode = modes.get(ms.metric, "enforce")
            if self.st.canary_weight == 0:
                ms.quiet_since = None  # no traffic is meant to reach it yet: not quiet, just not started
            last, was = ms.last, before.get(ms.metric)
            if (ms.mode == "observe" and last is not None and last.verdict == "fail"
                    and (was is None or was.verdict != "fail")):
                self.event("Normal", "ShadowMetricFailed",
                           f"observe-only metric {ms.metric} would have failed (no action taken): {last.message}")
        if _analysing(self.st):
            interval = analysis_interval(self.spec, plan)
            self.wake_at(next_analysis_at(self.st.analysis.last_run_at, interval, self.now), routine=True)

    def hold_for_analysis(self) -> None:
        """A step whose time is up waits only for the next look: that look is a deadline, not routine,
        so under load it is not queued behind routine looks of rollouts that are not waiting."""
        plan = self.st.effective_plan
        if plan is not None and _analysing(self.st):
            self.wake_at(next_analysis_at(self.st.analysis.last_run_at, analysis_interval(self.spec, plan),
                                          self.now))

    def fold_watch(self) -> str | None:
        """Judge the promoted revision during its post-promotion watch; why it failed, or None."""
        w, plan = self.st.watch, self.st.effective_plan
        assert w is not None and plan is not None
        samples = self.obs.samples
        if (samples is not None and samples.context.canary_revision == w.revision
                and samples.context.canary_track == TRACK_STABLE):
            metrics = [m for m in watch_metrics(plan) if m.name in samples.values or m.name in samples.errors]
            judged = judge(metrics, samples, w.analysis, self.now)
            w.analysis = record_measurements(w.analysis, (), self.now, dict(samples.baselines), tuple(judged),
                                             samples.at)
        self.wake_at(next_analysis_at(w.analysis.last_run_at, analysis_interval(self.spec, plan), self.now),
                     routine=True)
        self.wake_at(w.until)
        for ms in w.analysis.metrics:
            last = ms.last
            if last is None:
                continue
            if last.verdict == "fail" and last.decisive:
                return f"metric {ms.metric} failed its sequential test: {last.message}"
            if ms.consecutive_failures >= self.spec.analysis.failure_limit:
                return f"metric {ms.metric} failed {ms.consecutive_failures}x: {last.message}"
        return None

    def _enforced(self) -> list[MetricState]:
        return [ms for ms in self.st.analysis.metrics if ms.mode != "observe"]

    def analysis_rollback_reason(self) -> tuple[RollbackReason, str] | None:
        a = self.spec.analysis
        limit = quiet_limit(self.spec, self.st.effective_plan)
        for ms in self._enforced():
            last = ms.last
            if last is not None and last.verdict == "fail" and last.decisive:
                return "analysis", f"metric {ms.metric} failed its sequential test: {last.message}"
        for ms in self._enforced():
            last = ms.last
            detail = f"{last.message} (value {last.value}, bound {last.bound})" if last else ""
            if ms.consecutive_failures >= a.failure_limit:
                return "analysis", f"metric {ms.metric} failed {ms.consecutive_failures}x: {detail}"
            if ms.consecutive_errors >= a.error_limit:
                return "analysis", (f"metric {ms.metric}: Prometheus unavailable for {ms.consecutive_errors} "
                                    "measurements")
            if (ms.quiet_since is not None and last is not None and last.verdict == "quiet"
                    and (self.now - ms.quiet_since).total_seconds() >= limit):
                return "quiet", (f"metric {ms.metric} quiet for {(self.now - ms.quiet_since).total_seconds():.0f}s "
                                 f"(quiet limit {limit:g}s): {last.message}")
            if ms.consecutive_inconclusive >= a.inconclusive_limit:
                return "analysis", f"metric {ms.metric}: inconclusive {ms.consecutive_inconclusive}x in a row: {detail}"
        return None

    def analysis_ok(self, names_: list[str] | None = None, in_step: bool = False) -> tuple[bool, str]:
        plan = self.st.effective_plan
        assert plan is not None
        wanted = [m.name for m in plan.metrics
                  if m.mode != "observe" and (names_ is None or not names_ or m.name in names_)]
        states = {m.metric: m for m in self.st.analysis.metrics}
        for name in wanted:
            ms = states.get(name)
            if ms is None or ms.last is None:
                return False, f"waiting for a first measurement of {name}"
            if ms.last.verdict == "quiet":
                return False, f"{name} is {ms.last.message} (step extended until it has traffic)"
            if ms.last.verdict != "pass":
                return False, f"{name} is {ms.last.verdict}: {ms.last.message}"
            if in_step and ms.passes_in_step < 1:
                return False, f"waiting for a passing measurement of {name} in this step"
        return True, ""
