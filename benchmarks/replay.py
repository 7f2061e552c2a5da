"""Every judge over the same counters: ours through the planner's own code, the peers' EMULATIONS
(`benchmarks.judges`) at their own intervals and windows.

A trial is a `Series`: the cumulative counters of the canary revision and of the stable track at
each scrape (`step` seconds apart) -- read back from the live Prometheus after a live trial, or drawn
from the traffic simulator's model in simulated time. Point `history` is the canary taking traffic
(t = 0); the points before it give stable a past, as a real stable has.

Why a replay and not shadow metrics: a shadow metric keeps the canary in traffic, but only our judge
would see the data; recording the counters once lets every judge (ours, Argo Rollouts, Flagger at
10 s and at 1 m, Kayenta) decide on exactly the same numbers, and lets one trial be judged by several
configurations. Our live rollback time is measured separately, by the operator itself.

Windowed values for the peers are exact differences of the counters over the judge's window (what
`increase()` estimates, without its extrapolation); a canary counter is 0 before its first scrape
(its revision's counters start with its pod). A window without canary requests is NaN (0/0), no
canary series at all is "no data" -- both as Prometheus would answer the peers' ratio queries.

Ours: every `interval` the planner's `judge` + `record_measurements` see the cumulative totals, as
the operator's batched queries return them; the canary is rolled back at the first decisive fail
(or `failureLimit` plain fails), as `analysis_rollback_reason` decides. `maxBaselineDrop` is left
out of the replay (it needs the pre-rollout service order rate; at a 5% canary even -99% orders
moves the service's order rate by 5%, far from its 30%, so it decides none of these scenarios).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import NamedTuple, Protocol

from benchmarks.judges import JudgeVerdict, Look
from controlled_friction.analysis import (
    CANARY_ERRORS_TOTAL,
    CANARY_ORDERS_TOTAL,
    CANARY_REQUESTS_TOTAL,
    STABLE_ERRORS_TOTAL,
    STABLE_ORDERS_TOTAL,
    STABLE_REQUESTS_TOTAL,
    QueryContext,
)
from controlled_friction.measurement import Samples
from controlled_friction.models.rollout import AnalysisState, MetricSpec
from controlled_friction.planner.measuring import judge, record_measurements


class Point(NamedTuple):
    """Cumulative counters of one track at one scrape."""

    requests: float
    errors: float  # 5xx responses
    orders: float


ZERO = Point(0.0, 0.0, 0.0)


@dataclass(frozen=True)
class Series:
    step: float  # seconds between points (the scrape interval)
    history: int  # index of the point at which the canary took traffic (t = 0)
    stable: tuple[Point, ...]
    canary: tuple[Point | None, ...]  # None: no canary series yet
    canary_lost: tuple[float, ...]  # the canary's cumulative lost orders (the simulator's exact count)

    def __post_init__(self) -> None:
        if not len(self.stable) == len(self.canary) == len(self.canary_lost):
            raise ValueError("stable, canary and canary_lost must have one point per scrape")

    def t(self, i: int) -> float:
        """Seconds since the canary took traffic at point i."""
        return (i - self.history) * self.step

    def index(self, t: float) -> int:
        return self.history + round(t / self.step)

    @property
    def seconds(self) -> float:
        return self.t(len(self.stable) - 1)

    def lost_at(self, t: float | None) -> float:
        """Orders the canary lost until t (None: until the end of the series)."""
        i = len(self.canary_lost) - 1 if t is None else min(self.index(t), len(self.canary_lost) - 1)
        return self.canary_lost[max(i, 0)]


# ---------------------------------------------------------------- the peers


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else math.nan


def look_at(series: Series, i: int, window: float) -> Look:
    """What a peer's ratio queries over `window` return at point i."""
    t = series.t(i)
    cur = series.canary[i]
    j = i - max(1, round(window / series.step))
    s_now, s_then = series.stable[i], series.stable[max(j, 0)]
    sr, se, so = (s_now.requests - s_then.requests, s_now.errors - s_then.errors, s_now.orders - s_then.orders)
    if cur is None:
        return Look(t, canary_requests=None, stable_error_ratio=_ratio(se, sr),
                    stable_orders_per_request=_ratio(so, sr))
    before = series.canary[j] if j >= 0 else None
    then = before if before is not None else ZERO
    cr, ce, co = cur.requests - then.requests, cur.errors - then.errors, cur.orders - then.orders
    return Look(t, canary_requests=cr, canary_error_ratio=_ratio(ce, cr), stable_error_ratio=_ratio(se, sr),
                canary_orders_per_request=_ratio(co, cr), stable_orders_per_request=_ratio(so, sr))


class PeerJudge(Protocol):
    window: float

    def observe(self, look: Look) -> JudgeVerdict: ...


@dataclass(frozen=True)
class Peer:
    """A labelled emulation: `make` builds a fresh judge per trial; it sees looks from `start` s on
    (Flagger's first check comes one interval after the canary takes traffic)."""

    key: str  # short name for tables
    label: str
    make: Callable[[], PeerJudge]
    start: float = 0.0


def replay_peer(series: Series, peer: Peer, until: float | None = None) -> float | None:
    """Seconds from the canary taking traffic to the judge's rollback, None if it never rolls back."""
    judge_ = peer.make()
    last = len(series.stable) if until is None else min(len(series.stable), series.index(until) + 1)
    for i in range(max(0, series.index(peer.start)), last):
        if judge_.observe(look_at(series, i, judge_.window)) == "rollback":
            return series.t(i)
    return None


# ---------------------------------------------------------------- ours


CONTEXT = QueryContext(namespace="bench", service="replay", rollout="replay", canary_revision="canary",
                       stable_revision="stable", window_seconds=60.0, interval_seconds=2.0, min_requests=50,
                       rollout_started_at=None)


def replayable(metrics: Sequence[MetricSpec]) -> list[MetricSpec]:
    """The metrics as the replay judges them: without maxBaselineDrop (see the module docstring)."""
    out = []
    for m in metrics:
        if m.kind == "orderRateDrop" and m.max_baseline_drop is not None:
            if m.max_drop is None:
                continue
            m = m.model_copy(update={"max_baseline_drop": None})
        out.append(m)
    return out


def _values(metric: MetricSpec, series: Series, i: int) -> dict[str, float | None]:
    """What the operator's cumulative grouped queries answer for this metric at point i."""
    c, s = series.canary[i], series.stable[i]
    v: dict[str, float | None] = {
        CANARY_REQUESTS_TOTAL: None if c is None else c.requests,
        STABLE_REQUESTS_TOTAL: s.requests,
    }
    if metric.kind == "errorRatio":
        v[CANARY_ERRORS_TOTAL], v[STABLE_ERRORS_TOTAL] = (None if c is None else c.errors), s.errors
    else:
        v[CANARY_ORDERS_TOTAL], v[STABLE_ORDERS_TOTAL] = (None if c is None else c.orders), s.orders
    return v


def replay_ours(series: Series, metrics: Sequence[MetricSpec], *, interval: float, min_requests: int,
                failure_limit: int, phase: float = 0.0, until: float | None = None) -> float | None:
    """Seconds to our rollback: the planner's judge every `interval` from t = phase (phase < interval:
    the operator's looks are not aligned with the scrapes), None if it never rolls back."""
    ctx = QueryContext(**{**CONTEXT.__dict__, "interval_seconds": interval, "min_requests": min_requests})
    every = max(1, round(interval / series.step))
    last = len(series.stable) if until is None else min(len(series.stable), series.index(until) + 1)
    state = AnalysisState()
    epoch = datetime(2024, 1, 1, tzinfo=UTC)
    # The operator's looks begin while the canary's pod starts (weight 0): one look before t = 0 gives
    # the first look with traffic its starting totals.
    for i in range(max(0, series.index(phase) - every), last, every):
        now = epoch + timedelta(seconds=series.t(i))
        samples = Samples(ctx, {m.name: _values(m, series, i) for m in metrics})
        state = record_measurements(state, (), now, None, tuple(judge(list(metrics), samples, state, now)))
        for ms in state.metrics:
            last_m = ms.last
            if last_m is not None and last_m.verdict == "fail" and (last_m.decisive
                                                                     or ms.consecutive_failures >= failure_limit):
                return series.t(i)
    return None
