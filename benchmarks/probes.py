"""Measuring instruments for `benchmarks.scale`: /proc CPU and RSS, Prometheus-text scrapes and
histogram quantiles, the API server's audit log, and a watch of the benchmark's Rollouts.

Nothing here knows about the operator's internals: everything is observed from outside the process
(the kernel, the API server, Prometheus, the operator's /metrics), so the same benchmark measures
today's control loop and its rewrite alike.
"""

from __future__ import annotations

import json
import math
import os
import re
import ssl
import threading
import time
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


# ---------------------------------------------------------------- statistics


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a process the benchmark starts)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def quantile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated quantile (numpy's default); None for no values."""
    if not values:
        return None
    xs = sorted(values)
    pos = q * (len(xs) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summary(values: Sequence[float]) -> dict[str, float | int | None]:
    return {
        "n": len(values),
        "p50": quantile(values, 0.5),
        "p95": quantile(values, 0.95),
        "p99": quantile(values, 0.99),
        "max": max(values) if values else None,
    }


# ---------------------------------------------------------------- /proc


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = defaultdict(list)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        kids[int(fields[1])].append(int(entry))
    return kids


def process_tree(pid: int, kids: Mapping[int, list[int]] | None = None, prune: Iterable[int] = ()) -> list[int]:
    """`pid` and its descendants, without the subtrees rooted at `prune` (other roots we count apart)."""
    kids = _children_map() if kids is None else kids
    skip = set(prune) - {pid}
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(k for k in kids.get(p, []) if k not in skip)
    return out


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process (its own threads), in seconds; None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of proc(5)


def rss_bytes(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_SIZE
    except (OSError, IndexError, ValueError):
        return 0


def machine_busy_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    parts = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = parts[3] + (parts[4] if len(parts) > 4 else 0)
    total = sum(parts[:8])
    return (total - idle) / CLK_TCK, total / CLK_TCK


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


@dataclass
class CpuWindow:
    """CPU cores used by named process trees over a window (a tree is a pid and its descendants, less the
    subtrees of the other roots)."""

    roots: dict[str, int]
    started: float = field(default_factory=time.monotonic)
    _start: dict[str, dict[int, float]] = field(default_factory=dict)
    _machine: tuple[float, float] = (0.0, 0.0)
    _load: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._start = self._read()
        self._machine = machine_busy_seconds()
        self._load = loadavg()

    def _read(self) -> dict[str, dict[int, float]]:
        kids = _children_map()
        out: dict[str, dict[int, float]] = {}
        roots = set(self.roots.values())
        for name, root in self.roots.items():
            per: dict[int, float] = {}
            # The benchmark started the sandbox and the operator: each process counts under one root only.
            for p in process_tree(root, kids, prune=roots):
                s = cpu_seconds(p)
                if s is not None:
                    per[p] = s
            out[name] = per
        return out

    def finish(self) -> dict[str, Any]:
        end, wall = self._read(), max(1e-6, time.monotonic() - self.started)
        busy1, total1 = machine_busy_seconds()
        cores: dict[str, float] = {}
        for name, per in end.items():
            # A process that started inside the window counts from 0; one that ended is lost (rare).
            used = sum(s - self._start.get(name, {}).get(p, 0.0) for p, s in per.items())
            cores[name] = round(max(0.0, used) / wall, 4)
        busy0, total0 = self._machine
        ncpu = os.cpu_count() or 1
        machine = (busy1 - busy0) / max(1e-6, total1 - total0) * ncpu
        cores["(whole machine)"] = round(machine, 4)
        ours = sum(v for k, v in cores.items() if not k.startswith("("))
        cores["(everything else)"] = round(max(0.0, machine - ours), 4)
        return {"seconds": round(wall, 1), "cores": cores, "loadavg_start": self._load, "loadavg_end": loadavg()}


def tree_rss(pid: int) -> int:
    return sum(rss_bytes(p) for p in process_tree(pid))


# ---------------------------------------------------------------- Prometheus text scrapes

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def fetch_text(url: str, token: str | None = None, ca_file: str | None = None, timeout: float = 30) -> str:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    ctx = ssl.create_default_context(cafile=ca_file) if url.startswith("https") else None
    with urllib.request.urlopen(req, timeout=timeout, context=ctx) as rsp:
        return str(rsp.read().decode())


def parse_samples(text: str, keep: Callable[[str], bool] = lambda _: True) -> Samples:
    out: Samples = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if keep(s.name):
                out[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
    return out


_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_lines(text: str, prefixes: tuple[str, ...]) -> Samples:
    """Samples of the text-format lines whose names start with one of `prefixes`.

    A minimal parser (name, labels, value; no timestamps or exemplars), because the API server's
    /metrics is tens of megabytes and the benchmark must not become the machine's bottleneck.
    """
    out: Samples = {}
    for line in text.splitlines():
        if not line.startswith(prefixes):
            continue
        brace = line.find("{")
        if brace >= 0:
            end = line.rfind("}")
            name, labels = line[:brace], tuple(sorted(
                (k, v.replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\"))
                for k, v in _LABEL.findall(line[brace + 1 : end])))
            rest = line[end + 1 :].split()
        else:
            name, *rest = line.split()
            labels = ()
        if rest:
            try:
                out[(name, labels)] = float(rest[0])
            except ValueError:
                continue
    return out


def scrape(url: str, prefixes: Iterable[str], token: str | None = None, ca_file: str | None = None) -> Samples:
    """The samples whose names start with one of `prefixes`."""
    return parse_lines(fetch_text(url, token, ca_file), tuple(prefixes))


def delta(after: Samples, before: Samples, name: str, match: Mapping[str, str] | None = None,
          group_by: Sequence[str] = ()) -> dict[tuple[str, ...], float]:
    """Counter increase of `name` (samples matching `match`), summed by the `group_by` labels."""
    out: dict[tuple[str, ...], float] = defaultdict(float)
    for (n, labels), value in after.items():
        if n != name:
            continue
        lab = dict(labels)
        if match and any(lab.get(k) != v for k, v in match.items()):
            continue
        prev = before.get((n, labels), 0.0)
        inc = value - prev if value >= prev else value  # a reset (restarted process) counts from 0
        out[tuple(lab.get(k, "") for k in group_by)] += inc
    return dict(out)


def histogram_delta(after: Samples, before: Samples, name: str, match: Mapping[str, str] | None = None
                    ) -> list[tuple[float, float]]:
    """Cumulative (le, count) increases of histogram `name` summed over the other labels."""
    by_le = delta(after, before, f"{name}_bucket", match, group_by=("le",))
    return sorted((float(le[0]), v) for le, v in by_le.items())


def histogram_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    """Prometheus's histogram_quantile over cumulative buckets; +Inf when q falls in the last bucket."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    total = buckets[-1][1]
    rank = q * total
    prev_le, prev_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if math.isinf(le):
                return prev_le if prev_le > 0 else math.inf  # beyond the largest finite bucket
            if count == prev_count:
                return le
            return prev_le + (le - prev_le) * (rank - prev_count) / (count - prev_count)
        prev_le, prev_count = le, count
    return buckets[-1][0]


def histogram_beyond(buckets: Sequence[tuple[float, float]]) -> float:
    """Fraction of observations above the largest finite bucket."""
    if not buckets or buckets[-1][1] <= 0:
        return 0.0
    finite = [c for le, c in buckets if not math.isinf(le)]
    return 1.0 - (finite[-1] if finite else 0.0) / buckets[-1][1]


# ---------------------------------------------------------------- API server audit log


class AuditTail:
    """Counts audit events of one user by second, verb, resource and user agent, tailing the log."""

    def __init__(self, path: Path, user: str) -> None:
        self.path, self.user = path, user
        self._lock = threading.Lock()
        self.by_second: dict[int, Counter[tuple[str, str, str]]] = defaultdict(Counter)
        self.lines = 0
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="audit-tail", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        pos, buf = 0, b""
        while not self._stop.is_set():
            try:
                size = self.path.stat().st_size
            except OSError:
                self._stop.wait(0.5)
                continue
            if size < pos:
                pos = 0  # rotated or truncated
            if size == pos:
                self._stop.wait(0.3)
                continue
            with self.path.open("rb") as f:
                f.seek(pos)
                chunk = f.read(min(size - pos, 64 << 20))
                pos += len(chunk)
            buf += chunk
            *complete, buf = buf.split(b"\n")
            self._ingest(complete)

    def _ingest(self, lines: list[bytes]) -> None:
        rows: list[tuple[int, tuple[str, str, str]]] = []
        for line in lines:
            if self.user.encode() not in line:
                continue
            try:
                ev = json.loads(line)
            except ValueError:
                self.errors += 1
                continue
            if (ev.get("user") or {}).get("username") != self.user:
                continue
            ref = ev.get("objectRef") or {}
            resource = ref.get("resource") or ev.get("requestURI", "?").split("?")[0]
            if ref.get("subresource"):
                resource += "/" + ref["subresource"]
            agent = (ev.get("userAgent") or "?").split("/")[0].split(" ")[0]
            rows.append((_epoch(ev.get("requestReceivedTimestamp")), (str(ev.get("verb")), resource, agent)))
        with self._lock:
            for sec, key in rows:
                self.by_second[sec][key] += 1
            self.lines += len(rows)

    def window(self, start: float, end: float) -> Counter[tuple[str, str, str]]:
        """Requests received in [start, end) (epoch seconds)."""
        out: Counter[tuple[str, str, str]] = Counter()
        with self._lock:
            for sec, counts in self.by_second.items():
                if start <= sec < end:
                    out.update(counts)
        return out

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _epoch(stamp: str | None) -> int:
    from datetime import datetime

    if not stamp:
        return int(time.time())
    return int(datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp())


def audit_policy(user: str) -> str:
    """Metadata-level events for one user's requests only, once each (at ResponseComplete)."""
    return json.dumps({
        "apiVersion": "audit.k8s.io/v1",
        "kind": "Policy",
        "omitStages": ["RequestReceived", "ResponseStarted"],
        "rules": [{"level": "Metadata", "users": [user]}, {"level": "None"}],
    })


# ---------------------------------------------------------------- Rollout watch


@dataclass
class Seen:
    """What the watch saw of one Rollout: (monotonic time, phase, stable, canary, weight) on change."""

    transitions: list[tuple[float, str | None, str | None, str | None, int | None]] = field(default_factory=list)

    def first(self, pred: Callable[[str | None, str | None, str | None, int | None], bool],
              after: float = 0.0) -> float | None:
        for t, phase, stable, canary, weight in self.transitions:
            if t >= after and pred(phase, stable, canary, weight):
                return t
        return None

    @property
    def last(self) -> tuple[str | None, str | None, str | None, int | None]:
        if not self.transitions:
            return (None, None, None, None)
        _, phase, stable, canary, weight = self.transitions[-1]
        return (phase, stable, canary, weight)


class _ListWatch:
    """One list-then-watch stream (resumed from the last resourceVersion, re-listed on 410), calling
    `_record` for every object seen."""

    def __init__(self, list_call: Callable[..., Any], args: tuple[Any, ...], selector: str, name: str) -> None:
        self.list_call, self.list_args, self.selector = list_call, args, selector
        self.lock = threading.Lock()
        self.events = 0
        self.relists = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _record(self, obj: Mapping[str, Any], deleted: bool = False) -> None:
        raise NotImplementedError

    def _list(self, **kwargs: Any) -> dict[str, Any]:
        rsp = self.list_call(*self.list_args, label_selector=self.selector, _preload_content=False, **kwargs)
        return dict(json.loads(rsp.data))

    def _run(self) -> None:
        from kubernetes import client, watch

        while not self._stop.is_set():
            try:
                listed = self._list(_request_timeout=60)
                for item in listed.get("items") or []:
                    self._record(item)
                rv = listed["metadata"]["resourceVersion"]
                self.relists += 1
                while not self._stop.is_set():
                    w = watch.Watch()  # type: ignore[no-untyped-call]
                    for ev in w.stream(  # type: ignore[no-untyped-call]
                                       self.list_call, *self.list_args, label_selector=self.selector,
                                       resource_version=rv, timeout_seconds=60, allow_watch_bookmarks=True,
                                       _request_timeout=90, deserialize=False):
                        if self._stop.is_set():
                            w.stop()  # type: ignore[no-untyped-call]
                            break
                        obj = ev["object"]
                        rv = (obj.get("metadata") or {}).get("resourceVersion", rv)
                        if ev["type"] == "BOOKMARK":
                            continue
                        self._record(obj, deleted=ev["type"] == "DELETED")
            except client.ApiException as exc:
                if exc.status != 410:
                    self._stop.wait(1)
            except Exception:
                self._stop.wait(1)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


class RolloutWatch(_ListWatch):
    """One cluster-wide watch of the benchmark's Rollouts (by label), re-listing when it must."""

    def __init__(self, api: Any, group: str, version: str, plural: str, selector: str) -> None:
        from kubernetes import client

        self.seen: dict[tuple[str, str], Seen] = defaultdict(Seen)
        super().__init__(client.CustomObjectsApi(api).list_cluster_custom_object, (group, version, plural),
                         selector, "rollout-watch")

    def _record(self, obj: Mapping[str, Any], deleted: bool = False) -> None:
        meta, st = obj.get("metadata") or {}, obj.get("status") or {}
        key = (str(meta.get("namespace")), str(meta.get("name")))
        row = ("Deleted", None, None, None) if deleted else (
            st.get("phase"), st.get("stableRevision"), st.get("canaryRevision"), st.get("canaryWeight"))
        with self.lock:
            seen = self.seen[key]
            if seen.last != row:
                seen.transitions.append((time.monotonic(), *row))
            self.events += 1

    def snapshot(self) -> dict[tuple[str, str], Seen]:
        with self.lock:
            return {k: Seen(list(v.transitions)) for k, v in self.seen.items()}


@dataclass(frozen=True)
class DeploymentRow:
    """One Deployment as a watch saw it: its pod template's revision and whether all its pods run it."""

    t: float  # monotonic
    revision: str | None
    replicas: int
    done: bool  # observed, every replica updated, ready and available (a rollout of it is complete)


class DeploymentWatch(_ListWatch):
    """Every Deployment the operator owns (by label), as (revision, replicas, done) on change: when
    Kubernetes had the pods a Rollout's step or promotion asked for, to split a lag between the
    operator and the pods."""

    def __init__(self, api: Any, selector: str, revision_label: str) -> None:
        from kubernetes import client

        self.revision_label = revision_label
        self.seen: dict[tuple[str, str], list[DeploymentRow]] = defaultdict(list)
        super().__init__(client.AppsV1Api(api).list_deployment_for_all_namespaces, (), selector, "deployment-watch")

    def _record(self, obj: Mapping[str, Any], deleted: bool = False) -> None:
        meta, spec, st = obj.get("metadata") or {}, obj.get("spec") or {}, obj.get("status") or {}
        key = (str(meta.get("namespace")), str(meta.get("name")))
        labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
        replicas = int(spec.get("replicas") or 0)
        done = (not deleted and int(st.get("observedGeneration") or 0) >= int(meta.get("generation") or 0)
                and all(int(st.get(f) or 0) == replicas for f in ("updatedReplicas", "readyReplicas",
                                                                   "availableReplicas", "replicas")))
        row = DeploymentRow(time.monotonic(), None if deleted else labels.get(self.revision_label),
                            0 if deleted else replicas, done)
        with self.lock:
            rows = self.seen[key]
            if not rows or (rows[-1].revision, rows[-1].replicas, rows[-1].done) != (row.revision, row.replicas,
                                                                                    row.done):
                rows.append(row)
            self.events += 1

    def first(self, key: tuple[str, str], pred: Callable[[DeploymentRow], bool], after: float) -> float | None:
        with self.lock:
            return next((r.t for r in self.seen.get(key, []) if r.t >= after and pred(r)), None)
