"""Measurement requests and Prometheus answers, with no I/O: what to ask, and what the answers mean.

Built-in metrics of every Rollout due at the same instant are asked together. The sequential tests
need the counters themselves: one grouped query per counter, `sum by (namespace, service, track,
revision) (http_requests_total)` (and its 5xx, and `orders_total`), answers for every canary at once,
with no window; the planner takes exact differences between looks. The service-wide order rate of
`maxBaselineDrop` is one grouped `increase(orders_total[w])` per distinct window. So the number of
queries per round grows with the distinct windows, not with the number of Rollouts. Custom `query`
metrics and the one-off pre-rollout baseline stay one query each. The adapter (`adapters.prometheus`)
only runs the queries and hands back numbers or failures; `samples_for` picks each rollout's numbers
out of the shared answers, and the planner judges them (`planner.sequential_analysis`).

Every look measures at an instant of the analysis grid (`at`, Prometheus's `time=`), not at the moment
it happens to run: looks of one grid instant ask the same questions whatever batch or delay they fall
in, so they share one answer, and the queries per interval do not grow with the number of Rollouts.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime

from controlled_friction.analysis import (
    BASELINE_ORDER_RATE,
    CANARY_ERRORS_TOTAL,
    CANARY_ORDERS_TOTAL,
    CANARY_REQUESTS_TOTAL,
    ORDER_RATE,
    ORDERS_METRIC,
    QUERY_VALUE,
    REQUESTS_METRIC,
    SERVER_ERROR_CODES,
    STABLE_ERRORS_TOTAL,
    STABLE_ORDERS_TOTAL,
    STABLE_REQUESTS_TOTAL,
    QueryContext,
    baseline_query,
    metric_window,
    promql_duration,
    render_query,
)
from controlled_friction.models.rollout import MetricSpec
from controlled_friction.names import TRACK_STABLE

GROUP_LABELS = ("namespace", "service", "track", "revision")
SeriesKey = tuple[str, str, str, str]  # namespace, service, track, revision
Table = dict[SeriesKey, float]


class IndexedTable(dict[SeriesKey, float]):
    """A Table whose rows are also grouped by (namespace, service). One grouped answer serves every
    rollout of a batch, and each looks up only its own service: scanning all N services' rows for
    every lookup made a batch of N rollouts cost O(N²) (seconds of CPU at 1,000)."""

    def __init__(self, rows: Mapping[SeriesKey, float] | None = None) -> None:
        super().__init__(rows or {})
        self.by_service: dict[tuple[str, str], list[tuple[SeriesKey, float]]] = {}
        for key, value in self.items():
            self.by_service.setdefault((key[0], key[1]), []).append((key, value))


@dataclass(frozen=True)
class Query:
    promql: str
    grouped: bool  # True: a Table by GROUP_LABELS; False: one number (the sum of the series)


@dataclass(frozen=True)
class QueryFailure:
    message: str
    unavailable: bool  # Prometheus could not be reached at all (vs. it rejected this query)


Answer = Table | float | None | QueryFailure


@dataclass(frozen=True)
class MeasurementRequest:
    """One rollout's metrics that are due now, and where to ask."""

    key: tuple[str, str]  # namespace, name
    url: str | None  # None: no Prometheus address is configured anywhere
    context: QueryContext
    metrics: tuple[MetricSpec, ...]
    # Metrics whose pre-rollout baseline order rate is not known yet (asked once per canary).
    baselines: tuple[str, ...] = ()
    at: datetime | None = None  # the grid instant measured (None: whenever the query runs)


@dataclass(frozen=True)
class Samples:
    """What Prometheus answered for one rollout: per metric, named numbers, or why it could not."""

    context: QueryContext
    values: dict[str, dict[str, float | None]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    # Baselines fetched in this round (metric name -> order rate, None when there were no orders).
    baselines: dict[str, float | None] = field(default_factory=dict)
    at: datetime | None = None  # the instant the numbers are of (the request's)


# ---------------------------------------------------------------- what to ask


def resolve_url(rollout_address: str | None, policy_addresses: list[str], default: str | None) -> str | None:
    """The Rollout's address, else the first matching policy's, else the operator's default
    (env CF_PROMETHEUS_URL), else None."""
    for candidate in (rollout_address, *policy_addresses, default):
        if candidate and candidate.strip():
            return candidate.strip().rstrip("/")
    return None


_COUNTERS = {"requests": (REQUESTS_METRIC, ""), "errors": (REQUESTS_METRIC, f"code=~{SERVER_ERROR_CODES}"),
             "orders": (ORDERS_METRIC, "")}


TOTAL = "total"  # the key suffix of a cumulative (windowless) counter query


def _grouped_key(counter: str, window: float | None) -> str:
    return f"{counter}@{TOTAL if window is None else promql_duration(window)}"


def _grouped_query(counter: str, window: float | None) -> Query:
    metric, matcher = _COUNTERS[counter]
    sel = "{" + matcher + "}" if matcher else ""
    by = ", ".join(GROUP_LABELS)
    if window is None:
        return Query(f"sum by ({by}) ({metric}{sel})", grouped=True)
    return Query(f"sum by ({by}) (increase({metric}{sel}[{promql_duration(window)}]))", grouped=True)


def _totals_for(metric: MetricSpec) -> tuple[str, ...]:
    """Cumulative counters a built-in metric needs (its sequential test, and its canary's traffic)."""
    if metric.kind == "errorRatio":
        return ("requests", "errors")
    if metric.kind == "orderRateDrop":
        return ("requests", "orders") if metric.max_drop is not None else ("requests",)
    return ()


def _windowed_for(metric: MetricSpec) -> tuple[str, ...]:
    """Windowed counters: only the service-wide order rate of maxBaselineDrop."""
    return ("orders",) if metric.kind == "orderRateDrop" and metric.max_baseline_drop is not None else ()


def _needed(metric: MetricSpec, window: float) -> list[tuple[str, float | None]]:
    return [(c, None) for c in _totals_for(metric)] + [(c, window) for c in _windowed_for(metric)]


def _own_key(req: MeasurementRequest, what: str, metric: str) -> str:
    return f"{what}:{req.key[0]}/{req.key[1]}:{metric}"


def queries(requests: Iterable[MeasurementRequest]) -> dict[str, dict[str, Query]]:
    """Per Prometheus URL, the distinct queries that answer every request (shared ones once)."""
    out: dict[str, dict[str, Query]] = {}
    for req in requests:
        if req.url is None:
            continue
        mine = out.setdefault(req.url, {})
        for metric in req.metrics:
            window = metric_window(metric, req.context)
            for counter, w in _needed(metric, window):
                mine.setdefault(_grouped_key(counter, w), _grouped_query(counter, w))
            if metric.kind == "query":
                ctx = replace(req.context, window_seconds=window)
                try:
                    promql = render_query(metric.query or "", ctx)
                except ValueError:
                    continue  # samples_for reports it; admission refuses such queries anyway
                mine[_own_key(req, "query", metric.name)] = Query(promql, grouped=False)
        for name in req.baselines:
            metric = next(m for m in req.metrics if m.name == name)
            baseline = baseline_query(metric, req.context)
            if baseline is not None:
                mine[_own_key(req, "baseline", name)] = Query(baseline, grouped=False)
    return out


# ---------------------------------------------------------------- what the answers mean


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def _sum(table: Table, ns: str, service: str, track: str | None, revision: str | None) -> float | None:
    rows = table.by_service.get((ns, service), []) if isinstance(table, IndexedTable) else table.items()
    found = [v for (n, s, t, r), v in rows
             if n == ns and s == service and (track is None or t == track) and (revision is None or r == revision)]
    finite = [v for v in found if math.isfinite(v)]
    return sum(finite) if finite else None


def _builtin_values(metric: MetricSpec, ctx: QueryContext, totals: Mapping[str, Table],
                    windowed: Mapping[str, Table]) -> dict[str, float | None]:
    ns, svc, rev = ctx.namespace, ctx.service, ctx.canary_revision
    req = totals["requests"]
    track = ctx.canary_track
    values: dict[str, float | None] = {
        CANARY_REQUESTS_TOTAL: _sum(req, ns, svc, track, rev),
        STABLE_REQUESTS_TOTAL: _sum(req, ns, svc, TRACK_STABLE, None),
    }
    # An absent 5xx or orders series next to requests means none happened yet (the planner reads None
    # as 0 while the track has requests).
    if metric.kind == "errorRatio":
        err = totals["errors"]
        values[CANARY_ERRORS_TOTAL] = _sum(err, ns, svc, track, rev)
        values[STABLE_ERRORS_TOTAL] = _sum(err, ns, svc, TRACK_STABLE, None)
    elif metric.kind == "orderRateDrop":
        if metric.max_drop is not None:
            orders = totals["orders"]
            values[CANARY_ORDERS_TOTAL] = _sum(orders, ns, svc, track, rev)
            values[STABLE_ORDERS_TOTAL] = _sum(orders, ns, svc, TRACK_STABLE, None)
        if metric.max_baseline_drop is not None:
            total = _sum(windowed["orders"], ns, svc, None, None)
            values[ORDER_RATE] = None if total is None else total / metric_window(metric, ctx)
    return values


def samples_for(req: MeasurementRequest, answers: Mapping[str, Answer],
                known_baselines: Mapping[str, float | None] | None = None) -> Samples:
    """This rollout's numbers out of the shared answers of its URL (`answers` may hold other keys)."""
    values: dict[str, dict[str, float | None]] = {}
    errors: dict[str, str] = {}
    baselines: dict[str, float | None] = {}
    if req.url is None:
        return Samples(req.context, errors={m.name: "no Prometheus address: set spec.analysis.prometheus.address "
                                            "or CF_PROMETHEUS_URL" for m in req.metrics}, at=req.at)
    for name in req.baselines:
        ans = answers.get(_own_key(req, "baseline", name))
        if isinstance(ans, float) or ans is None:
            baselines[name] = _finite(ans)
    for metric in req.metrics:
        window = metric_window(metric, req.context)
        if metric.kind == "query":
            ans = answers.get(_own_key(req, "query", metric.name))
            if isinstance(ans, QueryFailure):
                try:  # name the query as Prometheus saw it (variables substituted)
                    shown = render_query(metric.query or "", replace(req.context, window_seconds=window))
                except ValueError:
                    shown = metric.query or ""
                errors[metric.name] = f"{ans.message} [query {shown}]" if not ans.unavailable else ans.message
            elif isinstance(ans, dict):
                errors[metric.name] = "internal: a grouped answer for a custom query"
            elif _own_key(req, "query", metric.name) not in answers:
                try:
                    render_query(metric.query or "", req.context)
                    errors[metric.name] = "query was not run"
                except ValueError as err:
                    errors[metric.name] = f"cannot build query: {err}"
            else:
                values[metric.name] = {QUERY_VALUE: _finite(ans)}
            continue
        totals: dict[str, Table] = {}
        windowed: dict[str, Table] = {}
        failure: str | None = None
        for counter, w in _needed(metric, window):
            ans = answers.get(_grouped_key(counter, w))
            if isinstance(ans, QueryFailure):
                failure = ans.message if ans.unavailable else f"{ans.message} [query {_grouped_key(counter, w)}]"
                break
            (totals if w is None else windowed)[counter] = ans if isinstance(ans, dict) else {}
        if failure is not None:
            errors[metric.name] = failure
            continue
        vals = _builtin_values(metric, req.context, totals, windowed)
        if metric.kind == "orderRateDrop" and metric.max_baseline_drop is not None:
            known = dict(known_baselines or {})
            known.update(baselines)
            if metric.name in known:
                vals[BASELINE_ORDER_RATE] = known[metric.name]
        values[metric.name] = vals
    return Samples(req.context, values, errors, baselines, at=req.at)
