"""The side-by-side benchmark's pure parts: windows of recorded counters, every judge's replay, the
simulated canaries, reading a recorded series back from Prometheus, the unguarded release."""

from __future__ import annotations

import math
import random
from datetime import datetime

import pytest

from benchmarks import peers
from benchmarks.judges import ArgoRollouts, Flagger, thresholds
from benchmarks.replay import Peer, Point, Series, look_at, replay_ours, replay_peer, replayable
from controlled_friction.models.rollout import MetricSpec
from controlled_friction.names import TRACK_CANARY, TRACK_STABLE
from controlled_friction.sandbox.traffic import FaultProfile, TrafficConfig

CHECKS = thresholds(max_ratio=0.02, max_increase_over_stable=0.01, max_drop=0.2)
ERRORS = MetricSpec.model_validate(
    {"name": "error-ratio", "kind": "errorRatio", "maxRatio": 0.02, "maxIncreaseOverStable": 0.01})
ORDERS = MetricSpec.model_validate(
    {"name": "order-rate", "kind": "orderRateDrop", "maxDrop": 0.2, "maxBaselineDrop": 0.3, "window": "2m"})
CONFIG = TrafficConfig(rate=50.0, base_error_rate=0.005)


def steady(seconds: int, *, history: int = 60, canary_rps: float = 2.5, canary_err: float = 0.0,
           canary_orders: float = 0.3, stable_rps: float = 47.5) -> Series:
    """Counters growing at fixed rates, 1 s apart; the canary serves from point `history` on."""
    n = history + seconds + 1
    stable = tuple(Point(stable_rps * i, 0.005 * stable_rps * i, 0.3 * stable_rps * i) for i in range(n))
    canary = tuple(None if i <= history else Point(canary_rps * (i - history), canary_err * canary_rps * (i - history),
                                                    canary_orders * canary_rps * (i - history)) for i in range(n))
    lost = tuple(max(0.0, (0.3 - canary_orders) * canary_rps * (i - history)) for i in range(n))
    return Series(1.0, history, stable, canary, lost)


def ours(series: Series, **kw: float) -> float | None:
    return replay_ours(series, [ERRORS, *replayable([ORDERS])], interval=2.0, min_requests=50, failure_limit=2,
                       **kw)


# ---------------------------------------------------------------- windows


def test_look_at_takes_exact_differences_over_the_window():
    s = steady(120, canary_err=0.1)
    look = look_at(s, s.index(100), 60.0)
    assert look.t == 100
    assert look.canary_requests == pytest.approx(150.0)
    assert look.canary_error_ratio == pytest.approx(0.1)
    assert look.stable_error_ratio == pytest.approx(0.005)
    assert look.canary_orders_per_request == pytest.approx(0.3)


def test_a_canary_counts_from_zero_before_its_first_point_and_is_no_data_without_a_series():
    s = steady(120)
    assert look_at(s, s.index(0), 60.0).canary_requests is None  # no canary series yet
    assert look_at(s, s.index(10), 60.0).canary_requests == pytest.approx(25.0)  # 10 s, not 60


def test_a_window_without_canary_requests_is_nan_as_prometheus_answers_0_over_0():
    s = steady(30, canary_rps=0.0)
    assert math.isnan(look_at(s, s.index(20), 10.0).canary_error_ratio or 0.0)


def test_series_needs_one_point_per_scrape_on_every_track():
    with pytest.raises(ValueError):
        Series(1.0, 0, (Point(0, 0, 0),), (None, None), (0.0,))


# ---------------------------------------------------------------- peers


def test_argo_replayed_rolls_back_at_its_first_measurement_over_a_bad_window():
    s = steady(120, canary_err=1.0)
    peer = Peer("argo", "Argo", lambda: ArgoRollouts(checks=CHECKS, interval=10.0, window=60.0))
    # t = 0: no canary series, an error (1 of 4 allowed); t = 10: the window is all 5xx.
    assert replay_peer(s, peer) == 10.0


def test_flagger_replayed_rolls_back_one_interval_after_its_failed_check():
    s = steady(300, canary_err=1.0)
    fast = Peer("f", "Flagger", lambda: Flagger(checks=CHECKS, interval=10.0, window=10.0), start=10.0)
    slow = Peer("f", "Flagger", lambda: Flagger(checks=CHECKS, interval=60.0, window=60.0), start=60.0)
    assert replay_peer(s, fast) == 20.0
    assert replay_peer(s, slow) == 120.0
    assert replay_peer(s, slow, until=119.0) is None


def test_peers_pass_a_healthy_steady_canary():
    s = steady(300, canary_err=0.005)
    for p in peers.judges_for(0.02, 0.01, 0.2):
        assert replay_peer(s, p) is None, p.key


# ---------------------------------------------------------------- ours


def test_ours_replayed_rejects_a_hard_fault_within_seconds_and_passes_a_healthy_canary():
    assert ours(steady(120, canary_err=1.0)) == pytest.approx(2.0, abs=2.0)
    assert ours(steady(600, canary_err=0.005)) is None


def test_ours_replayed_catches_lost_orders_through_the_orders_test():
    t = ours(steady(120, canary_orders=0.003))
    assert t is not None and 4.0 <= t <= 30.0


def test_ours_replayed_looks_every_interval_from_the_phase():
    for phase in (0.0, 1.0):
        t = ours(steady(60, canary_err=1.0), phase=phase)
        assert t is not None and t % 2 == phase


def test_replayable_drops_only_max_baseline_drop():
    (kept,) = replayable([ORDERS])
    assert kept.max_baseline_drop is None and kept.max_drop == 0.2
    only_baseline = ORDERS.model_copy(update={"max_drop": None})
    assert replayable([only_baseline, ERRORS]) == [ERRORS]


# ---------------------------------------------------------------- simulated canaries


def test_simulated_series_follow_the_simulators_model():
    s = peers.simulate(FaultProfile(order_drop=0.99), 120, seed=3, config=CONFIG)
    assert s.canary[s.history] is None and s.canary[s.history + 1] is not None
    end = s.canary[-1]
    assert end is not None
    assert 0.02 < end.requests / (end.requests + s.stable[-1].requests - s.stable[s.history].requests) < 0.09
    assert end.orders < 0.05 * end.requests  # -99% orders
    assert s.canary_lost[-1] > 50
    healthy = peers.simulate(None, 60, seed=3, config=CONFIG)
    assert healthy.canary_lost[-1] == 0.0


def test_simulated_trials_are_reproducible_with_a_seed():
    cases = peers.cases(0.005, 0.02)[:1]
    o = peers.Ours((ERRORS,), 2.0, 50, 2)
    judges = peers.judges_for(0.02, 0.01, 0.2)[:1]
    run = [peers.simulated_trials(cases, {"hard": 2}, {"hard": 30.0}, 5, CONFIG, o, judges) for _ in range(2)]
    assert [v.times for v in run[0]] == [v.times for v in run[1]]


# ---------------------------------------------------------------- live series read back


class FakePrometheus:
    """Answers the range queries of `read_series` from per-(metric, track, code) points."""

    def __init__(self, points: dict[tuple[str, str, bool], list[tuple[float, float]]]) -> None:
        self.points = points

    def series(self, query: str, start: datetime, end: datetime, step: float) -> list[tuple[float, float]]:
        metric = query.split("(", 1)[1].split("{", 1)[0]
        track = TRACK_CANARY if f'track="{TRACK_CANARY}"' in query else TRACK_STABLE
        return self.points.get((metric, track, "code=~" in query), [])


def test_read_series_maps_points_on_the_grid_and_fills_the_gaps():
    t0 = 1_000_000.0
    start = t0 - peers.HISTORY
    stable = [(start + i, 10.0 * i) for i in range(peers.HISTORY + 4) if i != peers.HISTORY + 1]  # one late scrape
    fake = FakePrometheus({
        ("http_requests_total", TRACK_STABLE, False): stable,
        ("http_requests_total", TRACK_CANARY, False): [(t0 + 2, 3.0), (t0 + 3, 5.0)],
        ("sim_orders_lost_total", TRACK_CANARY, False): [(t0 + 3, 2.0)],
    })
    s = peers.read_series(fake, "svc", "rev", t0, 3.0, 1.0)  # type: ignore[arg-type]
    assert len(s.stable) == peers.HISTORY + 4
    assert s.stable[s.history + 1] == s.stable[s.history]  # the missing point repeats the previous one
    assert s.canary[s.history + 1] is None  # no canary series yet
    assert s.canary[s.history + 2] == Point(3.0, 0.0, 0.0)  # absent 5xx and orders series are 0
    assert s.canary_lost[-1] == 2.0 and s.canary_lost[s.history] == 0.0


# ---------------------------------------------------------------- the unguarded release


def test_plan_schedule_follows_the_steps_with_gates_passed():
    steps = [{"setWeight": 5}, {"pause": {"duration": "2m"}}, {"approval": {"count": 2}}, {"setWeight": 25},
             {"pause": {"duration": "5m"}}, {"setWeight": 50}, {"pause": {}}]
    assert peers.plan_schedule(steps, open_pause=300.0) == [(5.0, 120.0), (25.0, 300.0), (50.0, 300.0)]


def test_unguarded_release_loses_what_the_model_expects():
    lost = peers.unguarded_lost([(5.0, 120.0), (25.0, 300.0)], 600.0, FaultProfile(order_drop=0.99), CONFIG, seed=1)
    per_second = 50.0 * 0.995 * 0.3 * 0.99
    expected = per_second * (0.05 * 120 + 0.25 * 300 + 1.0 * 180)
    assert lost == pytest.approx(expected, rel=0.08)


# ---------------------------------------------------------------- summary


def test_summary_counts_misses_as_never():
    rows = [peers.Verdicts("soft-5xx", "simulated", 600.0, {"a": t}, {"a": 1.0}) for t in (30.0, 120.0, None, None)]
    s = peers.summarise(rows, ["a"])["soft-5xx"]["a"]
    assert s["within_90s"] == 0.25 and s["within_horizon"] == 0.5 and math.isinf(s["p95_s"])
    assert s["median_s"] == math.inf  # half the runs never detected it


@pytest.mark.parametrize(("ours_", "theirs", "want"), [
    (2.0, 10.0, 0.2), (math.inf, math.inf, 1.0), (0.0, 0.0, 1.0), (0.5, 0.0, math.inf), (math.inf, 60.0, math.inf)])
def test_ratio_edge_cases(ours_: float, theirs: float, want: float):
    assert peers.ratio(ours_, theirs) == want


def test_judge_all_reports_orders_lost_until_each_rollback():
    s = steady(120, canary_orders=0.003)
    v = peers.judge_all(s, "hard-orders", "simulated", peers.Ours((ORDERS.model_copy(
        update={"max_baseline_drop": None}),), 2.0, 50, 2), peers.judges_for(0.02, 0.01, 0.2), random.Random(1))
    assert v.times["argo"] == 10.0
    assert v.lost["argo"] == pytest.approx(s.lost_at(10.0))
    assert v.lost["flagger-1m-t5"] == pytest.approx(s.lost_at(None))  # never within the series: all of it
