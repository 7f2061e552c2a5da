"""Prometheus text exposition of the traffic model, fast enough for 1,000 services at a 1 s scrape.

prometheus_client's `generate_latest` validates and escapes every label name and value of every
sample at every scrape: for 1,000 services with 2 tracks (about 46,000 samples, 5 MB) that took
1.0-1.7 s on the 2-core sandbox machine, longer than the sandbox Prometheus's 1 s scrape timeout, so
the target went `down` and every canary saw "no data". Here a series' label block and the prefix of
each of its sample lines (`name{labels} `) are built once, when the series first appears, and a
scrape only joins those cached prefixes with the current numbers. The body is not gzipped: the
scrape is over loopback, and compressing 5-8 MB a second would cost more CPU than it saves.

`latency=False` leaves the latency histogram out: it is 17 of a series' ~24 samples, so at 1,000
services Prometheus ingests about 100,000 samples a second with it and 30,000 without. No contract
metric needs it (only custom `query` metrics may); the scale benchmark turns it off.

The output is the Prometheus text format 0.0.4: one `# HELP` and `# TYPE` per family, every sample
of a family contiguous, label values escaped (backslash, double quote, newline).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import accumulate

from controlled_friction.sandbox.traffic import LATENCY_BUCKETS, SeriesKey, ServiceKey, Snapshot

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
SERIES_LABELS = ("namespace", "service", "track", "revision")

# (name, type, help) in exposition order; names of counters already carry their `_total`.
_FAMILIES: dict[str, tuple[str, str]] = {
    "http_requests_total": ("counter", "Requests served by the simulated app."),
    "orders_total": ("counter", "Orders placed through the simulated app."),
    "sim_orders_expected_total": ("counter", "Orders a healthy revision would have produced for the same requests."),
    "sim_orders_lost_total": ("counter", "Expected minus delivered orders (lost to the revision's faults)."),
    "http_request_duration_seconds": ("histogram", "Simulated request latency."),
    "sim_track_share": ("gauge", "Current fraction of the service's requests served by the track."),
    "sim_ready_replicas": ("gauge", "Ready replicas the simulator routes traffic to."),
    "sim_source_up": ("gauge", "1 if the last topology refresh succeeded."),
}
_LE = (*(repr(float(b)) for b in LATENCY_BUCKETS), "+Inf")


def escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def label_block(pairs: Iterable[tuple[str, str]]) -> str:
    """`a="x",b="y"` (names are ours and valid; values escaped)."""
    return ",".join(f'{name}="{escape_label_value(str(value))}"' for name, value in pairs)


def header(name: str) -> str:
    kind, text = _FAMILIES[name]
    return f"# HELP {name} {text}\n# TYPE {name} {kind}\n"  # our help texts need no escaping


def fmt_float(value: float) -> str:
    """Go-style float text, as prometheus_client writes it ("1.0", "0.25", "+Inf", "NaN")."""
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


@dataclass(frozen=True)
class _SeriesLines:
    """Cached `name{labels} ` prefixes of every sample of one series (codes are added as seen)."""

    labels: str
    requests: dict[str, str]  # status code -> prefix
    orders: str
    expected: str
    lost: str
    buckets: tuple[str, ...]
    count: str
    total: str
    ready: str

    @classmethod
    def build(cls, key: SeriesKey) -> _SeriesLines:
        labels = label_block(zip(SERIES_LABELS, key, strict=True))
        return cls(
            labels=labels,
            requests={},
            orders=f"orders_total{{{labels}}} ",
            expected=f"sim_orders_expected_total{{{labels}}} ",
            lost=f"sim_orders_lost_total{{{labels}}} ",
            buckets=tuple(f'http_request_duration_seconds_bucket{{{labels},le="{le}"}} ' for le in _LE),
            count=f"http_request_duration_seconds_count{{{labels}}} ",
            total=f"http_request_duration_seconds_sum{{{labels}}} ",
            ready=f"sim_ready_replicas{{{labels}}} ",
        )

    def request_prefix(self, code: str) -> str:
        prefix = self.requests.get(code)
        if prefix is None:
            prefix = self.requests[code] = f'http_requests_total{{{self.labels},code="{escape_label_value(code)}"}} '
        return prefix


class Exposition:
    """Renders snapshots of one `TrafficModel`; keeps the label prefixes of the series it has seen.

    Not thread-safe: the simulator calls it under its own lock (scrapes are serialised).
    """

    def __init__(self, *, latency: bool = True) -> None:
        self.latency = latency
        self._series: dict[SeriesKey, _SeriesLines] = {}
        self._shares: dict[tuple[ServiceKey, str], str] = {}

    def _lines(self, key: SeriesKey) -> _SeriesLines:
        lines = self._series.get(key)
        if lines is None:
            lines = self._series[key] = _SeriesLines.build(key)
        return lines

    def _share_prefix(self, key: ServiceKey, track: str) -> str:
        prefix = self._shares.get((key, track))
        if prefix is None:
            labels = label_block((("namespace", key.namespace), ("service", key.service), ("track", track)))
            prefix = self._shares[(key, track)] = f"sim_track_share{{{labels}}} "
        return prefix

    def render(self, snap: Snapshot, source_up: bool | None = None) -> bytes:
        """The whole /metrics body; `source_up` None leaves out `sim_source_up`."""
        requests: list[str] = [header("http_requests_total")]
        orders: list[str] = [header("orders_total")]
        expected: list[str] = [header("sim_orders_expected_total")]
        lost: list[str] = [header("sim_orders_lost_total")]
        latency: list[str] = [header("http_request_duration_seconds")]
        seen: dict[SeriesKey, _SeriesLines] = {}
        for key in sorted(snap.series):
            c = snap.series[key]
            lines = seen[key] = self._lines(key)
            for code in sorted(c.requests):
                requests.append(f"{lines.request_prefix(code)}{c.requests[code]}\n")
            orders.append(f"{lines.orders}{c.orders}\n")
            expected.append(f"{lines.expected}{c.expected_orders}\n")
            lost.append(f"{lines.lost}{c.lost_orders}\n")
            if not self.latency:
                continue
            cumulative = list(accumulate(c.latency_buckets))
            latency.extend(f"{p}{n}\n" for p, n in zip(lines.buckets, cumulative, strict=True))
            latency.append(f"{lines.count}{cumulative[-1]}\n")
            latency.append(f"{lines.total}{fmt_float(c.latency_sum)}\n")
        share: list[str] = [header("sim_track_share")]
        seen_shares: dict[tuple[ServiceKey, str], str] = {}
        for skey in sorted(snap.shares):
            by_track = snap.shares[skey]
            for track in sorted(by_track):
                prefix = seen_shares[(skey, track)] = self._share_prefix(skey, track)
                share.append(f"{prefix}{fmt_float(by_track[track])}\n")
        ready: list[str] = [header("sim_ready_replicas")]
        for key in sorted(snap.ready):
            lines = seen.get(key) or self._lines(key)
            ready.append(f"{lines.ready}{fmt_float(snap.ready[key])}\n")
        parts: list[Sequence[str]] = [requests, orders, expected, lost, *([latency] if self.latency else []), share,
                                      ready]
        if source_up is not None:
            parts.append([header("sim_source_up"), f"sim_source_up {fmt_float(1.0 if source_up else 0.0)}\n"])
        # Forget series no longer in the model (the model keeps every series it served, so this only
        # matters for a model that was replaced or reset).
        if len(self._series) > len(seen) + len(snap.ready):
            self._series = {k: v for k, v in self._series.items() if k in seen or k in snap.ready}
        if len(self._shares) > len(seen_shares):
            self._shares = seen_shares
        return "".join(line for part in parts for line in part).encode()
