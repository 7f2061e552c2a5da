"""The Helm-installed operator for real: its image, built here, runs in pods on a real kubelet node.

A sandbox of its own (port base + 100, its own state directory) with `up(real_node=True)`: kubelet +
containerd + runc next to the kwok nodes. Nothing is pulled: the operator image is built from the
Dockerfile's description (`sandbox.image`) and imported into containerd. The chart's two
Deployments, the operator's (reconciles) and the webhooks' (admission, behind the webhook Service),
run their pods on the real node (read-only root filesystem, uid 65532, probes, mounted webhook
certificate, ServiceAccount token); the Rollouts' app pods stay on kwok nodes, where the simulator
serves their metrics. The module brings its sandbox down at the end (unless CF_SANDBOX_KEEP=1).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from controlled_friction import names
from controlled_friction.sandbox import cluster, image, layout, nodebuild, realnode
from controlled_friction.sandbox.build import binary, ensure_built
from controlled_friction.sandbox.cluster import SandboxInfo, kubectl

from . import rollouts
from .rollouts import admin, apply_as, kubectl_as, revision, rollout, wait_phase
from .waiting import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.realnode]

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "controlled-friction"
RELEASE = "controlled-friction"
NS = "cf-system"  # the sandbox itself uses namespace controlled-friction (operator as a process)
ON_REAL_NODE = {
    "nodeSelector": {realnode.REAL_NODE_LABEL: "true"},
    "tolerations": [{"key": realnode.REAL_NODE_LABEL, "operator": "Equal", "value": "true",
                     "effect": "NoSchedule"}],
}
RECONCILES = "controlled_friction_reconcile_duration_seconds_count"


@pytest.fixture(scope="module")
def real_sandbox() -> Iterator[SandboxInfo]:
    if os.geteuid() != 0:
        pytest.skip("the real node needs root (kubelet, containerd, bridge networking)")
    saved = {k: os.environ.get(k) for k in (layout.ENV_PORT_BASE, layout.ENV_STATE_DIR)}
    base = os.environ.get("CF_REALNODE_PORT_BASE") or str(layout.port_base() + 100)
    state = os.environ.get("CF_REALNODE_DIR") or f"{layout.state_dir()}-realnode"
    os.environ[layout.ENV_PORT_BASE], os.environ[layout.ENV_STATE_DIR] = base, state
    try:
        t0 = time.monotonic()
        info = cluster.up(real_node=True)
        print(f"\nsandbox with a real node up in {time.monotonic() - t0:.0f}s")
        yield info
    finally:
        if os.environ.get("CF_SANDBOX_KEEP") != "1":
            cluster.down(quiet=True)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _pod(name: str, ns: str, command: list[str], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": name}},
        "spec": {
            **ON_REAL_NODE,
            "restartPolicy": "Never",
            "securityContext": {"runAsNonRoot": True, "runAsUser": 65532},
            "containers": [{"name": "main", "image": image.operator_ref(), "imagePullPolicy": "Never",
                            "command": command, "terminationMessagePolicy": "FallbackToLogsOnError",
                            "securityContext": {"readOnlyRootFilesystem": True,
                                                "allowPrivilegeEscalation": False,
                                                "capabilities": {"drop": ["ALL"]}}}],
            **spec,
        },
    }


def _get(kind: str, name: str, ns: str | None = None) -> dict[str, Any]:
    args = ["get", kind, name, "-o", "json"] + (["-n", ns] if ns else [])
    return dict(json.loads(kubectl(*args).stdout))


def _namespace(stem: str) -> str:
    name = f"rn-{stem}-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", name)
    wait_for(lambda: kubectl("get", "sa", "default", "-n", name, check=False).returncode == 0, 30,
             message=f"ServiceAccount default in {name}")
    return name


def test_real_node_joins_next_to_the_kwok_nodes(real_sandbox: SandboxInfo) -> None:
    nodes = {n["metadata"]["name"]: n for n in json.loads(kubectl("get", "nodes", "-o", "json").stdout)["items"]}
    assert {"kwok-node-0", "kwok-node-1", "kwok-node-2", realnode.NODE_NAME} <= set(nodes)
    node = nodes[realnode.NODE_NAME]
    info = node["status"]["nodeInfo"]
    assert info["kubeletVersion"] == "v1.36.3"
    assert info["containerRuntimeVersion"] == "containerd://" + nodebuild.CONTAINERD_VERSION.removeprefix("v")
    assert node["metadata"]["labels"][realnode.REAL_NODE_LABEL] == "true"
    assert [t["key"] for t in node["spec"]["taints"]] == [realnode.REAL_NODE_LABEL]
    assert {a["address"] for a in node["status"]["addresses"]} >= {realnode.gateway()}
    # `sandbox status` lists the node's daemons next to the control plane's.
    states = cluster.status()
    assert states["kubelet"]["healthy"] and states["containerd"]["healthy"], states
    # Ordinary pods (no toleration) still go to the kwok nodes.
    ns = _namespace("kwok")
    kubectl("create", "deployment", "plain", "--image=shop/app:1", "--replicas=3", "-n", ns)
    wait_for(lambda: _get("deployment", "plain", ns)["status"].get("readyReplicas") == 3, 60,
             message="3 kwok pods ready")
    pods = json.loads(kubectl("get", "pods", "-n", ns, "-o", "json").stdout)["items"]
    assert {p["spec"]["nodeName"] for p in pods} <= {"kwok-node-0", "kwok-node-1", "kwok-node-2"}
    kubectl("delete", "namespace", ns, "--wait=false")


CLIENT = """
import json, ssl, sys, urllib.request
sa = "/var/run/secrets/kubernetes.io/serviceaccount"
print("peer:", urllib.request.urlopen(sys.argv[1], timeout=10).status)
ctx = ssl.create_default_context(cafile=f"{sa}/ca.crt")
req = urllib.request.Request("https://kubernetes.default.svc:443/version".replace(
    "kubernetes.default.svc", __import__("os").environ["KUBERNETES_SERVICE_HOST"]),
    headers={"Authorization": "Bearer " + open(f"{sa}/token").read()})
ctx.check_hostname = True
print("apiserver:", json.load(urllib.request.urlopen(req, timeout=10, context=ctx))["gitVersion"])
print("prometheus:", urllib.request.urlopen(sys.argv[2], timeout=10).status)
"""
# The result comes back as the container's termination message: `kubectl logs` would have the API
# server dial the node by name, which no DNS here resolves.
REPORT = "import sys, contextlib; f = open('/dev/termination-log', 'w'); " \
         "ctx = contextlib.redirect_stdout(f); ctx.__enter__(); exec(sys.argv.pop(1))"


def test_pods_on_the_real_node_reach_each_other_and_the_api_server(real_sandbox: SandboxInfo) -> None:
    ns = _namespace("net")
    server = _pod("server", ns, ["python3", "-m", "http.server", "8000", "--directory", "/tmp"],
                  volumes=[{"name": "tmp", "emptyDir": {}}])
    server["spec"]["containers"][0]["volumeMounts"] = [{"name": "tmp", "mountPath": "/tmp"}]
    server["spec"]["containers"][0]["readinessProbe"] = {"tcpSocket": {"port": 8000}, "periodSeconds": 1}
    kubectl("apply", "-f", "-", stdin=yaml.safe_dump(server))
    kubectl("wait", "--for=condition=Ready", "pod/server", "-n", ns, "--timeout=90s", timeout=120)
    ip = _get("pod", "server", ns)["status"]["podIP"]
    assert ip in [str(h) for h in realnode.subnet().hosts()]
    client = _pod("client", ns, ["python3", "-c", REPORT, CLIENT, f"http://{ip}:8000/",
                                 realnode.host_url("prometheus") + "/-/ready"])
    kubectl("apply", "-f", "-", stdin=yaml.safe_dump(client))
    wait_for(lambda: _get("pod", "client", ns)["status"].get("phase") in ("Succeeded", "Failed"), 90,
             message="client pod finished")
    pod = _get("pod", "client", ns)
    logs = pod["status"]["containerStatuses"][0]["state"]["terminated"].get("message", "")
    assert pod["status"]["phase"] == "Succeeded", pod["status"]
    assert "peer: 200" in logs and "apiserver: v1.36.3" in logs and "prometheus: 200" in logs, logs
    kubectl("delete", "namespace", ns, "--wait=false")


# ---------------------------------------------------------------- the chart, for real


@pytest.fixture(scope="module")
def helm(real_sandbox: SandboxInfo, tmp_path_factory: pytest.TempPathFactory) -> Any:
    if not binary("helm").exists():
        ensure_built(["helm"])
    home = tmp_path_factory.mktemp("helm-home")
    env = {**os.environ, "KUBECONFIG": str(real_sandbox.admin_kubeconfig),
           "HELM_CACHE_HOME": str(home / "cache"), "HELM_CONFIG_HOME": str(home / "config"),
           "HELM_DATA_HOME": str(home / "data")}

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([str(binary("helm")), *args], env=env, capture_output=True, text=True,
                              timeout=400, check=False)
        if check:
            assert proc.returncode == 0, f"helm {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
        return proc

    return run


def _values(tmp: Path) -> Path:
    values = {
        "image": {"pullPolicy": "Never"},
        "prometheus": {"url": realnode.host_url("prometheus")},
        "approvers": {"groups": [names.SENIOR_GROUP]},
        # The tests' own policy (rollouts.critical_policy) instead of the production-grade default.
        "defaultPolicy": {"enabled": False},
        # No cluster DNS in the sandbox: kopf's in-cluster login dials kubernetes.default.svc.
        "hostAliases": [{"ip": layout.SERVICE_IP, "hostnames": ["kubernetes.default.svc"]}],
        **ON_REAL_NODE,
    }
    path = tmp / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def _pods(component: str | None = None) -> list[dict[str, Any]]:
    """The release's pods that are not being deleted: all of them, or one component's."""
    selector = f"app.kubernetes.io/instance={RELEASE}"
    if component:
        selector += f",app.kubernetes.io/component={component}"
    out = kubectl("get", "pods", "-n", NS, "-l", selector, "-o", "json")
    return [p for p in json.loads(out.stdout)["items"] if not p["metadata"].get("deletionTimestamp")]


def _operator_pods() -> list[dict[str, Any]]:
    """The operator Deployment's pods (they reconcile; one acts under kopf peering)."""
    return _pods("operator")


def _webhook_pods() -> list[dict[str, Any]]:
    """The webhooks Deployment's pods (the chart's default: admission in a Deployment of its own).
    They run `--component webhooks` standalone, so they never join the peering."""
    return _pods("webhooks")


def _service_endpoints() -> set[str]:
    """Names of the ready pods behind the webhook Service, from its EndpointSlices."""
    out = kubectl("get", "endpointslices", "-n", NS, "-l", f"kubernetes.io/service-name={RELEASE}-webhook",
                  "-o", "json")
    return {e.get("targetRef", {}).get("name", "") for s in json.loads(out.stdout)["items"]
            for e in s.get("endpoints") or [] if (e.get("conditions") or {}).get("ready")}


def _ready(pod: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions", []))


def _peers() -> dict[str, Any]:
    return dict(_get("clusterkopfpeering", f"{RELEASE}").get("status") or {})


def _active() -> str:
    """The live peer with the highest priority: the one kopf lets act."""
    peers = _peers()
    assert peers, "no peers registered"
    return str(max(peers, key=lambda k: peers[k]["priority"]))


def _metrics(pod: dict[str, Any]) -> str:
    url = f"http://{pod['status']['podIP']}:8080/metrics"
    with urllib.request.urlopen(url, timeout=5) as rsp:
        return str(rsp.read().decode())


def _reconciles(pod: dict[str, Any]) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    return sum(s.value for fam in text_string_to_metric_families(_metrics(pod)) for s in fam.samples
               if s.name == RECONCILES)


@pytest.fixture(scope="module")
def release(helm: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    t0 = time.monotonic()
    helm("install", RELEASE, str(CHART), "--namespace", NS, "--create-namespace", "--wait", "--timeout", "300s",
         "-f", str(_values(tmp_path_factory.mktemp("values"))))
    print(f"\nhelm install --wait: {time.monotonic() - t0:.0f}s")
    kubectl("apply", "-f", "-", stdin=yaml.safe_dump(rollouts.critical_policy()))
    yield RELEASE
    helm("uninstall", RELEASE, "--namespace", NS, "--wait", "--timeout", "120s", check=False)


def test_operator_pods_run_the_image_on_the_real_node(release: str) -> None:
    wait_for(lambda: len([p for p in _operator_pods() if _ready(p)]) == 2, 180, message="2 operator pods Ready")
    for pod in _operator_pods():
        assert pod["spec"]["nodeName"] == realnode.NODE_NAME
        (status,) = pod["status"]["containerStatuses"]
        assert status["ready"] and status["started"] and "running" in status["state"], status
        assert status["restartCount"] == 0, status
        assert status["imageID"], status
        # What the image and the chart promise, seen from inside the running container.
        text = _metrics(pod)
        assert "controlled_friction" in text
    # Both replicas joined the peering under their pod names (POD_ID); one of them acts.
    wait_for(lambda: set(_peers()) == {p["metadata"]["name"] for p in _operator_pods()}, 60,
             message="both pods in the peering")


def test_webhook_pods_run_the_image_on_the_real_node(release: str) -> None:
    wait_for(lambda: len([p for p in _webhook_pods() if _ready(p)]) == 2, 180, message="2 webhook pods Ready")
    pods = _webhook_pods()
    for pod in pods:
        assert pod["spec"]["nodeName"] == realnode.NODE_NAME
        assert pod["spec"]["serviceAccountName"] == RELEASE
        (status,) = pod["status"]["containerStatuses"]
        assert status["ready"] and status["started"] and "running" in status["state"], status
        assert status["restartCount"] == 0, status
        # `--component webhooks` serves the operator's metrics too (the admission histogram among them).
        assert "controlled_friction_admission_duration_seconds" in _metrics(pod)
    # Standalone: they serve admission but never join the peering, so they can never reconcile.
    webhook_names = {p["metadata"]["name"] for p in pods}
    assert not set(_peers()) & webhook_names, _peers()


def test_webhooks_are_called_through_the_service(release: str) -> None:
    wcfg = _get("mutatingwebhookconfigurations", names.GROUP)
    services = {w["clientConfig"].get("service", {}).get("name") for w in wcfg["webhooks"]}
    assert services == {f"{RELEASE}-webhook"}
    # Behind the Service: the two webhooks pods, and no operator pod.
    wait_for(lambda: len([p for p in _webhook_pods() if _ready(p)]) == 2, 180, message="2 webhook pods Ready")
    hooks = {p["metadata"]["name"] for p in _webhook_pods()}
    wait_for(lambda: _service_endpoints() == hooks, 60, message="the webhook Service's endpoints are the webhooks pods")
    ns = _namespace("hook")
    obj = rollout(ns, "shop/app:1", rollouts.canary_steps(50, "1s"))
    apply_as("dave", obj)
    # The mutating webhook, in a pod behind the Service, recorded who wrote the template.
    meta = _get("rollouts", "checkout", ns)["metadata"]
    assert meta["annotations"][names.ANN_AUTHOR] == "dave"
    code, out = kubectl_as("mallory", "annotate", "rollout", "checkout", "-n", ns, "--overwrite",
                           f"{names.ANN_AUTHOR}=mallory")
    assert code != 0 and names.ANN_AUTHOR in out, out
    kubectl("delete", "namespace", ns, "--wait=false")


def test_gated_rollout_is_promoted_with_alice_and_bob_and_a_bad_one_rolls_back(release: str) -> None:
    kube = admin()
    ns = _namespace("gate")
    steps = rollouts.canary_steps(20, "2s", 50)
    v1 = rollout(ns, "shop/app:1", steps, critical=True, metrics=[rollouts.ERRORS])
    apply_as("dave", v1)
    wait_phase(kube, ns, "Healthy", revision_=revision(v1), timeout=120)
    v2 = rollout(ns, "shop/app:2", steps, critical=True, metrics=[rollouts.ERRORS])
    apply_as("dave", v2)
    wait_phase(kube, ns, "AwaitingApproval", timeout=120)
    for user in ("alice", "bob"):
        code, out = kubectl_as(user, "annotate", "rollout", "checkout", "-n", ns,
                               f"{names.ANN_APPROVE}={revision(v2)}")
        assert code == 0, out
    st = wait_phase(kube, ns, "Healthy", revision_=revision(v2), timeout=150)
    assert sorted(st["history"][-1]["approvers"]) == ["alice", "bob"]

    bad = rollout(ns, "shop/app:3", rollouts.canary_steps(20, "2m", 50), metrics=[rollouts.ERRORS],
                  sim={"error-rate": "0.5"})
    apply_as("dave", bad)
    st = wait_phase(kube, ns, "RolledBack", timeout=180)
    assert st["abortedRevision"] == revision(bad)
    assert st["stableRevision"] == revision(v2)
    kubectl("delete", "namespace", ns, "--wait=false")


def test_killing_the_active_operator_pod_hands_over_to_the_other(release: str) -> None:
    wait_for(lambda: len([p for p in _operator_pods() if _ready(p)]) == 2, 180, message="2 operator pods Ready")
    pods = {p["metadata"]["name"]: p for p in _operator_pods()}
    wait_for(lambda: set(_peers()) == set(pods), 60, message="both pods in the peering")
    active = _active()
    survivor = next(n for n in pods if n != active)
    t0 = time.monotonic()
    kubectl("delete", "pod", active, "-n", NS, "--wait=true", timeout=120)
    kube = admin()
    ns = _namespace("ha")
    v1 = rollout(ns, "shop/app:1", rollouts.canary_steps(50, "1s"))
    apply_as("dave", v1)
    wait_phase(kube, ns, "Healthy", revision_=revision(v1), timeout=120)
    took = time.monotonic() - t0
    # The survivor reconciled it unless the Deployment's replacement pod outranked it meanwhile.
    now_active = _active()
    assert now_active != active
    acting = [p for p in _operator_pods() if p["metadata"]["name"] == now_active]
    assert acting and _reconciles(acting[0]) > 0
    print(f"\nactive pod {active} deleted; {now_active} (survivor: {survivor}) took over, "
          f"new rollout Healthy {took:.0f}s later")
    kubectl("delete", "namespace", ns, "--wait=false")


def test_helm_uninstall_leaves_nothing_stuck(helm: Any, release: str) -> None:
    helm("uninstall", RELEASE, "--namespace", NS, "--wait", "--timeout", "120s")
    wait_for(lambda: not _pods() and not json.loads(kubectl(
        "get", "pods", "-n", NS, "-o", "json").stdout)["items"], 120, message="operator and webhook pods gone")
    left = kubectl("get", "all,secrets,serviceaccounts,roles,rolebindings", "-n", NS,
                   "-l", f"app.kubernetes.io/instance={RELEASE}", "-o", "name").stdout.split()
    assert left == []
    assert kubectl("get", "clusterkopfpeering", RELEASE, check=False).returncode != 0
    # The persistent, fail-closed webhook configurations are the operator's (not the chart's): they
    # stay and block Rollout writes until removed, by design. Removing them is the documented step.
    for kind in ("mutatingwebhookconfigurations", "validatingwebhookconfigurations"):
        kubectl("delete", kind, names.GROUP, "--ignore-not-found")
    kubectl("delete", "namespace", NS, "--timeout=120s", timeout=150)
    # Nothing of the release is left on the node: its pod sandboxes and containers were removed.
    n = realnode.NodePaths(layout.paths())
    ours = f'labels."io.kubernetes.pod.namespace"=={NS}'
    wait_for(lambda: not realnode._ctr(n, "containers", "ls", "-q", ours).stdout.split(), 90,
             message="no containers of the release left on the node")
