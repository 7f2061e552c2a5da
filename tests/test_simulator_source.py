"""The simulator's watch-fed cluster source: the cache bookkeeping, and the reflector against a fake API.

No cluster: the fake API answers LISTs and WATCHes from a script. Every wait has a deadline.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from controlled_friction import names
from controlled_friction.sandbox import simulator
from controlled_friction.sandbox.simulator import ClusterSource, Reflector, SourceDown, WatchCache, WatchError
from controlled_friction.sandbox.traffic import ServiceKey
from tests.e2e.waiting import wait_for


def obj(name: str, rv: str, ns: str = "shop", **extra: Any) -> dict[str, Any]:
    return {"metadata": {"namespace": ns, "name": name, "resourceVersion": rv}, **extra}


def listing(rv: str, *items: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"resourceVersion": rv}, "items": list(items)}


def event(kind: str, o: dict[str, Any]) -> dict[str, Any]:
    return {"type": kind, "object": o}


GONE = event("ERROR", {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old resource version"})

# ---------------------------------------------------------------- WatchCache


def test_list_then_added_modified_deleted() -> None:
    cache = WatchCache()
    cache.replace(listing("10", obj("a", "5"), obj("b", "6")))
    assert set(cache.objects) == {("shop", "a"), ("shop", "b")} and cache.resource_version == "10"
    v = cache.version

    assert cache.apply(event("ADDED", obj("c", "11")))
    assert cache.apply(event("MODIFIED", obj("a", "12", status={"readyReplicas": 2})))
    assert cache.apply(event("DELETED", obj("b", "13")))
    assert set(cache.objects) == {("shop", "a"), ("shop", "c")}
    assert cache.objects[("shop", "a")]["status"] == {"readyReplicas": 2}
    assert cache.resource_version == "13" and cache.version == v + 3


def test_bookmark_moves_the_resource_version_only() -> None:
    cache = WatchCache()
    cache.replace(listing("10", obj("a", "5")))
    before, v = dict(cache.objects), cache.version
    assert cache.apply(event("BOOKMARK", {"kind": "Deployment", "metadata": {"resourceVersion": "99"}}))
    assert cache.resource_version == "99" and cache.objects == before and cache.version == v


def test_deleting_an_unknown_object_changes_nothing() -> None:
    cache = WatchCache()
    cache.replace(listing("10", obj("a", "5")))
    v = cache.version
    assert cache.apply(event("DELETED", obj("zzz", "11")))
    assert cache.version == v and cache.resource_version == "11"


def test_error_410_asks_for_a_relist_other_errors_raise() -> None:
    cache = WatchCache()
    cache.replace(listing("10", obj("a", "5")))
    assert cache.apply(GONE) is False
    assert ("shop", "a") in cache.objects  # kept until the relist replaces it
    with pytest.raises(WatchError, match="500"):
        cache.apply(event("ERROR", {"kind": "Status", "code": 500, "message": "boom"}))
    with pytest.raises(WatchError, match="unknown"):
        cache.apply({"type": "SOMETHING", "object": {}})


def test_a_relist_with_the_same_objects_is_no_change() -> None:
    cache = WatchCache()
    cache.replace(listing("10", obj("a", "5")))
    v = cache.version
    cache.replace(listing("20", obj("a", "5")))
    assert cache.version == v and cache.resource_version == "20"
    cache.replace(listing("21", obj("a", "6")))
    assert cache.version == v + 1


# ---------------------------------------------------------------- Reflector against a fake API


class Idle:
    """A watch stream with nothing more to say: blocks until `shutdown` (as urllib3's does)."""

    def __init__(self) -> None:
        self.closed = threading.Event()

    def __iter__(self) -> Iterator[bytes]:
        self.closed.wait(30)
        return iter(())

    def shutdown(self) -> None:
        self.closed.set()

    def close(self) -> None:
        self.closed.set()


class FakeAPI:
    """Answers the reflector's calls from a script: each entry is a LIST dict, a list of watch events,
    or an exception to raise; when the script is used up, watches stay idle and LISTs raise `then`."""

    def __init__(self, *script: Any, then: Exception | None = None) -> None:
        self.script = list(script)
        self.then = then or ConnectionError("script used up")
        self.calls: list[dict[str, Any]] = []
        self.connects = 0
        self.lock = threading.Lock()
        self.idle: Idle | None = None

    def push(self, *steps: Any) -> None:
        """More script; an idle watch ends (normally) so that the next call serves it."""
        with self.lock:
            self.script.extend(steps)
            if self.idle is not None:
                self.idle.shutdown()

    def connect(self) -> object:
        with self.lock:
            self.connects += 1
        return object()

    def lister(self, api: object) -> Callable[..., Any]:
        return self.call

    def call(self, **kwargs: Any) -> Any:
        with self.lock:
            self.calls.append(kwargs)
            step = self.script.pop(0) if self.script else None
        watch = bool(kwargs.get("watch"))
        if step is None:
            if watch:
                with self.lock:
                    self.idle = Idle()
                    return self.idle
            raise self.then
        if isinstance(step, Exception):
            raise step
        if watch:
            assert isinstance(step, list), f"a LIST was scripted, got a WATCH {kwargs}"
            return [json.dumps(e).encode() + b"\n" for e in step]
        assert isinstance(step, dict), f"a WATCH was scripted, got a LIST {kwargs}"

        class Resp:
            data = json.dumps(step).encode()

        return Resp()

    def kinds(self) -> list[str]:
        with self.lock:
            return ["watch" if c.get("watch") else "list" for c in self.calls]


class HTTPError(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


@pytest.fixture
def fast_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(simulator, "RETRY_AFTER", 0.01)


def run(api: FakeAPI, optional: bool = False) -> Reflector:
    r = Reflector("things", api.connect, api.lister, request_timeout=1.0, optional=optional)
    r.start()
    return r


def names_in(r: Reflector) -> set[str]:
    snap = r.snapshot(None)
    assert snap is not None
    return {o["metadata"]["name"] for o in snap[1]}


def test_reflector_lists_watches_resumes_and_relists_on_410(fast_retry: None) -> None:
    api = FakeAPI(
        listing("10", obj("a", "5")),
        [event("ADDED", obj("b", "11")), event("BOOKMARK", {"metadata": {"resourceVersion": "15"}})],
        [event("DELETED", obj("a", "16")), GONE],  # the watch after a normal end resumes at 15
        listing("30", obj("b", "11"), obj("c", "29")),
    )
    r = run(api)
    try:
        wait_for(lambda: len(api.calls) >= 5, timeout=10, message="list, watch, watch, relist, watch")
        assert api.kinds()[:5] == ["list", "watch", "watch", "list", "watch"]
        assert [c.get("resource_version") for c in api.calls[1:5]] == ["10", "15", None, "30"]
        watch = api.calls[1]
        assert watch["allow_watch_bookmarks"] is True and watch["timeout_seconds"] == simulator.WATCH_TIMEOUT
        assert watch["_request_timeout"][1] > watch["timeout_seconds"]  # the client outwaits the server
        assert names_in(r) == {"b", "c"}
        r.check(time.monotonic())  # healthy throughout: a 410 is no failure
        assert api.connects == 1
    finally:
        r.stop()


def test_reflector_relists_after_an_http_410_on_the_watch(fast_retry: None) -> None:
    api = FakeAPI(listing("10", obj("a", "5")), HTTPError(410), listing("20", obj("a", "5"), obj("b", "19")))
    r = run(api)
    try:
        wait_for(lambda: names_in(r) == {"a", "b"}, timeout=10, message="relisted")
        assert api.connects == 1
    finally:
        r.stop()


def test_reflector_is_down_until_it_lists_and_reconnects_after_failures(fast_retry: None) -> None:
    api = FakeAPI(ConnectionError("refused"), ConnectionError("refused"), listing("10", obj("a", "5")))
    r = run(api)
    try:
        wait_for(lambda: names_in(r) == {"a"}, timeout=10, message="listed after two failures")
        assert api.connects == 3  # a new client (kubeconfig re-read) after each failure
        r.check(time.monotonic())
    finally:
        r.stop()


def test_reflector_reports_down_only_after_failing_for_a_while(fast_retry: None) -> None:
    api = FakeAPI(ConnectionError("refused"))
    r = run(api)
    try:
        wait_for(r.attempted.is_set, timeout=10, message="first attempt")
        with pytest.raises(SourceDown, match=r"no successful LIST yet.*refused"):
            r.check(time.monotonic())
    finally:
        r.stop()

    # The resumed watch fails, then every relist does.
    api = FakeAPI(listing("10", obj("a", "5")), [event("ADDED", obj("b", "11"))], ConnectionError("reset"))
    r = run(api)
    try:
        wait_for(lambda: api.kinds().count("list") >= 3, timeout=10, message="relists failing")
        now = time.monotonic()
        r.check(now)  # a short disconnection is no outage
        with pytest.raises(SourceDown, match="failing for over"):
            r.check(now + simulator.DOWN_AFTER + 1)
        assert names_in(r) == {"a", "b"}  # the last objects are kept
    finally:
        r.stop()


def test_an_absent_optional_resource_is_empty_and_healthy(fast_retry: None) -> None:
    api = FakeAPI(listing("10", obj("a", "5")), [GONE], then=HTTPError(404))
    r = run(api, optional=True)
    try:
        wait_for(lambda: names_in(r) == set(), timeout=10, message="emptied by the 404")
        r.check(time.monotonic() + 60)
    finally:
        r.stop()


def test_stop_ends_an_idle_watch_promptly() -> None:
    api = FakeAPI(listing("10", obj("a", "5")))
    r = run(api)
    wait_for(lambda: api.kinds() == ["list", "watch"], timeout=10, message="watching")
    r.stop()
    assert not r._thread.is_alive()


# ---------------------------------------------------------------- ClusterSource on fake reflectors


def deployment(name: str, track: str, ready: int, rv: str) -> dict[str, Any]:
    """A Deployment of Rollout `web` in namespace shop."""
    return {
        "metadata": {"namespace": "shop", "name": name, "resourceVersion": rv, "labels": {names.LABEL_ROLLOUT: "web"}},
        "spec": {"template": {"metadata": {"labels": {names.LABEL_TRACK: track, names.LABEL_REVISION: f"{track}1"}}}},
        "status": {"readyReplicas": ready},
    }


def test_refresh_rebuilds_only_when_a_cache_changed(fast_retry: None, monkeypatch: pytest.MonkeyPatch) -> None:
    stable, canary = deployment("web", "stable", 3, "5"), deployment("web-canary", "canary", 0, "6")
    deployments = FakeAPI(listing("10", stable, canary))
    rollouts = FakeAPI(listing("10", obj("web", "7", spec={"analysis": {"service": "checkout"}})))
    builds: list[int] = []
    real = simulator.topology_from_objects

    def counting(*args: Any) -> Any:
        builds.append(1)
        return real(*args)

    monkeypatch.setattr(simulator, "topology_from_objects", counting)
    source = ClusterSource("unused", request_timeout=1.0)
    source._reflectors = [
        Reflector("deployments", deployments.connect, deployments.lister, 1.0),
        Reflector("rollouts", rollouts.connect, rollouts.lister, 1.0, optional=True),
    ]
    for r in source._reflectors:
        r.start()
    try:
        wait_for(lambda: all(r.attempted.is_set() for r in source._reflectors), timeout=10, message="listed")
        source.refresh()
        ((key, state),) = source.services().items()
        assert key == ServiceKey("shop", "checkout")
        assert [(t.track, t.ready) for t in state.tracks] == [("canary", 0), ("stable", 3)]
        source.refresh()
        source.refresh()
        assert len(builds) == 1  # nothing changed: no rebuild

        # The canary's pod gets ready: one MODIFIED event, one rebuild.
        deployments.push([event("MODIFIED", deployment("web-canary", "canary", 1, "12"))])

        def canary_ready() -> bool:
            source.refresh()
            tracks = source.services()[ServiceKey("shop", "checkout")].tracks
            return [(t.track, t.ready) for t in tracks] == [("canary", 1), ("stable", 3)]

        wait_for(canary_ready, timeout=10, message="canary ready in the topology")
        assert len(builds) == 2
        source.refresh()
        assert len(builds) == 2
    finally:
        source.stop()
    with pytest.raises(SourceDown, match="stopped"):
        source.refresh()
