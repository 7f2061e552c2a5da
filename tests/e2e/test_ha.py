"""High availability: two operator processes with kopf peering; one acts, the other takes over.

Webhooks: kopf serves admission in every process (peering pauses only the handlers), but both would
manage the same webhook configuration (`controlled-friction.io`) and each would point it at its own
URL, last writer wins. In a cluster that is fine: `--webhook-mode service` points it at one Service
in front of all replicas. The sandbox has no Service routing, so here exactly one process serves
the webhooks (`--webhook-mode local`, the sandbox's webhook port) and the other runs with
`--webhook-mode none`. The webhook-less one gets the higher priority, so it is the active one we
kill, and admission keeps working throughout, as it would behind a Service.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from controlled_friction.sandbox import cluster
from controlled_friction.sandbox.cluster import SandboxInfo
from controlled_friction.sandbox.operator_proc import OperatorProcess
from controlled_friction.sandbox.throwaway_prometheus import free_port

from .rollouts import (
    StepWatch,
    admin,
    apply_as,
    canary_steps,
    event_counts,
    metric_sum,
    operator_metrics,
    revision,
    rollout,
    status,
)
from .waiting import wait_for

pytestmark = pytest.mark.e2e
PEERING = "cf-e2e"
CRD_FILE = Path(__file__).with_name("kopf_peering_crd.yaml")
RECONCILES = "controlled_friction_reconcile_duration_seconds_count"


class WebhooklessOperator(OperatorProcess):
    """`controlled-friction run --webhook-mode none`: reconciles, serves no admission webhooks."""

    def command(self) -> list[str]:
        cmd = super().command()
        i = cmd.index("--webhook-mode")
        cmd[i + 1] = "none"
        return cmd


def _peers() -> dict[str, Any]:
    out = cluster.kubectl("get", "clusterkopfpeering", PEERING, "-o", "json", check=False)
    return dict(json.loads(out.stdout).get("status") or {}) if out.returncode == 0 else {}


def _reconciles(port: int) -> float:
    return metric_sum(operator_metrics(port), RECONCILES)


def _settled_reconciles(port: int, quiet: float = 3.0) -> float:
    """The reconcile count once it has not changed for `quiet` seconds (a paused operator)."""
    seen = {"value": _reconciles(port), "since": time.monotonic()}

    def settled() -> bool:
        now = _reconciles(port)
        if now != seen["value"]:
            seen["value"], seen["since"] = now, time.monotonic()
        return time.monotonic() - seen["since"] >= quiet

    wait_for(settled, 60, message="the follower to stop reconciling")
    return seen["value"]


@pytest.fixture
def peering_crd(sandbox: SandboxInfo) -> Iterator[None]:
    cluster.kubectl("apply", "-f", str(CRD_FILE))
    cluster.kubectl("wait", "--for=condition=Established", "crd/clusterkopfpeerings.kopf.dev", "--timeout=60s")
    # kopf does not create the peering object; without it a process with --peering never acts.
    obj = {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": PEERING}}
    cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(obj))
    yield
    cluster.kubectl("delete", "clusterkopfpeering", PEERING, "--ignore-not-found", check=False)


def test_two_peered_operators_one_acts_and_the_other_takes_over(
    live_operator: OperatorProcess, namespace: str, sandbox: SandboxInfo, peering_crd: None
):
    kube = admin()
    logs = sandbox.state_dir / "logs"
    live_operator.stop()  # standalone: it would act next to the peers; restarted at the end
    active = WebhooklessOperator(log_path=logs / "ha-active.log", webhook_port=0, metrics_port=free_port(),
                                 peering=PEERING, priority=100)
    standby = OperatorProcess(log_path=logs / "ha-standby.log", webhook_port=sandbox.ports["webhook"],
                              metrics_port=sandbox.ports["operator_health"], peering=PEERING, priority=50)
    try:
        active.start()
        first = wait_for(lambda: set(_peers()), 60, message="the active operator's keep-alive")
        standby.start()
        standby.wait_webhook_ready()
        wait_for(lambda: len(_peers()) == 2, 60, message="both operators in the peering")
        [standby_id] = set(_peers()) - first
        assert _peers()[standby_id]["priority"] == 50

        steps = canary_steps(20, "15s", 50, "2s")
        v1 = rollout(namespace, "shop/app:1", steps)
        apply_as("dave", v1)  # admission by the standby's webhook server
        wait_for(lambda: status(kube, namespace).get("phase") == "Healthy", 90, message="v1 Healthy")
        v2 = rollout(namespace, "shop/app:2", steps)
        apply_as("dave", v2)
        watch = StepWatch(kube, namespace, "checkout", revision(v2))
        watch.until(lambda s: s.get("currentStepIndex") == 1, 60, "v2 baking")

        # Only the active one reconciles: the standby has not run a single reconcile so far.
        assert _reconciles(active.metrics_port) > 0
        assert _reconciles(standby.metrics_port) == 0, "the standby reconciled while the active one was alive"
        assert active.alive() and standby.alive()

        offset = standby.log_path.stat().st_size  # the log is appended to across runs
        active.kill()  # SIGKILL: no goodbye in the peering status; the standby waits out its lifetime
        t_kill = time.monotonic()

        def resumed() -> bool:
            with standby.log_path.open("rb") as f:
                f.seek(offset)
                return b"Resuming operations after the pause" in f.read()

        wait_for(resumed, 90, message="the standby resuming")
        takeover = time.monotonic() - t_kill
        st = watch.until(lambda s: s.get("phase") == "Healthy" and s.get("stableRevision") == revision(v2), 150,
                         "promotion by the standby after the takeover")
        assert _reconciles(standby.metrics_port) > 0
        assert [h["outcome"] for h in st["history"] if h["revision"] == revision(v2)] == ["Promoted"]
        assert event_counts(kube, namespace, "checkout", "CanaryStarted", revision(v2)) == 1
        assert not watch.problems, watch.problems  # the bake was not restarted by the new leader
        assert {1, 3} <= set(watch.starts), watch.starts
        print(f"\nHA: active (priority 100) SIGKILLed; standby {standby_id} resumed after {takeover:.0f}s "
              f"(kopf peering lifetime: 60s) and promoted {revision(v2)}")
    finally:
        active.kill()
        standby.stop()
        live_operator.start()
        live_operator.wait_webhook_ready()


def test_replicas_started_alike_get_distinct_priorities_and_exactly_one_acts(
    live_operator: OperatorProcess, namespace: str, sandbox: SandboxInfo, peering_crd: None
):
    """The chart starts every replica with the same flags (`--peering NAME`, no priority). kopf pauses
    all operators that see a live peer of equal priority, so the operator must not leave them tied."""
    kube = admin()
    logs = sandbox.state_dir / "logs"
    live_operator.stop()
    first = WebhooklessOperator(log_path=logs / "ha-alike-1.log", webhook_port=0, metrics_port=free_port(),
                                peering=PEERING)
    second = OperatorProcess(log_path=logs / "ha-alike-2.log", webhook_port=sandbox.ports["webhook"],
                             metrics_port=sandbox.ports["operator_health"], peering=PEERING)
    assert first.priority == second.priority == 0  # as the chart runs them: no --priority of their own
    try:
        first.start()
        [first_id] = wait_for(lambda: set(_peers()), 60, message="the first keep-alive")
        second.start()
        second.wait_webhook_ready()
        peers = wait_for(lambda: p if len(p := _peers()) == 2 else None, 60, message="both in the peering")
        assert peers is not None
        [second_id] = set(peers) - {first_id}
        priorities = {first_id: peers[first_id]["priority"], second_id: peers[second_id]["priority"]}
        assert len(set(priorities.values())) == 2 and 0 not in priorities.values(), priorities

        leader = max(priorities, key=lambda i: priorities[i])
        ports = {first_id: first.metrics_port, second_id: second.metrics_port}
        # Alone for a moment, the first one rightly worked on whatever Rollouts the cluster holds (other
        # tests' leftovers); count from when the follower has stopped reconciling.
        [follower] = [i for i in ports if i != leader]
        baseline = _settled_reconciles(ports[follower])
        before = {leader: _reconciles(ports[leader]), follower: baseline}

        apply_as("dave", rollout(namespace, "shop/app:1", [{"setWeight": 50}], replicas=1))
        wait_for(lambda: status(kube, namespace).get("phase") == "Healthy", 60, message="someone acts")
        acted = {i: _reconciles(port) - before[i] for i, port in ports.items()}
        assert acted[leader] > 0 and acted[follower] == 0, (priorities, acted)
        print(f"\nreplicas started alike: priorities {sorted(priorities.values())}; only the highest reconciled")
    finally:
        first.stop()
        second.stop()
        live_operator.start()
        live_operator.wait_webhook_ready()
