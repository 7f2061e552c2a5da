"""Analysis modes through the sandbox: a shadow metric (`mode: observe`) never rolls back, and the
post-promotion watch rolls stable back to the previous revision when a promoted revision starts
failing (the simulator's `fault-after`)."""

from __future__ import annotations

from typing import Any

import pytest

from controlled_friction.sandbox.cluster import SandboxInfo
from controlled_friction.sandbox.operator_proc import OperatorProcess

from .rollouts import (
    ERRORS,
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
    wait_phase,
)
from .waiting import wait_for

pytestmark = pytest.mark.e2e
VERDICTS = "controlled_friction_verdicts_total"
ROLLBACKS = "controlled_friction_rollbacks_total"


def _metric(st: dict[str, Any], name: str) -> dict[str, Any]:
    found = [m for m in (st.get("analysis") or {}).get("metrics") or [] if m["metric"] == name]
    return found[0] if found else {}


def test_a_shadow_metric_is_measured_but_never_rolls_back(live_operator: OperatorProcess, namespace: str,
                                                          sandbox: SandboxInfo) -> None:
    kube = admin()
    shadow = {**ERRORS, "name": "errors-shadow", "mode": "observe"}
    v1 = rollout(namespace, "shop/app:1", canary_steps(20, "8s"), metrics=[shadow])
    apply_as("dave", v1)
    wait_phase(kube, namespace, "Healthy", revision_=revision(v1))
    before = metric_sum(operator_metrics(sandbox.ports["operator_health"]), VERDICTS, metric="errors-shadow",
                        verdict="fail", mode="observe")
    v2 = rollout(namespace, "shop/app:2", canary_steps(20, "8s"), metrics=[shadow], sim={"error-rate": "1.0"})
    apply_as("dave", v2)
    st = wait_phase(kube, namespace, "Healthy", timeout=180, revision_=revision(v2))
    ms = _metric(st, "errors-shadow")
    assert ms.get("mode") == "observe"
    assert (ms.get("last") or {}).get("verdict") == "fail", ms  # it would have failed ...
    assert st["history"][-1]["outcome"] == "Promoted"  # ... and the canary was promoted anyway
    assert event_counts(kube, namespace, "checkout", "ShadowMetricFailed") >= 1
    after = metric_sum(operator_metrics(sandbox.ports["operator_health"]), VERDICTS, metric="errors-shadow",
                       verdict="fail", mode="observe")
    assert after > before


def test_a_failure_after_promotion_rolls_stable_back_to_the_previous_revision(
        live_operator: OperatorProcess, namespace: str, sandbox: SandboxInfo) -> None:
    kube = admin()
    errors = {**ERRORS, "name": "errors-watch"}
    v1 = rollout(namespace, "shop/app:1", canary_steps(20, "4s"), metrics=[errors], postPromotionWatch="3m")
    apply_as("dave", v1)
    wait_phase(kube, namespace, "Healthy", revision_=revision(v1))
    rollbacks = metric_sum(operator_metrics(sandbox.ports["operator_health"]), ROLLBACKS, reason="watch")
    # Healthy for its first 45 s of traffic (canary and promotion), then every request fails.
    v2 = rollout(namespace, "shop/app:2", canary_steps(20, "4s"), metrics=[errors], postPromotionWatch="3m",
                 sim={"error-rate": "1.0", "fault-after": "45"})
    apply_as("dave", v2)
    st = wait_phase(kube, namespace, "Healthy", timeout=120, revision_=revision(v2))
    assert st.get("watch", {}).get("revision") == revision(v2), st.get("message")
    assert st.get("previousStableRevision") == revision(v1)
    st = wait_phase(kube, namespace, "RolledBack", timeout=150)
    assert st["stableRevision"] == revision(v1) and st["abortedRevision"] == revision(v2)
    assert "post-promotion watch" in st["message"] and st["history"][-1]["outcome"] == "RolledBack"
    assert st.get("watch") is None
    wait_for(lambda: deployment(kube, namespace, "stable")["spec"]["template"]["metadata"]["labels"]
             .get("controlled-friction.io/revision") == revision(v1), 60, message="stable back on v1")
    assert event_counts(kube, namespace, "checkout", "PostPromotionRollback") >= 1
    assert metric_sum(operator_metrics(sandbox.ports["operator_health"]), ROLLBACKS, reason="watch") > rollbacks
    # a restart-proof record: the template of v2 is still in the spec, and it is not tried again
    assert status(kube, namespace)["phase"] == "RolledBack"
