"""PromQL for the rollout's health checks and the verdicts on their results.

Pure: no I/O and no clock. `measurement` batches the queries of many rollouts and picks each one's
numbers out of the answers; `evaluate` judges them (called by the planner). `queries_for` gives one
rollout's queries on their own (the dashboard plots them). Query names are the keys shared by all.
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
class _Check:
    verdict: CheckVerdict
    message: str
    # Inconclusive only because a reference (stable, pre-rollout baseline) is missing: dropped when
    # another check of the metric reached a verdict, so e.g. a rollout at 100% (no stable traffic)
    # or a brand-new service (no baseline) is still judged by the checks that can run.
    reference_missing: bool = False


def _num(value: float | None) -> float | None:
    """NaN and ±Inf (0/0, x/0 in PromQL) count as no data."""
    return value if value is not None and math.isfinite(value) else None


def _pct(x: float) -> str:
    p = x * 100
    return f"{p:.1f}%" if p == 0 or abs(p) >= 0.1 else f"{p:.2g}%"


def _combine(checks: list[_Check]) -> tuple[CheckVerdict, str]:
    decided = any(c.verdict != "inconclusive" for c in checks)
    counted = [c for c in checks if not (decided and c.reference_missing)]
    if not counted:
        return "inconclusive", "no checks configured"
    verdict = max((c.verdict for c in counted), key=_SEVERITY.__getitem__)
    ordered = sorted(checks, key=lambda c: -_SEVERITY[c.verdict])
    return verdict, "; ".join(c.message for c in ordered)


# One-sided z for 99% confidence. A proportion check fails only when the canary is worse than its bound
# beyond sampling noise: a canary with 50 requests is not judged as if it had 5,000. Hard faults (100%
# 5xx, 99% fewer orders) are still significant after a few dozen requests.
Z_99 = 2.326


def exceeds(observed: float, bound: float, n: float, *, above: bool) -> bool:
    """Is the proportion `observed` (from `n` trials) significantly above (or below) `bound`?"""
    if (observed <= bound) if above else (observed >= bound):
        return False
    p0 = min(max(bound, 1e-6), 1 - 1e-6)
    sd = math.sqrt(p0 * (1 - p0) / max(n, 1.0))
    return abs(observed - bound) > Z_99 * sd


def _traffic_gate(requests: float | None, ctx: QueryContext) -> _Check | None:
    """An inconclusive check when the canary had too little traffic to judge, else None."""
    if requests is None:
        return _Check(
            "inconclusive", f"no data: no requests recorded for canary revision {ctx.canary_revision}"
        )
    if requests < ctx.min_requests:
        return _Check(
            "inconclusive",
            f"too little traffic: {requests:.0f} requests < minRequests {ctx.min_requests}",
        )
    return None


def _error_ratio_checks(metric: MetricSpec, v: dict[str, float | None], ctx: QueryContext) -> list[_Check]:
    gate = _traffic_gate(v.get(CANARY_REQUESTS), ctx)
    if gate is not None:
        return [gate]
    share, stable = v.get(CANARY_ERROR_RATIO), v.get(STABLE_ERROR_RATIO)
    if share is None:
        return [_Check("inconclusive", "no data: canary 5xx share could not be computed")]
    context = f" (stable {_pct(stable)})" if stable is not None else " (stable: no data)"
    n = v.get(CANARY_REQUESTS) or 0.0
    checks: list[_Check] = []
    if metric.max_ratio is not None:
        ok = not exceeds(share, metric.max_ratio, n, above=True)
        op = "≤" if share <= metric.max_ratio else ("> (within noise)" if ok else ">")
        msg = f"canary 5xx {_pct(share)} {op} maxRatio {_pct(metric.max_ratio)}{context}"
        checks.append(_Check("pass" if ok else "fail", msg))
    limit = metric.max_increase_over_stable
    if limit is not None:
        if stable is None:
            msg = "maxIncreaseOverStable not checked: no stable traffic in the window"
            checks.append(_Check("inconclusive", msg, reference_missing=True))
        else:
            increase = share - stable
            ok = not exceeds(share, min(stable + limit, 1.0), n, above=True)
            op = "≤" if increase <= limit else ("> (within noise)" if ok else ">")
            msg = (
                f"canary 5xx {_pct(share)} is {_pct(increase)} over stable {_pct(stable)}, "
                f"{op} maxIncreaseOverStable {_pct(limit)}"
            )
            checks.append(_Check("pass" if ok else "fail", msg))
    return checks


def _order_checks(metric: MetricSpec, v: dict[str, float | None], ctx: QueryContext) -> list[_Check]:
    checks: list[_Check] = []
    gate = _traffic_gate(v.get(CANARY_REQUESTS), ctx)
    if gate is not None:
        checks.append(gate)
    if metric.max_drop is not None and gate is None:
        canary, stable = v.get(CANARY_ORDERS_PER_REQUEST), v.get(STABLE_ORDERS_PER_REQUEST)
        if canary is None:
            checks.append(_Check("inconclusive", "no data: canary orders per request could not be computed"))
        elif stable is None or stable <= 0:
            why = "no stable traffic" if stable is None else "stable recorded no orders"
            checks.append(_Check("inconclusive", f"maxDrop not checked: {why}", reference_missing=True))
        else:
            drop = 1 - canary / stable
            n = v.get(CANARY_REQUESTS) or 0.0
            # Orders per request is a proportion too: fail only on a drop beyond sampling noise.
            ok = not exceeds(canary, stable * (1 - metric.max_drop), n, above=False)
            op = "≤" if drop <= metric.max_drop else ("> (within noise)" if ok else ">")
            checks.append(
                _Check(
                    "pass" if ok else "fail",
                    f"canary orders per request {canary:.3g} vs stable {stable:.3g}: "
                    f"drop {_pct(drop)} {op} maxDrop {_pct(metric.max_drop)}",
                )
            )
    if metric.max_baseline_drop is not None:
        now, baseline = v.get(ORDER_RATE), v.get(BASELINE_ORDER_RATE)
        if now is None:
            checks.append(_Check("inconclusive", f"no data: no orders recorded for service {ctx.service}"))
        elif ctx.rollout_started_at is None or baseline is None or baseline <= 0:
            why = (
                "rollout start unknown"
                if ctx.rollout_started_at is None
                else "service had no orders in the window before the rollout"
            )
            msg = f"maxBaselineDrop not checked: {why}"
            checks.append(_Check("inconclusive", msg, reference_missing=True))
        else:
            drop = 1 - now / baseline
            ok = drop <= metric.max_baseline_drop
            op = "≤" if ok else ">"
            checks.append(
                _Check(
                    "pass" if ok else "fail",
                    f"service orders {now:.3g}/s vs {baseline:.3g}/s before the rollout: "
                    f"drop {_pct(drop)} {op} maxBaselineDrop {_pct(metric.max_baseline_drop)}",
                )
            )
    return checks


def _query_checks(metric: MetricSpec, value: float | None) -> list[_Check]:
    if value is None:
        return [_Check("inconclusive", "no data: query returned no number (empty result or NaN)")]
    if metric.min is not None and value < metric.min:
        return [_Check("fail", f"value {value:.4g} < min {metric.min:g}")]
    if metric.max is not None and value > metric.max:
        return [_Check("fail", f"value {value:.4g} > max {metric.max:g}")]
    return [_Check("pass", f"value {value:.4g} within {_bound(metric)}")]


def _bound(metric: MetricSpec) -> str:
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


def _main_value(metric: MetricSpec, v: dict[str, float | None]) -> float | None:
    if metric.kind == "errorRatio":
        return v.get(CANARY_ERROR_RATIO)
    if metric.kind == "query":
        return v.get(QUERY_VALUE)
    canary, stable = v.get(CANARY_ORDERS_PER_REQUEST), v.get(STABLE_ORDERS_PER_REQUEST)
    if canary is not None and stable:
        return 1 - canary / stable
    now, baseline = v.get(ORDER_RATE), v.get(BASELINE_ORDER_RATE)
    return 1 - now / baseline if now is not None and baseline else None


def evaluate(
    metric: MetricSpec, values: dict[str, float | None], ctx: QueryContext, now: datetime
) -> Measurement:
    """The verdict on one metric from the results of `queries_for` (missing keys count as no data).

    Several sub-checks combine to the worst: fail > inconclusive > pass.
    """
    v = {name: _num(x) for name, x in values.items()}
    if metric.kind == "errorRatio":
        checks = _error_ratio_checks(metric, v, ctx)
    elif metric.kind == "orderRateDrop":
        checks = _order_checks(metric, v, ctx)
    else:
        checks = _query_checks(metric, v.get(QUERY_VALUE))
    verdict, message = _combine(checks)
    requests = v.get(CANARY_REQUESTS)
    if metric.kind != "query" and requests is not None and requests >= ctx.min_requests:
        message += f" [{requests:.0f} canary requests in {promql_duration(metric_window(metric, ctx))}]"
    return Measurement(
        metric=metric.name,
        verdict=verdict,
        value=_main_value(metric, v),
        bound=_bound(metric),
        message=message,
        time=now,
    )


def error_measurement(metric: MetricSpec, message: str, now: datetime) -> Measurement:
    """Prometheus could not answer: neither a pass nor evidence against the canary."""
    return Measurement(metric=metric.name, verdict="error", bound=_bound(metric), message=message, time=now)
