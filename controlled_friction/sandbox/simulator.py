"""The sandbox's traffic simulator: the contract's app metrics for every Rollout in the cluster.

    python -m controlled_friction.sandbox.simulator --kubeconfig PATH --listen 127.0.0.1:PORT [--rate 50] [--seed N]

A source says which tracks each service has (the cluster's Deployments and Rollouts, kept current
by LIST then WATCH as an informer does, or tracks set in code), a tick thread advances the pure
`traffic.TrafficModel` every 0.25 s, and an HTTP server exposes `/metrics` (Prometheus text
format), `/lost` (lost orders per service, JSON) and `/healthz`.
Benchmarks and tests use `serve(model, StaticSource(), "127.0.0.1:0")` without a cluster.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import signal
import socketserver
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from controlled_friction import names
from controlled_friction.sandbox.exposition import CONTENT_TYPE, Exposition
from controlled_friction.sandbox.routes import list_routing_objects, route_name, route_splits
from controlled_friction.sandbox.traffic import (
    RouteSplit,
    ServiceKey,
    ServiceState,
    Topology,
    Track,
    TrafficConfig,
    TrafficModel,
    lost_report,
    parse_fault_profile,
)

log = logging.getLogger(__name__)

# ---------------------------------------------------------------- sources


class Source(Protocol):
    """Where the topology comes from. `refresh` may block and raise; `services` must not.

    A source with background threads also has `stop()`, which `SimulatorHandle.stop` calls.
    """

    def refresh(self) -> None: ...

    def services(self) -> Topology: ...


class StaticSource:
    """Tracks set in code, changeable at any time (the next tick serves the new topology)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._services: dict[ServiceKey, ServiceState] = {}

    def set_tracks(self, namespace: str, service: str, tracks: Sequence[Track], rate: float | None = None) -> None:
        """Replace the service's tracks; `rate` (requests/s) overrides the model's default."""
        with self._lock:
            self._services[ServiceKey(namespace, service)] = ServiceState(tuple(tracks), rate)

    def remove(self, namespace: str, service: str) -> None:
        with self._lock:
            self._services.pop(ServiceKey(namespace, service), None)

    def refresh(self) -> None:
        pass

    def services(self) -> Topology:
        with self._lock:
            return dict(self._services)


def topology_from_objects(
    deployments: Iterable[Mapping[str, Any]],
    rollouts: Iterable[Mapping[str, Any]],
    services: Iterable[Mapping[str, Any]] = (),
    routes: Iterable[Mapping[str, Any]] = (),
) -> tuple[dict[ServiceKey, ServiceState], list[str]]:
    """Group Deployments (API JSON) by Rollout into services; also returns what was ignored and why.

    The `service` label is the Rollout's `spec.analysis.service`, else the Rollout's name. A Rollout
    behind an HTTPRoute is split by the route's weights (`routes.route_splits`), else by ready pods.
    """
    rollouts = list(rollouts)
    splits, problems = route_splits(rollouts, services, routes)
    service_of: dict[tuple[str, str], str] = {}
    for r in rollouts:
        meta = r.get("metadata") or {}
        svc = ((r.get("spec") or {}).get("analysis") or {}).get("service")
        if svc:
            service_of[(meta.get("namespace", ""), meta.get("name", ""))] = str(svc)

    grouped: dict[ServiceKey, list[Track]] = {}
    route_of: dict[ServiceKey, RouteSplit] = {}
    for d in deployments:
        meta = d.get("metadata") or {}
        ns, name = str(meta.get("namespace", "")), str(meta.get("name", ""))
        rollout = (meta.get("labels") or {}).get(names.LABEL_ROLLOUT)
        template_meta = ((d.get("spec") or {}).get("template") or {}).get("metadata") or {}
        labels = template_meta.get("labels") or {}
        track, revision = labels.get(names.LABEL_TRACK), labels.get(names.LABEL_REVISION)
        if not rollout or not track or not revision:
            problems.append(
                f"deployment {ns}/{name}: needs label {names.LABEL_ROLLOUT} and pod template labels "
                f"{names.LABEL_TRACK}, {names.LABEL_REVISION}; ignored"
            )
            continue
        parsed = parse_fault_profile(template_meta.get("annotations"))
        problems.extend(f"deployment {ns}/{name}: {p}" for p in parsed.problems)
        ready = int((d.get("status") or {}).get("readyReplicas") or 0)
        key = ServiceKey(ns, service_of.get((ns, rollout), rollout))
        grouped.setdefault(key, []).append(Track(str(track), str(revision), ready, parsed.profile))
        if (ns, rollout) in splits:
            route_of[key] = splits[(ns, rollout)]
    topology = {
        k: ServiceState(tuple(sorted(v, key=lambda t: (t.track, t.revision))), route=route_of.get(k))
        for k, v in grouped.items()
    }
    return topology, problems


Key = tuple[str, str]  # namespace, name
Lister = Callable[[Any], Callable[..., Any]]  # ApiClient -> its list call for one resource

WATCH_TIMEOUT = 60  # seconds a WATCH lasts server-side before it is resumed
RETRY_AFTER = 1.0  # seconds between attempts while the API server fails
DOWN_AFTER = 3.0  # seconds of failing list/watch before the source reports itself down


class SourceDown(RuntimeError):
    """The cached objects may be stale: no LIST yet, or list/watch failing for a while."""


class WatchError(RuntimeError):
    """A watch event the cache cannot apply (an ERROR other than 410 Gone, an unknown type)."""


def _key(obj: Mapping[str, Any]) -> Key:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace", "")), str(meta.get("name", ""))


class WatchCache:
    """One resource's objects as a LIST and the WATCH events after it leave them; no I/O.

    `version` counts changes, so a reader rebuilds only when it moved; `resource_version` is where
    the next watch resumes.
    """

    def __init__(self) -> None:
        self.objects: dict[Key, dict[str, Any]] = {}
        self.resource_version: str | None = None
        self.version = 0

    def replace(self, listing: Mapping[str, Any]) -> None:
        """Take a LIST answer (`metadata.resourceVersion`, `items`) as the whole truth."""
        objects = {_key(o): o for o in listing.get("items") or []}
        if objects != self.objects:  # a relist after 410 usually finds nothing new
            self.objects = objects
            self.version += 1
        rv = (listing.get("metadata") or {}).get("resourceVersion")
        self.resource_version = str(rv) if rv else None

    def apply(self, event: Mapping[str, Any]) -> bool:
        """Apply one watch event; False when the history is gone (410) and a LIST must start over."""
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == 410:
                return False
            raise WatchError(f"watch error {obj.get('code')}: {obj.get('message')}")
        if kind in ("ADDED", "MODIFIED"):
            self.objects[_key(obj)] = obj
            self.version += 1
        elif kind == "DELETED":
            if self.objects.pop(_key(obj), None) is not None:
                self.version += 1
        elif kind != "BOOKMARK":  # a bookmark only moves the resourceVersion
            raise WatchError(f"unknown watch event type {kind!r}")
        rv = (obj.get("metadata") or {}).get("resourceVersion")
        if rv:
            self.resource_version = str(rv)
        return True


def _describe(exc: BaseException | None) -> str:
    return "" if exc is None else f": {type(exc).__name__}: {exc}"


class Reflector:
    """LISTs then WATCHes one resource in a daemon thread, as a client-go reflector does.

    Resumes from the last resourceVersion when a watch ends, relists on 410 Gone, and after any
    other failure waits `RETRY_AFTER`, makes a new client (`connect` re-reads the kubeconfig: the
    sandbox may come back with new ports or certs) and relists. With `optional`, a 403/404 on the
    LIST (no CRD yet, no right to read it) counts as an empty, healthy resource, retried as above.
    """

    def __init__(
        self, name: str, connect: Callable[[], Any], lister: Lister, request_timeout: float, optional: bool = False
    ) -> None:
        self.name, self._connect, self._lister = name, connect, lister
        self.request_timeout, self.optional = request_timeout, optional
        self.cache = WatchCache()
        self.attempted = threading.Event()  # the first LIST succeeded or failed
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._synced = False
        self._error: BaseException | None = None
        self._down_since: float | None = None
        self._absent_reported = False
        self._response: Any = None  # the open watch, shut down by stop() to unblock its read
        self._thread = threading.Thread(target=self._run, name=f"sim-watch-{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        resp = self._response
        if resp is not None and hasattr(resp, "shutdown"):
            with contextlib.suppress(Exception):  # already closed: the thread is not blocked on it
                resp.shutdown()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def check(self, now: float) -> None:
        """Raise `SourceDown` unless the cache is current."""
        with self._lock:
            if not self._synced:
                raise SourceDown(f"{self.name}: no successful LIST yet{_describe(self._error)}")
            if self._down_since is not None and now - self._down_since > DOWN_AFTER:
                raise SourceDown(f"{self.name}: list/watch failing for over {DOWN_AFTER:.0f}s{_describe(self._error)}")

    def snapshot(self, since: int | None) -> tuple[int, list[dict[str, Any]]] | None:
        """The cache's version and objects, or None when its version is still `since`."""
        with self._lock:
            if self.cache.version == since:
                return None
            return self.cache.version, list(self.cache.objects.values())

    def _run(self) -> None:
        api: Any = None
        relist = True
        while not self._stop.is_set():
            try:
                if api is None:
                    api = self._connect()
                if relist:
                    if not self._list(api):
                        self._stop.wait(RETRY_AFTER)
                        continue
                    relist = False
                relist = not self._watch(api)
            except Exception as exc:
                if getattr(exc, "status", None) == 410:  # HTTP 410 on opening the watch: history gone
                    relist = True
                    continue
                log.debug("%s: list/watch failed: %s: %s", self.name, type(exc).__name__, exc)
                with self._lock:
                    self._error = exc
                    if self._down_since is None:
                        self._down_since = time.monotonic()
                self.attempted.set()
                api, relist = None, True
                self._stop.wait(RETRY_AFTER)

    def _list(self, api: Any) -> bool:
        """LIST into the cache; False when an optional resource is absent (then the cache is empty)."""
        listing: dict[str, Any] = {}
        try:
            resp = self._lister(api)(_preload_content=False, _request_timeout=self.request_timeout)
        except Exception as exc:
            status = getattr(exc, "status", None)
            if not self.optional or status not in (403, 404):
                raise
            if not self._absent_reported:
                log.warning("cannot list %s (HTTP %s): none assumed, retrying", self.name, status)
                self._absent_reported = True
            present = False
        else:
            listing, present = json.loads(resp.data), True
            self._absent_reported = False
        with self._lock:
            self.cache.replace(listing)
            self._synced, self._error, self._down_since = True, None, None
        self.attempted.set()
        return present

    def _watch(self, api: Any) -> bool:
        """WATCH from the cache's resourceVersion until the server ends it; False when a relist is due."""
        resp = self._lister(api)(
            watch=True,
            resource_version=self.cache.resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=WATCH_TIMEOUT,
            _preload_content=False,
            _request_timeout=(self.request_timeout, WATCH_TIMEOUT + 10),  # read: longer than the server's end
        )
        self._response = resp
        with self._lock:
            self._error, self._down_since = None, None
        try:
            if self._stop.is_set():  # stop() ran before `_response` was set: it could not shut it down
                return True
            for line in resp:  # one JSON event per line
                if self._stop.is_set():
                    return True
                if not line.strip():
                    continue
                event = json.loads(line)
                with self._lock:
                    if not self.cache.apply(event):
                        return False
            return True
        finally:
            self._response = None
            if hasattr(resp, "close"):
                resp.close()  # not release_conn: an abandoned stream must not go back to the pool


class ClusterSource:
    """The Deployments labelled `controlled-friction.io/rollout` and their Rollouts, watch-fed.

    One `Reflector` per resource keeps a cache current (LIST once, then WATCH); `refresh` rebuilds
    the topology only when a cache changed, and raises `SourceDown` while a cache may be stale. The
    Services and HTTPRoutes of routed Rollouts (few) are still LISTed at each refresh. A failed
    refresh keeps the last topology: the fake pods keep serving while the API server is away, as
    real ones would.
    """

    def __init__(self, kubeconfig: str, request_timeout: float = 5.0) -> None:
        self.kubeconfig = kubeconfig
        self.request_timeout = request_timeout
        self._api: Any = None  # for the routing objects
        self._lock = threading.Lock()
        self._topology: dict[ServiceKey, ServiceState] = {}
        self._reported: set[str] = set()
        self._reflectors: list[Reflector] = []
        self._stopped = False
        self._life = threading.Lock()  # so that stop() cannot miss reflectors being started
        self._versions: list[int | None] = [None, None]
        self._objects: list[list[dict[str, Any]]] = [[], []]  # deployments, rollouts
        self._routed = False
        self._routing: tuple[list[Any], list[Any]] = ([], [])

    def _connect(self) -> Any:
        from kubernetes import config  # slow import; only the cluster process needs it

        return config.new_client_from_config(config_file=self.kubeconfig)  # type: ignore[no-untyped-call]

    def _client(self) -> Any:
        if self._api is None:
            self._api = self._connect()
        return self._api

    def _list(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        resp = call(*args, _preload_content=False, _request_timeout=self.request_timeout, **kwargs)
        return list(json.loads(resp.data).get("items") or [])

    def _start(self) -> None:
        from kubernetes import client

        def deployments(api: Any) -> Callable[..., Any]:
            return functools.partial(
                client.AppsV1Api(api).list_deployment_for_all_namespaces, label_selector=names.LABEL_ROLLOUT
            )

        def rollouts(api: Any) -> Callable[..., Any]:
            return functools.partial(
                client.CustomObjectsApi(api).list_cluster_custom_object,
                names.GROUP,
                names.VERSION,
                names.ROLLOUT_PLURAL,
            )

        with self._life:
            if self._stopped:
                return
            self._reflectors = [
                Reflector("deployments", self._connect, deployments, self.request_timeout),
                Reflector("rollouts", self._connect, rollouts, self.request_timeout, optional=True),
            ]
            for r in self._reflectors:
                r.start()
        deadline = time.monotonic() + self.request_timeout  # the first LISTs, so the first refresh can succeed
        for r in self._reflectors:
            r.attempted.wait(max(0.0, deadline - time.monotonic()))

    def refresh(self) -> None:
        if not self._reflectors:
            self._start()
        if self._stopped:
            raise SourceDown("stopped")
        now = time.monotonic()
        for r in self._reflectors:
            r.check(now)
        changed = False
        for i, r in enumerate(self._reflectors):
            snap = r.snapshot(self._versions[i])
            if snap is not None:
                self._versions[i], self._objects[i] = snap
                changed = True
                if i == 1:
                    self._routed = any(map(route_name, self._objects[1]))
        routing: tuple[list[Any], list[Any]] = ([], [])
        if self._routed:
            try:
                routing = list_routing_objects(self._list, self._client())
            except Exception:
                self._api = None  # re-read the kubeconfig next time: the sandbox may have new certs or ports
                raise
        if routing != self._routing:
            self._routing, changed = routing, True
        if changed:
            self._rebuild()

    def _rebuild(self) -> None:
        topology, problems = topology_from_objects(self._objects[0], self._objects[1], *self._routing)
        for p in problems:
            if p not in self._reported:  # say it once while it lasts, not at every change
                log.warning("%s", p)
        self._reported = set(problems)
        with self._lock:
            self._topology = topology

    def stop(self) -> None:
        with self._life:
            self._stopped = True
        for r in self._reflectors:
            r.stop()

    def services(self) -> Topology:
        with self._lock:
            return dict(self._topology)


# ---------------------------------------------------------------- exposition


@dataclass
class SourceStatus:
    ok: bool = False
    error: str | None = None
    failures: int = 0  # consecutive failed refreshes
    refreshed_at: float | None = None  # monotonic


class ModelCollector:
    """Renders the model's current counters at each scrape (`exposition.Exposition`: label strings are
    built once per series, so 1,000 services render in a fraction of the 1 s scrape timeout)."""

    def __init__(self, model: TrafficModel, status: SourceStatus | None = None, *, latency: bool = True) -> None:
        self.model = model
        self.status = status
        self._exposition = Exposition(latency=latency)
        self._lock = threading.Lock()  # concurrent scrapes share the prefix cache

    def render(self) -> bytes:
        snap = self.model.snapshot()
        with self._lock:
            return self._exposition.render(snap, None if self.status is None else self.status.ok)


def parse_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"--listen wants HOST:PORT, got {listen!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per scrape is noise


WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class SimulatorHandle:
    """A running simulator (tick thread, refresh thread, HTTP server). Stop it with `stop()`."""

    def __init__(
        self,
        model: TrafficModel,
        source: Source,
        listen: str,
        tick_interval: float,
        refresh_interval: float,
        latency: bool = True,
    ) -> None:
        self.model, self.source = model, source
        self.tick_interval, self.refresh_interval = tick_interval, refresh_interval
        self.status = SourceStatus()
        self.last_tick: float | None = None
        self._stop = threading.Event()
        self._collector = ModelCollector(model, self.status, latency=latency)
        host, port = parse_listen(listen)
        self._server = make_server(host, port, self._app, server_class=_Server, handler_class=_QuietHandler)
        bound_port = self._server.server_address[1]
        self.target = f"{host}:{bound_port}"
        self.url = f"http://{self.target}"
        self._threads = [
            threading.Thread(target=self._refresh_loop, name="sim-refresh", daemon=True),
            threading.Thread(target=self._tick_loop, name="sim-tick", daemon=True),
            threading.Thread(target=self._server.serve_forever, name="sim-http", daemon=True),
        ]
        for t in self._threads:
            t.start()

    # ------------------------------------------------------------ loops

    def _refresh_loop(self) -> None:
        last_logged: tuple[str | None, float] = (None, 0.0)
        while True:
            try:
                self.source.refresh()
                if not self.status.ok and self.status.error is not None:
                    log.info("topology source is back")
                self.status.ok, self.status.error, self.status.failures = True, None, 0
                self.status.refreshed_at = time.monotonic()
            except Exception as exc:
                self.status.ok, self.status.error = False, f"{type(exc).__name__}: {exc}"
                self.status.failures += 1
                now = time.monotonic()
                # Log a new kind of failure at once, a persisting one every 30 s.
                if last_logged[0] != type(exc).__name__ or now - last_logged[1] > 30:
                    log.warning("topology refresh failed (keeping the last topology): %s", self.status.error)
                    last_logged = (type(exc).__name__, now)
            if self._stop.wait(self.refresh_interval):
                return

    def _tick_loop(self) -> None:
        last = time.monotonic()
        while not self._stop.wait(self.tick_interval):
            now = time.monotonic()
            try:
                self.model.tick(self.source.services(), now - last)
            except Exception:
                log.exception("tick failed")
            last = self.last_tick = now

    # ------------------------------------------------------------ HTTP

    def _json(self, start_response: Callable[..., Any], status: str, body: object) -> list[bytes]:
        data = json.dumps(body).encode()
        start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
        return [data]

    def health(self) -> tuple[bool, dict[str, Any]]:
        age = None if self.last_tick is None else time.monotonic() - self.last_tick
        fresh = age is None or age < max(5.0, 10 * self.tick_interval)
        ok = fresh and not self._stop.is_set()
        return ok, {
            "status": "ok" if ok else "stalled",
            "lastTickAgeSeconds": age,
            "source": {"ok": self.status.ok, "error": self.status.error, "failures": self.status.failures},
        }

    def _app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or "/"
        if path == "/healthz":
            ok, body = self.health()
            return self._json(start_response, "200 OK" if ok else "503 Service Unavailable", body)
        if path == "/lost":
            return self._json(start_response, "200 OK", lost_report(self.model.lost_orders()))
        if path in ("/", "/metrics"):
            data = self._collector.render()
            start_response("200 OK", [("Content-Type", CONTENT_TYPE), ("Content-Length", str(len(data)))])
            return [data]
        return self._json(start_response, "404 Not Found", {"error": f"no such path {path}"})

    # ------------------------------------------------------------ lifecycle

    def stop(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        stop_source = getattr(self.source, "stop", None)
        if callable(stop_source):
            stop_source()
        self._server.shutdown()
        self._server.server_close()
        for t in self._threads:
            t.join(timeout=10)

    def __enter__(self) -> SimulatorHandle:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def serve(
    model: TrafficModel,
    source: Source,
    listen: str = "127.0.0.1:0",
    *,
    tick_interval: float = 0.25,
    refresh_interval: float = 1.0,
    latency: bool = True,
) -> SimulatorHandle:
    """Run the simulator in background threads; port 0 picks a free port (see `handle.target`).
    `latency=False` leaves the latency histogram out of /metrics (see `exposition`)."""
    return SimulatorHandle(model, source, listen, tick_interval, refresh_interval, latency)


# ---------------------------------------------------------------- process


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m " + __spec__.name if __spec__ else None, description=__doc__)
    parser.add_argument("--kubeconfig", required=True, help="kubeconfig of the cluster to read Deployments from")
    parser.add_argument("--listen", default="127.0.0.1:9464", help="HOST:PORT of /metrics, /lost and /healthz")
    parser.add_argument("--rate", type=float, default=TrafficConfig.rate, help="requests per second per service")
    parser.add_argument("--seed", type=int, default=None, help="RNG seed (default: random)")
    parser.add_argument("--tick", type=float, default=0.25, help="seconds between model ticks")
    parser.add_argument("--refresh", type=float, default=1.0, help="seconds between topology updates from the watches")
    parser.add_argument("--no-latency", action="store_true",
                        help="leave the latency histogram out of /metrics (a third of the samples; for scale runs)")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)

    from controlled_friction import logs

    logs.configure(verbose=args.verbose)
    model = TrafficModel(TrafficConfig(rate=args.rate), seed=args.seed)
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    handle = serve(
        model,
        ClusterSource(args.kubeconfig),
        args.listen,
        tick_interval=args.tick,
        refresh_interval=args.refresh,
        latency=not args.no_latency,
    )
    log.info("traffic simulator listening on %s (rate %.1f req/s per service)", handle.url, args.rate)
    try:
        stopping.wait()
    finally:
        handle.stop()
    log.info("traffic simulator stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
