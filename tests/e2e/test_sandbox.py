"""The sandbox is a real cluster: real version, scheduling via kwok, authn/authz, Prometheus."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from controlled_friction.names import OPERATOR_USERNAME, SENIOR_GROUP
from controlled_friction.sandbox import bootstrap, cluster, kubeconfig, procs
from controlled_friction.sandbox.build import KUBERNETES_VERSION
from controlled_friction.sandbox.cluster import SandboxInfo, kubectl

from .waiting import wait_for

pytestmark = pytest.mark.e2e


def _http_json(url: str, method: str = "GET") -> Any:
    req = urllib.request.Request(url, method=method)
    with urllib.request.urlopen(req, timeout=5) as resp:
        body = resp.read()
    return json.loads(body) if body else None


def _ready_replicas(apps: client.AppsV1Api, name: str, namespace: str) -> int:
    status = apps.read_namespaced_deployment(name, namespace).status
    return (status.ready_replicas if status else None) or 0


def _http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def test_kubectl_reports_server_version(sandbox: SandboxInfo) -> None:
    out = json.loads(kubectl("version", "-o", "json").stdout)
    assert out["serverVersion"]["gitVersion"] == KUBERNETES_VERSION
    assert out["clientVersion"]["gitVersion"] == KUBERNETES_VERSION


def test_deployment_gets_ready_pods_on_kwok_nodes(kube: client.ApiClient, namespace: str) -> None:
    apps = client.AppsV1Api(kube)
    labels = {"app": "web"}
    apps.create_namespaced_deployment(namespace, client.V1Deployment(
        metadata=client.V1ObjectMeta(name="web"),
        spec=client.V1DeploymentSpec(
            replicas=3,
            selector=client.V1LabelSelector(match_labels=labels),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels),
                spec=client.V1PodSpec(containers=[client.V1Container(name="web", image="example/web:1")]),
            ),
        ),
    ))

    wait_for(lambda: _ready_replicas(apps, "web", namespace) == 3, timeout=60,
             message="Deployment web readyReplicas == 3")
    pods = client.CoreV1Api(kube).list_namespaced_pod(namespace, label_selector="app=web").items
    running = [p for p in pods if p.metadata and p.metadata.deletion_timestamp is None]
    assert len(running) == 3
    for pod in running:
        assert pod.status and pod.spec
        assert pod.status.phase == "Running"
        assert pod.spec.node_name in bootstrap.NODE_NAMES
        assert pod.status.pod_ip


def test_scale_down_removes_pods(kube: client.ApiClient, namespace: str) -> None:
    """kwok's pod-delete stage stands in for the kubelet: deleted pods really go away."""
    apps, core = client.AppsV1Api(kube), client.CoreV1Api(kube)
    labels = {"app": "api"}
    apps.create_namespaced_deployment(namespace, client.V1Deployment(
        metadata=client.V1ObjectMeta(name="api"),
        spec=client.V1DeploymentSpec(
            replicas=2,
            selector=client.V1LabelSelector(match_labels=labels),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels),
                spec=client.V1PodSpec(containers=[client.V1Container(name="api", image="example/api:1")]),
            ),
        ),
    ))
    wait_for(lambda: _ready_replicas(apps, "api", namespace) == 2, timeout=60, message="2 ready replicas")
    apps.patch_namespaced_deployment_scale("api", namespace, {"spec": {"replicas": 0}})
    wait_for(lambda: not core.list_namespaced_pod(namespace, label_selector="app=api").items,
             timeout=60, message="all api pods deleted")


def _whoami(user: str) -> dict[str, Any]:
    out = kubectl("auth", "whoami", "-o", "json", kubeconfig_file=cluster.kubeconfig_path(user)).stdout
    info: dict[str, Any] = json.loads(out)["status"]["userInfo"]
    return info


def test_alice_authenticates_as_senior_engineer(sandbox: SandboxInfo) -> None:
    me = _whoami("alice")
    assert me["username"] == "alice"
    assert SENIOR_GROUP in me["groups"]


def test_dave_is_an_engineer_not_a_senior(sandbox: SandboxInfo) -> None:
    me = _whoami("dave")
    assert me["username"] == "dave"
    assert "engineers" in me["groups"]
    assert SENIOR_GROUP not in me["groups"]


def test_dave_cannot_delete_a_namespace(sandbox: SandboxInfo, kube: client.ApiClient, namespace: str) -> None:
    dave = cluster.kubeconfig_path("dave")
    # Control: dave is authenticated and may read the namespace, so a refusal below is RBAC's.
    assert kubectl("get", "pods", "-n", namespace, kubeconfig_file=dave).returncode == 0
    proc = kubectl("delete", "namespace", namespace, "--wait=false", kubeconfig_file=dave, check=False)
    assert proc.returncode != 0
    assert "Forbidden" in proc.stderr
    ns = client.CoreV1Api(kube).read_namespace(namespace)
    assert ns.metadata and ns.metadata.deletion_timestamp is None


def test_unknown_token_is_rejected(sandbox: SandboxInfo, tmp_path: Path) -> None:
    ca = (sandbox.state_dir / "pki" / "ca.crt").read_bytes()
    text = kubeconfig.render(sandbox.apiserver_url, ca, "eve", "not-a-token")
    forged = kubeconfig.write(tmp_path / "forged", text)
    proc = kubectl("get", "namespaces", kubeconfig_file=forged, check=False)
    assert proc.returncode != 0
    assert "Unauthorized" in proc.stderr or "must be logged in" in proc.stderr


def test_operator_kubeconfig_is_its_service_account_without_cluster_admin(sandbox: SandboxInfo) -> None:
    assert _whoami("operator")["username"] == OPERATOR_USERNAME
    op = cluster.kubeconfig_path("operator")

    def can(*args: str) -> str:
        return kubectl("auth", "can-i", *args, kubeconfig_file=op, check=False).stdout.strip()

    assert can("create", "deployments.apps", "-n", "anywhere") == "yes"
    assert can("patch", "validatingwebhookconfigurations.admissionregistration.k8s.io") == "yes"
    assert can("delete", "namespaces") == "no"
    assert can("get", "secrets", "-n", "kube-system") == "no"


def test_up_is_idempotent(sandbox: SandboxInfo) -> None:
    before = {name: st["pid"] for name, st in cluster.status().items()}
    again = cluster.up(quiet=True)
    after = {name: st["pid"] for name, st in cluster.status().items()}
    assert again == sandbox
    assert before == after


def test_prometheus_can_be_stopped_and_started(sandbox: SandboxInfo) -> None:
    ready = f"{sandbox.prometheus_url}/-/ready"
    assert _http_status(ready) == 200
    assert cluster.stop_component("prometheus")
    assert _http_status(ready) == 0
    assert cluster.status()["prometheus"]["pid"] is None
    cluster.start_component("prometheus")
    assert _http_status(ready) == 200
    # The lifecycle API is on, so tests can make Prometheus re-read its configuration.
    urllib.request.urlopen(urllib.request.Request(f"{sandbox.prometheus_url}/-/reload", method="POST"),
                           timeout=10).close()


def test_apiserver_restart_keeps_the_data(
    sandbox: SandboxInfo, kube: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(kube)
    core.create_namespaced_config_map(namespace, client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="survivor"), data={"k": "v"}))
    assert cluster.stop_component("kube-apiserver")
    assert kubectl("get", "--raw=/readyz", check=False, timeout=10).returncode != 0
    cluster.start_component("kube-apiserver")
    assert core.read_namespaced_config_map("survivor", namespace).data == {"k": "v"}
    # Controllers, scheduler and kwok reconnect: a new Deployment still gets ready pods.
    apps = client.AppsV1Api(kube)
    labels = {"app": "after-restart"}
    apps.create_namespaced_deployment(namespace, client.V1Deployment(
        metadata=client.V1ObjectMeta(name="after-restart"),
        spec=client.V1DeploymentSpec(
            replicas=1,
            selector=client.V1LabelSelector(match_labels=labels),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels),
                spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="example/c:1")]),
            ),
        ),
    ))
    wait_for(lambda: _ready_replicas(apps, "after-restart", namespace) == 1, timeout=90,
             message="a Deployment created after the restart becomes ready")


def test_stop_only_signals_the_process_it_started(tmp_path: Path) -> None:
    """A PID file whose PID now runs something else (or started at another time) is not ours."""
    rec = procs.spawn(["sleep", "60"], tmp_path / "sleep.log", tmp_path / "sleep.json")
    recycled = procs.ProcRecord(rec.pid, rec.start_ticks + 1, rec.argv)
    other_cmd = procs.ProcRecord(rec.pid, rec.start_ticks, ["sleep", "61"])
    assert procs.is_ours(rec)
    assert not procs.terminate(recycled)
    assert not procs.terminate(other_cmd)
    assert procs.is_ours(rec)  # still alive: nothing was signalled
    assert procs.ProcRecord.load(tmp_path / "sleep.json") == rec
    assert procs.terminate(rec, grace=5)
    assert not procs.is_ours(rec)


@pytest.mark.skipif(not cluster.simulator_available(), reason="traffic simulator module not present")
def test_prometheus_scrapes_the_simulator(sandbox: SandboxInfo) -> None:
    query = urllib.parse.urlencode({"query": 'up{job="simulator"}'})

    def simulator_up() -> bool:
        result = _http_json(f"{sandbox.prometheus_url}/api/v1/query?{query}")["data"]["result"]
        return bool(result) and result[0]["value"][1] == "1"

    wait_for(simulator_up, timeout=30, message='up{job="simulator"} == 1')
