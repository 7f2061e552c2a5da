"""Pure traffic model of the sandbox's fake apps: requests, errors, orders and lost orders.

No I/O and no clock: the caller passes the topology (which tracks of which service have how many
ready replicas, with which fault profile) and the elapsed time `dt` of each tick; randomness comes
from a seeded RNG, so a seed replays the same counters.

Per tick and service: N ~ Poisson(rate * dt) requests, split between tracks by ready replicas
(multinomial) — or, for a service behind an HTTPRoute (`ServiceState.route`), by the route's
backendRef weights, as a Gateway would: a track's share then goes to its ready pods whatever their
number, a track with weight but no ready pod answers its share 503 (no healthy upstream), and the
share of backends that are not a track of this service is served elsewhere (not counted).

A profile with `after_seconds` (annotation `fault-after`) behaves healthy until its revision's pods
have served that long (counted from the first tick any track of the revision had a ready pod, so a
canary that is promoted keeps its clock): failures that appear only after promotion.

Per request of a track with fault profile (e, d):

- it fails with probability base_error_rate + e (base failures answer 503, fault failures 500);
- a successful request places an order with probability order_probability * (1 - d).

The healthy outcome is sampled first and the faults thin it, so every request also has the order a
healthy revision would have produced for it (`expected`); `lost = expected - delivered` is then
exact per series, never negative, and exactly 0 for a revision without faults.
"""

from __future__ import annotations

import functools
import math
import random
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

from controlled_friction import names

# Prometheus client's default histogram buckets (seconds).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
CODE_OK = "200"
CODE_FAULT = "500"  # failures caused by the revision's error-rate
CODE_NOISE = "503"  # the healthy baseline's occasional failures


# ---------------------------------------------------------------- fault profiles


@dataclass(frozen=True)
class FaultProfile:
    error_rate: float = 0.0  # extra probability that a request fails
    order_drop: float = 0.0  # fraction of a successful request's orders that are lost
    latency_ms: float = 0.0  # added to every request's latency
    after_seconds: float = 0.0  # the profile applies only once the revision has served this long

    @property
    def healthy(self) -> bool:
        return replace(self, after_seconds=0.0) == HEALTHY


HEALTHY = FaultProfile()


class ParsedProfile(NamedTuple):
    profile: FaultProfile
    problems: tuple[str, ...]  # one message per ignored annotation value


_FIELDS = (
    # annotation, attribute, upper bound
    (names.SIM_ERROR_RATE, "error_rate", 1.0),
    (names.SIM_ORDER_DROP, "order_drop", 1.0),
    (names.SIM_LATENCY_MS, "latency_ms", 600_000.0),
    (names.SIM_FAULT_AFTER, "after_seconds", 7 * 86_400.0),
)


def parse_fault_profile(annotations: Mapping[str, str] | None) -> ParsedProfile:
    """Read the `sim.controlled-friction.io/*` annotations; a bad value counts as healthy (0).

    Values are decimal numbers: error-rate and order-drop in [0, 1], latency-ms in [0, 600000],
    fault-after in seconds [0, 604800].
    """
    values: dict[str, float] = {}
    problems: list[str] = []
    for key, attr, upper in _FIELDS:
        raw = (annotations or {}).get(key)
        if raw is None:
            continue
        try:
            value = float(str(raw).strip())
        except ValueError:
            problems.append(f"{key}={raw!r} is not a number; treated as healthy")
            continue
        if not (0.0 <= value <= upper):  # also rejects nan
            problems.append(f"{key}={raw!r} is outside [0, {upper:g}]; treated as healthy")
            continue
        values[attr] = value
    return ParsedProfile(FaultProfile(**values), tuple(problems))


# ---------------------------------------------------------------- topology


class ServiceKey(NamedTuple):
    namespace: str
    service: str


class SeriesKey(NamedTuple):
    namespace: str
    service: str
    track: str
    revision: str


@dataclass(frozen=True)
class Track:
    """Pods of one revision serving a service: `track` is `stable` or `canary` (contract labels)."""

    track: str
    revision: str
    ready: int
    faults: FaultProfile = HEALTHY


@dataclass(frozen=True)
class RouteSplit:
    """The data plane's split for a service behind an HTTPRoute: backendRef weight per track name,
    and the weight of backends that are not this service's tracks (their requests are not counted)."""

    weights: Mapping[str, int]
    elsewhere: int = 0


@dataclass(frozen=True)
class ServiceState:
    tracks: tuple[Track, ...]
    rate: float | None = None  # requests per second; None: the model's default
    route: RouteSplit | None = None  # None: split by ready replicas (no router)


Topology = Mapping[ServiceKey, ServiceState]


@dataclass(frozen=True)
class TrafficConfig:
    rate: float = 50.0  # requests per second per service (Poisson mean)
    base_error_rate: float = 0.002
    order_probability: float = 0.3
    base_latency_s: float = 0.03  # median latency of a healthy request
    latency_sigma: float = 0.4  # log-normal shape: p99 is about 2.5x the median


# ---------------------------------------------------------------- sampling


class Sampler:
    """Poisson and binomial draws on top of `random.Random` (which lacks them before Python 3.12).

    Exact for the counts a tick produces; normal approximations only where the mean is >= 30.
    """

    def __init__(self, seed: int | None) -> None:
        self.rng = random.Random(seed)

    def poisson(self, lam: float) -> int:
        if lam <= 0:
            return 0
        if lam >= 30:
            return max(0, round(self.rng.gauss(lam, math.sqrt(lam))))
        # Knuth: count uniforms until their product drops below e^-lam.
        limit, k, prod = math.exp(-lam), 0, self.rng.random()
        while prod > limit:
            k += 1
            prod *= self.rng.random()
        return k

    def binomial(self, n: int, p: float) -> int:
        if n <= 0 or p <= 0:
            return 0
        if p >= 1:
            return n
        if p > 0.5:
            return n - self.binomial(n, 1 - p)
        if n * p >= 30:
            draw = round(self.rng.gauss(n * p, math.sqrt(n * p * (1 - p))))
            return min(n, max(0, draw))
        # Geometric skipping: jump from one success to the next; O(n * p) draws.
        log_q, k, pos = math.log1p(-p), 0, 0
        if log_q == 0.0:  # p below float resolution
            return 0
        while True:
            gap = math.log(1.0 - self.rng.random()) / log_q  # failures before the next success
            if gap >= n - pos:
                return k
            pos += int(gap) + 1
            k += 1

    def multinomial(self, n: int, weights: Sequence[float]) -> list[int]:
        out: list[int] = []
        left, rest = n, float(sum(weights))
        for w in weights:
            k = self.binomial(left, w / rest) if rest > 0 else 0
            out.append(k)
            left -= k
            rest -= w
        return out

    def gauss(self, mu: float, sigma: float) -> float:
        return self.rng.gauss(mu, sigma)


@functools.lru_cache(maxsize=1024)
def _bucket_probabilities(median: float, sigma: float) -> tuple[float, ...]:
    """P(latency in bucket i | not in a lower bucket) of a log-normal with this median and shape.

    Computed once per fault profile, not per series and tick (it was most of a tick's time at 1,000
    services). A probability of 0 draws nothing, as before the cache: a seed replays the same counters.
    """
    mu = math.log(median)
    out: list[float] = []
    below = 0.0
    for upper in LATENCY_BUCKETS:
        at = 0.5 * (1.0 + math.erf((math.log(upper) - mu) / (sigma * math.sqrt(2.0))))
        out.append((at - below) / (1.0 - below) if below < 1.0 else 0.0)
        below = at
    return tuple(out)


# ---------------------------------------------------------------- counters


@dataclass
class SeriesCounters:
    """Monotonic counters of one (namespace, service, track, revision)."""

    requests: dict[str, int] = field(default_factory=lambda: {CODE_OK: 0})  # by status code
    orders: int = 0
    expected_orders: int = 0
    lost_orders: int = 0
    latency_buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))  # not cumulative
    latency_sum: float = 0.0

    def copy(self) -> SeriesCounters:
        return SeriesCounters(
            dict(self.requests),
            self.orders,
            self.expected_orders,
            self.lost_orders,
            list(self.latency_buckets),
            self.latency_sum,
        )

    @property
    def total_requests(self) -> int:
        return sum(self.requests.values())

    @property
    def successful_requests(self) -> int:
        return self.requests.get(CODE_OK, 0)


@dataclass(frozen=True)
class Snapshot:
    """A consistent copy of the model's state, for exposition."""

    series: dict[SeriesKey, SeriesCounters]
    shares: dict[ServiceKey, dict[str, float]]  # current split by track name
    ready: dict[SeriesKey, int]  # current ready replicas


@dataclass(frozen=True)
class LostOrders:
    namespace: str
    service: str
    track: str
    revision: str
    expected: int
    delivered: int
    lost: int


class TrafficModel:
    """Counters of every series ever served; `tick` advances them. Thread-safe."""

    def __init__(self, config: TrafficConfig | None = None, seed: int | None = None) -> None:
        self.config = config or TrafficConfig()
        self._sampler = Sampler(seed)
        self._lock = threading.Lock()
        self._series: dict[SeriesKey, SeriesCounters] = {}
        self._shares: dict[ServiceKey, dict[str, float]] = {}
        self._ready: dict[SeriesKey, int] = {}
        self._clock = 0.0  # seconds of traffic served so far (the sum of every tick's dt)
        self._first_served: dict[tuple[str, str, str], float] = {}  # (namespace, service, revision) -> clock

    def tick(self, topology: Topology, dt: float) -> None:
        """Serve `dt` seconds of traffic for every service of `topology`."""
        with self._lock:
            self._shares, self._ready = {}, {}
            for key, state in topology.items():
                for t in state.tracks:
                    if t.ready > 0:
                        self._first_served.setdefault((key.namespace, key.service, t.revision), self._clock)
            self._clock += max(0.0, dt)
            for key, state in sorted(topology.items()):
                self._tick_service(key, state, max(0.0, dt))

    def _tick_service(self, key: ServiceKey, state: ServiceState, dt: float) -> None:
        if state.route is not None:
            self._tick_routed(key, state, state.route, dt)
            return
        tracks = [t for t in state.tracks if t.ready > 0]
        total_ready = sum(t.ready for t in tracks)
        shares: dict[str, float] = {t.track: 0.0 for t in state.tracks}
        for t in tracks:
            shares[t.track] += t.ready / total_ready
            sk = SeriesKey(key.namespace, key.service, t.track, t.revision)
            self._ready[sk] = self._ready.get(sk, 0) + t.ready
        self._shares[key] = shares
        if not tracks:
            return
        rate = self.config.rate if state.rate is None else state.rate
        n = self._sampler.poisson(rate * dt)
        for t, count in zip(tracks, self._sampler.multinomial(n, [t.ready for t in tracks]), strict=True):
            sk = SeriesKey(key.namespace, key.service, t.track, t.revision)
            self._serve(self._series.setdefault(sk, SeriesCounters()), self._faults(key, t), count)

    def _tick_routed(self, key: ServiceKey, state: ServiceState, route: RouteSplit, dt: float) -> None:
        track_names = sorted({t.track for t in state.tracks} | {k for k, w in route.weights.items() if w > 0})
        weights = [max(0, route.weights.get(name, 0)) for name in track_names]
        total = sum(weights) + max(0, route.elsewhere)
        self._shares[key] = {name: (w / total if total else 0.0) for name, w in zip(track_names, weights, strict=True)}
        for t in state.tracks:
            if t.ready > 0:
                sk = SeriesKey(key.namespace, key.service, t.track, t.revision)
                self._ready[sk] = self._ready.get(sk, 0) + t.ready
        if total <= 0:
            return  # every backend at weight 0: the gateway answers 500 itself; no app sees a request
        rate = self.config.rate if state.rate is None else state.rate
        n = self._sampler.poisson(rate * dt)
        counts = self._sampler.multinomial(n, [*weights, max(0, route.elsewhere)])
        for name, count in zip(track_names, counts, strict=False):
            if count == 0:
                continue
            of_track = [t for t in state.tracks if t.track == name]
            ready = [t for t in of_track if t.ready > 0]
            if ready:
                for t, k in zip(ready, self._sampler.multinomial(count, [t.ready for t in ready]), strict=True):
                    sk = SeriesKey(key.namespace, key.service, t.track, t.revision)
                    self._serve(self._series.setdefault(sk, SeriesCounters()), self._faults(key, t), k)
            elif of_track:  # weight but no ready pod: 503 from the gateway, counted on the track
                sk = SeriesKey(key.namespace, key.service, name, of_track[0].revision)
                self._unavailable(self._series.setdefault(sk, SeriesCounters()), count)

    def _faults(self, key: ServiceKey, t: Track) -> FaultProfile:
        """The track's profile in force: healthy until its revision has served `after_seconds`."""
        f = t.faults
        if f.after_seconds <= 0:
            return f
        since = self._first_served.get((key.namespace, key.service, t.revision), self._clock)
        return f if self._clock - since >= f.after_seconds else HEALTHY

    def _unavailable(self, c: SeriesCounters, n: int) -> None:
        """Requests with no healthy upstream: all 503; the orders they would have placed are lost."""
        s, cfg = self._sampler, self.config
        expected = s.binomial(n - s.binomial(n, min(1.0, max(0.0, cfg.base_error_rate))), cfg.order_probability)
        c.requests[CODE_NOISE] = c.requests.get(CODE_NOISE, 0) + n
        c.expected_orders += expected
        c.lost_orders += expected

    def _serve(self, c: SeriesCounters, faults: FaultProfile, n: int) -> None:
        s, cfg = self._sampler, self.config
        base = min(1.0, max(0.0, cfg.base_error_rate))
        noise_failures = s.binomial(n, base)
        healthy_ok = n - noise_failures
        expected = s.binomial(healthy_ok, cfg.order_probability)
        # A healthy-successful request fails from the fault with probability x, so that overall
        # P(fail) = base + (1 - base) * x = base + error_rate (capped at 1).
        x = min(1.0, faults.error_rate / (1.0 - base)) if base < 1.0 else 0.0
        failed_with_order = s.binomial(expected, x)
        failed_without_order = s.binomial(healthy_ok - expected, x)
        delivered = s.binomial(expected - failed_with_order, 1.0 - faults.order_drop)

        c.requests[CODE_OK] = c.requests.get(CODE_OK, 0) + healthy_ok - failed_with_order - failed_without_order
        if noise_failures:
            c.requests[CODE_NOISE] = c.requests.get(CODE_NOISE, 0) + noise_failures
        if failed_with_order + failed_without_order:
            c.requests[CODE_FAULT] = c.requests.get(CODE_FAULT, 0) + failed_with_order + failed_without_order
        c.orders += delivered
        c.expected_orders += expected
        c.lost_orders += expected - delivered
        self._observe_latency(c, faults, n)

    def _observe_latency(self, c: SeriesCounters, faults: FaultProfile, n: int) -> None:
        """Log-normal latencies with median base + latency-ms, drawn as bucket counts."""
        if n == 0:
            return
        sigma = self.config.latency_sigma
        median = max(1e-6, self.config.base_latency_s + faults.latency_ms / 1000.0)
        left = n
        for i, p in enumerate(_bucket_probabilities(median, sigma)):
            if left == 0:
                break
            k = self._sampler.binomial(left, p)
            c.latency_buckets[i] += k
            left -= k
        c.latency_buckets[-1] += left
        mean = median * math.exp(sigma**2 / 2)
        var = (math.exp(sigma**2) - 1) * median**2 * math.exp(sigma**2)
        c.latency_sum += max(0.0, self._sampler.gauss(n * mean, math.sqrt(n * var)))

    # ------------------------------------------------------------ reading

    def snapshot(self) -> Snapshot:
        with self._lock:
            return Snapshot(
                series={k: v.copy() for k, v in self._series.items()},
                shares={k: dict(v) for k, v in self._shares.items()},
                ready=dict(self._ready),
            )

    def lost_orders(self) -> list[LostOrders]:
        """Cumulative expected, delivered and lost orders of every series ever served."""
        snap = self.snapshot()
        return [
            LostOrders(*key, expected=c.expected_orders, delivered=c.orders, lost=c.lost_orders)
            for key, c in sorted(snap.series.items())
        ]


def lost_report(rows: Sequence[LostOrders]) -> dict[str, list[dict[str, Any]]]:
    """`GET /lost`: per service totals, with the per-track rows they sum."""
    services: dict[ServiceKey, dict[str, Any]] = {}
    for r in rows:
        entry = services.setdefault(
            ServiceKey(r.namespace, r.service),
            {"namespace": r.namespace, "service": r.service, "expected": 0, "delivered": 0, "lost": 0, "tracks": []},
        )
        entry["expected"] += r.expected
        entry["delivered"] += r.delivered
        entry["lost"] += r.lost
        entry["tracks"].append(
            {"track": r.track, "revision": r.revision, "expected": r.expected, "delivered": r.delivered, "lost": r.lost}
        )
    return {"services": list(services.values())}
