"""The event-driven control loop through the real API server: no finalizer (a stopped operator
blocks no deletion), shards split by label selector never both act on one Rollout, admission served
by a process of its own, and webhooks that skip the operator's own writes."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from controlled_friction import names
from controlled_friction.sandbox import cluster
from controlled_friction.sandbox.cluster import SandboxInfo
from controlled_friction.sandbox.operator_proc import OperatorProcess, remove_webhook_configurations
from controlled_friction.sandbox.throwaway_prometheus import free_port

from .rollouts import admin, apply_as, metric_sum, operator_metrics, patch_spec, rollout, status
from .waiting import wait_for

pytestmark = pytest.mark.e2e
SHARD = "controlled-friction.io/shard"
CRD_FILE = Path(__file__).with_name("kopf_peering_crd.yaml")
PHASES = "controlled_friction_rollouts"


Component = OperatorProcess  # `controlled-friction run` with extra flags (a component or a shard)


def _seen_by(port: int, namespace: str, name: str) -> bool:
    return metric_sum(operator_metrics(port), PHASES, namespace=namespace, rollout=name) > 0


def _own_namespace(stem: str) -> str:
    """A namespace the test deletes itself (the fixtures' clean-up would find it gone)."""
    ns = f"e2e-{stem}-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", ns)
    wait_for(lambda: cluster.kubectl("get", "serviceaccount", "default", "-n", ns, check=False).returncode == 0,
             30, message=f"ServiceAccount default in {ns}")
    return ns


def test_rollouts_carry_no_finalizer_and_delete_with_the_operator_stopped(live_operator: OperatorProcess):
    kube = admin()
    ns = _own_namespace("nofinalizer")
    apply_as("dave", rollout(ns, "shop/app:1", [{"setWeight": 50}], replicas=1))
    wait_for(lambda: status(kube, ns).get("phase") == "Healthy", 90, message="Healthy")
    obj = kube.get_rollout(ns, "checkout")
    assert not obj["metadata"].get("finalizers"), obj["metadata"].get("finalizers")
    live_operator.stop()
    try:
        remove_webhook_configurations()  # what uninstalling the operator leaves: no webhooks, no process
        cluster.kubectl("delete", "namespace", ns, "--wait=false")
        gone = wait_for(lambda: cluster.kubectl("get", "namespace", ns, check=False).returncode != 0, 90,
                        message=f"namespace {ns} deleted with no operator running")
        assert gone
        print(f"\nno finalizer: namespace {ns} with a Rollout deleted while the operator was stopped")
    finally:
        live_operator.start()
        live_operator.wait_webhook_ready()


@pytest.fixture
def shards(live_operator: OperatorProcess, sandbox: SandboxInfo) -> Iterator[dict[str, Component]]:
    """Admission in a process of its own, and two controller shards split by a label selector."""
    logs = sandbox.state_dir / "logs"
    live_operator.stop()
    procs = {
        "webhooks": Component(log_path=logs / "component-webhooks.log", webhook_port=sandbox.ports["webhook"],
                              metrics_port=0, flags=["--component", "webhooks"]),
        "a": Component(log_path=logs / "shard-a.log", webhook_port=0, metrics_port=free_port(),
                       flags=["--component", "controller", "--webhook-mode", "none", "--selector", f"{SHARD}=a"]),
        "b": Component(log_path=logs / "shard-b.log", webhook_port=0, metrics_port=free_port(),
                       flags=["--component", "controller", "--webhook-mode", "none", "--selector", f"{SHARD}=b"]),
    }
    try:
        for p in procs.values():
            p.start()
        procs["webhooks"].wait_webhook_ready()
        yield procs
    finally:
        for p in procs.values():
            p.stop()
        live_operator.start()
        live_operator.wait_webhook_ready()


def test_two_shards_never_both_act_on_one_rollout(shards: dict[str, Component], namespace: str):
    kube = admin()
    for shard in ("a", "b"):
        obj = rollout(namespace, "shop/app:1", [{"setWeight": 50}, {"pause": {"duration": "3s"}}],
                      name=f"app-{shard}", replicas=1)
        obj["metadata"]["labels"][SHARD] = shard
        apply_as("dave", obj)
    for shard in ("a", "b"):
        wait_for(lambda s=shard: status(kube, namespace, f"app-{s}").get("phase") == "Healthy", 90,
                 message=f"app-{shard} Healthy")
    # A canary through its bake, so both shards keep working while the other's Rollout changes too.
    for shard in ("a", "b"):
        obj = kube.get_rollout(namespace, f"app-{shard}")
        obj["spec"]["template"]["spec"]["containers"][0]["image"] = "shop/app:2"
        patch_spec(kube, obj)
    for shard in ("a", "b"):
        wait_for(lambda s=shard: (st := status(kube, namespace, f"app-{s}")).get("phase") == "Healthy"
                 and st.get("history"), 120, message=f"app-{shard} promoted")
    seen = {(p, r): _seen_by(shards[p].metrics_port, namespace, f"app-{r}") for p in "ab" for r in "ab"}
    assert seen == {("a", "a"): True, ("a", "b"): False, ("b", "a"): False, ("b", "b"): True}, seen
    print(f"\nshards: a reconciled only app-a, b only app-b ({seen}); admission served by its own process")


def test_webhooks_skip_the_operators_own_writes(live_operator: OperatorProcess):
    out = cluster.kubectl("get", "validatingwebhookconfiguration", names.GROUP, "-o", "json")
    hooks = {h["name"]: h for h in json.loads(out.stdout)["webhooks"]}
    rules = next(h for n, h in hooks.items() if n.startswith("rollout-rules."))
    conditions = {c["name"]: c["expression"] for c in rules.get("matchConditions") or []}
    assert "not-the-operator" in conditions and "rollout-changed" in conditions, rules
    assert rules["timeoutSeconds"] <= 10


def test_uninstalling_leaves_nothing_stuck(live_operator: OperatorProcess, sandbox: SandboxInfo):
    """What `helm uninstall` does — delete the operator's pods and the chart's objects, the peering object
    among them — must leave no fail-closed webhook behind: the peering object owns the configurations,
    so the garbage collector removes them, and Rollouts and their namespaces then delete normally."""
    kube = admin()
    peering = "cf-e2e-owner"
    cluster.kubectl("apply", "-f", str(CRD_FILE))
    cluster.kubectl("wait", "--for=condition=Established", "crd/clusterkopfpeerings.kopf.dev", "--timeout=60s")
    cluster.kubectl("apply", "-f", "-", stdin=json.dumps(
        {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": peering}}))
    live_operator.stop()
    installed = OperatorProcess(log_path=sandbox.state_dir / "logs" / "owner.log",
                                webhook_port=sandbox.ports["webhook"], metrics_port=0,
                                extra_env={"CF_WEBHOOK_OWNER_PEERING": peering})
    try:
        installed.start()
        installed.wait_webhook_ready()

        def owners() -> list[str]:
            out = []
            for kind in ("mutatingwebhookconfiguration", "validatingwebhookconfiguration"):
                got = cluster.kubectl("get", kind, names.GROUP, "-o", "json", check=False)
                if got.returncode == 0:
                    out += [o["name"] for o in json.loads(got.stdout)["metadata"].get("ownerReferences") or []]
            return out

        wait_for(lambda: owners() == [peering, peering], 60, message="the peering object owns both configurations")
        ns = _own_namespace("uninstall")
        apply_as("dave", rollout(ns, "shop/app:1", [{"setWeight": 50}], replicas=1))
        wait_for(lambda: status(kube, ns).get("phase") == "Healthy", 90, message="Healthy")

        installed.stop()  # uninstall: the pods go…
        cluster.kubectl("delete", "clusterkopfpeering", peering)  # …and so do the chart's objects
        wait_for(lambda: not any(cluster.kubectl("get", kind, names.GROUP, check=False).returncode == 0
                                 for kind in ("mutatingwebhookconfiguration", "validatingwebhookconfiguration")),
                 90, message="the garbage collector removes the webhook configurations")
        cluster.kubectl("delete", "namespace", ns, "--wait=false")
        wait_for(lambda: cluster.kubectl("get", "namespace", ns, check=False).returncode != 0, 120,
                 message=f"namespace {ns} (a Rollout, its Deployments) deleted after the uninstall")
        print("\nuninstall: webhook configurations garbage-collected with the peering object; namespace deleted")
    finally:
        installed.stop()
        cluster.kubectl("delete", "clusterkopfpeering", peering, "--ignore-not-found", check=False)
        live_operator.start()
        live_operator.wait_webhook_ready()
