"""The Helm chart and the plain manifests against the real sandbox API server.

kwok marks the operator pods Running and Ready without running the image: these tests prove the
objects are accepted and wired together (and the RBAC grants what the operator calls), not that the
image starts. The release gets its own name and namespace, and its FrictionPolicy selects a label
no other test uses, so it cannot change other tests' rollouts.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from controlled_friction import names, signing_key
from controlled_friction.sandbox.build import KUBERNETES_VERSION, binary, ensure_built
from controlled_friction.sandbox.cluster import SandboxInfo, kubectl
from controlled_friction.sandbox.crd_wait import wait_established

from .waiting import wait_for

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "controlled-friction"
MANAGED_WEBHOOK = names.GROUP  # kopf's managed webhook configuration name (operator/webhooks.py)


@pytest.fixture(scope="module")
def helm(sandbox: SandboxInfo, tmp_path_factory: pytest.TempPathFactory) -> Any:
    path = binary("helm")
    if not path.exists():
        ensure_built(["helm"])
    home = tmp_path_factory.mktemp("helm-home")
    env = {
        **os.environ,
        "KUBECONFIG": str(sandbox.admin_kubeconfig),
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }

    def run(*args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([str(path), *args], env=env, input=stdin, capture_output=True, text=True,
                              timeout=300, check=False)
        if check:
            assert proc.returncode == 0, f"helm {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
        return proc

    return run


@pytest.fixture(scope="module")
def chart_crds(sandbox: SandboxInfo) -> None:
    """The chart's CRDs (ours plus kopf's peering CRD), as `helm install` would create them."""
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CHART / "crds"))
    wait_established(kubectl, ("rollouts.controlled-friction.io", "frictionpolicies.controlled-friction.io",
                               "clusterkopfpeerings.kopf.dev"))


def _server_dry_run(manifest: str) -> list[str]:
    proc = kubectl("apply", "--dry-run=server", "-f", "-", stdin=manifest, check=False, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return [line for line in proc.stdout.splitlines() if line.strip()]


def test_helm_template_applies_with_server_dry_run(helm: Any, chart_crds: None, namespace: str) -> None:
    release = f"cfdry-{uuid.uuid4().hex[:6]}"
    rendered = helm("template", release, str(CHART), "--namespace", namespace, "--kube-version",
                    KUBERNETES_VERSION, "--set", f"defaultPolicy.selectLabel.value=e2e-{release}").stdout
    objects = [d for d in yaml.safe_load_all(rendered) if d]
    lines = _server_dry_run(rendered)
    assert len(lines) == len(objects) and all(line.endswith("(server dry run)") for line in lines), lines


def test_plain_manifests_apply_with_server_dry_run(chart_crds: None) -> None:
    crds = _server_dry_run((ROOT / "manifests" / "crds.yaml").read_text())
    assert len(crds) == 3
    install = _server_dry_run((ROOT / "manifests" / "install.yaml").read_text())
    objects = [d for d in yaml.safe_load_all((ROOT / "manifests" / "install.yaml").read_text()) if d]
    assert len(install) == len(objects)


# ---------------------------------------------------------------- a real install


@pytest.fixture(scope="module")
def release(helm: Any, chart_crds: None, kube: client.ApiClient) -> Iterator[dict[str, str]]:
    name = f"cfe2e-{uuid.uuid4().hex[:6]}"
    ns = f"e2e-helm-{name}"
    out = helm("install", name, str(CHART), "--namespace", ns, "--create-namespace", "--wait", "--timeout", "180s",
               "--set", f"defaultPolicy.selectLabel.value=e2e-{name}",
               "--set", f"approvers.groups={{{names.SENIOR_GROUP}}}").stdout
    info = {"name": name, "namespace": ns, "fullname": f"{name}-controlled-friction", "notes": out}
    try:
        yield info
    finally:
        helm("uninstall", name, "--namespace", ns, "--wait", "--timeout", "120s", check=False)
        client.CoreV1Api(kube).delete_namespace(ns, propagation_policy="Background")


def test_install_creates_every_object(helm: Any, release: dict[str, str]) -> None:
    manifest = helm("get", "manifest", release["name"], "--namespace", release["namespace"]).stdout
    objects = [d for d in yaml.safe_load_all(manifest) if d]
    assert {o["kind"] for o in objects} >= {
        "Deployment", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "Service",
        "Secret", "PodDisruptionBudget", "FrictionPolicy", "ClusterKopfPeering",
    }
    found = kubectl("get", "-f", "-", "-o", "name", stdin=manifest).stdout.split()
    assert len(found) == len(objects)
    assert "is installed in namespace" in release["notes"]


def test_operator_pods_become_ready(kube: client.ApiClient, release: dict[str, str]) -> None:
    """The chart's default layout: the operator Deployment (reconciles) and the webhooks Deployment
    (admission only), 2 replicas each; the webhook Service has exactly the webhooks pods behind it."""
    apps = client.AppsV1Api(kube)
    core = client.CoreV1Api(kube)
    webhooks = f"{release['fullname']}-webhooks"

    def ready(name: str) -> bool:
        dep = apps.read_namespaced_deployment(name, release["namespace"])
        return dep.status is not None and dep.status.ready_replicas == 2

    wait_for(lambda: ready(release["fullname"]), timeout=120, message="both operator replicas Ready")
    wait_for(lambda: ready(webhooks), timeout=120, message="both webhooks replicas Ready")
    pods = {component: core.list_namespaced_pod(
        release["namespace"], label_selector=f"app.kubernetes.io/instance={release['name']},"
                                             f"app.kubernetes.io/component={component}").items
        for component in ("operator", "webhooks")}
    assert len(pods["operator"]) == 2 and len(pods["webhooks"]) == 2
    everyone = core.list_namespaced_pod(
        release["namespace"], label_selector=f"app.kubernetes.io/instance={release['name']}").items
    assert len(everyone) == 4
    for pod in pods["operator"] + pods["webhooks"]:
        assert pod.spec is not None and pod.spec.service_account_name == release["fullname"]
        assert pod.spec.security_context is not None and pod.spec.security_context.run_as_non_root is True
    # The webhook Service has both webhooks replicas behind it, and no operator pod.
    webhook_pods = {p.metadata.name for p in pods["webhooks"] if p.metadata is not None}
    wait_for(lambda: len(_endpoint_pods(kube, release)) == 2, timeout=60, message="webhook Service endpoints")
    assert _endpoint_pods(kube, release) == webhook_pods


def _endpoint_pods(kube: client.ApiClient, release: dict[str, str]) -> set[str]:
    """Names of the ready pods behind the webhook Service (its EndpointSlices' targetRefs)."""
    slices = client.DiscoveryV1Api(kube).list_namespaced_endpoint_slice(
        release["namespace"], label_selector=f"kubernetes.io/service-name={release['fullname']}-webhook").items
    return {e.target_ref.name if e.target_ref is not None else "" for s in slices for e in (s.endpoints or [])
            if e.conditions and e.conditions.ready}


def _can(release: dict[str, str], verb: str, resource: str, namespace: str | None = None,
         subresource: str | None = None) -> bool:
    sa = f"system:serviceaccount:{release['namespace']}:{release['fullname']}"
    args = ["auth", "can-i", verb, resource, f"--as={sa}"]
    args += [f"--namespace={namespace}"] if namespace else ["--all-namespaces"]
    if subresource:
        args.append(f"--subresource={subresource}")
    proc = kubectl(*args, check=False)
    assert proc.stdout.strip() in ("yes", "no"), proc.stderr
    return proc.stdout.strip() == "yes"


ROLLOUTS = f"{names.ROLLOUT_PLURAL}.{names.GROUP}"
POLICIES = f"{names.POLICY_PLURAL}.{names.GROUP}"
HTTPROUTES = "httproutes.gateway.networking.k8s.io"


def test_operator_rbac_grants_what_the_operator_calls_and_no_more(release: dict[str, str]) -> None:
    own = release["namespace"]
    peering = release["fullname"]
    allowed: list[tuple[str, str, str | None, str | None]] = [
        ("list", ROLLOUTS, None, None), ("watch", ROLLOUTS, None, None), ("patch", ROLLOUTS, "shop", None),
        ("patch", ROLLOUTS, "shop", "status"),
        ("watch", POLICIES, None, None), ("patch", POLICIES, None, "status"),
        ("create", "deployments.apps", "shop", None), ("patch", "deployments.apps", "shop", None),
        ("get", "services", "shop", None), ("create", "services", "shop", None), ("watch", "services", None, None),
        ("watch", HTTPROUTES, None, None), ("get", HTTPROUTES, "shop", None), ("patch", HTTPROUTES, "shop", None),
        ("create", "events", "shop", None), ("patch", "events", "shop", None),
        ("watch", "namespaces", None, None),
        ("watch", "customresourcedefinitions.apiextensions.k8s.io", None, None),
        ("create", "mutatingwebhookconfigurations.admissionregistration.k8s.io", None, None),
        ("patch", f"validatingwebhookconfigurations.admissionregistration.k8s.io/{MANAGED_WEBHOOK}", None, None),
        ("patch", f"mutatingwebhookconfigurations.admissionregistration.k8s.io/{MANAGED_WEBHOOK}", None, None),
        ("watch", "clusterkopfpeerings.kopf.dev", None, None),
        ("patch", f"clusterkopfpeerings.kopf.dev/{peering}", None, None),
        ("create", "secrets", own, None), ("get", f"secrets/{signing_key.KEY_SECRET_NAME}", own, None),
    ]
    denied: list[tuple[str, str, str | None, str | None]] = [
        ("get", f"secrets/{signing_key.KEY_SECRET_NAME}", "shop", None), ("list", "secrets", own, None),
        ("get", "secrets/other", own, None), ("get", "pods", "shop", None), ("create", "pods", "shop", "exec"),
        ("delete", "deployments.apps", "shop", None), ("delete", ROLLOUTS, "shop", None),
        ("create", POLICIES, None, None), ("create", HTTPROUTES, "shop", None), ("delete", HTTPROUTES, "shop", None),
        ("patch", "validatingwebhookconfigurations.admissionregistration.k8s.io/other", None, None),
        ("patch", "clusterkopfpeerings.kopf.dev/other", None, None),
        ("create", "clusterrolebindings.rbac.authorization.k8s.io", None, None),
    ]
    wrong = [a for a in allowed if not _can(release, *a)] + [d for d in denied if _can(release, *d)]
    assert wrong == [], f"allowed should be yes, denied should be no: {wrong}"


def test_rollout_permissions_aggregate_into_edit_and_approvers_are_bound(
    kube: client.ApiClient, release: dict[str, str]
) -> None:
    rbac = client.RbacAuthorizationV1Api(kube)

    def edit_has_rollouts() -> bool:
        rules = rbac.read_cluster_role("edit").rules or []
        return any(names.GROUP in (r.api_groups or []) and "create" in r.verbs for r in rules)

    wait_for(edit_has_rollouts, timeout=60, message="rollout-author rules aggregated into ClusterRole edit")
    binding = rbac.read_cluster_role_binding(f"{release['fullname']}-approver")
    assert [s.name for s in binding.subjects or []] == [names.SENIOR_GROUP]
    proc = kubectl("auth", "can-i", "patch", ROLLOUTS, "--all-namespaces", "--as=someone",
                   f"--as-group={names.SENIOR_GROUP}", check=False)
    assert proc.stdout.strip() == "yes"


def test_default_policy_and_peering_object_exist(release: dict[str, str]) -> None:
    policy = json.loads(kubectl("get", "fpol", f"{release['fullname']}-critical", "-o", "json").stdout)
    rules = policy["spec"]["rules"]
    assert rules["approvals"]["count"] == 2 and rules["maxFirstWeight"] == 5
    assert policy["spec"]["aiAssisted"]["approvals"]["count"] == 3
    kubectl("get", "clusterkopfpeering", release["fullname"])
