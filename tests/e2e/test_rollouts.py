"""End-to-end: the operator (a separate process) against the real sandbox and Prometheus."""

from __future__ import annotations

from datetime import datetime

import pytest

from controlled_friction import names
from controlled_friction.sandbox import cluster
from controlled_friction.sandbox.operator_proc import OperatorProcess

from .rollouts import (
    ERRORS,
    ORDERS,
    StepWatch,
    admin,
    apply_as,
    deployment,
    kubectl_as,
    revision,
    rollout,
    status,
    wait_phase,
)
from .waiting import wait_for

pytestmark = pytest.mark.e2e
QUICK = [{"setWeight": 20}, {"pause": {"duration": "4s"}}, {"setWeight": 50}, {"pause": {"duration": "4s"}}]


def _stable_v1(ns: str, service: bool = False, **kw) -> dict:
    kube = admin()
    v1 = rollout(ns, "shop/app:1", QUICK, **kw)
    if service:
        v1["spec"]["service"] = {"name": "checkout", "port": 80, "targetPort": 8080}
    apply_as("dave", v1)
    wait_phase(kube, ns, "Healthy", revision_=revision(v1))
    return v1


def test_non_critical_release_goes_to_100_without_approval(live_operator: OperatorProcess, namespace: str):
    kube = admin()
    _stable_v1(namespace, service=True, metrics=[ERRORS])
    svc = kube.core.read_namespaced_service("checkout", namespace)
    assert svc.spec.selector == {"app": "checkout"}  # both tracks behind one Service
    v2 = rollout(namespace, "shop/app:2", QUICK, metrics=[ERRORS])
    v2["spec"]["service"] = {"name": "checkout", "port": 80, "targetPort": 8080}
    apply_as("dave", v2)
    wait_for(lambda: status(kube, namespace).get("canaryWeight") == 20, 60, message="canary at 20%")
    canary = deployment(kube, namespace, "canary")
    assert canary["spec"]["template"]["metadata"]["labels"][names.LABEL_REVISION] == revision(v2)
    assert canary["spec"]["template"]["metadata"]["labels"][names.LABEL_TRACK] == "canary"
    st = wait_phase(kube, namespace, "Healthy", timeout=120, revision_=revision(v2))
    assert st["approvalsSummary"] == "-"
    assert st["history"][-1]["outcome"] == "Promoted"
    stable = deployment(kube, namespace, "stable")
    assert stable["spec"]["template"]["metadata"]["labels"][names.LABEL_REVISION] == revision(v2)
    wait_for(lambda: deployment(kube, namespace, "canary")["spec"]["replicas"] == 0, 30, message="canary at 0")


def test_critical_release_waits_for_two_senior_approvals(live_operator: OperatorProcess, namespace: str):
    kube = admin()
    _stable_v1(namespace, critical=True)
    v2 = rollout(namespace, "shop/app:2", QUICK, critical=True)
    rev = revision(v2)
    apply_as("dave", v2)
    st = wait_phase(kube, namespace, "AwaitingApproval", timeout=90)
    assert st["approvalsSummary"] == "0/2"
    code, out = kubectl_as("alice", "annotate", "rollout", "checkout", "-n", namespace, f"{names.ANN_APPROVE}={rev}")
    assert code == 0, out
    wait_for(lambda: status(kube, namespace).get("approvalsSummary") == "1/2", 30, message="1/2 approvals")
    assert status(kube, namespace)["phase"] == "AwaitingApproval"
    code, out = kubectl_as("bob", "annotate", "rollout", "checkout", "-n", namespace, f"{names.ANN_APPROVE}={rev}")
    assert code == 0, out
    st = wait_phase(kube, namespace, "Healthy", timeout=120, revision_=rev)
    assert sorted(st["history"][-1]["approvers"]) == ["alice", "bob"]


@pytest.mark.parametrize(
    ("fault", "metric"),
    [({"error-rate": "0.5"}, "errors"), ({"order-drop": "0.99"}, "orders")],
    ids=["5xx-spike", "order-drop"],
)
def test_bad_canary_is_rolled_back_and_stable_untouched(live_operator: OperatorProcess, namespace: str,
                                                        fault: dict, metric: str):
    kube = admin()
    steps = [{"setWeight": 20}, {"pause": {"duration": "2m"}}, {"setWeight": 50}]
    v1 = rollout(namespace, "shop/app:1", steps, metrics=[ERRORS, ORDERS])
    apply_as("dave", v1)
    wait_phase(kube, namespace, "Healthy", revision_=revision(v1))
    stable_before = deployment(kube, namespace, "stable")
    bad = rollout(namespace, "shop/app:2", steps, metrics=[ERRORS, ORDERS], sim=fault)
    apply_as("dave", bad)
    st = wait_phase(kube, namespace, "RolledBack", timeout=150)
    assert metric in st["message"], st["message"]
    assert st["abortedRevision"] == revision(bad)
    failing = [m for m in st["analysis"]["metrics"] if m["metric"] == metric]
    assert failing and failing[0]["last"]["verdict"] == "fail"
    wait_for(lambda: deployment(kube, namespace, "canary")["spec"]["replicas"] == 0, 30, message="canary at 0")
    stable_after = deployment(kube, namespace, "stable")
    assert stable_after["spec"]["template"] == stable_before["spec"]["template"]
    assert stable_after["spec"]["replicas"] == stable_before["spec"]["replicas"]
    assert stable_after["metadata"]["generation"] == stable_before["metadata"]["generation"]
    events = kube.list_events(namespace, "checkout")
    assert any(e["reason"] == "RollbackTriggered" for e in events)


def test_sigkill_during_bake_resumes_without_restarting_the_timer(live_operator: OperatorProcess, namespace: str):
    kube = admin()
    steps = [{"setWeight": 20}, {"pause": {"duration": "25s"}}, {"setWeight": 50}]
    _stable_v1(namespace)
    v2 = rollout(namespace, "shop/app:2", steps)
    apply_as("dave", v2)
    st = wait_for(lambda: (s := status(kube, namespace)).get("currentStepIndex") == 1 and s, 60,
                  message="bake started")
    bake_started = st["stepStartedAt"]
    live_operator.kill()  # SIGKILL: no cleanup, no goodbye
    assert not live_operator.alive()
    live_operator.start()
    live_operator.wait_webhook_ready()
    st = wait_for(lambda: (s := status(kube, namespace)).get("currentStepIndex", 0) >= 2 and s, 90,
                  message="bake finished after restart")
    history_started = datetime.fromisoformat(bake_started.replace("Z", "+00:00"))
    next_started = datetime.fromisoformat(st["stepStartedAt"].replace("Z", "+00:00"))
    assert (next_started - history_started).total_seconds() >= 25, "left the bake early"
    # The bake was timed from its original start, not from the restart.
    events = [e for e in kube.list_events(namespace, "checkout") if e["reason"] == "CanaryStarted"]
    assert len(events) == 1 and (events[0].get("count") or 1) == 1, "canary restarted after the crash"
    wait_phase(kube, namespace, "Healthy", timeout=90, revision_=revision(v2))


def test_prometheus_down_never_promotes_then_rolls_back(live_operator: OperatorProcess, namespace: str):
    kube = admin()
    steps = [{"setWeight": 20}, {"pause": {"duration": "20s"}}]
    _stable_v1(namespace, metrics=[ERRORS])
    v2 = rollout(namespace, "shop/app:2", steps, metrics=[ERRORS], errorLimit=5)
    apply_as("dave", v2)
    wait_for(lambda: status(kube, namespace).get("canaryWeight") == 20, 60, message="canary at 20%")
    cluster.stop_component("prometheus")
    try:
        def saw_error() -> bool:
            st = status(kube, namespace)
            assert st.get("phase") not in ("Healthy", "Promoting"), f"promoted without data: {st}"
            return any((m.get("last") or {}).get("verdict") == "error" for m in st["analysis"]["metrics"])

        wait_for(saw_error, 60, message="an error verdict")
        st = wait_phase(kube, namespace, "RolledBack", timeout=90)
        assert "Prometheus" in st["message"]
        assert st["stableRevision"] != revision(v2)
    finally:
        cluster.start_component("prometheus")


def _analysis_step_plan(metric: str, duration: str) -> list[dict]:
    return [{"setWeight": 20}, {"analysis": {"metrics": [metric], "duration": duration}}, {"setWeight": 50},
            {"pause": {"duration": "2s"}}]


def test_analysis_step_lasts_its_duration_and_needs_a_passing_measurement(live_operator: OperatorProcess,
                                                                          namespace: str):
    kube = admin()
    steps = _analysis_step_plan("errors", "8s")
    _stable_v1(namespace, metrics=[ERRORS])
    v2 = rollout(namespace, "shop/app:2", steps, metrics=[ERRORS])
    apply_as("dave", v2)
    watch = StepWatch(kube, namespace, "checkout", revision(v2))
    in_step = watch.until(lambda s: s.get("currentStepIndex") == 1, 60, "the analysis step")
    assert "analysing at 20%" in in_step["message"], in_step["message"]
    after = watch.until(lambda s: (s.get("currentStepIndex") or 0) >= 2 or s.get("phase") == "Healthy", 90,
                        "past the analysis step")
    st = wait_phase(kube, namespace, "Healthy", timeout=60, revision_=revision(v2))
    assert not watch.problems, watch.problems
    # The step lasted at least its duration, measured between the operator's own timestamps.
    started = datetime.fromisoformat(watch.starts[1].replace("Z", "+00:00"))
    ended = watch.starts.get(2) or after.get("stepStartedAt")
    assert ended is not None
    assert (datetime.fromisoformat(ended.replace("Z", "+00:00")) - started).total_seconds() >= 8
    assert st["history"][-1]["outcome"] == "Promoted"


def test_analysis_step_without_data_never_passes_and_rolls_back(live_operator: OperatorProcess, namespace: str):
    """A query that returns no series: the analysis step holds past its duration, then the
    inconclusive limit rolls the canary back; the stable version is never touched."""
    kube = admin()
    blind = {"name": "blind", "kind": "query", "max": 1,
             "query": 'sum(rate(no_such_metric_total{service="{{service}}"}[{{window}}]))'}
    steps = _analysis_step_plan("blind", "4s")
    v1 = _stable_v1(namespace, metrics=[blind], inconclusiveLimit=6)
    v2 = rollout(namespace, "shop/app:2", steps, metrics=[blind], inconclusiveLimit=6)
    apply_as("dave", v2)
    watch = StepWatch(kube, namespace, "checkout", revision(v2))
    held = watch.until(lambda s: s.get("currentStepIndex") == 1 and "holding" in (s.get("message") or ""), 60,
                       "the analysis step holding after its 4s")
    assert "blind is inconclusive" in held["message"], held["message"]
    st = wait_phase(kube, namespace, "RolledBack", timeout=90)
    watch()
    assert max(watch.starts) == 1, f"left the analysis step without data: {watch.starts}"
    assert "inconclusive 6x in a row" in st["message"], st["message"]
    stable = deployment(kube, namespace, "stable")
    assert stable["spec"]["template"]["metadata"]["labels"][names.LABEL_REVISION] == revision(v1)
    wait_for(lambda: deployment(kube, namespace, "canary")["spec"]["replicas"] == 0, 30, message="canary at 0")
