"""`measure` against a real Prometheus scraping an exporter whose traffic the test controls.

All scenarios share one Prometheus and one exporter and fill their rate windows at the same time:
stable traffic first (so the pre-rollout baseline window holds data), then every canary starts at
one instant, which is each scenario's `rollout_started_at`. Each measurement is a few looks a
couple of seconds apart, the analysis state carried from look to look as the planner keeps it: the
sequential tests take exact counter differences between looks.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import CollectorRegistry, Counter, start_http_server

from controlled_friction.adapters.prometheus import PrometheusClient
from controlled_friction.analysis import QueryContext
from controlled_friction.models.rollout import Measurement, MetricSpec
from controlled_friction.operator.reconcile import measure
from tests.e2e.waiting import wait_for
from tests.prometheus_server import running_prometheus

pytestmark = [
    pytest.mark.prometheus,
    pytest.mark.skipif(shutil.which("prometheus") is None, reason="needs /usr/bin/prometheus"),
]

NAMESPACE = "cf-test"
WINDOW = 10.0  # seconds; scrape interval is 1 s, so ~10 samples per rate window
FULL_WINDOW_SAMPLES = 9
LOOK_SPACING = 2.0  # seconds between looks (the default analysis interval; scrapes every 1 s)

ERRORS = MetricSpec(name="errors", kind="errorRatio", max_ratio=0.02, max_increase_over_stable=0.01)
ORDERS = MetricSpec(name="orders", kind="orderRateDrop", max_drop=0.2, max_baseline_drop=0.5)
CANARY_RATE = MetricSpec(
    name="canary-rps",
    kind="query",
    query='sum(rate(http_requests_total{namespace="{{namespace}}",service="{{service}}",'
    'revision="{{revision}}"}[{{window}}]))',
    min=1.0,
)
METRICS = [ERRORS, ORDERS, CANARY_RATE]


# ---------------------------------------------------------------- Prometheus


# ---------------------------------------------------------------- exporter


@dataclass
class Flow:
    """Traffic of one (service, track, revision) while start <= now < stop (monotonic seconds)."""

    service: str
    track: str
    revision: str
    rps: float
    error_rate: float = 0.0
    orders_per_request: float = 0.5
    start: float = 0.0
    stop: float = math.inf


@dataclass
class Exporter:
    """The contract's app metrics, incremented by a background thread from the active flows."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    flows: list[Flow] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stopped: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        labels = ["namespace", "service", "track", "revision"]
        self.requests = Counter("http_requests", "Requests", [*labels, "code"], registry=self.registry)
        self.orders = Counter("orders", "Orders", labels, registry=self.registry)
        server, _ = start_http_server(0, addr="127.0.0.1", registry=self.registry)
        self.server = server
        self.target = f"127.0.0.1:{server.server_port}"
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def add(self, flow: Flow) -> None:
        with self.lock:
            self.flows.append(flow)

    def _run(self) -> None:
        last = time.monotonic()
        while not self.stopped.wait(0.05):
            now = time.monotonic()
            dt, last = now - last, now
            with self.lock:
                active = [f for f in self.flows if f.start <= now < f.stop]
            for f in active:
                ids = (NAMESPACE, f.service, f.track, f.revision)
                n = f.rps * dt
                # Series exist from the first tick even at 0 rps; 5xx/orders only once they happen,
                # as with a real app (so the queries must cope with absent series).
                self.requests.labels(*ids, "200").inc(n * (1 - f.error_rate))
                if f.error_rate > 0:
                    self.requests.labels(*ids, "503").inc(n * f.error_rate)
                if f.orders_per_request > 0:
                    self.orders.labels(*ids).inc(n * f.orders_per_request)

    def close(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=5)
        self.server.shutdown()


# ---------------------------------------------------------------- scenarios

STABLE = Flow(service="", track="stable", revision="stable0001", rps=38.0, error_rate=0.004)


def canary(scenario: str, rps: float = 2.0, **faults: float) -> Flow:
    return Flow(service=scenario, track="canary", revision=f"{scenario}-canary", rps=rps, **faults)


@dataclass(frozen=True)
class Scenario:
    canary: Flow | None  # None: the canary revision gets no traffic at all
    stable_orders_after_start: float | None = None  # stable's orders per request once the canary runs


SCENARIOS = {
    "healthy": Scenario(canary("healthy")),
    "errors": Scenario(canary("errors", error_rate=0.3)),
    "orders": Scenario(canary("orders", orders_per_request=0.005)),  # 2 of 40 rps = 5% weight, -99%
    "unseen": Scenario(None),
    "idle": Scenario(canary("idle", rps=0.0)),
    "collapse": Scenario(canary("collapse"), stable_orders_after_start=0.1),
}


@dataclass
class World:
    url: str
    client: PrometheusClient
    started_at: datetime

    def ctx(self, scenario: str) -> QueryContext:
        return QueryContext(
            namespace=NAMESPACE,
            service=scenario,
            rollout=scenario,
            canary_revision=f"{scenario}-canary",
            stable_revision="stable0001",
            window_seconds=WINDOW,
            interval_seconds=5.0,
            min_requests=10,
            rollout_started_at=self.started_at,
        )

    def measure(self, scenario: str, looks: int = 2, until: str | None = None) -> dict[str, Measurement]:
        """The verdicts of the last of `looks` looks LOOK_SPACING apart (or of the first where the
        metric `until` fails)."""
        state = None
        out: list[Measurement] = []
        for i in range(looks):
            if i:
                time.sleep(LOOK_SPACING)
            out, state = measure(self.client, METRICS, self.ctx(scenario), datetime.now(UTC), state)
            if until is not None and any(m.metric == until and m.verdict == "fail" for m in out):
                break
        return {m.metric: m for m in out}


def full_windows(client: PrometheusClient, selector: str, series: int) -> bool:
    """Prometheus holds a full rate window of samples for each of `series` request series."""
    have = client.instant(
        f"count(count_over_time(http_requests_total{selector}[{WINDOW:.0f}s]) >= {FULL_WINDOW_SAMPLES})"
    )
    return have is not None and have >= series


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    exporter = Exporter()
    try:
        with running_prometheus([exporter.target]) as url:
            client = PrometheusClient(url, timeout=5.0)
            for name in SCENARIOS:
                exporter.add(replace(STABLE, service=name))
            stable = f'{{namespace="{NAMESPACE}",track="stable",code="200"}}'
            wait_for(
                lambda: full_windows(client, stable, len(SCENARIOS)),
                timeout=90,
                interval=0.5,
                message="a full window of stable samples",
            )
            # The canaries (and stable changes) start together: that instant is the rollout start.
            started_at, t1 = datetime.now(UTC), time.monotonic()
            for name, sc in SCENARIOS.items():
                if sc.stable_orders_after_start is not None:
                    with exporter.lock:
                        next(f for f in exporter.flows if f.service == name).stop = t1
                    later = replace(STABLE, service=name, orders_per_request=sc.stable_orders_after_start)
                    exporter.add(replace(later, start=t1))
                if sc.canary is not None:
                    exporter.add(replace(sc.canary, start=t1))
            canaries = sum(1 for sc in SCENARIOS.values() if sc.canary is not None)
            canary = f'{{namespace="{NAMESPACE}",track="canary",code="200"}}'
            wait_for(
                lambda: full_windows(client, canary, canaries),
                timeout=90,
                interval=0.5,
                message="a full window of canary samples",
            )
            yield World(url=url, client=client, started_at=started_at)
    finally:
        exporter.close()


# ---------------------------------------------------------------- tests


def test_healthy_canary_passes(world: World) -> None:
    m = world.measure("healthy")
    assert {k: v.verdict for k, v in m.items()} == {"errors": "pass", "orders": "pass", "canary-rps": "pass"}
    assert m["errors"].value == pytest.approx(0.0, abs=1e-9)  # no 5xx series at all: 0%, not "no data"
    assert "stable 0.4%" in m["errors"].message
    # A few percent either way: requests and orders are separate counters, and a scrape between the
    # exporter's two increments (a loaded machine) skews one look; the failing scenario is at 99%.
    assert m["orders"].value == pytest.approx(0.0, abs=0.05)
    assert "before the rollout" in m["orders"].message  # the `@` baseline query returned data
    assert m["canary-rps"].value == pytest.approx(2.0, rel=0.2)


def test_canary_with_30_percent_5xx_fails_on_its_first_look(world: World) -> None:
    m = world.measure("errors", looks=1)["errors"]
    assert m.verdict == "fail" and m.decisive  # counted from the canary's start: no second look needed
    assert m.value == pytest.approx(0.3, abs=0.01)
    assert "canary 5xx 30.0% of" in m.message and "maxRatio 0.02 violated" in m.message


def test_canary_losing_99_percent_of_orders_at_5_percent_weight_fails(world: World) -> None:
    # 2 canary requests/s next to 38 on stable: ~30 canary requests of evidence are needed
    m = world.measure("orders", looks=12, until="orders")
    assert m["orders"].verdict == "fail" and m["orders"].decisive, m["orders"].message
    assert m["orders"].value == pytest.approx(0.99, abs=0.005)
    assert "maxDrop 0.2 violated" in m["orders"].message
    # the service-wide total hardly moves, which is why the per-request comparison exists
    assert "≤ maxBaselineDrop" in m["orders"].message
    assert m["errors"].verdict == "pass"


def test_service_order_collapse_fails_against_the_pre_rollout_baseline(world: World) -> None:
    m = world.measure("collapse")["orders"]
    assert m.verdict == "fail" and not m.decisive  # a plain threshold: failureLimit applies
    assert "> maxBaselineDrop 50.0%" in m.message and "before the rollout" in m.message


def test_canary_revision_without_series_is_quiet(world: World) -> None:
    m = world.measure("unseen")
    assert {k: v.verdict for k, v in m.items()} == {
        "errors": "quiet",
        "orders": "quiet",
        "canary-rps": "inconclusive",  # a custom query without data is not quiet: no data
    }
    assert m["errors"].message.startswith("quiet: no requests reached canary revision unseen-canary")


def test_canary_revision_without_requests_is_quiet(world: World) -> None:
    m = world.measure("idle")
    assert m["errors"].verdict == "quiet"
    assert m["errors"].message.startswith("quiet: 0 canary requests so far < minRequests 10")
    assert m["orders"].verdict == "quiet"
    assert m["canary-rps"].verdict == "fail"  # the custom query sees 0 rps < min 1


def test_query_prometheus_rejects_is_an_error_with_its_reason(world: World) -> None:
    broken = MetricSpec(name="broken", kind="query", query="sum(rate(x[{{window}}])", max=1)
    [m], _ = measure(world.client, [broken], world.ctx("healthy"), datetime.now(UTC))
    assert m.verdict == "error"
    assert "parse error" in m.message and "sum(rate(x[10s])" in m.message


def test_stopped_prometheus_gives_error_verdicts_not_exceptions() -> None:
    exporter = Exporter()
    exporter.add(Flow(service="solo", track="canary", revision="solo-canary", rps=5.0))
    ctx = QueryContext(NAMESPACE, "solo", "solo", "solo-canary", None, WINDOW, 5.0, 10, None)
    try:
        with running_prometheus([exporter.target]) as url:
            client = PrometheusClient(url, timeout=2.0)
            up, _ = measure(client, METRICS, ctx, datetime.now(UTC))
            assert all(m.verdict != "error" for m in up), [m.message for m in up]
        # the context manager has stopped that Prometheus
        down, _ = measure(client, METRICS, ctx, datetime.now(UTC))
    finally:
        exporter.close()
    assert [m.metric for m in down] == ["errors", "orders", "canary-rps"]
    assert all(m.verdict == "error" for m in down)
    assert all("unreachable: Connection refused" in m.message for m in down), [m.message for m in down]


def test_hung_prometheus_times_out_with_one_bounded_retry_and_no_more_calls() -> None:
    # Accepts connections and never answers: every request has to end by its timeout.
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    done = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not done.is_set():
            with contextlib.suppress(TimeoutError):
                accepted.append(listener.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        port = listener.getsockname()[1]
        client = PrometheusClient(f"http://127.0.0.1:{port}", timeout=0.3)
        ctx = QueryContext(NAMESPACE, "solo", "solo", "solo-canary", None, WINDOW, 5.0, 10, None)
        out, _ = measure(client, METRICS, ctx, datetime.now(UTC))
        assert [m.verdict for m in out] == ["error", "error", "error"]
        assert "timed out" in out[0].message
        # 2 attempts for the first query, then the remaining metrics are not queried at all
        assert wait_for(lambda: len(accepted) >= 2, timeout=5, interval=0.05)
        assert len(accepted) == 2
    finally:
        done.set()
        thread.join(timeout=5)
        for conn in accepted:
            conn.close()
        listener.close()


def test_a_look_measures_its_grid_instant_not_the_moment_it_runs(world: World) -> None:
    """Looks of one grid instant share one answer only if the answer is of that instant: a query at
    `at` must return the counters as they were then, even when it runs seconds later."""
    promql = f'sum by (namespace, service, track, revision) (http_requests_total{{namespace="{NAMESPACE}"}})'
    key = (NAMESPACE, "healthy", "stable", "stable0001")
    now = datetime.now(UTC)
    then = now - timedelta(seconds=6)
    at_now, at_then = world.client.table(promql, at=now)[key], world.client.table(promql, at=then)[key]
    # 38 requests/s on stable: about 228 fewer six seconds earlier (scrapes are 1 s apart).
    assert at_now - at_then == pytest.approx(38 * 6, abs=60)
    assert world.client.table(promql, at=then)[key] == at_then  # the past does not move
