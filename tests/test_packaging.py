"""The Helm chart, the plain manifests, the Dockerfile and the wheel.

Rendering uses the real helm binary the sandbox builds (helm v3, `binary("helm")`); installing into a
real cluster is in tests/e2e/test_helm.py.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from controlled_friction import certs, names, signing_key
from controlled_friction.models.policy import FrictionPolicySpec
from controlled_friction.sandbox.build import KUBERNETES_VERSION, binary, ensure_built

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "controlled-friction"
RELEASE = "controlled-friction"
NAMESPACE = "controlled-friction"
Obj = dict[str, Any]
CONTROLLER = "controlled-friction"  # the operator Deployment: reconciles (component operator)
WEBHOOKS = "controlled-friction-webhooks"  # admission only (component webhooks), on by default
SINGLE = "webhook.separateDeployment.enabled=false"  # one Deployment does both


@pytest.fixture(scope="session")
def helm() -> Path:
    path = binary("helm")
    if not path.exists():
        ensure_built(["helm"])
    return path


def _template(helm: Path, *args: str, release: str = RELEASE, namespace: str = NAMESPACE,
              check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [str(helm), "template", release, str(CHART), "--namespace", namespace,
         "--kube-version", KUBERNETES_VERSION, *args],
        capture_output=True, text=True, timeout=60, check=False,
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def render(helm: Path, *sets: str, **kw: Any) -> list[Obj]:
    args = [a for s in sets for a in ("--set", s)]
    return [d for d in yaml.safe_load_all(_template(helm, *args, **kw).stdout) if d]


def one(objs: list[Obj], kind: str, name: str | None = None) -> Obj:
    found = [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"{kind} {name}: {[o['metadata']['name'] for o in found]}"
    return found[0]


def kinds(objs: list[Obj]) -> list[str]:
    return sorted(o["kind"] for o in objs)


# ---------------------------------------------------------------- chart basics


def test_chart_metadata() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"  # Helm v3
    assert chart["version"] == "0.1.0"
    assert chart["name"] == "controlled-friction"


def test_helm_lint_strict(helm: Path) -> None:
    proc = subprocess.run([str(helm), "lint", "--strict", str(CHART)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in proc.stdout


def test_template_renders_every_object_with_defaults(helm: Path) -> None:
    objs = render(helm)
    assert kinds(objs) == sorted([
        "ClusterKopfPeering", "ClusterRole", "ClusterRole", "ClusterRole", "ClusterRole", "ClusterRoleBinding",
        "Deployment", "Deployment", "FrictionPolicy", "PodDisruptionBudget", "PodDisruptionBudget", "Role",
        "RoleBinding", "Secret", "Service", "Service", "Service", "ServiceAccount",
    ])
    cluster_scoped = {"ClusterKopfPeering", "ClusterRole", "ClusterRoleBinding", "FrictionPolicy"}
    for o in objs:
        assert o["apiVersion"] and o["metadata"]["name"], o
        assert o["metadata"].get("namespace") == (None if o["kind"] in cluster_scoped else NAMESPACE), o
        assert o["metadata"]["labels"]["app.kubernetes.io/part-of"] == "controlled-friction"
    # The names the design contract and the docs use, with the documented release/namespace.
    assert one(objs, "ServiceAccount")["metadata"]["name"] == names.OPERATOR_SERVICE_ACCOUNT
    assert sorted(o["metadata"]["name"] for o in objs if o["kind"] == "Deployment") == [
        CONTROLLER, WEBHOOKS]


def test_chart_crds_are_the_generated_ones_plus_kopf_peering() -> None:
    files = sorted(p.name for p in (CHART / "crds").iterdir())
    assert files == ["frictionpolicies.yaml", "kopf-peerings.yaml", "rollouts.yaml"]
    for name in ("frictionpolicies.yaml", "rollouts.yaml"):
        assert (CHART / "crds" / name).read_text() == (ROOT / "crds" / name).read_text()
    peering = yaml.safe_load((CHART / "crds" / "kopf-peerings.yaml").read_text())
    assert peering["metadata"]["name"] == "clusterkopfpeerings.kopf.dev"


# ---------------------------------------------------------------- values.schema.json


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("replicaCount=two", "at '/replicaCount': got string, want integer"),
        ("replicas=2", "additional properties 'replicas' not allowed"),
        ("replicaCount=0", "/replicaCount"),
        ("defaultPolicy.minBake=2minutes", "/defaultPolicy/minBake"),
        ("defaultPolicy.approvals.count=0", "/defaultPolicy/approvals/count"),
        ("defaultPolicy.maxFirstWeight=150", "/defaultPolicy/maxFirstWeight"),
        ("prometheus.url=prometheus:9090", "/prometheus/url"),
        ("image.pullPolicy=Sometimes", "/image/pullPolicy"),
        ("webhook.port=70000", "/webhook/port"),
    ],
)
def test_values_schema_rejects_bad_values_with_a_clear_message(helm: Path, value: str, message: str) -> None:
    proc = _template(helm, "--set", value, check=False)
    assert proc.returncode != 0
    assert "values don't meet the specifications of the schema" in proc.stderr
    assert message in proc.stderr, proc.stderr


def test_policy_without_any_selector_fails_with_a_message(helm: Path) -> None:
    proc = _template(helm, "--set", "defaultPolicy.byRolloutLabel=false", "--set",
                     "defaultPolicy.byNamespaceLabel=false", check=False)
    assert proc.returncode != 0 and "a policy must select something" in proc.stderr


# ---------------------------------------------------------------- the Deployments


def _pod(deploy: Obj) -> Obj:
    return dict(deploy["spec"]["template"]["spec"])


def _container(objs: list[Obj], name: str = CONTROLLER) -> Obj:
    (container,) = _pod(one(objs, "Deployment", name))["containers"]
    return container


def _pod_labels(deploy: Obj) -> Obj:
    return dict(deploy["spec"]["template"]["metadata"]["labels"])


def _selects(selector: Obj, deploy: Obj) -> bool:
    return bool(selector.items() <= _pod_labels(deploy).items())


def _assert_hardened_and_probed(deploy: Obj) -> None:
    """What every Deployment of the operator image promises, whatever its component."""
    pod = _pod(deploy)
    (c,) = pod["containers"]
    assert pod["serviceAccountName"] == names.OPERATOR_SERVICE_ACCOUNT
    env = {e["name"]: e for e in c["env"]}
    assert env[names.ENV_PROMETHEUS_URL]["value"].startswith("http://")
    assert env["CF_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert env["POD_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["CF_WEBHOOK_SERVICE"]["value"] == "controlled-friction-webhook"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert mounts["tmp"]["mountPath"] == "/tmp" and "emptyDir" in volumes["tmp"]
    # The pod's own component in its selector, so the replicas of each spread over the nodes.
    (term,) = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"] == deploy["spec"]["selector"]["matchLabels"]


def _assert_serves_webhooks(c: Obj, pod: Obj) -> None:
    env = {e["name"]: e for e in c["env"]}
    assert "--webhook-mode=service" in c["args"]
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"webhook": 9443, "metrics": 8080, "health": 8081}
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert mounts["webhook-tls"]["readOnly"] is True
    assert env["CF_CERT_DIR"]["value"] == mounts["webhook-tls"]["mountPath"]
    assert volumes["webhook-tls"]["secret"]["secretName"] == "controlled-friction-webhook-tls"
    # It ties the webhook configurations to the peering object, so `helm uninstall` removes them.
    assert env["CF_WEBHOOK_OWNER_PEERING"]["value"] == "controlled-friction"


def test_operator_deployment_runs_peered_hardened_and_probed(helm: Path) -> None:
    """By default the operator Deployment only reconciles: peered, no webhook server, no certificate."""
    objs = render(helm)
    deploy = one(objs, "Deployment", CONTROLLER)
    c = _container(objs)
    assert deploy["spec"]["replicas"] == 2
    assert deploy["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "operator"
    assert c["args"][:6] == [
        "--component=controller", "--peering=controlled-friction", "--webhook-mode=none", "--webhook-port=9443",
        "--metrics-port=8080", "--health-port=8081",
    ]
    _assert_hardened_and_probed(deploy)
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"metrics": 8080, "health": 8081}
    assert "webhook-tls" not in {m["name"] for m in c["volumeMounts"]}
    assert "webhook-tls" not in {v["name"] for v in _pod(deploy)["volumes"]}
    assert "CF_WEBHOOK_OWNER_PEERING" not in {e["name"] for e in c["env"]}


def test_webhooks_deployment_serves_admission_hardened_and_probed(helm: Path) -> None:
    objs = render(helm)
    deploy = one(objs, "Deployment", WEBHOOKS)
    c = _container(objs, WEBHOOKS)
    assert deploy["spec"]["replicas"] == 2
    assert deploy["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "webhooks"
    # --peering is passed, but `--component webhooks` runs standalone: every replica serves, none is a peer.
    assert c["args"][:3] == ["--component=webhooks", "--peering=controlled-friction", "--webhook-mode=service"]
    _assert_hardened_and_probed(deploy)
    _assert_serves_webhooks(c, _pod(deploy))
    # Upgrades never leave admission without a server.
    assert deploy["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_default_layout_has_a_controller_and_a_webhooks_deployment(helm: Path) -> None:
    """The default: two Deployments, the webhook Service in front of the webhooks pods only, and a
    PodDisruptionBudget for each, selecting its own Deployment's pods and not the other's."""
    objs = render(helm)
    controller = one(objs, "Deployment", CONTROLLER)
    hooks = one(objs, "Deployment", WEBHOOKS)
    assert sorted(o["metadata"]["name"] for o in objs if o["kind"] == "Deployment") == [CONTROLLER, WEBHOOKS]
    c_args = _container(objs)["args"]
    assert "--component=controller" in c_args and "--webhook-mode=none" in c_args
    assert "--component=webhooks" in _container(objs, WEBHOOKS)["args"]
    assert hooks["spec"]["selector"] != controller["spec"]["selector"]
    for deploy in (controller, hooks):  # each Deployment's selector picks its own pods only
        assert _selects(deploy["spec"]["selector"]["matchLabels"], deploy)
    assert not _selects(controller["spec"]["selector"]["matchLabels"], hooks)
    assert not _selects(hooks["spec"]["selector"]["matchLabels"], controller)

    svc = one(objs, "Service", "controlled-friction-webhook")
    assert _selects(svc["spec"]["selector"], hooks)
    assert not _selects(svc["spec"]["selector"], controller)

    pdbs = {o["metadata"]["name"]: o for o in objs if o["kind"] == "PodDisruptionBudget"}
    assert sorted(pdbs) == [CONTROLLER, WEBHOOKS]
    for name, own, other in ((CONTROLLER, controller, hooks), (WEBHOOKS, hooks, controller)):
        selector = pdbs[name]["spec"]["selector"]["matchLabels"]
        assert selector == own["spec"]["selector"]["matchLabels"], name
        assert _selects(selector, own) and not _selects(selector, other), name
        assert pdbs[name]["spec"]["minAvailable"] == 1

    # Both components' /metrics are reachable through Services the ServiceMonitor selects.
    metrics = sorted((o for o in objs if o["kind"] == "Service"
                      and o["metadata"]["labels"].get("app.kubernetes.io/component") == "metrics"),
                     key=lambda o: o["metadata"]["name"])
    assert sorted(o["metadata"]["name"] for o in metrics) == [f"{CONTROLLER}-metrics", f"{WEBHOOKS}-metrics"]
    for svc_, own, other in ((metrics[0], controller, hooks), (metrics[1], hooks, controller)):
        assert _selects(svc_["spec"]["selector"], own) and not _selects(svc_["spec"]["selector"], other)


def test_without_a_separate_deployment_one_deployment_serves_the_webhooks(helm: Path) -> None:
    """webhook.separateDeployment.enabled=false: every operator replica serves admission, one reconciles."""
    objs = render(helm, SINGLE)
    deploy = one(objs, "Deployment")
    assert deploy["metadata"]["name"] == CONTROLLER and deploy["spec"]["replicas"] == 2
    c = _container(objs)
    # `--component all` (the default): reconcile and serve admission in one process.
    assert c["args"][:5] == [
        "--peering=controlled-friction", "--webhook-mode=service", "--webhook-port=9443",
        "--metrics-port=8080", "--health-port=8081",
    ]
    assert not [a for a in c["args"] if a.startswith("--component")]
    _assert_hardened_and_probed(deploy)
    _assert_serves_webhooks(c, _pod(deploy))
    svc = one(objs, "Service", "controlled-friction-webhook")
    assert _selects(svc["spec"]["selector"], deploy)
    pdb = one(objs, "PodDisruptionBudget")
    assert pdb["metadata"]["name"] == CONTROLLER
    assert pdb["spec"]["selector"]["matchLabels"] == deploy["spec"]["selector"]["matchLabels"]


def test_single_replica_without_webhook_or_peering(helm: Path) -> None:
    objs = render(helm, "replicaCount=1", "webhook.enabled=false", "operator.peering.enabled=false")
    # No webhooks Deployment either, although webhook.separateDeployment.enabled is on by default.
    assert one(objs, "Deployment")["metadata"]["name"] == CONTROLLER
    c = _container(objs)
    assert "--webhook-mode=none" in c["args"] and not any(a.startswith("--peering") for a in c["args"])
    assert "webhook-tls" not in {m["name"] for m in c["volumeMounts"]}
    assert "webhook" not in {p["name"] for p in c["ports"]}
    assert "PodDisruptionBudget" not in kinds(objs)  # minAvailable 1 of 1 would block every drain
    assert "ClusterKopfPeering" not in kinds(objs) and "Secret" not in kinds(objs)
    assert [o["metadata"]["name"] for o in objs if o["kind"] == "Service"] == ["controlled-friction-metrics"]


def _budget_keeps_one_of(objs: list[Obj], name: str) -> Obj:
    """The PodDisruptionBudget `name` keeps one pod of the Deployment `name`, and selects exactly its pods."""
    pdb = one(objs, "PodDisruptionBudget", name)
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == one(objs, "Deployment", name)["spec"]["selector"]["matchLabels"]
    return pdb


def test_pdb_keeps_one_operator(helm: Path) -> None:
    _budget_keeps_one_of(render(helm), CONTROLLER)


def test_pdb_keeps_one_webhook_pod(helm: Path) -> None:
    """The webhooks fail closed: a drain taking every webhook pod would refuse every Rollout write."""
    objs = render(helm)
    pdb = _budget_keeps_one_of(objs, WEBHOOKS)
    assert pdb["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "webhooks"
    # Each budget follows its own Deployment's replicas: none for a single replica.
    objs = render(helm, "webhook.separateDeployment.replicas=1")
    assert one(objs, "PodDisruptionBudget")["metadata"]["name"] == CONTROLLER
    objs = render(helm, "replicaCount=1")
    assert one(objs, "PodDisruptionBudget")["metadata"]["name"] == WEBHOOKS
    assert "PodDisruptionBudget" not in kinds(render(helm, "podDisruptionBudget.enabled=false"))


def test_webhooks_deployment_scales_on_its_own(helm: Path) -> None:
    objs = render(helm, "webhook.separateDeployment.replicas=3")
    assert one(objs, "Deployment", WEBHOOKS)["spec"]["replicas"] == 3
    assert one(objs, "Deployment", CONTROLLER)["spec"]["replicas"] == 2
    objs = render(helm, "replicaCount=3")
    assert one(objs, "Deployment", WEBHOOKS)["spec"]["replicas"] == 2
    assert one(objs, "Deployment", CONTROLLER)["spec"]["replicas"] == 3


# ---------------------------------------------------------------- webhook Service and certificates


def test_webhook_service_routes_443_to_the_webhook_port(helm: Path) -> None:
    objs = render(helm)
    svc = one(objs, "Service", "controlled-friction-webhook")
    assert svc["spec"]["ports"] == [{"name": "https", "port": 443, "targetPort": "webhook", "protocol": "TCP"}]
    # Port "webhook" exists on the pods the Service selects, the webhooks Deployment's (by default).
    assert _selects(svc["spec"]["selector"], one(objs, "Deployment", WEBHOOKS))
    assert "webhook" in {p["name"] for p in _container(objs, WEBHOOKS)["ports"]}


def test_helm_generated_certificate_is_used_as_is_by_the_operator(helm: Path, tmp_path: Path) -> None:
    """The operator (certs.generate) must accept the mounted pair without rewriting it: the mount is
    read-only, and every replica must present the same CA."""
    secret = one(render(helm), "Secret")
    assert secret["type"] == "kubernetes.io/tls"
    for key, value in secret["data"].items():
        (tmp_path / key).write_bytes(base64.b64decode(value))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert sorted(before) == ["ca.crt", "tls.crt", "tls.key"]
    paths = certs.generate(certs.service_hosts("controlled-friction-webhook", NAMESPACE), tmp_path)
    assert paths == certs.paths_in(tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_existing_secret_and_cert_manager_modes(helm: Path) -> None:
    objs = render(helm, "webhook.existingSecret=my-tls")
    assert "Secret" not in kinds(objs)
    pod = _pod(one(objs, "Deployment", WEBHOOKS))
    assert {v["name"]: v for v in pod["volumes"]}["webhook-tls"]["secret"]["secretName"] == "my-tls"
    pod = _pod(one(render(helm, "webhook.existingSecret=my-tls", SINGLE), "Deployment"))
    assert {v["name"]: v for v in pod["volumes"]}["webhook-tls"]["secret"]["secretName"] == "my-tls"

    objs = render(helm, "certManager.enabled=true")
    assert "Secret" not in kinds(objs)
    cert = one(objs, "Certificate", "controlled-friction-webhook")
    assert cert["spec"]["secretName"] == "controlled-friction-webhook-tls"
    assert "controlled-friction-webhook.controlled-friction.svc" in cert["spec"]["dnsNames"]
    assert cert["spec"]["issuerRef"] == {"name": "controlled-friction-ca", "kind": "Issuer"}
    assert one(objs, "Certificate", "controlled-friction-ca")["spec"]["isCA"] is True

    objs = render(helm, "certManager.enabled=true", "certManager.issuerRef.name=corp-ca",
                  "certManager.issuerRef.kind=ClusterIssuer")
    assert kinds(objs).count("Issuer") == 0
    assert one(objs, "Certificate")["spec"]["issuerRef"] == {"name": "corp-ca", "kind": "ClusterIssuer"}


# ---------------------------------------------------------------- RBAC


def _rules(obj: Obj) -> list[Obj]:
    return list(obj["rules"])


def test_operator_rbac_is_least_privilege(helm: Path) -> None:
    objs = render(helm)
    role = one(objs, "ClusterRole", "controlled-friction-operator")
    for rule in _rules(role):
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[field], rule
        assert "secrets" not in rule["resources"] and "pods" not in rule["resources"], rule
        assert "delete" not in rule["verbs"] and "deletecollection" not in rule["verbs"], rule
    binding = one(objs, "ClusterRoleBinding", "controlled-friction-operator")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": names.OPERATOR_SERVICE_ACCOUNT,
                                    "namespace": NAMESPACE}]

    # Webhook configurations: only the two kopf manages, by the name the operator gives them.
    from controlled_friction.operator.webhooks import MANAGED_NAME

    webhook_rules = [r for r in _rules(role) if "admissionregistration.k8s.io" in r["apiGroups"]]
    assert {tuple(r["verbs"]): r.get("resourceNames") for r in webhook_rules} == {
        ("create",): None, ("get", "patch", "update"): [MANAGED_NAME],
    }
    # Gateway API: routes are read and weight-patched, never created or deleted; Services are watched.
    routes = [r for r in _rules(role) if r["apiGroups"] == ["gateway.networking.k8s.io"]]
    assert routes == [{"apiGroups": ["gateway.networking.k8s.io"], "resources": ["httproutes"],
                       "verbs": ["get", "list", "watch", "patch"]}]
    services = [r for r in _rules(role) if r["resources"] == ["services"]]
    assert services[0]["verbs"] == ["get", "list", "watch", "create"]
    peering = [r for r in _rules(role) if r["apiGroups"] == ["kopf.dev"]]
    assert {"patch"} & set(peering[1]["verbs"]) and peering[1]["resourceNames"] == ["controlled-friction"]

    # Secrets only in the operator's namespace, and only the approval key by name.
    secrets_role = one(objs, "Role", "controlled-friction-operator")
    assert secrets_role["metadata"]["namespace"] == NAMESPACE
    named = [r for r in _rules(secrets_role) if r.get("resourceNames")]
    assert named == [{"apiGroups": [""], "resources": ["secrets"],
                      "resourceNames": [signing_key.KEY_SECRET_NAME], "verbs": ["get"]}]


def test_aggregated_roles_and_optional_approver_binding(helm: Path) -> None:
    objs = render(helm)
    author = one(objs, "ClusterRole", "controlled-friction-rollout-author")
    assert author["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert "create" in author["rules"][0]["verbs"] and author["rules"][0]["resources"] == ["rollouts"]
    view = one(objs, "ClusterRole", "controlled-friction-view")
    assert view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    approver = one(objs, "ClusterRole", "controlled-friction-approver")
    assert approver["rules"][0] == {"apiGroups": [names.GROUP], "resources": ["rollouts"],
                                    "verbs": ["get", "list", "watch", "patch"]}
    assert not [o for o in objs if o["kind"] == "ClusterRoleBinding" and o["metadata"]["name"].endswith("approver")]

    objs = render(helm, f"approvers.groups={{{names.SENIOR_GROUP}}}")
    binding = one(objs, "ClusterRoleBinding", "controlled-friction-approver")
    assert binding["roleRef"]["name"] == "controlled-friction-approver"
    assert binding["subjects"] == [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group",
                                    "name": names.SENIOR_GROUP}]


# ---------------------------------------------------------------- the default FrictionPolicy


def test_default_policy_is_valid_and_strict_for_critical_services(helm: Path) -> None:
    policy = one(render(helm), "FrictionPolicy")
    assert policy["apiVersion"] == names.API_VERSION
    spec = FrictionPolicySpec.model_validate(policy["spec"])
    critical = {names.LABEL_TIER: "critical"}
    assert spec.selector.matches(critical, {}) and spec.selector.matches({}, critical)
    assert not spec.selector.matches({names.LABEL_TIER: "standard"}, {})
    rules = spec.rules
    assert rules.approvals is not None
    assert (rules.approvals.count, rules.approvals.approver_groups) == (2, [names.SENIOR_GROUP])
    assert (rules.max_first_weight, rules.min_bake, rules.min_steps) == (5, 120.0, 3)
    ai = spec.ai_assisted
    assert ai is not None and ai.approvals is not None and ai.min_bake is not None and rules.min_bake is not None
    assert ai.approvals.count == rules.approvals.count + 1
    assert ai.min_bake > rules.min_bake


def test_default_policy_follows_values(helm: Path) -> None:
    objs = render(helm, "defaultPolicy.byNamespaceLabel=false", "defaultPolicy.selectLabel.value=gold",
                  "defaultPolicy.aiAssisted.enabled=false", "defaultPolicy.name=gold-tier",
                  "defaultPolicy.prometheusAddress=http://prom.example:9090")
    policy = one(objs, "FrictionPolicy", "gold-tier")
    spec = FrictionPolicySpec.model_validate(policy["spec"])
    assert spec.selector.namespace_selector is None and spec.ai_assisted is None
    assert spec.selector.matches({names.LABEL_TIER: "gold"}, {})
    assert spec.prometheus.address == "http://prom.example:9090"
    assert "FrictionPolicy" not in kinds(render(helm, "defaultPolicy.enabled=false"))


# ---------------------------------------------------------------- metrics


def test_service_monitor_is_optional(helm: Path) -> None:
    assert "ServiceMonitor" not in kinds(render(helm))
    objs = render(helm, "serviceMonitor.enabled=true", "serviceMonitor.labels.release=prom")
    monitor = one(objs, "ServiceMonitor")
    metrics_svc = one(objs, "Service", "controlled-friction-metrics")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= metrics_svc["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == metrics_svc["spec"]["ports"][0]["name"] == "metrics"
    assert monitor["metadata"]["labels"]["release"] == "prom"


# ---------------------------------------------------------------- plain manifests


def test_manifests_are_up_to_date(helm: Path, tmp_path: Path) -> None:
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "generate-manifests.sh"), str(tmp_path)],
                          env={"PATH": "/usr/bin:/bin", "HELM": str(helm), "PYTHON": sys.executable},
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    for name in ("crds.yaml", "install.yaml"):
        assert (tmp_path / name).read_text() == (ROOT / "manifests" / name).read_text(), (
            f"manifests/{name} is stale: run scripts/generate-manifests.sh"
        )


def test_plain_manifests_are_complete_and_ship_no_private_key() -> None:
    crds = [d for d in yaml.safe_load_all((ROOT / "manifests" / "crds.yaml").read_text()) if d]
    assert sorted(d["metadata"]["name"] for d in crds) == [
        "clusterkopfpeerings.kopf.dev", f"frictionpolicies.{names.GROUP}", f"rollouts.{names.GROUP}",
    ]
    install = [d for d in yaml.safe_load_all((ROOT / "manifests" / "install.yaml").read_text()) if d]
    assert (install[0]["kind"], install[0]["metadata"]["name"]) == ("Namespace", NAMESPACE)
    assert "CustomResourceDefinition" not in kinds(install) and "Secret" not in kinds(install)
    assert "PRIVATE KEY" not in (ROOT / "manifests" / "install.yaml").read_text()
    assert "tls.key" not in json.dumps(install)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="scripts/create-webhook-secret.sh needs openssl")
def test_create_webhook_secret_script_makes_a_pair_the_operator_accepts(tmp_path: Path) -> None:
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "create-webhook-secret.sh"), "--namespace", "ops",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert sorted(before) == ["ca.crt", "tls.crt", "tls.key"]
    certs.generate(certs.service_hosts("controlled-friction-webhook", "ops"), tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    # ... and one for another namespace is not mistaken for it (the operator would replace it).
    assert not certs.covered_hosts(_load_cert(tmp_path / "tls.crt")) >= set(
        certs.service_hosts("controlled-friction-webhook", NAMESPACE))


def _load_cert(path: Path) -> Any:
    from cryptography import x509

    return x509.load_pem_x509_certificate(path.read_bytes())


# ---------------------------------------------------------------- Dockerfile (no Docker engine here)


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, rest = line.partition(" ")
            out.append((instruction.upper(), rest.strip()))
    return out


def test_dockerfile_is_multi_stage_non_root_with_the_run_entrypoint() -> None:
    ins = _dockerfile_instructions()
    froms = [rest for i, rest in ins if i == "FROM"]
    args = dict(rest.split("=", 1) for i, rest in ins if i == "ARG")
    assert args["PYTHON_IMAGE"] == "python:3.11-slim"
    assert froms == ["${PYTHON_IMAGE} AS builder", "${PYTHON_IMAGE}"]
    final = ins[max(n for n, (i, _) in enumerate(ins) if i == "FROM"):]
    users = [rest for i, rest in final if i == "USER"]
    assert users and users[-1].split(":")[0] == "65532"
    (entrypoint,) = [rest for i, rest in final if i == "ENTRYPOINT"]
    assert json.loads(entrypoint) == ["controlled-friction", "run"]
    assert ("COPY", "--from=builder /opt/venv /opt/venv") in final
    assert not [rest for i, rest in final if i == "RUN"], "the final stage should only copy the venv"


def test_dockerignore_sends_only_what_the_build_copies() -> None:
    lines = [ln for ln in (ROOT / ".dockerignore").read_text().splitlines() if ln and not ln.startswith("#")]
    assert lines[0] == "*"
    allowed = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    sources = {
        src.rstrip("/")
        for i, rest in _dockerfile_instructions() if i == "COPY" and not rest.startswith("--from")
        for src in rest.split()[:-1]  # the last word is the destination
    }
    assert sources == {"pyproject.toml", "README.md", "controlled_friction"}
    assert sources <= allowed, sources - allowed


def test_wheel_from_the_docker_build_context_has_crds_and_entry_point(tmp_path: Path) -> None:
    """Build the wheel from exactly the files the Dockerfile copies, as its builder stage does."""
    context = tmp_path / "context"
    context.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, context / name)
    shutil.copytree(ROOT / "controlled_friction", context / "controlled_friction",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp_path / "wheels"
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(context)],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    (wheel,) = out.glob("controlled_friction-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        files = set(zf.namelist())
        entry_points = next(zf.read(n).decode() for n in files if n.endswith("entry_points.txt"))
    assert {"controlled_friction/crds/rollouts.yaml", "controlled_friction/crds/frictionpolicies.yaml"} <= files
    assert "controlled-friction = controlled_friction.cli.main:app" in entry_points
