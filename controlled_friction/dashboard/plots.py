"""What the dashboard plots: the operator's own analysis queries, run as range queries, with bounds.

Pure except `fetch_plots`, which takes the Prometheus range query as an argument. The queries come from
`analysis.queries_for` with a `QueryContext` built from the Rollout exactly as the operator builds it
(`operator/reconcile.py`), so a plot shows the numbers the verdicts were made from. A bound is drawn
as one more series: a constant (maxRatio) or derived from a reference point by point (stable +
maxIncreaseOverStable, stable x (1 - maxDrop), baseline x (1 - maxBaselineDrop)).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import ValidationError

from controlled_friction import analysis
from controlled_friction.adapters.prometheus import PrometheusQueryError, PrometheusUnavailable
from controlled_friction.models.rollout import MetricSpec, RolloutSpec, RolloutStatus
from controlled_friction.planner import measuring

Role = Literal["canary", "stable", "service", "baseline", "bound"]
MAX_SPAN = timedelta(minutes=30)
DEFAULT_SPAN = timedelta(minutes=10)
LEAD = timedelta(minutes=1)  # shown before the rollout started
POINTS = 240


@dataclass(frozen=True)
class Line:
    label: str
    role: Role
    query: str | None = None  # a PromQL range query...
    constant: float | None = None  # ...or a constant bound...
    derive: tuple[str, Callable[[float], float]] | None = None  # ...or f(another line's value)


@dataclass(frozen=True)
class Panel:
    metric: str
    title: str
    unit: Literal["ratio", "number", "per second"]
    lines: tuple[Line, ...]


def query_context(obj: dict[str, Any]) -> tuple[RolloutSpec, RolloutStatus, analysis.QueryContext] | None:
    """The operator's QueryContext for this Rollout's canary (or the rolled-back one); None without one."""
    meta = obj.get("metadata") or {}
    try:
        spec = RolloutSpec.model_validate(obj.get("spec") or {})
        status = RolloutStatus.model_validate(obj.get("status") or {})
    except ValidationError:
        return None
    canary = status.canary_revision or (status.aborted_revision if status.phase == "RolledBack" else None)
    if not canary:
        return None
    # The planner's own context, for the revision shown (a rolled-back canary is still plotted).
    ctx = measuring.query_context(str(meta.get("namespace", "")), str(meta.get("name", "")), spec,
                                  status.model_copy(update={"canary_revision": canary}))
    return spec, status, ctx


def metrics_of(spec: RolloutSpec, status: RolloutStatus) -> list[MetricSpec]:
    """The metrics the operator analyses: the effective plan's (with policy-required ones), else the spec's."""
    if status.effective_plan is not None and status.effective_plan.metrics:
        return list(status.effective_plan.metrics)
    return list(spec.analysis.metrics)


def _pct(x: float) -> str:
    return f"{x * 100:g}%"


def panels_for(metric: MetricSpec, ctx: analysis.QueryContext) -> list[Panel]:
    q = analysis.queries_for(metric, ctx)
    if metric.kind == "errorRatio":
        lines = [Line("canary", "canary", q[analysis.CANARY_ERROR_RATIO]),
                 Line("stable", "stable", q[analysis.STABLE_ERROR_RATIO])]
        if metric.max_ratio is not None:
            lines.append(Line(f"bound: maxRatio {_pct(metric.max_ratio)}", "bound", constant=metric.max_ratio))
        if metric.max_increase_over_stable is not None:
            inc = metric.max_increase_over_stable
            lines.append(Line(f"bound: stable + {_pct(inc)}", "bound", derive=("stable", lambda s: s + inc)))
        return [Panel(metric.name, f"{metric.name}: 5xx share of requests", "ratio", tuple(lines))]
    if metric.kind == "orderRateDrop":
        out = []
        if analysis.CANARY_ORDERS_PER_REQUEST in q:
            drop = metric.max_drop or 0.0
            out.append(Panel(metric.name, f"{metric.name}: orders per request", "number", (
                Line("canary", "canary", q[analysis.CANARY_ORDERS_PER_REQUEST]),
                Line("stable", "stable", q[analysis.STABLE_ORDERS_PER_REQUEST]),
                Line(f"bound: {_pct(1 - drop)} of stable", "bound", derive=("stable", lambda s: s * (1 - drop))),
            )))
        if analysis.ORDER_RATE in q:
            lines = [Line("service order rate", "service", q[analysis.ORDER_RATE])]
            if analysis.BASELINE_ORDER_RATE in q:
                bdrop = metric.max_baseline_drop or 0.0
                lines.append(Line("pre-rollout baseline", "baseline", q[analysis.BASELINE_ORDER_RATE]))
                lines.append(Line(f"bound: {_pct(1 - bdrop)} of baseline", "bound",
                                  derive=("pre-rollout baseline", lambda b: b * (1 - bdrop))))
            out.append(Panel(metric.name, f"{metric.name}: service orders per second", "per second", tuple(lines)))
        return out
    lines = [Line("value", "canary", q[analysis.QUERY_VALUE])]
    if metric.min is not None:
        lines.append(Line(f"bound: min {metric.min:g}", "bound", constant=metric.min))
    if metric.max is not None:
        lines.append(Line(f"bound: max {metric.max:g}", "bound", constant=metric.max))
    return [Panel(metric.name, f"{metric.name}: query value", "number", tuple(lines))]


def time_range(status: RolloutStatus, now: datetime) -> tuple[datetime, datetime, int]:
    """(start, end, step seconds): from just before the rollout started (at most 30 min back) to now."""
    end = now.replace(microsecond=0)
    started = status.rollout_started_at
    if started is not None and started.tzinfo is None:
        started = started.replace(tzinfo=UTC)
    start = started - LEAD if started is not None else end - DEFAULT_SPAN
    start = max(start, end - MAX_SPAN).replace(microsecond=0)
    if end - start < timedelta(minutes=2):
        start = end - timedelta(minutes=2)
    step = max(2, math.ceil((end - start).total_seconds() / POINTS))
    return start, end, step


Fetch = Callable[[str, datetime, datetime, float], list[tuple[float, float]]]


def fetch_plots(obj: dict[str, Any], fetch: Fetch, now: datetime) -> dict[str, Any]:
    """Every panel of this Rollout's metrics, with series aligned on one time axis (uPlot's shape)."""
    found = query_context(obj)
    if found is None:
        return {"panels": [], "error": None, "note": "no canary: nothing to plot"}
    spec, status, ctx = found
    start, end, step = time_range(status, now)
    xs = list(range(int(start.timestamp()), int(end.timestamp()) + 1, step))
    panels = []
    for metric in metrics_of(spec, status):
        try:
            specs = panels_for(metric, ctx)
        except ValueError as err:
            panels.append({"metric": metric.name, "title": metric.name, "error": f"cannot build query: {err}"})
            continue
        for panel in specs:
            panels.append(_run_panel(panel, fetch, start, end, step, xs))
    return {
        "from": xs[0], "to": xs[-1], "step": step, "panels": panels, "error": None, "note": None,
        "canaryRevision": ctx.canary_revision, "rolloutStartedAt": ctx.rollout_started_at.isoformat()
        if ctx.rollout_started_at else None,
    }


def _run_panel(panel: Panel, fetch: Fetch, start: datetime, end: datetime, step: int,
               xs: list[int]) -> dict[str, Any]:
    values: dict[str, list[float | None]] = {}
    series = []
    error = None
    for line in panel.lines:
        if line.query is not None:
            try:
                points = dict((round(t), v) for t, v in fetch(line.query, start, end, step))
            except (PrometheusUnavailable, PrometheusQueryError) as err:  # shown in the panel
                error = str(err)
                points = {}
            vals: list[float | None] = [points.get(x) for x in xs]
        elif line.constant is not None:
            vals = [line.constant for _ in xs]
        else:
            assert line.derive is not None
            ref, fn = line.derive
            vals = [None if v is None else fn(v) for v in values.get(ref, [None] * len(xs))]
        values[line.label] = vals
        series.append({"label": line.label, "role": line.role, "query": line.query, "values": vals,
                       "points": sum(v is not None for v in vals)})
    return {"metric": panel.metric, "title": panel.title, "unit": panel.unit, "x": xs, "series": series,
            "error": error}
