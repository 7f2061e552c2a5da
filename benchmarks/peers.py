"""Ours next to the peers' judgement rules on the same data: the side-by-side part of the detection
benchmark (`python -m benchmarks.detection`).

Trials come from two sources, and every judge of `judges_for` decides on each (`benchmarks.replay`):

- live: the traffic simulator serves a canary (1 pod next to 19 stable: the critical example's first
  step, 5%) with the fault from its first pod, and keeps it in traffic for `seconds` whatever the
  judges say; the counters are then read back from the real Prometheus (1 s scrapes, range queries).
- simulated: the simulator's own model (`TrafficModel`, same rates) ticked in simulated time, so
  hundreds of 10-minute canaries fit in minutes.

The peers are EMULATIONS of their documented rules (`benchmarks.judges`), given our critical bounds
as plain per-measurement thresholds: 5xx ratio <= 2% and <= stable's + 1 point, orders per request
>= 80% of stable's. Pure but for `record_live` (Prometheus) and the clock it sleeps on.
"""

from __future__ import annotations

import math
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from benchmarks.detection import quantile
from benchmarks.judges import ArgoRollouts, Flagger, Kayenta, kayenta_metrics, thresholds
from benchmarks.replay import Peer, Point, Series, replay_ours, replay_peer
from controlled_friction.adapters.prometheus import PrometheusClient
from controlled_friction.analysis import ORDERS_METRIC, REQUESTS_METRIC, SERVER_ERROR_CODES
from controlled_friction.models.rollout import MetricSpec
from controlled_friction.names import TRACK_CANARY, TRACK_STABLE
from controlled_friction.sandbox.simulator import StaticSource
from controlled_friction.sandbox.traffic import (
    HEALTHY,
    FaultProfile,
    RouteSplit,
    SeriesKey,
    ServiceKey,
    ServiceState,
    Track,
    TrafficConfig,
    TrafficModel,
)

NAMESPACE = "bench"
STABLE_PODS = 19  # the critical example's 10 replicas + maxSurge 9 next to 1 canary pod: 5%
HISTORY = 62  # seconds of stable-only traffic before the canary: the longest peer window + 2 scrapes
SOFT_BY = 90.0  # the soft-fault target: detected within 90 s
OURS = "ours"  # our judge replayed through the planner's code


@dataclass(frozen=True)
class Case:
    name: str
    faults: FaultProfile | None  # None: healthy
    kind: str  # "hard" | "soft" | "healthy"


def cases(base_error: float, soft_error: float) -> tuple[Case, ...]:
    return (
        Case("hard-5xx", FaultProfile(error_rate=1.0), "hard"),
        Case("hard-orders", FaultProfile(order_drop=0.99), "hard"),
        Case("soft-5xx", FaultProfile(error_rate=soft_error - base_error), "soft"),
        Case("healthy", None, "healthy"),
    )


# ---------------------------------------------------------------- the judges


@dataclass(frozen=True)
class Ours:
    """Our judge as the critical example configures it (`replay_ours`)."""

    metrics: tuple[MetricSpec, ...]
    interval: float
    min_requests: int
    failure_limit: int


def judges_for(max_ratio: float, max_increase: float, max_drop: float) -> list[Peer]:
    """The peers at their documented defaults, each labelled as the emulation it is."""

    def checks() -> list[Any]:
        return thresholds(max_ratio=max_ratio, max_increase_over_stable=max_increase, max_drop=max_drop)

    return [
        Peer("argo", "Argo Rollouts (emulated): 10s, window 1m, failureLimit 0, consecutiveErrorLimit 4",
             lambda: ArgoRollouts(checks=checks(), interval=10.0, window=60.0)),
        Peer("flagger-10s", "Flagger (emulated): 10s (its minimum), threshold 1 (its default)",
             lambda: Flagger(checks=checks(), interval=10.0, window=10.0, threshold=1), start=10.0),
        Peer("flagger-10s-t10", "Flagger (emulated): 10s, threshold 10 (its docs' 10s example)",
             lambda: Flagger(checks=checks(), interval=10.0, window=10.0, threshold=10), start=10.0),
        Peer("flagger-1m", "Flagger (emulated): 1m (its default), threshold 1",
             lambda: Flagger(checks=checks(), interval=60.0, window=60.0, threshold=1), start=60.0),
        Peer("flagger-1m-t5", "Flagger (emulated): 1m, threshold 5 (its docs' 1m example)",
             lambda: Flagger(checks=checks(), interval=60.0, window=60.0, threshold=5), start=60.0),
        Peer("kayenta", "Kayenta (emulated): Mann-Whitney at 0.98, 10s samples, judged every 1m",
             lambda: Kayenta(metrics=kayenta_metrics(), interval=60.0, step=10.0, window=10.0, confidence=0.98)),
    ]


@dataclass
class Verdicts:
    """One trial's decision time per judge (seconds from the canary taking traffic; None: never)."""

    case: str
    source: str  # "live" | "simulated"
    seconds: float
    times: dict[str, float | None] = field(default_factory=dict)
    lost: dict[str, float] = field(default_factory=dict)  # orders the canary lost until that rollback


def judge_all(series: Series, case: str, source: str, ours: Ours, peers: Sequence[Peer],
              rng: random.Random) -> Verdicts:
    out = Verdicts(case, source, series.seconds)
    phase = rng.randrange(max(1, round(ours.interval / series.step))) * series.step
    out.times[OURS] = replay_ours(series, ours.metrics, interval=ours.interval, min_requests=ours.min_requests,
                                  failure_limit=ours.failure_limit, phase=phase)
    for p in peers:
        out.times[p.key] = replay_peer(series, p)
    out.lost = {label: series.lost_at(t) for label, t in out.times.items()}
    return out


# ---------------------------------------------------------------- simulated time


def simulate(faults: FaultProfile | None, seconds: float, seed: int, config: TrafficConfig,
             step: float = 1.0, history: int = HISTORY) -> Series:
    """One canary in simulated time: the simulator's model ticked `step` s at a time, a scrape after
    each tick. Point k holds the counters after k ticks; the canary serves from tick `history` on."""
    model = TrafficModel(config, seed=seed)
    key = ServiceKey(NAMESPACE, "sim")
    stable = Track(TRACK_STABLE, "stable", STABLE_PODS)
    canary = Track(TRACK_CANARY, "canary", 1, faults or HEALTHY)
    s_key = SeriesKey(NAMESPACE, "sim", TRACK_STABLE, "stable")
    c_key = SeriesKey(NAMESPACE, "sim", TRACK_CANARY, "canary")
    stable_pts: list[Point] = []
    canary_pts: list[Point | None] = []
    lost: list[float] = []
    for k in range(history + round(seconds / step) + 1):
        snap = model.snapshot().series
        stable_pts.append(_point(snap.get(s_key)) or Point(0.0, 0.0, 0.0))
        canary_pts.append(_point(snap.get(c_key)))
        lost.append(float(snap[c_key].lost_orders) if c_key in snap else 0.0)
        model.tick({key: ServiceState((stable,) if k < history else (stable, canary))}, step)
    return Series(step, history, tuple(stable_pts), tuple(canary_pts), tuple(lost))


def _point(c: Any) -> Point | None:
    if c is None:
        return None
    errors = sum(n for code, n in c.requests.items() if code.startswith("5"))
    return Point(float(c.total_requests), float(errors), float(c.orders))


def simulated_trials(cases_: Sequence[Case], runs: dict[str, int], seconds: dict[str, float], seed: int,
                     config: TrafficConfig, ours: Ours, peers: Sequence[Peer],
                     progress: Callable[[str], None] | None = None) -> list[Verdicts]:
    rng = random.Random(seed)
    out = []
    for case in cases_:
        for _ in range(runs[case.kind]):
            series = simulate(case.faults, seconds[case.kind], rng.randrange(2**32), config)
            out.append(judge_all(series, case.name, "simulated", ours, peers, rng))
        if progress is not None:
            progress(f"simulated {runs[case.kind]} x {case.name}")
    return out


# ---------------------------------------------------------------- live, through Prometheus


def record_live(case: Case, run: int, seconds: float, source: StaticSource, client: PrometheusClient,
                rate: float, scrape: float) -> Series:
    """One live canary kept in traffic for `seconds`, then its counters as Prometheus holds them."""
    service = f"rec-{case.name}-{run:02d}"
    stable, canary = Track(TRACK_STABLE, f"{service}-s", STABLE_PODS), Track(
        TRACK_CANARY, f"{service}-c", 1, case.faults or HEALTHY)
    try:
        source.set_tracks(NAMESPACE, service, [stable], rate)
        time.sleep(HISTORY * scrape)
        t0 = time.time()
        source.set_tracks(NAMESPACE, service, [stable, canary], rate)
        time.sleep(seconds + 2 * scrape)  # the last scrape of the horizon lands
        return read_series(client, service, canary.revision, t0, seconds, scrape)
    finally:
        source.remove(NAMESPACE, service)


def read_series(client: PrometheusClient, service: str, revision: str, t0: float, seconds: float,
                step: float) -> Series:
    start = t0 - HISTORY * step
    n = HISTORY + round(seconds / step) + 1

    def grid(metric: str, track: str, extra: str = "") -> list[float | None]:
        sel = f'namespace="{NAMESPACE}",service="{service}",track="{track}"'
        if track == TRACK_CANARY:
            sel += f',revision="{revision}"'
        points = client.series(f"sum({metric}{{{sel}{extra}}})", datetime.fromtimestamp(start, UTC),
                               datetime.fromtimestamp(start + (n - 1) * step, UTC), step)
        out: list[float | None] = [None] * n
        for t, v in points:
            i = round((t - start) / step)
            if 0 <= i < n:
                out[i] = v
        return out

    err = f",code=~{SERVER_ERROR_CODES}"
    s_req, s_err, s_ord = grid(REQUESTS_METRIC, TRACK_STABLE), grid(REQUESTS_METRIC, TRACK_STABLE, err), grid(
        ORDERS_METRIC, TRACK_STABLE)
    c_req, c_err, c_ord = grid(REQUESTS_METRIC, TRACK_CANARY), grid(REQUESTS_METRIC, TRACK_CANARY, err), grid(
        ORDERS_METRIC, TRACK_CANARY)
    c_lost = grid("sim_orders_lost_total", TRACK_CANARY)
    stable_pts: list[Point] = []
    canary_pts: list[Point | None] = []
    lost: list[float] = []
    prev = Point(0.0, 0.0, 0.0)
    for i in range(n):
        # A missing stable point (a late scrape) repeats the previous one: no new counts, no reset.
        if s_req[i] is not None:
            prev = Point(s_req[i] or 0.0, s_err[i] or 0.0, s_ord[i] or 0.0)
        stable_pts.append(prev)
        # No canary requests series: no canary series at all; absent 5xx or orders series are 0.
        canary_pts.append(None if c_req[i] is None else Point(c_req[i] or 0.0, c_err[i] or 0.0, c_ord[i] or 0.0))
        lost.append(c_lost[i] or (lost[-1] if lost else 0.0))
    return Series(step, HISTORY, tuple(stable_pts), tuple(canary_pts), tuple(lost))


# ---------------------------------------------------------------- orders lost without a guard


def plan_schedule(steps: Sequence[dict[str, Any]], open_pause: float) -> list[tuple[float, float]]:
    """(weight %, seconds) of an unguarded release following the plan: timed pauses as written, an
    approval passed at once, a pause without duration (waiting for `promote`) taken as `open_pause`;
    promotion to 100% follows the last step."""
    out: list[tuple[float, float]] = []
    weight = 0.0
    for step in steps:
        if "setWeight" in step:
            weight = float(step["setWeight"])
        elif "pause" in step:
            duration = (step["pause"] or {}).get("duration")
            out.append((weight, _seconds(duration) if duration is not None else open_pause))
    return [(w, s) for w, s in out if s > 0]


def _seconds(text: str | int | float) -> float:
    if isinstance(text, int | float):
        return float(text)
    units = {"s": 1, "m": 60, "h": 3600}
    return float(text[:-1]) * units[text[-1]] if text[-1] in units else float(text)


def unguarded_lost(schedule: Sequence[tuple[float, float]], horizon: float, fault: FaultProfile,
                   config: TrafficConfig, seed: int) -> float:
    """Orders a release with `fault` loses over `horizon` s when nobody rolls it back: the simulator's
    model serves it at the plan's weights (a route split), then at 100% for the rest."""
    model = TrafficModel(config, seed=seed)
    key = ServiceKey(NAMESPACE, "unguarded")
    tracks = (Track(TRACK_STABLE, "stable", STABLE_PODS), Track(TRACK_CANARY, "canary", 1, fault))
    t = 0.0
    for weight, seconds in [*schedule, (100.0, math.inf)]:
        dt = min(seconds, horizon - t)
        while dt > 0:
            tick = min(1.0, dt)
            split = RouteSplit({TRACK_STABLE: round(100 - weight), TRACK_CANARY: round(weight)})
            model.tick({key: ServiceState(tracks, route=split)}, tick)
            dt -= tick
            t += tick
        if t >= horizon:
            break
    return float(sum(r.lost for r in model.lost_orders() if r.track == TRACK_CANARY))


# ---------------------------------------------------------------- summary



def _inf(t: float | None) -> float:
    return math.inf if t is None else t


def summarise(verdicts: Sequence[Verdicts], judges: Sequence[str]) -> dict[str, dict[str, dict[str, Any]]]:
    """Per case, per judge: the figures of the tables (times in seconds, inf: not detected)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for case in dict.fromkeys(v.case for v in verdicts):
        rows = [v for v in verdicts if v.case == case]
        per: dict[str, dict[str, Any]] = {}
        for j in judges:
            times = [_inf(v.times.get(j)) for v in rows]
            detected = [t for t in times if math.isfinite(t)]
            per[j] = {
                "runs": len(rows),
                "detected": len(detected),
                "median_s": quantile(times, 0.5),
                "p95_s": quantile(times, 0.95),
                "within_90s": sum(t <= SOFT_BY for t in times) / len(rows),
                "within_horizon": len(detected) / len(rows),
                "lost_orders_median": statistics.median([v.lost[j] for v in rows]),
                "horizon_s": min(v.seconds for v in rows),
            }
        out[case] = per
    return out


def ratio(ours: float, theirs: float) -> float:
    """ours / theirs; inf / inf and 0 / 0 are 1 (no difference), x / 0 is inf."""
    if ours == theirs:
        return 1.0
    if theirs == 0 or math.isinf(ours):
        return math.inf
    return ours / theirs
