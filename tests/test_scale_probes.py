"""The scale benchmark's instruments on synthetic inputs (no sandbox): quantiles, counter deltas,
the audit-log tail and the Prometheus-queries plateau."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

from benchmarks import probes, scale
from tests.e2e.waiting import wait_for

INF = math.inf


def test_histogram_quantile_interpolates_like_prometheus() -> None:
    buckets = [(0.01, 0.0), (0.025, 10.0), (0.05, 50.0), (0.1, 90.0), (0.25, 100.0), (INF, 100.0)]
    assert probes.histogram_quantile(0.5, buckets) == 0.05
    assert probes.histogram_quantile(0.99, buckets) == 0.1 + 0.15 * 9 / 10
    assert probes.histogram_beyond(buckets) == 0.0
    # Half the observations above the largest finite bucket: p99 is reported as that bound.
    assert probes.histogram_quantile(0.99, [(1.0, 0.0), (10.0, 50.0), (INF, 100.0)]) == 10.0
    assert probes.histogram_beyond([(1.0, 0.0), (10.0, 50.0), (INF, 100.0)]) == 0.5
    assert probes.histogram_quantile(0.5, []) is None


def test_counter_delta_groups_and_survives_a_reset() -> None:
    before = {("req_total", (("code", "200"), ("verb", "GET"))): 10.0,
              ("req_total", (("code", "500"), ("verb", "GET"))): 5.0}
    after = {("req_total", (("code", "200"), ("verb", "GET"))): 25.0,
             ("req_total", (("code", "500"), ("verb", "GET"))): 2.0,  # restarted: counts from 0
             ("req_total", (("code", "200"), ("verb", "PATCH"))): 4.0}
    assert probes.delta(after, before, "req_total", group_by=("verb",)) == {("GET",): 17.0, ("PATCH",): 4.0}
    assert probes.delta(after, before, "req_total", {"code": "200"}) == {(): 19.0}


def test_audit_tail_counts_one_users_requests_by_verb(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    now = time.time()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime(now))

    def event(user: str, verb: str, resource: str, sub: str = "") -> str:
        ref = {"resource": resource, **({"subresource": sub} if sub else {})}
        return json.dumps({"user": {"username": user}, "verb": verb, "objectRef": ref,
                           "userAgent": "kopf/1.37 (python)", "requestReceivedTimestamp": stamp})

    op = "system:serviceaccount:controlled-friction:controlled-friction"
    log.write_text("\n".join([event(op, "get", "deployments"), event(op, "patch", "rollouts", "status"),
                              event("cf-admin", "get", "deployments"), "not json " + op]) + "\n")
    tail = probes.AuditTail(log, op)
    try:
        wait_for(lambda: tail.lines == 2 or None, timeout=10, message="audit lines read")
        counts = tail.window(now - 5, now + 5)
        assert counts == {("get", "deployments", "kopf"): 1, ("patch", "rollouts/status", "kopf"): 1}
        assert tail.errors == 1
    finally:
        tail.stop()
    assert json.loads(probes.audit_policy(op))["rules"][0]["users"] == [op]


def test_plateau_counts_queries_per_interval_while_canaries_are_in_analysis() -> None:
    rows = [{"t": 0.0, "queries": 0.0, "in_analysis": 0}, {"t": 2.0, "queries": 10.0, "in_analysis": 90},
            {"t": 14.0, "queries": 130.0, "in_analysis": 100}, {"t": 22.0, "queries": 210.0, "in_analysis": 95},
            {"t": 24.0, "queries": 215.0, "in_analysis": 5}]
    p = scale.plateau(rows)
    assert p["canaries_in_analysis_max"] == 100
    assert p["queries_per_10s_interval"] == 100.0  # 200 queries in 20 s


def test_cpu_window_sees_this_process_work() -> None:
    window = probes.CpuWindow({"me": os.getpid()})
    deadline = time.process_time() + 0.3
    while time.process_time() < deadline:
        pass
    cores = window.finish()["cores"]
    assert cores["me"] > 0.1 and cores["(whole machine)"] >= 0


def test_figures_and_table_from_a_partial_result() -> None:
    res = {"n": 100, "namespaces": 10, "loadavg_start": [1.0, 1.0, 1.0],
           "idle": {"cpu": {"cores": {"operator": 0.325}},
                    "operator_api": {"rps": 87.5, "by_verb_rps": {"get": 80.0}, "by_agent_rps": {}, "top_rps": {}}}}
    res["figures"] = scale.figures(res)
    assert res["figures"]["idle_operator_cpu_cores"] == 0.325
    text = "\n".join(scale.render_size(res, {"figures": {"idle_operator_cpu_cores": 0.65}}))
    assert "x1.00*" in text  # 0.325 cores for 100 Rollouts = the 0.65 for 200, per Rollout
    assert "x0.50" in text  # after/before
