"""PromQL for the rollout's health checks, and the threshold verdicts on their results.

Pure: no I/O and no clock. `measurement` batches the queries of many rollouts and picks each one's
numbers out of the answers. errorRatio and orderRateDrop's canary-vs-stable bounds are judged by the
anytime-valid sequential tests (`planner.sequential_analysis`, on `sequential`), from the cumulative
counters named `*_TOTAL` below; what stays a plain per-look threshold is judged here: the service's
order rate vs before the rollout (`baseline_check`) and custom `query` metrics (`evaluate`).
`queries_for` gives one rollout's windowed queries on their own (the dashboard plots them).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Literal

import promql_parser

from controlled_friction.models.rollout import QUERY_VARIABLES, Measurement, MetricSpec
from controlled_friction.names import TRACK_CANARY, TRACK_STABLE

REQUESTS_METRIC = "http_requests_total"
ORDERS_METRIC = "orders_total"
SERVER_ERROR_CODES = '"5.."'

# Query names (keys of `queries_for` and of the `values` given to `evaluate`).
CANARY_REQUESTS = "canary_requests"
CANARY_ERROR_RATIO = "canary_error_ratio"
STABLE_ERROR_RATIO = "stable_error_ratio"
CANARY_ORDERS_PER_REQUEST = "canary_orders_per_request"
STABLE_ORDERS_PER_REQUEST = "stable_orders_per_request"
ORDER_RATE = "order_rate"
BASELINE_ORDER_RATE = "baseline_order_rate"
QUERY_VALUE = "value"
# Cumulative counters at the instant of the look (exact differences between looks feed the tests).
CANARY_REQUESTS_TOTAL = "canary_requests_total"
CANARY_ERRORS_TOTAL = "canary_errors_total"
CANARY_ORDERS_TOTAL = "canary_orders_total"
STABLE_REQUESTS_TOTAL = "stable_requests_total"
STABLE_ERRORS_TOTAL = "stable_errors_total"
STABLE_ORDERS_TOTAL = "stable_orders_total"

_VARIABLE = re.compile(r"\{\{\s*(\w+)\s*\}\}")

CheckVerdict = Literal["pass", "fail", "inconclusive"]
_SEVERITY: dict[CheckVerdict, int] = {"pass": 0, "inconclusive": 1, "fail": 2}


@dataclass(frozen=True)
class QueryContext:
    """What the queries of one rollout need to know about it."""

    namespace: str
    service: str
    rollout: str
    canary_revision: str
    stable_revision: str | None
    window_seconds: float
    interval_seconds: float
    min_requests: int
    rollout_started_at: datetime | None  # end of the pre-rollout baseline window
    # The track the "canary" figures come from: `stable` while a post-promotion watch judges the
    # promoted revision (canary_revision) on the stable track.
    canary_track: str = TRACK_CANARY


_SAMPLE_CONTEXT = QueryContext(
    namespace="default",
    service="shop",
    rollout="shop",
    canary_revision="0123456789",
    stable_revision="abcdef0123",
    window_seconds=60.0,
    interval_seconds=10.0,
    min_requests=20,
    rollout_started_at=None,
)


# ---------------------------------------------------------------- queries


def promql_duration(seconds: float) -> str:
    """A PromQL duration; Prometheus 2.x rejects fractional units, so sub-second parts go to ms."""
    millis = max(1, round(seconds * 1000))
    return f"{millis // 1000}s" if millis % 1000 == 0 else f"{millis}ms"


def _label_value(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _selector(ctx: QueryContext, track: str | None = None, extra: str = "") -> str:
    labels = [f"namespace={_label_value(ctx.namespace)}", f"service={_label_value(ctx.service)}"]
    if track is not None:
        labels.append(f"track={_label_value(track)}")
    # The canary is pinned to its revision so pods of an older canary still in the window don't count.
    # Stable is selected by track only: it runs one revision except while a promotion rolls it.
    if track == TRACK_CANARY:
        labels.append(f"revision={_label_value(ctx.canary_revision)}")
    if extra:
        labels.append(extra)
    return "{" + ",".join(labels) + "}"


def metric_window(metric: MetricSpec, ctx: QueryContext) -> float:
    """The metric's own window, else the rollout's."""
    return metric.window if metric.window is not None else ctx.window_seconds


def render_query(template: str, ctx: QueryContext, track: str = TRACK_CANARY) -> str:
    """Substitute {{variable}}s; raises ValueError naming any unknown variable."""
    values = {
        "namespace": ctx.namespace,
        "service": ctx.service,
        "rollout": ctx.rollout,
        "track": track,
        "revision": ctx.canary_revision if track == TRACK_CANARY else (ctx.stable_revision or ""),
        "interval": promql_duration(ctx.interval_seconds),
        "window": promql_duration(ctx.window_seconds),
    }
    unknown = sorted(set(_VARIABLE.findall(template)) - set(values))
    if unknown:
        raise ValueError(
            f"unknown variable(s) {', '.join(unknown)} in query; allowed: {', '.join(QUERY_VARIABLES)}"
        )
    return _VARIABLE.sub(lambda m: values[m.group(1)], template)


def validate_query(template: str) -> str | None:
    """None if the template is usable as an instant query, else what is wrong with it."""
    try:
        rendered = render_query(template, _SAMPLE_CONTEXT)
    except ValueError as err:
        return str(err)
    try:
        expr = promql_parser.parse(rendered)
    except ValueError as err:
        return f"query is not valid PromQL: {err} (after substituting variables: {rendered})"
    while isinstance(expr, promql_parser.ParenExpr):
        expr = expr.expr
    if isinstance(expr, promql_parser.MatrixSelector | promql_parser.SubqueryExpr):
        return (
            "query returns a range vector, not a number; wrap it in a function such as "
            f"rate(...) or avg_over_time(...), then aggregate with sum(...): {rendered}"
        )
    if isinstance(expr, promql_parser.StringLiteral):
        return f"query returns a string, not a number: {rendered}"
    return None


def query_problems(metrics: list[MetricSpec], path: str) -> list[str]:
    """Custom queries among `metrics` that are not usable, each named by its path (`path[i].query`)."""
    problems = []
    for i, metric in enumerate(metrics):
        if metric.kind == "query" and metric.query:
            error = validate_query(metric.query)
            if error:
                problems.append(f"{path}[{i}].query: {error}")
    return problems


def queries_for(metric: MetricSpec, ctx: QueryContext) -> dict[str, str]:
    """The named PromQL instant queries `evaluate` needs for this metric (only what is configured)."""
    w = promql_duration(metric_window(metric, ctx))
    canary, stable = _selector(ctx, TRACK_CANARY), _selector(ctx, TRACK_STABLE)

    def requests(sel: str, fn: str = "rate") -> str:
        return f"sum({fn}({REQUESTS_METRIC}{sel}[{w}]))"

    def error_ratio(track: str) -> str:
        # `or vector(0)`: a revision that never answered 5xx has no 5xx series, which means 0%, not no data.
        errors = requests(_selector(ctx, track, f"code=~{SERVER_ERROR_CODES}"))
        return f"({errors} or vector(0)) / {requests(_selector(ctx, track))}"

    def orders_per_request(sel: str) -> str:
        # `or vector(0)`: a revision that lost every order may never have created its orders series.
        return f"(sum(rate({ORDERS_METRIC}{sel}[{w}])) or vector(0)) / {requests(sel)}"

    if metric.kind == "errorRatio":
        return {
            CANARY_REQUESTS: requests(canary, "increase"),
            CANARY_ERROR_RATIO: error_ratio(TRACK_CANARY),
            STABLE_ERROR_RATIO: error_ratio(TRACK_STABLE),
        }
    if metric.kind == "orderRateDrop":
        queries = {CANARY_REQUESTS: requests(canary, "increase")}
        if metric.max_drop is not None:
            queries[CANARY_ORDERS_PER_REQUEST] = orders_per_request(canary)
            queries[STABLE_ORDERS_PER_REQUEST] = orders_per_request(stable)
        if metric.max_baseline_drop is not None:
            service = _selector(ctx)
            queries[ORDER_RATE] = f"sum(rate({ORDERS_METRIC}{service}[{w}]))"
            baseline = baseline_query(metric, ctx)
            if baseline is not None:
                queries[BASELINE_ORDER_RATE] = baseline
        return queries
    assert metric.query is not None  # guaranteed by MetricSpec's validator
    return {QUERY_VALUE: render_query(metric.query, replace(ctx, window_seconds=metric_window(metric, ctx)))}


def baseline_query(metric: MetricSpec, ctx: QueryContext) -> str | None:
    """The service's order rate over the window just before the rollout started (PromQL `@`)."""
    if ctx.rollout_started_at is None:
        return None
    w = promql_duration(metric_window(metric, ctx))
    return f"sum(rate({ORDERS_METRIC}{_selector(ctx)}[{w}] @ {_unix_seconds(ctx.rollout_started_at):.3f}))"


def _unix_seconds(t: datetime) -> float:
    return (t if t.tzinfo is not None else t.replace(tzinfo=UTC)).timestamp()


# ---------------------------------------------------------------- verdicts


@dataclass(frozen=True)
class Check:
    verdict: CheckVerdict
    message: str
    # Inconclusive only because a reference (stable, pre-rollout baseline) is missing: dropped when
    # another check of the metric reached a verdict, so e.g. a brand-new service (no baseline) is
    # still judged by the checks that can run.
    reference_missing: bool = False


def num(value: float | None) -> float | None:
    """NaN and ±Inf (0/0, x/0 in PromQL) count as no data."""
    return value if value is not None and math.isfinite(value) else None


def pct(x: float) -> str:
    p = x * 100
    return f"{p:.1f}%" if p == 0 or abs(p) >= 0.1 else f"{p:.2g}%"


def combine(checks: list[Check]) -> tuple[CheckVerdict, str]:
    """The worst verdict (fail > inconclusive > pass) and every message, worst first."""
    decided = any(c.verdict != "inconclusive" for c in checks)
    counted = [c for c in checks if not (decided and c.reference_missing)]
    if not counted:
        return "inconclusive", "no checks configured"
    verdict = max((c.verdict for c in counted), key=_SEVERITY.__getitem__)
    ordered = sorted(checks, key=lambda c: -_SEVERITY[c.verdict])
    return verdict, "; ".join(c.message for c in ordered)


def baseline_check(metric: MetricSpec, v: dict[str, float | None], ctx: QueryContext) -> Check | None:
    """maxBaselineDrop: the service's order rate now vs the same window before the rollout.

    A plain threshold, not a sequential test: it compares two different times, whose difference is
    mostly not sampling noise (time of day, campaigns), so a coarse bound with failureLimit fits it.
    """
    if metric.max_baseline_drop is None:
        return None
    now, baseline = num(v.get(ORDER_RATE)), num(v.get(BASELINE_ORDER_RATE))
    if now is None:
        return Check("inconclusive", f"no data: no orders recorded for service {ctx.service}")
    if ctx.rollout_started_at is None or baseline is None or baseline <= 0:
        why = (
            "rollout start unknown"
            if ctx.rollout_started_at is None
            else "service had no orders in the window before the rollout"
        )
        return Check("inconclusive", f"maxBaselineDrop not checked: {why}", reference_missing=True)
    drop = 1 - now / baseline
    ok = drop <= metric.max_baseline_drop
    return Check(
        "pass" if ok else "fail",
        f"service orders {now:.3g}/s vs {baseline:.3g}/s before the rollout: "
        f"drop {pct(drop)} {'≤' if ok else '>'} maxBaselineDrop {pct(metric.max_baseline_drop)}",
    )


def baseline_drop(v: dict[str, float | None]) -> float | None:
    now, baseline = num(v.get(ORDER_RATE)), num(v.get(BASELINE_ORDER_RATE))
    return 1 - now / baseline if now is not None and baseline else None


def _query_checks(metric: MetricSpec, value: float | None) -> list[Check]:
    if value is None:
        return [Check("inconclusive", "no data: query returned no number (empty result or NaN)")]
    if metric.min is not None and value < metric.min:
        return [Check("fail", f"value {value:.4g} < min {metric.min:g}")]
    if metric.max is not None and value > metric.max:
        return [Check("fail", f"value {value:.4g} > max {metric.max:g}")]
    return [Check("pass", f"value {value:.4g} within {bound_text(metric)}")]


def bound_text(metric: MetricSpec) -> str:
    parts: list[str] = []
    if metric.kind == "errorRatio":
        if metric.max_ratio is not None:
            parts.append(f"≤ {metric.max_ratio:g}")
        if metric.max_increase_over_stable is not None:
            parts.append(f"≤ stable + {metric.max_increase_over_stable:g}")
    elif metric.kind == "orderRateDrop":
        if metric.max_drop is not None:
            parts.append(f"drop ≤ {metric.max_drop:g}")
        if metric.max_baseline_drop is not None:
            parts.append(f"baseline drop ≤ {metric.max_baseline_drop:g}")
    else:
        if metric.min is not None:
            parts.append(f"≥ {metric.min:g}")
        if metric.max is not None:
            parts.append(f"≤ {metric.max:g}")
    return ", ".join(parts)


def evaluate(metric: MetricSpec, values: dict[str, float | None], now: datetime) -> Measurement:
    """The verdict on a custom `query` metric (a missing value counts as no data)."""
    value = num(values.get(QUERY_VALUE))
    verdict, message = combine(_query_checks(metric, value))
    return Measurement(
        metric=metric.name, verdict=verdict, value=value, bound=bound_text(metric), message=message, time=now
    )


def error_measurement(metric: MetricSpec, message: str, now: datetime) -> Measurement:
    """Prometheus could not answer: neither a pass nor evidence against the canary."""
    return Measurement(metric=metric.name, verdict="error", bound=bound_text(metric), message=message, time=now)
