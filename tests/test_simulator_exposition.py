"""The simulator's /metrics at sandbox scale: 1,000 services render as valid Prometheus text.

Behaviour only (no wall-clock assertion): every sample the model holds is in the body with its value,
families are contiguous with one HELP/TYPE each, histograms are cumulative and end at their count,
label values are escaped, and `promtool check metrics` (when installed) accepts the body.
"""

from __future__ import annotations

import shutil
import subprocess
from collections import Counter

import pytest
from prometheus_client.parser import text_string_to_metric_families

from controlled_friction.sandbox.exposition import Exposition, escape_label_value
from controlled_friction.sandbox.simulator import ModelCollector, SourceStatus, StaticSource
from controlled_friction.sandbox.traffic import FaultProfile, SeriesKey, ServiceKey, ServiceState, Track, TrafficModel

SERVICES = 1000


def scale_model() -> TrafficModel:
    """1,000 services in 10 namespaces; each ends with 2-3 revisions (a third for every third service)."""
    source, model = StaticSource(), TrafficModel(seed=3)
    for i in range(SERVICES):
        faults = FaultProfile(error_rate=0.2) if i % 7 == 0 else FaultProfile()
        tracks = [Track("stable", f"s{i:09d}", 2), Track("canary", f"c{i:09d}", 2, faults)]
        source.set_tracks(f"ns-{i % 10}", f"svc-{i}", tracks)
    for _ in range(3):
        model.tick(source.services(), 0.25)
    for i in range(0, SERVICES, 3):  # promoted: a new stable revision, the old one's counters stay exposed
        tracks = [Track("stable", f"p{i:09d}", 2), Track("canary", f"c{i:09d}", 0)]
        source.set_tracks(f"ns-{i % 10}", f"svc-{i}", tracks)
    for _ in range(3):
        model.tick(source.services(), 0.25)
    return model


@pytest.fixture(scope="module")
def rendered() -> tuple[TrafficModel, str]:
    model = scale_model()
    collector = ModelCollector(model, SourceStatus(ok=True))
    collector.render()  # first render fills the label cache; the second must read the same
    return model, collector.render().decode()


def test_every_sample_of_1000_services_is_exposed_with_its_value(rendered: tuple[TrafficModel, str]) -> None:
    model, text = rendered
    snap = model.snapshot()
    assert len({(k.namespace, k.service) for k in snap.series}) == SERVICES
    assert len(snap.series) >= 2 * SERVICES
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }

    def labels(key: SeriesKey, **extra: str) -> tuple[tuple[str, str], ...]:
        return tuple(sorted({**key._asdict(), **extra}.items()))

    for key, c in snap.series.items():
        for code, n in c.requests.items():
            assert samples[("http_requests_total", labels(key, code=code))] == n
        assert samples[("orders_total", labels(key))] == c.orders
        assert samples[("sim_orders_expected_total", labels(key))] == c.expected_orders
        assert samples[("sim_orders_lost_total", labels(key))] == c.lost_orders
        assert samples[("http_request_duration_seconds_count", labels(key))] == c.total_requests
        assert samples[("http_request_duration_seconds_sum", labels(key))] == pytest.approx(c.latency_sum)
        assert samples[("http_request_duration_seconds_bucket", labels(key, le="+Inf"))] == c.total_requests
    for key, n in snap.ready.items():
        assert samples[("sim_ready_replicas", labels(key))] == n
    for skey, by_track in snap.shares.items():
        for track, share in by_track.items():
            assert samples[("sim_track_share", (("namespace", skey.namespace), ("service", skey.service),
                                                ("track", track)))] == share
    assert samples[("sim_source_up", ())] == 1.0
    # The 2,000 + 334 series of 1,000 services: about 8 sample kinds each, plus buckets.
    assert len(samples) > 20 * len(snap.series)


def test_families_are_contiguous_with_one_help_and_type(rendered: tuple[TrafficModel, str]) -> None:
    _, text = rendered
    assert text.endswith("\n")
    types = {line.split()[2]: line.split()[3] for line in text.splitlines() if line.startswith("# TYPE ")}
    helps = Counter(line.split()[2] for line in text.splitlines() if line.startswith("# HELP "))
    assert set(helps) == set(types) and set(helps.values()) == {1}
    order: list[str] = []
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        family = next(f for f in types if name == f or (types[f] == "histogram" and name.startswith(f + "_")))
        if not order or order[-1] != family:
            assert family not in order, f"{family} samples are not contiguous"
            order.append(family)
    assert order[0] == "http_requests_total" and "orders_total" in order


def test_histograms_are_cumulative(rendered: tuple[TrafficModel, str]) -> None:
    _, text = rendered
    for fam in text_string_to_metric_families(text):
        if fam.type != "histogram":
            continue
        buckets: dict[tuple[tuple[str, str], ...], list[tuple[float, float]]] = {}
        counts: dict[tuple[tuple[str, str], ...], float] = {}
        for s in fam.samples:
            key = tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
            if s.name.endswith("_bucket"):
                buckets.setdefault(key, []).append((float(s.labels["le"]), s.value))
            elif s.name.endswith("_count"):
                counts[key] = s.value
        assert buckets and set(buckets) == set(counts)
        for key, rows in buckets.items():
            values = [v for _, v in sorted(rows)]
            assert values == sorted(values) and values[-1] == counts[key]


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_promtool_accepts_the_body(rendered: tuple[TrafficModel, str]) -> None:
    _, text = rendered
    proc = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0 and "error" not in proc.stderr + proc.stdout, (proc.stdout + proc.stderr)[-2000:]


def test_label_values_are_escaped() -> None:
    model = TrafficModel(seed=1)
    odd = ServiceKey('we"ird', "back\\slash\nnewline")
    model.tick({odd: ServiceState((Track("stable", "r1", 1),))}, 1.0)
    text = Exposition().render(model.snapshot()).decode()
    assert f'namespace="{escape_label_value(odd.namespace)}"' in text
    (fam,) = [f for f in text_string_to_metric_families(text) if f.name == "orders"]
    (sample,) = fam.samples
    assert sample.labels["namespace"] == odd.namespace and sample.labels["service"] == odd.service
    assert "sim_source_up" not in text  # no status given: no source gauge


def test_without_latency_the_histogram_alone_is_left_out(rendered: tuple[TrafficModel, str]) -> None:
    model, full = rendered
    lean = ModelCollector(model, SourceStatus(ok=True), latency=False).render().decode()

    def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for fam in text_string_to_metric_families(text) for s in fam.samples}

    everything, kept = samples(full), samples(lean)
    latency = {k for k in everything if k[0].startswith("http_request_duration_seconds")}
    assert latency and not any(k[0].startswith("http_request_duration_seconds") for k in kept)
    assert "http_request_duration_seconds" not in lean  # no HELP/TYPE of an empty family either
    assert kept == {k: v for k, v in everything.items() if k not in latency}
    assert len(kept) < 0.4 * len(everything)  # the histogram is most of a scrape
