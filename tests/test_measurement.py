"""Batched measurement: queries per round depend on distinct windows and kinds, not on how many
Rollouts are due; each rollout's cumulative counters are picked out of the shared answers correctly."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

from controlled_friction import measurement
from controlled_friction.analysis import (
    BASELINE_ORDER_RATE,
    CANARY_ERRORS_TOTAL,
    CANARY_ORDERS_TOTAL,
    CANARY_REQUESTS_TOTAL,
    ORDER_RATE,
    STABLE_ERRORS_TOTAL,
    STABLE_ORDERS_TOTAL,
    STABLE_REQUESTS_TOTAL,
    QueryContext,
)
from controlled_friction.measurement import MeasurementRequest, QueryFailure
from controlled_friction.models.rollout import MetricSpec

ERRORS = MetricSpec.model_validate({"name": "errors", "kind": "errorRatio", "maxRatio": 0.05})
ORDERS = MetricSpec.model_validate({"name": "orders", "kind": "orderRateDrop", "maxDrop": 0.2,
                                    "maxBaselineDrop": 0.3})
CUSTOM = MetricSpec.model_validate({"name": "lat", "kind": "query", "query": "sum(up{service='{{service}}'})",
                                    "max": 1})
T = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def ctx(i: int, window: float = 60.0) -> QueryContext:
    return QueryContext(namespace=f"ns{i % 7}", service=f"svc{i}", rollout=f"svc{i}", canary_revision=f"c{i}",
                        stable_revision=f"s{i}", window_seconds=window, interval_seconds=10, min_requests=20,
                        rollout_started_at=T)


def req(i: int, *metrics: MetricSpec, url: str = "http://prom", window: float = 60.0,
        baselines: tuple[str, ...] = ()) -> MeasurementRequest:
    return MeasurementRequest((f"ns{i % 7}", f"svc{i}"), url, ctx(i, window), metrics, baselines)


def test_built_in_metrics_of_many_rollouts_share_their_queries():
    few = measurement.queries([req(i, ERRORS, ORDERS) for i in range(3)])
    many = measurement.queries([req(i, ERRORS, ORDERS) for i in range(1000)])
    # the counters requests, 5xx and orders (no window), and orders over the window (maxBaselineDrop)
    assert len(many["http://prom"]) == len(few["http://prom"]) == 4
    promql = sorted(q.promql for q in many["http://prom"].values())
    assert "sum by (namespace, service, track, revision) (http_requests_total)" in promql
    assert 'sum by (namespace, service, track, revision) (http_requests_total{code=~"5.."})' in promql
    assert "sum by (namespace, service, track, revision) (orders_total)" in promql
    assert "sum by (namespace, service, track, revision) (increase(orders_total[60s]))" in promql
    # windows only matter to the windowed baseline check
    errors_only = measurement.queries([req(i, ERRORS, window=60 if i % 2 else 30) for i in range(1000)])
    assert len(errors_only["http://prom"]) == 2
    two_windows = measurement.queries([req(i, ORDERS, window=60 if i % 2 else 30) for i in range(1000)])
    assert len(two_windows["http://prom"]) == 4


def test_custom_queries_and_baselines_stay_one_each():
    qs = measurement.queries([req(i, CUSTOM, ORDERS, baselines=("orders",)) for i in range(5)])["http://prom"]
    assert sum(1 for q in qs.values() if not q.grouped) == 10


def test_samples_pick_the_canary_revision_and_every_stable_series():
    table_req = {("ns1", "svc1", "canary", "c1"): 100.0, ("ns1", "svc1", "canary", "old"): 50.0,
                 ("ns1", "svc1", "stable", "s1"): 300.0, ("ns1", "svc1", "stable", "s0"): 100.0,
                 ("ns2", "svc2", "canary", "c2"): 7.0}
    table_err = {("ns1", "svc1", "canary", "c1"): 10.0, ("ns1", "svc1", "stable", "s1"): 4.0}
    table_orders = {("ns1", "svc1", "canary", "c1"): 30.0, ("ns1", "svc1", "stable", "s1"): 120.0}
    orders_in_window = {("ns1", "svc1", "canary", "c1"): 6.0, ("ns1", "svc1", "stable", "s1"): 24.0}
    r = req(1, ERRORS, ORDERS)
    keys = measurement.queries([r])["http://prom"]
    answers = {}
    for k in keys:
        answers[k] = (table_req if k.startswith("requests") else table_err if k.startswith("errors")
                      else table_orders if k.endswith("@total") else orders_in_window)
    s = measurement.samples_for(r, answers, known_baselines={"orders": 3.0})
    e, o = s.values["errors"], s.values["orders"]
    assert e[CANARY_REQUESTS_TOTAL] == 100.0  # the canary revision only, not an older canary
    assert e[CANARY_ERRORS_TOTAL] == 10.0
    assert e[STABLE_REQUESTS_TOTAL] == 400.0 and e[STABLE_ERRORS_TOTAL] == 4.0  # every stable series
    assert o[CANARY_ORDERS_TOTAL] == 30.0 and o[STABLE_ORDERS_TOTAL] == 120.0
    assert o[ORDER_RATE] == 30.0 / 60.0  # the service's orders over the window, per second
    assert o[BASELINE_ORDER_RATE] == 3.0


def test_a_revision_without_5xx_series_has_no_errors_and_one_without_requests_has_no_data():
    r = req(2, ERRORS)
    keys = measurement.queries([r])["http://prom"]
    answers = {k: ({("ns2", "svc2", "canary", "c2"): 40.0} if k.startswith("requests") else {}) for k in keys}
    values = measurement.samples_for(r, answers).values["errors"]
    assert values[CANARY_REQUESTS_TOTAL] == 40.0 and values[CANARY_ERRORS_TOTAL] is None  # read as 0 by the planner
    empty = {k: {} for k in keys}
    assert measurement.samples_for(r, empty).values["errors"][CANARY_REQUESTS_TOTAL] is None


def test_failures_become_errors_per_metric():
    r = req(3, ERRORS, CUSTOM)
    keys = measurement.queries([r])["http://prom"]
    down = QueryFailure("Prometheus at http://prom is unreachable: Connection refused", unavailable=True)
    s = measurement.samples_for(r, dict.fromkeys(keys, down))
    assert set(s.errors) == {"errors", "lat"} and "unreachable" in s.errors["errors"]
    nowhere = MeasurementRequest(("ns", "x"), None, ctx(3), (ERRORS,))
    assert "no Prometheus address" in measurement.samples_for(nowhere, {}).errors["errors"]


def test_indexed_answers_give_every_rollout_the_same_numbers_as_a_plain_table():
    """The per-service index (a batch of N rollouts must not scan N services' rows each) changes no number."""
    reqs = [req(i, ERRORS, ORDERS) for i in range(60)]
    keys = measurement.queries(reqs)["http://prom"]
    rows = {}
    for i in range(60):
        ns, svc = f"ns{i % 7}", f"svc{i}"
        rows.update({(ns, svc, "canary", f"c{i}"): 10.0 + i, (ns, svc, "canary", "old"): 3.0,
                     (ns, svc, "stable", f"s{i}"): 100.0 + i, (ns, svc, "stable", "s-old"): 1.0})
    plain = {k: dict(rows) for k in keys}
    indexed = {k: measurement.IndexedTable(rows) for k in keys}
    assert indexed[next(iter(keys))].by_service[("ns3", "svc3")]  # grouped by (namespace, service)
    for r in reqs:
        assert measurement.samples_for(r, indexed) == measurement.samples_for(r, plain)


def test_batches_asking_at_the_same_moment_share_one_answer():
    from controlled_friction.operator.reconcile import ANSWER_TTL, Context

    calls: list[list[str]] = []

    class FakeProm:
        def run(self, queries, at=None):
            calls.append(sorted(queries))
            return {k: measurement.IndexedTable({}) for k in queries}

    c = Context(kube=None, key=b"k")  # type: ignore[arg-type]
    c.prometheus = lambda url: FakeProm()  # type: ignore[method-assign]
    qs = measurement.queries([req(1, ERRORS)])["http://prom"]
    more = measurement.queries([req(2, ERRORS, ORDERS)])["http://prom"]
    c.answers("http://prom", qs)
    c.answers("http://prom", qs)  # a second batch at the same moment: no new query
    c.answers("http://prom", more)  # only what the first did not ask
    assert calls == [sorted(qs), sorted(set(more) - set(qs))]
    import time

    time.sleep(ANSWER_TTL + 0.05)
    c.answers("http://prom", qs)  # the next look asks again
    assert len(calls) == 3 and calls[2] == sorted(qs)


def test_looks_of_one_grid_instant_share_one_answer_however_late_they_run():
    from datetime import UTC, datetime, timedelta

    from controlled_friction.operator.reconcile import ANSWER_TTL, Context, fetch_samples

    asked: list[tuple[datetime | None, tuple[str, ...]]] = []

    class FakeProm:
        def run(self, queries, at=None):
            asked.append((at, tuple(sorted(queries))))
            return {k: measurement.IndexedTable({}) for k in queries}

    c = Context(kube=None, key=b"k")  # type: ignore[arg-type]
    c.prometheus = lambda url: FakeProm()  # type: ignore[method-assign]
    t = datetime(2026, 3, 1, 12, 0, 10, tzinfo=UTC)
    first = [replace(req(i, ERRORS), at=t) for i in range(3)]
    late = [replace(req(i, ERRORS), at=t) for i in range(3, 6)]
    out = fetch_samples(c, first)
    import time

    time.sleep(ANSWER_TTL + 0.05)  # a later batch of the same instant, past the ad-hoc reuse time
    out.update(fetch_samples(c, late))
    assert len(asked) == 1 and asked[0][0] == t  # one fetch, of the grid instant itself
    assert all(out[r.key].at == t for r in first + late)
    fetch_samples(c, [replace(req(0, ERRORS), at=t + timedelta(seconds=10))])
    assert [a for a, _ in asked] == [t, t + timedelta(seconds=10)]  # the next instant is asked anew
