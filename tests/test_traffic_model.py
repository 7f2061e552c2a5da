"""The pure traffic model: split by ready replicas, faults, lost orders, monotonic counters.

Statistical checks use a fixed seed and tolerances of several standard deviations, so they pass
for any seed that is not astronomically unlucky, and fail when the model is wrong.
"""

from __future__ import annotations

import math
import statistics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controlled_friction import names
from controlled_friction.sandbox.simulator import topology_from_objects
from controlled_friction.sandbox.traffic import (
    CODE_FAULT,
    CODE_NOISE,
    HEALTHY,
    FaultProfile,
    Sampler,
    SeriesCounters,
    SeriesKey,
    ServiceKey,
    ServiceState,
    Track,
    TrafficConfig,
    TrafficModel,
    lost_report,
    parse_fault_profile,
)

SHOP = ServiceKey("shop", "checkout")
STABLE = SeriesKey("shop", "checkout", "stable", "aaaaaaaaaa")
CANARY = SeriesKey("shop", "checkout", "canary", "bbbbbbbbbb")


def topology(stable_ready: int, canary_ready: int, canary_faults: FaultProfile = HEALTHY, rate: float | None = None):
    return {
        SHOP: ServiceState(
            (
                Track("stable", STABLE.revision, stable_ready),
                Track("canary", CANARY.revision, canary_ready, canary_faults),
            ),
            rate,
        )
    }


def run(model: TrafficModel, topo, seconds: float, dt: float = 0.25) -> dict[SeriesKey, SeriesCounters]:
    for _ in range(round(seconds / dt)):
        model.tick(topo, dt)
    return model.snapshot().series


def within(value: float, expected: float, sd: float, k: float = 5.0) -> bool:
    return abs(value - expected) <= k * sd


# ---------------------------------------------------------------- split and rate


@pytest.mark.parametrize(("stable_ready", "canary_ready"), [(9, 1), (3, 1), (1, 1), (1, 3)])
def test_split_follows_ready_replicas(stable_ready: int, canary_ready: int) -> None:
    model = TrafficModel(seed=7)
    series = run(model, topology(stable_ready, canary_ready), seconds=400)
    canary, stable = series[CANARY].total_requests, series[STABLE].total_requests
    n = canary + stable
    share = canary_ready / (stable_ready + canary_ready)
    assert within(canary / n, share, math.sqrt(share * (1 - share) / n))
    assert model.snapshot().shares[SHOP] == pytest.approx({"stable": 1 - share, "canary": share})


def test_total_rate_is_the_configured_poisson_rate() -> None:
    model = TrafficModel(TrafficConfig(rate=80.0), seed=3)
    per_tick: list[int] = []
    before = 0
    for _ in range(2000):
        model.tick(topology(2, 0), 0.25)
        total = model.snapshot().series[STABLE].total_requests
        per_tick.append(total - before)
        before = total
    mean = 80.0 * 0.25
    assert within(statistics.fmean(per_tick), mean, math.sqrt(mean / len(per_tick)))
    # Poisson noise: the variance of the per-tick count is about its mean (not 0, not wild).
    assert 0.8 * mean < statistics.variance(per_tick) < 1.2 * mean


def test_a_service_rate_overrides_the_default() -> None:
    model = TrafficModel(TrafficConfig(rate=50.0), seed=4)
    series = run(model, topology(1, 0, rate=400.0), seconds=50)
    assert within(series[STABLE].total_requests, 400 * 50, math.sqrt(400 * 50))


def test_a_track_without_ready_replicas_gets_no_traffic_and_no_series() -> None:
    model = TrafficModel(seed=1)
    series = run(model, topology(3, 0, FaultProfile(error_rate=1.0)), seconds=30)
    assert CANARY not in series
    assert series[STABLE].total_requests > 0
    assert model.snapshot().shares[SHOP] == {"stable": 1.0, "canary": 0.0}


def test_no_ready_replicas_at_all_means_no_traffic() -> None:
    model = TrafficModel(seed=1)
    assert run(model, topology(0, 0), seconds=10) == {}
    assert model.snapshot().shares[SHOP] == {"stable": 0.0, "canary": 0.0}


def test_zero_dt_serves_nothing() -> None:
    model = TrafficModel(seed=1)
    model.tick(topology(1, 1), 0.0)
    assert all(c.total_requests == 0 for c in model.snapshot().series.values())


# ---------------------------------------------------------------- faults


def test_error_rate_adds_to_the_base_error_rate() -> None:
    model = TrafficModel(seed=11)
    series = run(model, topology(1, 1, FaultProfile(error_rate=0.3)), seconds=400)
    base = TrafficConfig().base_error_rate
    c, s = series[CANARY], series[STABLE]
    fail = (c.total_requests - c.successful_requests) / c.total_requests
    assert within(fail, base + 0.3, math.sqrt(0.3 * 0.7 / c.total_requests))
    # Fault failures answer 500, baseline noise 503; the healthy stable has no 500s at all.
    assert within(c.requests[CODE_FAULT] / c.total_requests, 0.3 * (1 - base), 0.005, k=2)
    assert CODE_FAULT not in s.requests
    stable_fail = s.requests.get(CODE_NOISE, 0) / s.total_requests
    assert within(stable_fail, base, math.sqrt(base / s.total_requests))
    assert s.requests.get(CODE_NOISE, 0) > 0  # realistic noise, not a spotless baseline


def test_failure_probability_is_base_plus_error_rate_even_with_a_noisy_baseline() -> None:
    model = TrafficModel(TrafficConfig(base_error_rate=0.2), seed=12)
    c = run(model, topology(0, 1, FaultProfile(error_rate=0.3)), seconds=400)[CANARY]
    fail = (c.total_requests - c.successful_requests) / c.total_requests
    assert within(fail, 0.5, math.sqrt(0.25 / c.total_requests))


def test_error_rate_and_base_rate_are_capped_at_certain_failure() -> None:
    model = TrafficModel(seed=2)
    series = run(model, topology(0, 1, FaultProfile(error_rate=1.0)), seconds=20)
    assert series[CANARY].successful_requests == 0
    assert series[CANARY].orders == 0
    assert series[CANARY].lost_orders == series[CANARY].expected_orders > 0


def test_order_drop_removes_that_fraction_of_the_canarys_orders() -> None:
    model = TrafficModel(seed=5)
    series = run(model, topology(1, 1, FaultProfile(order_drop=0.99)), seconds=600)
    q = TrafficConfig().order_probability
    s, c = series[STABLE], series[CANARY]
    stable_opr = s.orders / s.successful_requests
    canary_opr = c.orders / c.successful_requests
    assert within(stable_opr, q, math.sqrt(q * (1 - q) / s.successful_requests))
    assert within(canary_opr, q * 0.01, math.sqrt(q * 0.01 / c.successful_requests))
    assert canary_opr / stable_opr < 0.03  # ~99% fewer orders per request
    # Order drop alone costs no requests.
    assert CODE_FAULT not in c.requests


def test_latency_shifts_the_histogram() -> None:
    model = TrafficModel(seed=8)
    series = run(model, topology(1, 1, FaultProfile(latency_ms=500)), seconds=100)
    s, c = series[STABLE], series[CANARY]
    assert sum(s.latency_buckets) == s.total_requests
    assert sum(c.latency_buckets) == c.total_requests
    base = TrafficConfig().base_latency_s
    assert 0.8 * base < s.latency_sum / s.total_requests < 1.5 * base
    assert 0.5 < c.latency_sum / c.total_requests < 0.7  # median 0.53 s, mean ~0.57 s


# ---------------------------------------------------------------- lost orders


def test_lost_orders_are_expected_minus_delivered() -> None:
    model = TrafficModel(seed=9)
    series = run(model, topology(2, 1, FaultProfile(error_rate=0.2, order_drop=0.5)), seconds=300)
    for c in series.values():
        assert c.lost_orders == c.expected_orders - c.orders
    s, c = series[STABLE], series[CANARY]
    assert s.lost_orders == 0 and s.expected_orders == s.orders > 0  # a healthy revision loses nothing
    q, base = TrafficConfig().order_probability, TrafficConfig().base_error_rate
    # Expected orders: what healthy code would have produced for the same requests.
    assert within(c.expected_orders, c.total_requests * (1 - base) * q, math.sqrt(c.total_requests * q))
    # 20% of requests fail outright (their orders are lost), half of the rest's orders vanish.
    lost_fraction = 1 - (1 - 0.2 / (1 - base)) * 0.5
    assert within(c.lost_orders / c.expected_orders, lost_fraction, math.sqrt(0.25 / c.expected_orders))

    report = lost_report(model.lost_orders())["services"]
    assert len(report) == 1
    entry = report[0]
    assert (entry["namespace"], entry["service"]) == SHOP
    assert entry["lost"] == s.lost_orders + c.lost_orders
    assert entry["expected"] - entry["delivered"] == entry["lost"]
    assert {(t["track"], t["revision"]) for t in entry["tracks"]} == {
        ("stable", STABLE.revision),
        ("canary", CANARY.revision),
    }


def test_counters_of_a_removed_service_stay_but_its_share_goes() -> None:
    model = TrafficModel(seed=1)
    before = run(model, topology(1, 1), seconds=10)
    model.tick({}, 0.25)
    snap = model.snapshot()
    assert snap.series == before
    assert snap.shares == {} and snap.ready == {}


def test_the_same_seed_replays_the_same_counters() -> None:
    a = run(TrafficModel(seed=42), topology(3, 1, FaultProfile(error_rate=0.1)), seconds=20)
    b = run(TrafficModel(seed=42), topology(3, 1, FaultProfile(error_rate=0.1)), seconds=20)
    c = run(TrafficModel(seed=43), topology(3, 1, FaultProfile(error_rate=0.1)), seconds=20)
    assert a == b
    assert a != c


# ---------------------------------------------------------------- properties

faults = st.builds(
    FaultProfile,
    error_rate=st.floats(0, 1),
    order_drop=st.floats(0, 1),
    latency_ms=st.floats(0, 2000),
)
tracks = st.lists(
    st.builds(
        Track,
        track=st.sampled_from(["stable", "canary"]),
        revision=st.sampled_from(["r1", "r2", "r3"]),
        ready=st.integers(0, 5),
        faults=faults,
    ),
    max_size=3,
)
ticks = st.lists(st.tuples(tracks, st.floats(0, 3), st.one_of(st.none(), st.floats(0, 500))), min_size=1, max_size=12)


@settings(max_examples=150, deadline=None)
@given(ticks=ticks, seed=st.integers(0, 2**32))
def test_counters_never_decrease_and_orders_need_successful_requests(ticks, seed: int) -> None:
    model = TrafficModel(seed=seed)
    previous: dict[SeriesKey, SeriesCounters] = {}
    for ts, dt, rate in ticks:
        model.tick({SHOP: ServiceState(tuple(ts), rate)}, dt)
        series = model.snapshot().series
        assert set(previous) <= set(series)  # a series never disappears
        for key, c in series.items():
            p = previous.get(key, SeriesCounters())
            for code, value in p.requests.items():
                assert c.requests.get(code, 0) >= value
            assert c.orders >= p.orders
            assert c.expected_orders >= p.expected_orders
            assert c.lost_orders >= p.lost_orders
            assert c.latency_sum >= p.latency_sum
            assert all(x >= y for x, y in zip(c.latency_buckets, p.latency_buckets, strict=True))
            # Invariants of every series at every moment.
            assert 0 <= c.orders <= c.successful_requests
            assert c.orders <= c.expected_orders
            assert c.lost_orders == c.expected_orders - c.orders
            assert sum(c.latency_buckets) == c.total_requests
        previous = series
        shares = model.snapshot().shares[SHOP]
        if any(t.ready > 0 for t in ts):
            assert math.isclose(sum(shares.values()), 1.0)


@settings(max_examples=200, deadline=None)
@given(n=st.integers(0, 5000), p=st.floats(0, 1), seed=st.integers(0, 2**32))
def test_binomial_stays_in_range(n: int, p: float, seed: int) -> None:
    assert 0 <= Sampler(seed).binomial(n, p) <= n


@pytest.mark.parametrize(("n", "p"), [(10, 0.3), (200, 0.01), (100_000, 0.002), (5000, 0.5), (40, 0.97)])
def test_binomial_has_the_right_mean_and_variance(n: int, p: float) -> None:
    sampler = Sampler(123)
    draws = [sampler.binomial(n, p) for _ in range(4000)]
    var = n * p * (1 - p)
    assert within(statistics.fmean(draws), n * p, math.sqrt(var / len(draws)))
    assert 0.85 * var < statistics.variance(draws) < 1.15 * var


@pytest.mark.parametrize("lam", [0.5, 12.5, 29.0, 250.0])
def test_poisson_has_the_right_mean_and_variance(lam: float) -> None:
    sampler = Sampler(321)
    draws = [sampler.poisson(lam) for _ in range(4000)]
    assert within(statistics.fmean(draws), lam, math.sqrt(lam / len(draws)))
    assert 0.85 * lam < statistics.variance(draws) < 1.15 * lam


# ---------------------------------------------------------------- fault profile annotations


def test_fault_profile_annotations_are_parsed() -> None:
    parsed = parse_fault_profile(
        {names.SIM_ERROR_RATE: "0.3", names.SIM_ORDER_DROP: " 0.99 ", names.SIM_LATENCY_MS: "250", "other": "x"}
    )
    assert parsed.profile == FaultProfile(error_rate=0.3, order_drop=0.99, latency_ms=250.0)
    assert parsed.problems == ()
    assert parse_fault_profile(None) == parse_fault_profile({}) == (HEALTHY, ())


@pytest.mark.parametrize("bad", ["abc", "-0.1", "1.5", "nan", "inf", "", "30%"])
@pytest.mark.parametrize("key", [names.SIM_ERROR_RATE, names.SIM_ORDER_DROP])
def test_bad_annotation_values_are_treated_as_healthy(key: str, bad: str) -> None:
    parsed = parse_fault_profile({key: bad, names.SIM_LATENCY_MS: "100"})
    assert parsed.profile == FaultProfile(latency_ms=100.0)  # only the bad value is ignored
    assert len(parsed.problems) == 1 and key in parsed.problems[0]


def test_a_revision_with_bad_annotations_behaves_like_a_healthy_one() -> None:
    healthy = run(TrafficModel(seed=6), topology(1, 1), seconds=60)
    parsed = parse_fault_profile({names.SIM_ERROR_RATE: "lots", names.SIM_ORDER_DROP: "-1"})
    bad = run(TrafficModel(seed=6), topology(1, 1, parsed.profile), seconds=60)
    assert bad == healthy
    assert bad[CANARY].lost_orders == 0


def test_cluster_objects_become_services() -> None:
    def deployment(ns: str, rollout: str, track: str, revision: str | None, ready: int | None, ann=None):
        labels = {names.LABEL_ROLLOUT: rollout, names.LABEL_TRACK: track}
        if revision:
            labels[names.LABEL_REVISION] = revision
        return {
            "metadata": {"namespace": ns, "name": f"{rollout}-{track}", "labels": {names.LABEL_ROLLOUT: rollout}},
            "spec": {"template": {"metadata": {"labels": labels, "annotations": ann or {}}}},
            "status": {} if ready is None else {"readyReplicas": ready},
        }

    deployments = [
        deployment("shop", "checkout", "stable", "r1", 3),
        deployment("shop", "checkout", "canary", "r2", None, {names.SIM_ORDER_DROP: "0.99"}),
        deployment("shop", "cart", "stable", "r9", 2, {names.SIM_ERROR_RATE: "oops"}),
        deployment("shop", "broken", "stable", None, 1),
        deployment("ops", "checkout", "stable", "r5", 1),
    ]
    rollouts = [
        {"metadata": {"namespace": "shop", "name": "checkout"}, "spec": {"analysis": {"service": "checkout-web"}}},
        {"metadata": {"namespace": "shop", "name": "cart"}, "spec": {"analysis": {}}},
    ]
    topo, problems = topology_from_objects(deployments, rollouts)
    assert topo == {
        ServiceKey("shop", "checkout-web"): ServiceState(
            (Track("canary", "r2", 0, FaultProfile(order_drop=0.99)), Track("stable", "r1", 3))
        ),
        ServiceKey("shop", "cart"): ServiceState((Track("stable", "r9", 2),)),
        ServiceKey("ops", "checkout"): ServiceState((Track("stable", "r5", 1),)),  # no Rollout: its name
    }
    assert any("shop/cart-stable" in p and names.SIM_ERROR_RATE in p for p in problems)
    assert any("shop/broken-stable" in p for p in problems)
    assert len(problems) == 2
    # Without the CRD (no rollouts listed), services are named after their rollouts.
    assert ServiceKey("shop", "checkout") in topology_from_objects(deployments, [])[0]
