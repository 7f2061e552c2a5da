"""Pure tests of query building and verdicts (controlled_friction.analysis) and of resolve_url."""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import UTC, datetime

import promql_parser
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controlled_friction.analysis import (
    BASELINE_ORDER_RATE,
    CANARY_ERROR_RATIO,
    CANARY_ORDERS_PER_REQUEST,
    CANARY_REQUESTS,
    ORDER_RATE,
    QUERY_VALUE,
    STABLE_ERROR_RATIO,
    STABLE_ORDERS_PER_REQUEST,
    QueryContext,
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


# ---------------------------------------------------------------- errorRatio


def err_values(share: float | None, stable: float | None = 0.004, requests: float | None = 500.0):
    return {CANARY_REQUESTS: requests, CANARY_ERROR_RATIO: share, STABLE_ERROR_RATIO: stable}


def test_error_ratio_pass() -> None:
    m = evaluate(ERRORS, err_values(0.003), CTX, NOW)
    assert m.verdict == "pass"
    assert m.value == 0.003 and m.bound == "≤ 0.02, ≤ stable + 0.01" and m.time == NOW
    assert "500 canary requests" in m.message


def test_error_ratio_fail_over_max_ratio_names_the_values() -> None:
    m = evaluate(metric(kind="errorRatio", maxRatio=0.02), err_values(0.312), CTX, NOW)
    assert m.verdict == "fail" and m.value == 0.312
    assert "canary 5xx 31.2% > maxRatio 2.0% (stable 0.4%)" in m.message


def test_error_ratio_fail_over_stable_only() -> None:
    # 1.9% is under maxRatio but 1.5 points above stable, over the allowed 1 point
    m = evaluate(ERRORS, err_values(0.019, stable=0.004, requests=100_000), CTX, NOW)
    assert m.verdict == "fail"
    assert "maxIncreaseOverStable 1.0%" in m.message and "canary 5xx 1.9% ≤ maxRatio" in m.message
    assert m.message.index("maxIncreaseOverStable") < m.message.index("≤ maxRatio")  # failures first


def test_error_ratio_too_little_traffic_is_inconclusive_even_if_the_share_is_bad() -> None:
    m = evaluate(ERRORS, err_values(0.5, requests=5.0), CTX, NOW)
    assert m.verdict == "inconclusive"
    assert m.message == "too little traffic: 5 requests < minRequests 20"


def test_error_ratio_no_series_is_no_data() -> None:
    m = evaluate(ERRORS, {}, CTX, NOW)
    assert m.verdict == "inconclusive" and m.message.startswith("no data") and m.value is None


def test_error_ratio_nan_share_is_no_data() -> None:
    assert evaluate(ERRORS, err_values(math.nan), CTX, NOW).verdict == "inconclusive"
    assert evaluate(ERRORS, err_values(math.inf), CTX, NOW).verdict == "inconclusive"


def test_error_ratio_missing_stable() -> None:
    only_increase = metric(kind="errorRatio", maxIncreaseOverStable=0.01)
    m = evaluate(only_increase, err_values(0.001, stable=None), CTX, NOW)
    assert m.verdict == "inconclusive" and "no stable traffic" in m.message
    # with maxRatio configured too, maxRatio decides alone (e.g. the canary is at 100%)
    both = evaluate(ERRORS, err_values(0.001, stable=None), CTX, NOW)
    assert both.verdict == "pass" and "no stable traffic" in both.message
    assert evaluate(ERRORS, err_values(0.3, stable=None), CTX, NOW).verdict == "fail"


def test_min_requests_zero_accepts_any_traffic() -> None:
    ctx = replace(CTX, min_requests=0)
    assert evaluate(ERRORS, err_values(0.0, requests=0.0), ctx, NOW).verdict == "pass"


# ---------------------------------------------------------------- orderRateDrop


def order_values(
    canary: float | None = 0.5,
    stable: float | None = 0.5,
    now: float | None = 10.0,
    baseline: float | None = 10.0,
    requests: float | None = 400.0,
):
    return {
        CANARY_REQUESTS: requests,
        CANARY_ORDERS_PER_REQUEST: canary,
        STABLE_ORDERS_PER_REQUEST: stable,
        ORDER_RATE: now,
        BASELINE_ORDER_RATE: baseline,
    }


def test_orders_pass() -> None:
    m = evaluate(ORDERS, order_values(canary=0.48), CTX, NOW)
    assert m.verdict == "pass" and m.value == pytest.approx(0.04)
    assert m.bound == "drop ≤ 0.2, baseline drop ≤ 0.5"


def test_orders_99_percent_drop_fails_even_when_the_service_total_barely_moves() -> None:
    # 5% canary weight losing 99% of orders: the service total drops only ~5%
    m = evaluate(ORDERS, order_values(canary=0.005, now=9.5), CTX, NOW)
    assert m.verdict == "fail" and m.value == pytest.approx(0.99)
    assert "drop 99.0% > maxDrop 20.0%" in m.message and "≤ maxBaselineDrop" in m.message


def test_orders_baseline_drop_fails() -> None:
    m = evaluate(ORDERS, order_values(now=3.0), CTX, NOW)
    assert m.verdict == "fail" and "drop 70.0% > maxBaselineDrop 50.0%" in m.message


def test_orders_missing_baseline() -> None:
    # maxDrop decides alone when the service had no orders before
    m = evaluate(ORDERS, order_values(baseline=None), CTX, NOW)
    assert m.verdict == "pass" and "maxBaselineDrop not checked" in m.message
    only_baseline = metric(kind="orderRateDrop", maxBaselineDrop=0.5)
    assert evaluate(only_baseline, order_values(baseline=None), CTX, NOW).verdict == "inconclusive"
    assert evaluate(only_baseline, order_values(baseline=0.0), CTX, NOW).verdict == "inconclusive"
    unknown_start = replace(CTX, rollout_started_at=None)
    m = evaluate(only_baseline, order_values(), unknown_start, NOW)
    assert m.verdict == "inconclusive" and "rollout start unknown" in m.message


def test_orders_missing_stable() -> None:
    only_drop = metric(kind="orderRateDrop", maxDrop=0.2)
    assert evaluate(only_drop, order_values(stable=None), CTX, NOW).verdict == "inconclusive"
    m = evaluate(only_drop, order_values(stable=0.0), CTX, NOW)
    assert m.verdict == "inconclusive" and "stable recorded no orders" in m.message
    assert evaluate(ORDERS, order_values(stable=None), CTX, NOW).verdict == "pass"  # baseline decides


def test_orders_too_little_canary_traffic() -> None:
    m = evaluate(ORDERS, order_values(canary=0.0, requests=3.0), CTX, NOW)
    assert m.verdict == "inconclusive" and "too little traffic: 3 requests < minRequests 20" in m.message
    # a service-wide order collapse still fails: fail outranks inconclusive
    assert evaluate(ORDERS, order_values(requests=3.0, now=1.0), CTX, NOW).verdict == "fail"


def test_orders_no_canary_series() -> None:
    m = evaluate(ORDERS, order_values(canary=None, requests=None), CTX, NOW)
    assert m.verdict == "inconclusive" and "no data" in m.message


# ---------------------------------------------------------------- query


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
    m = evaluate(LATENCY, {QUERY_VALUE: value}, CTX, NOW)
    assert m.verdict == verdict and text in m.message and m.bound == "≥ 0, ≤ 0.5"


def test_query_ignores_min_requests() -> None:
    assert evaluate(LATENCY, {QUERY_VALUE: 0.1}, replace(CTX, min_requests=10**6), NOW).verdict == "pass"


def test_error_measurement() -> None:
    m = error_measurement(ERRORS, "Prometheus at http://x is unreachable: Connection refused", NOW)
    assert m.verdict == "error" and m.value is None and m.time == NOW and "unreachable" in m.message


# ---------------------------------------------------------------- properties

MISSING = st.sampled_from([None, math.nan, math.inf, -math.inf])
NUMBER = st.floats(min_value=0, max_value=1e6, allow_nan=False)


@st.composite
def configured_metric(draw: st.DrawFn) -> MetricSpec:
    kind = draw(st.sampled_from(["errorRatio", "orderRateDrop", "query"]))
    limit = st.none() | st.floats(min_value=0, max_value=1)
    if kind == "errorRatio":
        a, b = draw(limit), draw(limit)
        if a is None and b is None:
            a = 0.02
        return metric(kind=kind, maxRatio=a, maxIncreaseOverStable=b)
    if kind == "orderRateDrop":
        a, b = draw(limit), draw(limit)
        if a is None and b is None:
            b = 0.5
        return metric(kind=kind, maxDrop=a, maxBaselineDrop=b)
    lo, hi = draw(st.none() | NUMBER), draw(st.none() | NUMBER)
    return metric(kind=kind, query="sum(x)", min=lo, max=0.5 if lo is None and hi is None else hi)


def primary_inputs(m: MetricSpec) -> set[str]:
    """Values every configured check of the metric depends on (the canary's own numbers)."""
    if m.kind == "errorRatio":
        return {CANARY_REQUESTS, CANARY_ERROR_RATIO}
    if m.kind == "orderRateDrop":
        need = {CANARY_REQUESTS}
        if m.max_drop is not None:
            need.add(CANARY_ORDERS_PER_REQUEST)
        if m.max_baseline_drop is not None:
            need.add(ORDER_RATE)
        return need
    return {QUERY_VALUE}


def bad(x: float | None) -> bool:
    return x is None or not math.isfinite(x)


def no_reference_anywhere(m: MetricSpec, v: dict[str, float | None], ctx: QueryContext) -> bool:
    """Every configured comparison lacks its reference, so nothing could have been checked."""
    if m.kind == "errorRatio":
        return m.max_ratio is None and bad(v.get(STABLE_ERROR_RATIO))
    if m.kind == "orderRateDrop":
        stable = v.get(STABLE_ORDERS_PER_REQUEST)
        baseline = v.get(BASELINE_ORDER_RATE)
        drop_unchecked = m.max_drop is None or bad(stable) or stable == 0
        base_unchecked = (
            m.max_baseline_drop is None or ctx.rollout_started_at is None or bad(baseline) or baseline == 0
        )
        return drop_unchecked and base_unchecked
    return False


@settings(max_examples=400, deadline=None)
@given(
    m=configured_metric(),
    data=st.data(),
    started=st.sampled_from([STARTED, None]),
    min_requests=st.integers(min_value=0, max_value=100),
)
def test_never_pass_on_missing_data(
    m: MetricSpec, data: st.DataObject, started: datetime | None, min_requests: int
) -> None:
    ctx = replace(CTX, rollout_started_at=started, min_requests=min_requests)
    names = sorted(queries_for(m, ctx))
    values: dict[str, float | None] = {n: data.draw(MISSING | NUMBER, label=n) for n in names}
    # a query that returned nothing may also be absent from the dict
    dropped = data.draw(st.sets(st.sampled_from(names)), label="dropped")
    for n in dropped:
        values.pop(n)
    verdict = evaluate(m, values, ctx, NOW).verdict
    assert verdict in {"pass", "fail", "inconclusive"}
    if any(bad(values.get(n)) for n in primary_inputs(m)):
        assert verdict != "pass"
    if no_reference_anywhere(m, values, ctx):
        assert verdict != "pass"


@settings(max_examples=300, deadline=None)
@given(
    share=st.floats(min_value=0, max_value=1),
    stable=st.floats(min_value=0, max_value=1),
    requests=st.floats(min_value=20, max_value=1e6),
)
def test_error_ratio_verdict_matches_the_thresholds(share: float, stable: float, requests: float) -> None:
    m = evaluate(ERRORS, err_values(share, stable, requests), CTX, NOW)
    # Within the bounds: always pass. Beyond them by more than any binomial noise (z 2.33, p(1-p) <= 1/4):
    # always fail. In between the canary's sample size decides.
    noise = 1.2 / math.sqrt(requests)
    breach = max(share - 0.02, share - stable - 0.01)
    if breach <= 0:
        assert m.verdict == "pass"
    elif breach > noise:
        assert m.verdict == "fail"


def test_small_samples_are_judged_with_their_noise() -> None:
    # 2 errors in 40 requests (5%) is over maxRatio 2% but well within the noise of 40 requests...
    assert evaluate(ERRORS, err_values(0.05, stable=0.05, requests=40), CTX, NOW).verdict == "pass"
    # ...while 5% of 40,000 requests is not; and 100% 5xx fails after a few dozen requests.
    assert evaluate(ERRORS, err_values(0.05, stable=0.05, requests=40_000), CTX, NOW).verdict == "fail"
    assert evaluate(ERRORS, err_values(1.0, stable=0.004, requests=25), CTX, NOW).verdict == "fail"
    # The same holds for orders per request: -99% fails on 30 requests, -30% on 30 requests does not.
    assert evaluate(ORDERS, order_values(0.003, 0.3, requests=30), CTX, NOW).verdict == "fail"
    assert evaluate(ORDERS, order_values(0.21, 0.3, requests=30), CTX, NOW).verdict == "pass"


@settings(max_examples=300, deadline=None)
@given(
    canary=st.floats(min_value=0, max_value=5),
    stable=st.floats(min_value=0.01, max_value=5),
    now=st.floats(min_value=0, max_value=1e4),
    baseline=st.floats(min_value=0.01, max_value=1e4),
)
def test_order_verdict_matches_the_thresholds(
    canary: float, stable: float, now: float, baseline: float
) -> None:
    m = evaluate(ORDERS, order_values(canary, stable, now, baseline), CTX, NOW)
    noise = 1.2 / math.sqrt(400.0)  # order_values' canary requests
    per_request_breach = stable * 0.8 - canary
    baseline_breached = 1 - now / baseline > 0.5
    if per_request_breach <= 0 and not baseline_breached:
        assert m.verdict == "pass"
    elif per_request_breach > noise or baseline_breached:
        assert m.verdict == "fail"


# ---------------------------------------------------------------- resolve_url


def test_resolve_url_order() -> None:
    env = "http://env:9090"  # the operator's default, from CF_PROMETHEUS_URL
    assert resolve_url("http://ro:9090/", ["http://pol:9090"], env) == "http://ro:9090"
    assert resolve_url(None, ["", "http://pol:9090"], env) == "http://pol:9090"
    assert resolve_url(None, [], env) == "http://env:9090"
    assert resolve_url(None, [], None) is None
