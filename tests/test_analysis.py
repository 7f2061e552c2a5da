"""Pure tests of query building and verdicts (controlled_friction.analysis) and of resolve_url."""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import UTC, datetime

import promql_parser
import pytest

from controlled_friction.analysis import (
    BASELINE_ORDER_RATE,
    CANARY_ERROR_RATIO,
    CANARY_ORDERS_PER_REQUEST,
    CANARY_REQUESTS,
    ORDER_RATE,
    QUERY_VALUE,
    STABLE_ERROR_RATIO,
    STABLE_ORDERS_PER_REQUEST,
    Check,
    QueryContext,
    baseline_check,
    combine,
    error_measurement,
    evaluate,
    promql_duration,
    queries_for,
    render_query,
    validate_query,
)
from controlled_friction.measurement import resolve_url
from controlled_friction.models.rollout import MetricSpec

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
STARTED = datetime(2026, 11, 23, 11, 50, tzinfo=UTC)
CTX = QueryContext(
    namespace="shop-ns",
    service="checkout",
    rollout="checkout-ro",
    canary_revision="c0ffee1234",
    stable_revision="5ab1e56789",
    window_seconds=60.0,
    interval_seconds=10.0,
    min_requests=20,
    rollout_started_at=STARTED,
)

ERRORS = MetricSpec(name="errors", kind="errorRatio", max_ratio=0.02, max_increase_over_stable=0.01)
ORDERS = MetricSpec(name="orders", kind="orderRateDrop", max_drop=0.2, max_baseline_drop=0.5)
LATENCY = MetricSpec(
    name="latency",
    kind="query",
    query='histogram_quantile(0.99, sum by (le) (rate(latency_bucket{revision="{{revision}}"}[{{window}}])))',
    min=0.0,
    max=0.5,
)


def metric(**kw: object) -> MetricSpec:
    return MetricSpec.model_validate({"name": "m", **kw})


def parses(query: str) -> bool:
    promql_parser.parse(query)  # raises ValueError when it does not
    return True


# ---------------------------------------------------------------- queries


def test_error_ratio_queries_pin_the_canary_revision_and_select_stable_by_track() -> None:
    q = queries_for(ERRORS, CTX)
    assert set(q) == {CANARY_REQUESTS, CANARY_ERROR_RATIO, STABLE_ERROR_RATIO}
    assert all(parses(text) for text in q.values())
    for name in (CANARY_REQUESTS, CANARY_ERROR_RATIO):
        assert 'track="canary"' in q[name] and 'revision="c0ffee1234"' in q[name]
        assert 'namespace="shop-ns"' in q[name] and 'service="checkout"' in q[name]
    assert 'track="stable"' in q[STABLE_ERROR_RATIO] and "c0ffee1234" not in q[STABLE_ERROR_RATIO]
    assert 'code=~"5.."' in q[CANARY_ERROR_RATIO]
    assert "increase(" in q[CANARY_REQUESTS] and "[60s]" in q[CANARY_REQUESTS]


def test_order_queries_use_the_at_modifier_for_the_pre_rollout_baseline() -> None:
    q = queries_for(ORDERS, CTX)
    assert all(parses(text) for text in q.values())
    assert f"@ {STARTED.timestamp():.3f}" in q[BASELINE_ORDER_RATE]
    assert "@" not in q[ORDER_RATE]
    # service-wide: no track or revision in the order-rate queries
    assert "track=" not in q[ORDER_RATE] and "track=" not in q[BASELINE_ORDER_RATE]
    assert 'revision="c0ffee1234"' in q[CANARY_ORDERS_PER_REQUEST]
    assert 'track="stable"' in q[STABLE_ORDERS_PER_REQUEST]


def test_naive_rollout_start_is_taken_as_utc() -> None:
    naive = replace(CTX, rollout_started_at=STARTED.replace(tzinfo=None))
    assert queries_for(ORDERS, naive)[BASELINE_ORDER_RATE] == queries_for(ORDERS, CTX)[BASELINE_ORDER_RATE]


def test_order_queries_only_ask_for_what_is_configured() -> None:
    only_drop = metric(kind="orderRateDrop", maxDrop=0.2)
    assert set(queries_for(only_drop, CTX)) == {
        CANARY_REQUESTS,
        CANARY_ORDERS_PER_REQUEST,
        STABLE_ORDERS_PER_REQUEST,
    }
    only_baseline = metric(kind="orderRateDrop", maxBaselineDrop=0.5)
    assert set(queries_for(only_baseline, CTX)) == {CANARY_REQUESTS, ORDER_RATE, BASELINE_ORDER_RATE}
    unknown_start = replace(CTX, rollout_started_at=None)
    assert set(queries_for(only_baseline, unknown_start)) == {CANARY_REQUESTS, ORDER_RATE}


def test_metric_window_overrides_the_default_and_fractions_become_milliseconds() -> None:
    assert (
        "[90s]" in queries_for(metric(kind="errorRatio", maxRatio=0.1, window="1m30s"), CTX)[CANARY_REQUESTS]
    )
    assert (
        "[1500ms]" in queries_for(metric(kind="errorRatio", maxRatio=0.1, window=1.5), CTX)[CANARY_REQUESTS]
    )
    assert promql_duration(0) == "1ms"


def test_custom_query_renders_variables() -> None:
    rendered = queries_for(LATENCY, CTX)[QUERY_VALUE]
    assert 'revision="c0ffee1234"' in rendered and "[60s]" in rendered and "{{" not in rendered
    stable = render_query('x{track="{{track}}",revision="{{ revision }}"}[{{interval}}]', CTX, track="stable")
    assert stable == 'x{track="stable",revision="5ab1e56789"}[10s]'
    both = render_query("{{namespace}}/{{service}}/{{rollout}}", CTX)
    assert both == "shop-ns/checkout/checkout-ro"
    with pytest.raises(ValueError, match="unknown variable"):
        render_query("x{a='{{nope}}'}", CTX)


def test_validate_query() -> None:
    assert validate_query(LATENCY.query or "") is None
    assert validate_query('sum(rate(http_requests_total{service="{{service}}"}[{{window}}]))') is None
    broken = validate_query("sum(rate(x[{{window}}])")
    assert broken is not None and "not valid PromQL" in broken and "sum(rate(x[60s])" in broken
    unknown = validate_query('x{a="{{tenant}}"}')
    assert unknown is not None and "tenant" in unknown and "revision" in unknown
    matrix = validate_query("x[{{window}}]")
    assert matrix is not None and "range vector" in matrix
    assert validate_query('"text"') is not None


# ---------------------------------------------------------------- threshold verdicts
# errorRatio and orderRateDrop's canary-vs-stable bounds are sequential tests: tests/test_sequential_analysis.py.


@pytest.mark.parametrize(
    ("value", "verdict", "text"),
    [
        (0.2, "pass", "value 0.2 within ≥ 0, ≤ 0.5"),
        (0.9, "fail", "value 0.9 > max 0.5"),
        (-1.0, "fail", "value -1 < min 0"),
        (None, "inconclusive", "no data"),
        (math.nan, "inconclusive", "no data"),
    ],
)
def test_query_kind(value: float | None, verdict: str, text: str) -> None:
    m = evaluate(LATENCY, {QUERY_VALUE: value}, NOW)
    assert m.verdict == verdict and text in m.message and m.bound == "≥ 0, ≤ 0.5"


def test_error_measurement() -> None:
    m = error_measurement(ERRORS, "Prometheus at http://x is unreachable: Connection refused", NOW)
    assert m.verdict == "error" and m.value is None and m.time == NOW and "unreachable" in m.message


def test_baseline_check_is_a_plain_threshold_on_the_service_order_rate() -> None:
    fail = baseline_check(ORDERS, {ORDER_RATE: 3.0, BASELINE_ORDER_RATE: 10.0}, CTX)
    assert fail is not None and fail.verdict == "fail"
    assert "drop 70.0% > maxBaselineDrop 50.0%" in fail.message and "before the rollout" in fail.message
    ok = baseline_check(ORDERS, {ORDER_RATE: 9.5, BASELINE_ORDER_RATE: 10.0}, CTX)
    assert ok is not None and ok.verdict == "pass" and "≤ maxBaselineDrop" in ok.message
    assert baseline_check(metric(kind="orderRateDrop", maxDrop=0.2), {ORDER_RATE: 1.0}, CTX) is None


def test_baseline_check_without_a_reference_or_data() -> None:
    for baseline in (None, 0.0, math.nan):
        c = baseline_check(ORDERS, {ORDER_RATE: 5.0, BASELINE_ORDER_RATE: baseline}, CTX)
        assert c is not None and c.verdict == "inconclusive" and c.reference_missing
    unknown = baseline_check(ORDERS, {ORDER_RATE: 5.0, BASELINE_ORDER_RATE: 5.0}, replace(CTX, rollout_started_at=None))
    assert unknown is not None and "rollout start unknown" in unknown.message
    none = baseline_check(ORDERS, {}, CTX)
    assert none is not None and none.verdict == "inconclusive" and not none.reference_missing
    assert none.message.startswith("no data")


def test_combine_takes_the_worst_and_drops_missing_references_when_something_decided() -> None:
    missing = Check("inconclusive", "no reference", reference_missing=True)
    assert combine([Check("pass", "ok"), missing]) == ("pass", "no reference; ok")
    assert combine([missing])[0] == "inconclusive"
    assert combine([Check("pass", "a"), Check("fail", "b")]) == ("fail", "b; a")


# ---------------------------------------------------------------- resolve_url


def test_resolve_url_order() -> None:
    env = "http://env:9090"  # the operator's default, from CF_PROMETHEUS_URL
    assert resolve_url("http://ro:9090/", ["http://pol:9090"], env) == "http://ro:9090"
    assert resolve_url(None, ["", "http://pol:9090"], env) == "http://pol:9090"
    assert resolve_url(None, [], env) == "http://env:9090"
    assert resolve_url(None, [], None) is None
