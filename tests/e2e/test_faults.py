"""Faults around the operator: Prometheus restarted, hung, empty or NaN; the API server restarted;
409 conflicts under concurrent writers. All against the real sandbox (a hung Prometheus is a real
TCP server on 127.0.0.1 that accepts and never answers)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from controlled_friction import names
from controlled_friction.sandbox import cluster
from controlled_friction.sandbox.cluster import SandboxInfo
from controlled_friction.sandbox.operator_proc import OperatorProcess

from .rollouts import (
    ERRORS,
    StepWatch,
    admin,
    apply_as,
    canary_steps,
    deployment,
    event_counts,
    metric_sum,
    operator_metrics,
    revision,
    rollout,
    status,
    user_kube,
    wait_phase,
)
from .waiting import wait_for

pytestmark = pytest.mark.e2e
VERDICTS = "controlled_friction_verdicts_total"
CONFLICTS = "controlled_friction_conflicts_total"
QUICK = canary_steps(20, "4s")


def _metric(name: str, **fields: Any) -> dict[str, Any]:
    return {**ERRORS, "name": name, **fields}


def _stable_v1(ns: str, name: str = "checkout", **kw: Any) -> dict[str, Any]:
    v1 = rollout(ns, "shop/app:1", QUICK, name=name, **kw)
    apply_as("dave", v1)
    wait_phase(admin(), ns, "Healthy", name=name, revision_=revision(v1))
    return v1


def _last(st: dict[str, Any], metric: str) -> dict[str, Any]:
    ms = [m for m in (st.get("analysis") or {}).get("metrics") or [] if m["metric"] == metric]
    return ms[0] if ms else {}


# ---------------------------------------------------------------- Prometheus


def test_prometheus_restart_mid_analysis_resumes_and_finishes(live_operator: OperatorProcess, namespace: str,
                                                              sandbox: SandboxInfo):
    kube, metric = admin(), "errors-restart"
    steps = canary_steps(20, "15s", 50, "4s")
    _stable_v1(namespace, metrics=[_metric(metric)])
    v2 = rollout(namespace, "shop/app:2", steps, metrics=[_metric(metric)], errorLimit=30)
    apply_as("dave", v2)
    watch = StepWatch(kube, namespace, "checkout", revision(v2))
    watch.until(lambda st: (_last(st, metric).get("last") or {}).get("verdict") == "pass", 90, "a first pass")
    errors_before = metric_sum(operator_metrics(sandbox.ports["operator_health"]), VERDICTS, metric=metric,
                               verdict="error")
    cluster.stop_component("prometheus")
    try:
        st = watch.until(lambda st: (_last(st, metric).get("last") or {}).get("verdict") == "error", 60,
                         "an error verdict while Prometheus is down")
        assert st["phase"] not in ("Healthy", "Promoting", "RolledBack"), st
        assert "Prometheus" in _last(st, metric)["last"]["message"]
    finally:
        cluster.start_component("prometheus")
    # Analysis resumes: a pass again, the error streak reset, and the rollout finishes.
    st = watch.until(lambda st: (_last(st, metric).get("last") or {}).get("verdict") == "pass"
                     or st.get("phase") == "Healthy", 90, "a pass after the restart")
    watch.until(lambda st: st.get("phase") == "Healthy" and st.get("stableRevision") == revision(v2), 120,
                "promotion after the restart")
    samples = operator_metrics(sandbox.ports["operator_health"])
    assert metric_sum(samples, VERDICTS, metric=metric, verdict="error") > errors_before
    assert metric_sum(samples, VERDICTS, metric=metric, verdict="pass") > 0
    assert not watch.problems, watch.problems
    assert event_counts(kube, namespace, "checkout", "CanaryStarted", revision(v2)) == 1
    history = status(kube, namespace)["history"]
    assert [h["outcome"] for h in history if h["revision"] == revision(v2)] == ["Promoted"]


class Blackhole:
    """A TCP server on 127.0.0.1 that accepts connections and never answers (a hung Prometheus)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.held.append(conn)  # read nothing, answer nothing, close nothing
            self.accepted += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for c in [*self.held, self.sock]:
            c.close()


@contextmanager
def blackhole() -> Iterator[Blackhole]:
    hole = Blackhole()
    try:
        yield hole
    finally:
        hole.close()


def test_hung_empty_and_nan_prometheus_answers_never_promote_and_roll_back(
    live_operator: OperatorProcess, namespace: str, sandbox: SandboxInfo
):
    """Three rollouts at once, each with one broken source of verdicts, a long bake, small limits."""
    kube = admin()
    steps = canary_steps(25, "60s")
    service_rate = 'sum(rate(http_requests_total{namespace="{{namespace}}",service="{{service}}"}[{{window}}]))'
    cases: dict[str, tuple[dict[str, Any], dict[str, Any], str, int, str]] = {
        # name: (metric, analysis overrides, expected verdict, limit, words in the rollback message)
        "hung": (_metric("prom-hung"), {"errorLimit": 2}, "error", 2, "Prometheus unavailable for 2"),
        "empty": ({"name": "empty-series", "kind": "query", "max": 1,
                   "query": 'sum(rate(no_such_metric_total{service="{{service}}"}[{{window}}]))'},
                  {"inconclusiveLimit": 3}, "inconclusive", 3, "inconclusive 3x in a row"),
        "nan": ({"name": "nan-value", "kind": "query", "max": 1, "query": f"({service_rate} * 0) / 0"},
                {"inconclusiveLimit": 3}, "inconclusive", 3, "inconclusive 3x in a row"),
    }
    with blackhole() as hole:
        v2s = {}
        for name, (metric, limits, _, _, _) in cases.items():
            if name == "hung":
                limits = {**limits, "prometheus": {"address": f"http://127.0.0.1:{hole.port}"}}
            _stable_v1(namespace, name=name, metrics=[metric], **limits)
            v2s[name] = rollout(namespace, "shop/app:2", steps, name=name, metrics=[metric], **limits)
        for v2 in v2s.values():
            apply_as("dave", v2)
        watches = {name: StepWatch(kube, namespace, name, revision(v2)) for name, v2 in v2s.items()}

        def all_rolled_back() -> bool:
            sts = {name: w() for name, w in watches.items()}
            for name, st in sts.items():
                assert not (st.get("phase") in ("Healthy", "Promoting") and st.get("canaryRevision")), (name, st)
                assert st.get("stableRevision") != revision(v2s[name]), f"{name} promoted: {st}"
            return all(st.get("phase") == "RolledBack" for st in sts.values())

        wait_for(all_rolled_back, 120, message="all three rolled back")
        assert hole.accepted >= 2, "the operator never tried the hung Prometheus"
    samples = operator_metrics(sandbox.ports["operator_health"])
    for name, (metric, _, verdict, limit, words) in cases.items():
        st = status(kube, namespace, name)
        assert words in st["message"], (name, st["message"])
        last = _last(st, metric["name"])["last"]
        assert last["verdict"] == verdict, (name, last)
        if name == "hung":
            assert "timed out" in last["message"] or "unreachable" in last["message"], last
        else:
            assert "no data" in last["message"], last
        assert st["abortedRevision"] == revision(v2s[name])
        assert metric_sum(samples, VERDICTS, metric=metric["name"], verdict=verdict) >= limit
        assert metric_sum(samples, VERDICTS, metric=metric["name"], verdict="pass") == 0
        assert deployment(kube, namespace, "stable", name)["spec"]["template"]["metadata"]["labels"][
            names.LABEL_REVISION] != revision(v2s[name])
        assert event_counts(kube, namespace, name, "RollbackTriggered") == 1
        def canary_at_zero(n: str = name) -> bool:
            return bool(deployment(kube, namespace, "canary", n)["spec"]["replicas"] == 0)

        wait_for(canary_at_zero, 30, message=f"{name} canary at 0")
        assert not watches[name].problems, watches[name].problems
    print(f"\nhung Prometheus: {hole.accepted} connections accepted and never answered")


# ---------------------------------------------------------------- the API server


def test_apiserver_restart_mid_bake_operator_reconnects_and_finishes(live_operator: OperatorProcess,
                                                                     namespace: str):
    kube = admin()
    steps = canary_steps(20, "20s", 50, "2s")
    _stable_v1(namespace)
    v2 = rollout(namespace, "shop/app:2", steps)
    apply_as("dave", v2)
    watch = StepWatch(kube, namespace, "checkout", revision(v2))
    st = watch.until(lambda st: st.get("currentStepIndex") == 1 and st.get("phase") == "Progressing", 60,
                     "the bake started")
    bake_started = st["stepStartedAt"]
    pid = live_operator.proc.pid if live_operator.proc else None
    t_down = time.monotonic()
    assert cluster.stop_component("kube-apiserver")
    try:
        wait_for(lambda: cluster.kubectl("get", "--raw", "/readyz", check=False, timeout=5).returncode != 0, 30,
                 message="the API server is down")
    finally:
        cluster.start_component("kube-apiserver")
    outage = time.monotonic() - t_down
    assert live_operator.alive(), f"operator died with the API server:\n{live_operator.tail()}"
    st = watch.until(lambda st: st.get("phase") == "Healthy" and st.get("stableRevision") == revision(v2), 180,
                     "promotion after the API server came back")
    assert watch.starts.get(1) == bake_started, "the bake timer restarted"
    assert not watch.problems, watch.problems
    assert live_operator.alive() and live_operator.proc is not None and live_operator.proc.pid == pid
    assert [h["outcome"] for h in st["history"] if h["revision"] == revision(v2)] == ["Promoted"]
    assert event_counts(kube, namespace, "checkout", "CanaryStarted", revision(v2)) == 1
    print(f"\nAPI server outage: {outage:.1f}s; the operator (pid {pid}) reconnected and promoted")


# ---------------------------------------------------------------- 409 conflicts


def test_conflicting_writers_are_replanned_not_overwritten(live_operator: OperatorProcess, namespace: str,
                                                          sandbox: SandboxInfo):
    """Another writer bumps the Rollout's resourceVersion many times a second while it progresses.
    The operator's status writes are conditional on the version it planned from, so each 409 must be
    followed by a re-read and a new plan: the rollout still walks every step once, in order, and
    the other writer's changes survive."""
    kube = admin()
    steps = canary_steps(20, "6s", 50, "6s")
    _stable_v1(namespace, metrics=[_metric("errors-409")])
    conflicts_before = metric_sum(operator_metrics(sandbox.ports["operator_health"]), CONFLICTS)
    hammer_kube = user_kube("admin")
    stop = threading.Event()
    written: list[int] = []

    def hammer() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            try:
                hammer_kube.patch_rollout_annotations(namespace, "checkout", {"e2e.test/hammer": str(n)})
                written.append(n)
            except Exception:
                pass  # the webhook or the API server was busy: just go on
            stop.wait(0.05)

    v2 = rollout(namespace, "shop/app:2", steps, metrics=[_metric("errors-409")])
    thread = threading.Thread(target=hammer, daemon=True)
    thread.start()
    try:
        apply_as("dave", v2)
        watch = StepWatch(kube, namespace, "checkout", revision(v2))
        st = watch.until(lambda st: st.get("phase") == "Healthy" and st.get("stableRevision") == revision(v2), 150,
                         "promotion under concurrent writers")
    finally:
        stop.set()
        thread.join(timeout=10)
    conflicts = metric_sum(operator_metrics(sandbox.ports["operator_health"]), CONFLICTS) - conflicts_before
    annotations = kube.get_rollout(namespace, "checkout")["metadata"]["annotations"]
    print(f"\nconcurrent writer: {len(written)} annotation patches; operator conflicts handled: {conflicts:.0f}")
    assert written, "the concurrent writer never got through"
    assert conflicts > 0, "no 409 was provoked: the test proves nothing"
    assert annotations["e2e.test/hammer"] == str(written[-1]), "the operator overwrote another writer's change"
    assert not watch.problems, watch.problems
    # Every step was walked in order (pause steps are seen, each once) and the canary ran once.
    assert {1, 3} <= set(watch.starts), watch.starts
    assert [h["outcome"] for h in st["history"] if h["revision"] == revision(v2)] == ["Promoted"]
    assert event_counts(kube, namespace, "checkout", "CanaryStarted", revision(v2)) == 1
    assert live_operator.alive()
