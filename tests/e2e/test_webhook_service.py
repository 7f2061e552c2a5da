"""The in-cluster webhook path: kube-apiserver calls the operator through a Service, as with Helm.

In a cluster the chart runs `controlled-friction run --webhook-mode service`: the webhook
configurations name the Service `controlled-friction-webhook` (no URL), and the serving certificate
covers the Service's DNS names. Here the operator runs on this machine; a selectorless Service with
an EndpointSlice pointing at this machine's address stands in for the pods behind it (the sandbox's
kube-apiserver resolves Services through EndpointSlices: `--enable-aggregator-routing`).
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import pytest
import yaml

from controlled_friction import names
from controlled_friction.sandbox import cluster
from controlled_friction.sandbox.cluster import SandboxInfo
from controlled_friction.sandbox.operator_proc import OperatorProcess, remove_webhook_configurations
from controlled_friction.sandbox.throwaway_prometheus import free_port

from .rollouts import admin, apply_as, kubectl_as, revision, rollout, status, wait_phase

pytestmark = pytest.mark.e2e
SERVICE = "controlled-friction-webhook"
GATED = [{"setWeight": 20}, {"pause": {"duration": "2s"}}, {"setWeight": 50}]


class ServiceModeOperator(OperatorProcess):
    """`controlled-friction run --webhook-mode service`, as the Helm chart runs it."""

    def command(self) -> list[str]:
        cmd = super().command()
        i = cmd.index("--webhook-mode")
        cmd[i + 1] = "service"
        return cmd


def _host_address() -> str:
    """This machine's own non-loopback IPv4 address (EndpointSlices refuse loopback addresses)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing interface
        address = str(s.getsockname()[0])
    assert not address.startswith("127."), f"no non-loopback IPv4 address on this machine: {address}"
    return address


def _service_objects(port: int) -> list[dict]:
    ns = names.OPERATOR_NAMESPACE
    return [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": SERVICE, "namespace": ns},
         "spec": {"ports": [{"name": "https", "port": 443, "targetPort": port}]}},
        {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
         "metadata": {"name": f"{SERVICE}-e2e", "namespace": ns,
                      "labels": {"kubernetes.io/service-name": SERVICE,
                                 "endpointslice.kubernetes.io/managed-by": "controlled-friction-e2e"}},
         "addressType": "IPv4",
         "endpoints": [{"addresses": [_host_address()], "conditions": {"ready": True}}],
         "ports": [{"name": "https", "port": port, "protocol": "TCP"}]},
    ]


@pytest.fixture
def service_mode(live_operator: OperatorProcess, sandbox: SandboxInfo) -> Iterator[ServiceModeOperator]:
    live_operator.stop()
    remove_webhook_configurations()
    port = free_port()
    objs = _service_objects(port)
    cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(objs))
    op = ServiceModeOperator(log_path=sandbox.state_dir / "logs" / "service-mode.log", webhook_port=port,
                             metrics_port=free_port(),
                             extra_env={"CF_CERT_DIR": str(sandbox.state_dir / "service-mode-certs")})
    try:
        op.start()
        op.wait_webhook_ready()
        yield op
    finally:
        op.stop()
        remove_webhook_configurations()
        cluster.kubectl("delete", "-f", "-", "--ignore-not-found", stdin=yaml.safe_dump_all(objs), check=False)
        live_operator.start()
        live_operator.wait_webhook_ready()


def test_webhooks_reached_through_a_service_verify_approvals(service_mode: ServiceModeOperator, namespace: str):
    configs = json.loads(cluster.kubectl("get", "mutatingwebhookconfigurations,validatingwebhookconfigurations",
                                         "-o", "json").stdout)["items"]
    ours = [w for c in configs if c["metadata"]["name"] == "controlled-friction.io" for w in c["webhooks"]]
    assert len(ours) >= 3, ours  # approvals (mutating), rollout-rules and policy-rules (validating)
    for hook in ours:
        client = hook["clientConfig"]
        assert "url" not in client, client
        assert client["service"]["name"] == SERVICE and client["service"]["namespace"] == names.OPERATOR_NAMESPACE
        # The scale-subresource guard cannot be scoped to owned Deployments (a Scale has no labels), so it
        # does not fail closed for every Deployment in the cluster; drift repair restores replicas anyway.
        want = "Ignore" if hook["name"].startswith("owned-deployments-scale.") else "Fail"
        assert hook["failurePolicy"] == want, hook["name"]

    kube = admin()
    v1 = rollout(namespace, "shop/app:1", GATED, critical=True)
    apply_as("carol", v1)
    wait_phase(kube, namespace, "Healthy", revision_=revision(v1))
    v2 = rollout(namespace, "shop/app:2", GATED, critical=True)
    apply_as("carol", v2)
    rev = revision(v2)
    wait_phase(kube, namespace, "AwaitingApproval", timeout=90)
    ann = kube.get_rollout(namespace, "checkout")["metadata"]["annotations"]
    assert ann[names.ANN_AUTHOR] == "carol"  # the mutating webhook ran, through the Service

    def approve(user: str) -> tuple[int, str]:
        return kubectl_as(user, "annotate", "rollout", "checkout", "-n", namespace, f"{names.ANN_APPROVE}={rev}")

    code, out = approve("carol")
    assert code != 0 and "author" in out, out  # the validating webhook ran, through the Service
    for user in ("alice", "bob"):
        code, out = approve(user)
        assert code == 0, out
    st = wait_phase(kube, namespace, "Healthy", timeout=120, revision_=rev)
    assert sorted(st["history"][-1]["approvers"]) == ["alice", "bob"]
    assert status(kube, namespace)["stableRevision"] == rev
