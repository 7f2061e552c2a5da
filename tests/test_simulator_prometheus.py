"""The simulator's HTTP surface, its process, and what a real Prometheus sees when it scrapes it.

Tests marked `prometheus` start /usr/bin/prometheus (tests/prometheus_server.py); the others only
need the simulator itself. No fixed sleeps: every wait is a condition with a deadline.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

from controlled_friction.sandbox.simulator import ClusterSource, SimulatorHandle, StaticSource, serve
from controlled_friction.sandbox.traffic import (
    CODE_OK,
    FaultProfile,
    SeriesKey,
    Track,
    TrafficConfig,
    TrafficModel,
    lost_report,
)
from tests.e2e.waiting import wait_for
from tests.prometheus_server import free_port, prometheus_available, query_by, running_prometheus, targets_up

NS, SVC = "shop", "checkout"
STABLE_REV, CANARY_REV = "s1s1s1s1s1", "c1c1c1c1c1"
SEL = f'namespace="{NS}",service="{SVC}"'
WINDOW = "10s"


def needs_prometheus(test: Callable[..., None]) -> Callable[..., None]:
    skip = pytest.mark.skipif(not prometheus_available(), reason="needs /usr/bin/prometheus (apt install prometheus)")
    return pytest.mark.prometheus(skip(test))


def get(url: str) -> requests.Response:
    return requests.get(url, timeout=5)


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """All samples of the simulator's /metrics, keyed by (sample name, sorted labels)."""
    text = get(f"{url}/metrics").text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def series_labels(key: SeriesKey, **extra: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted({**key._asdict(), **extra}.items()))


# ---------------------------------------------------------------- HTTP surface (no Prometheus)


@pytest.fixture
def paused() -> Iterator[tuple[TrafficModel, StaticSource, SimulatorHandle]]:
    """A simulator whose tick thread never fires: the test ticks the model itself."""
    model, source = TrafficModel(seed=1), StaticSource()
    with serve(model, source, tick_interval=3600) as handle:
        yield model, source, handle


def test_metrics_report_the_models_counters(paused) -> None:
    model, source, handle = paused
    source.set_tracks(
        NS, SVC, [Track("stable", STABLE_REV, 3), Track("canary", CANARY_REV, 1, FaultProfile(error_rate=0.5))]
    )
    for _ in range(40):
        model.tick(source.services(), 0.25)
    samples = scrape(handle.url)
    snap = model.snapshot()
    assert snap.series  # something was served
    for key, c in snap.series.items():
        for code, n in c.requests.items():
            assert samples[("http_requests_total", series_labels(key, code=code))] == n
        assert samples[("orders_total", series_labels(key))] == c.orders
        assert samples[("sim_orders_expected_total", series_labels(key))] == c.expected_orders
        assert samples[("sim_orders_lost_total", series_labels(key))] == c.lost_orders
        assert samples[("http_request_duration_seconds_count", series_labels(key))] == c.total_requests
        assert samples[("sim_ready_replicas", series_labels(key))] == snap.ready[key]
    assert samples[("sim_track_share", (("namespace", NS), ("service", SVC), ("track", "canary")))] == 0.25
    assert samples[("sim_track_share", (("namespace", NS), ("service", SVC), ("track", "stable")))] == 0.75
    # No client-library extras such as *_created series: only what the model says.
    assert not any(name.endswith("_created") for name, _ in samples)


def test_lost_and_healthz_endpoints(paused) -> None:
    model, source, handle = paused
    source.set_tracks(
        NS, SVC, [Track("stable", STABLE_REV, 1), Track("canary", CANARY_REV, 1, FaultProfile(order_drop=0.99))]
    )
    for _ in range(100):
        model.tick(source.services(), 0.25)
    body = get(f"{handle.url}/lost").json()
    assert body == lost_report(model.lost_orders())
    (entry,) = body["services"]
    assert entry["namespace"] == NS and entry["service"] == SVC and entry["lost"] > 0
    health = get(f"{handle.url}/healthz")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert get(f"{handle.url}/nope").status_code == 404


def test_set_tracks_reaches_the_metrics_on_the_next_ticks() -> None:
    source = StaticSource()
    source.set_tracks(NS, SVC, [Track("stable", STABLE_REV, 1), Track("canary", CANARY_REV, 0)])
    with serve(TrafficModel(TrafficConfig(rate=200), seed=2), source, tick_interval=0.05) as handle:
        stable_ok = ("http_requests_total", series_labels(SeriesKey(NS, SVC, "stable", STABLE_REV), code=CODE_OK))
        canary_ok = ("http_requests_total", series_labels(SeriesKey(NS, SVC, "canary", CANARY_REV), code=CODE_OK))
        wait_for(lambda: scrape(handle.url).get(stable_ok, 0) > 0, timeout=10, message="stable traffic")
        assert canary_ok not in scrape(handle.url)  # no ready canary: no canary series
        source.set_tracks(NS, SVC, [Track("stable", STABLE_REV, 1), Track("canary", CANARY_REV, 1)])
        wait_for(lambda: scrape(handle.url).get(canary_ok, 0) > 0, timeout=10, message="canary traffic")
    # Stopped: the port is closed.
    with pytest.raises(requests.ConnectionError):
        get(f"{handle.url}/healthz")


def unreachable_kubeconfig(path: Path) -> Path:
    """A kubeconfig for an API server address where nothing listens."""
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "gone",
                "cluster": {"server": f"https://127.0.0.1:{free_port()}", "insecure-skip-tls-verify": True},
            }
        ],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "gone", "context": {"cluster": "gone", "user": "u"}}],
        "current-context": "gone",
    }
    path.write_text(yaml.safe_dump(doc))
    return path


def test_keeps_serving_while_the_api_server_is_unreachable(tmp_path: Path) -> None:
    source = ClusterSource(str(unreachable_kubeconfig(tmp_path / "kubeconfig")), request_timeout=1.0)
    with serve(TrafficModel(seed=3), source, tick_interval=0.05, refresh_interval=0.2) as handle:

        def failed_refreshes_while_ticking() -> bool:
            body = get(f"{handle.url}/healthz").json()
            return body["status"] == "ok" and body["lastTickAgeSeconds"] is not None and body["source"]["error"]

        wait_for(failed_refreshes_while_ticking, timeout=30, message="source error reported while ticking")
        assert scrape(handle.url)[("sim_source_up", ())] == 0.0
        first = handle.last_tick
        wait_for(lambda: handle.last_tick != first, timeout=10, message="ticks go on")


def test_the_process_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root)}
    log = tmp_path / "simulator.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "controlled_friction.sandbox.simulator",
                "--kubeconfig",
                str(tmp_path / "missing-kubeconfig"),
                "--listen",
                f"127.0.0.1:{port}",
                "--rate",
                "10",
                "--seed",
                "5",
                "--refresh",
                "0.1",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:

        def up_without_cluster() -> bool:
            assert proc.poll() is None, log.read_text()
            body = get(f"{url}/healthz").json()
            return body["status"] == "ok" and body["source"]["failures"] >= 5

        wait_for(up_without_cluster, timeout=60, message="simulator /healthz after failed refreshes")
        assert "sim_source_up 0.0" in get(f"{url}/metrics").text
        assert get(f"{url}/lost").json() == {"services": []}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # JSON logs; the refresh failure is reported once, not once per second.
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    assert sum("topology refresh failed" in (line.get("event") or "") for line in lines) == 1


# ---------------------------------------------------------------- through a real Prometheus


@pytest.fixture(scope="module")
def scraped() -> Iterator[tuple[StaticSource, str]]:
    """A simulator at 400 req/s scraped every second by a real Prometheus."""
    source = StaticSource()
    with (
        serve(TrafficModel(TrafficConfig(rate=400), seed=11), source) as handle,
        running_prometheus([handle.target]) as url,
    ):
        wait_for(lambda: targets_up(url), timeout=30, message="simulator target up")
        yield source, url


def track_ratio(url: str, numerator: str, denominator: str) -> dict[str, float]:
    """Per track: sum(rate(numerator)) / sum(rate(denominator)) over the test window."""
    return query_by(
        url,
        f"sum by (track) (rate({numerator}[{WINDOW}])) / sum by (track) (rate({denominator}[{WINDOW}]))",
        "track",
    )


def canary_share(url: str) -> float | None:
    by_track = query_by(url, f"sum by (track) (rate(http_requests_total{{{SEL}}}[{WINDOW}]))", "track")
    total = sum(by_track.values())
    return by_track.get("canary", 0.0) / total if total else None


@needs_prometheus
def test_prometheus_sees_the_split_and_the_order_drop(scraped: tuple[StaticSource, str]) -> None:
    source, url = scraped
    bad = FaultProfile(order_drop=0.99)
    source.set_tracks(NS, SVC, [Track("stable", STABLE_REV, 3), Track("canary", CANARY_REV, 1, bad)])

    # The canary takes ~1/4 of the requests: its ready replicas' share.
    wait_for(lambda: abs((canary_share(url) or -1) - 0.25) < 0.05, timeout=60, message="canary share ~0.25")
    assert query_by(url, f"sim_track_share{{{SEL}}}", "track") == {"stable": 0.75, "canary": 0.25}

    def orders_per_request() -> dict[str, float]:
        return track_ratio(url, f"orders_total{{{SEL}}}", f'http_requests_total{{{SEL},code="200"}}')

    def canary_lost_most_orders() -> bool:
        opr = orders_per_request()
        q = TrafficConfig().order_probability
        return abs(opr.get("stable", 0) - q) < 0.05 and opr.get("canary", 1) / opr["stable"] < 0.05

    wait_for(canary_lost_most_orders, timeout=60, message="canary orders per request ~1% of stable's")
    lost = track_ratio(url, f"sim_orders_lost_total{{{SEL}}}", f"sim_orders_expected_total{{{SEL}}}")
    assert lost["stable"] == 0.0
    assert lost["canary"] > 0.9


@needs_prometheus
def test_prometheus_follows_a_change_of_replicas_and_faults(scraped: tuple[StaticSource, str]) -> None:
    source, url = scraped
    svc, sel = "cart", f'namespace="{NS}",service="cart"'
    source.set_tracks(NS, svc, [Track("stable", STABLE_REV, 3), Track("canary", CANARY_REV, 1)])

    def error_ratio() -> dict[str, float]:
        return track_ratio(url, f'http_requests_total{{{sel},code=~"5.."}}', f"http_requests_total{{{sel}}}")

    def healthy_canary() -> bool:
        ratios = error_ratio()
        return "stable" in ratios and ratios.get("canary", 0.0) < 0.02

    wait_for(healthy_canary, timeout=60, message="healthy canary scraped")
    # Flip: the canary now has half the replicas and fails 30% of its requests.
    source.set_tracks(
        NS, svc, [Track("stable", STABLE_REV, 2), Track("canary", CANARY_REV, 2, FaultProfile(error_rate=0.3))]
    )
    wait_for(
        lambda: abs(error_ratio().get("canary", 0.0) - 0.302) < 0.05, timeout=60, message="canary error ratio ~0.3"
    )
    wait_for(
        lambda: query_by(url, f"sim_track_share{{{sel}}}", "track") == {"stable": 0.5, "canary": 0.5},
        timeout=30,
        message="share gauge 0.5",
    )
    assert error_ratio()["stable"] < 0.02
