"""End-to-end: the walk-arounds of the approval gate, tried through the real kube-apiserver.

The users are the contract's (alice, bob: senior engineers; dave, mallory: engineers) with what a
real cluster gives a team: the built-in `edit` ClusterRole bound in their namespace, into which the
chart's aggregated ClusterRoles (rendered from `charts/controlled-friction/templates/rbac.yaml`)
add Rollouts. RBAC lets every walk-around below through; the webhooks must not.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from controlled_friction import names
from controlled_friction.models.approval import ApprovalEntry, dump_record, sign
from controlled_friction.sandbox import cluster
from controlled_friction.sandbox.build import binary, ensure_built
from controlled_friction.sandbox.operator_proc import OperatorProcess

from .rollouts import admin, apply_as, deployment, kubectl_as, revision, rollout, wait_phase
from .waiting import wait_for

pytestmark = pytest.mark.e2e
CHART = Path(__file__).resolve().parents[2] / "charts" / "controlled-friction"
PAUSED = [{"setWeight": 25}, {"pause": {}}, {"setWeight": 50}]
TRIED: list[str] = []
ALLOWED: list[str] = []


@pytest.fixture(scope="module", autouse=True)
def _walkaround_summary() -> Iterator[None]:
    yield
    print(f"\nwalk-around variants tried through the API server: {len(TRIED)} refused ({', '.join(TRIED)}); "
          f"{len(ALLOWED)} legitimate actions still allowed ({', '.join(ALLOWED)})")


@pytest.fixture(scope="module")
def chart_roles(sandbox: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The chart's aggregated ClusterRoles, as `helm install` creates them (release name unique here)."""
    if not binary("helm").exists():
        ensure_built(["helm"])
    release = f"cf-walk-{uuid.uuid4().hex[:5]}"
    home = tmp_path_factory.mktemp("helm-home")
    env = {**os.environ, **{f"HELM_{d.upper()}_HOME": str(home / d) for d in ("cache", "config", "data")}}
    proc = subprocess.run([str(binary("helm")), "template", release, str(CHART), "--namespace", "cf-walk",
                           "--kube-version", "1.36.0", "--show-only", "templates/rbac.yaml"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rendered = proc
    roles = [doc for doc in yaml.safe_load_all(rendered.stdout) if doc and doc["kind"] == "ClusterRole"
             and "rbac.authorization.k8s.io/aggregate-to-edit" in (doc["metadata"].get("labels") or {})]
    assert roles, "the chart aggregates no ClusterRole into edit"
    cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(roles))
    yield
    cluster.kubectl("delete", "clusterrole", *[r["metadata"]["name"] for r in roles], "--ignore-not-found",
                    check=False)


@pytest.fixture
def team(namespace: str, chart_roles: None) -> str:
    """`edit` for both groups in the test namespace, as a platform team grants it."""
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": "team-edit", "namespace": namespace},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": g}
                     for g in (names.SENIOR_GROUP, "engineers")],
    }
    cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(binding))
    for verb, resource in (("delete", f"{names.ROLLOUT_PLURAL}.{names.GROUP}"), ("patch", "deployments.apps"),
                           ("update", "deployments.apps/scale"), ("delete", "deployments.apps")):
        wait_for(lambda v=verb, r=resource: kubectl_as("dave", "auth", "can-i", v, r, "-n", namespace)[1] == "yes",
                 60, message=f"dave may {verb} {resource} (edit + the chart's aggregated roles)")
    return namespace


def refused(variant: str, result: tuple[int, str], *needles: str) -> None:
    code, out = result
    TRIED.append(variant)
    assert code != 0, f"{variant}: accepted ({out})"
    for n in needles:
        assert n in out, f"{variant}: message lacks {n!r}: {out}"


def allowed(variant: str, result: tuple[int, str]) -> None:
    code, out = result
    ALLOWED.append(variant)
    assert code == 0, f"{variant}: refused ({out})"


def _canary_in_progress(ns: str, **kw: Any) -> dict[str, Any]:
    kube = admin()
    v1 = rollout(ns, "shop/app:1", PAUSED, **kw)
    apply_as("dave", v1)
    wait_phase(kube, ns, "Healthy", revision_=revision(v1))
    v2 = rollout(ns, "shop/app:2", PAUSED, **kw)
    apply_as("dave", v2)
    wait_for(lambda: kube.get_deployment(ns, "checkout-canary"), 60, message="canary Deployment")
    wait_phase(kube, ns, "Paused", timeout=90)
    return v2


def _plain_deployment(ns: str) -> None:
    allowed("create an unrelated Deployment",
            kubectl_as("dave", "create", "deployment", "plain", "--image=shop/plain:1", "-n", ns))


def test_owned_workloads_are_the_operators_alone(live_operator: OperatorProcess, team: str):
    ns, kube = team, admin()
    v2 = _canary_in_progress(ns)
    stable_before = deployment(kube, ns, "stable")
    owner = f"belongs to Rollout {ns}/checkout"

    refused("kubectl set image on the stable Deployment",
            kubectl_as("dave", "set", "image", "deploy/checkout-stable", "app=evil/app:666", "-n", ns),
            owner, "spec.template", f"kubectl edit rollout checkout -n {ns}")
    refused("kubectl set image on the canary Deployment, as a senior",
            kubectl_as("alice", "set", "image", "deploy/checkout-canary", "app=evil/app:666", "-n", ns), owner)
    refused("kubectl scale the stable Deployment (scale subresource)",
            kubectl_as("dave", "scale", "deploy/checkout-stable", "--replicas=0", "-n", ns),
            owner, "spec.replicas", "Rollout's spec.replicas")
    refused("kubectl patch spec.replicas",
            kubectl_as("dave", "patch", "deploy/checkout-stable", "-n", ns, "--type", "merge",
                       "-p", '{"spec":{"replicas":10}}'), owner, "spec.replicas")
    refused("kubectl rollout restart (a template annotation)",
            kubectl_as("dave", "rollout", "restart", "deploy/checkout-stable", "-n", ns), owner, "spec.template")
    refused("kubectl delete the canary Deployment",
            kubectl_as("dave", "delete", "deploy/checkout-canary", "-n", ns, "--wait=false"),
            owner, f"controlled-friction abort checkout -n {ns}")
    refused("kubectl delete the stable Deployment, as a senior",
            kubectl_as("alice", "delete", "deploy/checkout-stable", "-n", ns, "--wait=false"), owner)
    refused("remove the contract label (out of the webhook's scope)",
            kubectl_as("mallory", "label", "deploy/checkout-stable", f"{names.LABEL_ROLLOUT}-", "-n", ns),
            "metadata.labels")
    refused("remove the ownerReference (orphan it)",
            kubectl_as("mallory", "patch", "deploy/checkout-stable", "-n", ns, "--type", "json",
                       "-p", '[{"op":"remove","path":"/metadata/ownerReferences"}]'), "metadata.ownerReferences")
    allowed("annotate an owned Deployment (metadata tools write)",
            kubectl_as("dave", "annotate", "deploy/checkout-stable", "team.example.com/oncall=shop", "-n", ns))

    after = deployment(kube, ns, "stable")
    assert after["spec"]["template"] == stable_before["spec"]["template"]
    assert after["spec"]["replicas"] == stable_before["spec"]["replicas"]
    assert after["metadata"]["labels"][names.LABEL_ROLLOUT] == "checkout"

    # Unrelated workloads never reach the webhook.
    _plain_deployment(ns)
    allowed("set image on an unrelated Deployment",
            kubectl_as("dave", "set", "image", "deploy/plain", "plain=shop/plain:2", "-n", ns))
    allowed("scale an unrelated Deployment", kubectl_as("dave", "scale", "deploy/plain", "--replicas=2", "-n", ns))
    allowed("delete an unrelated Deployment", kubectl_as("dave", "delete", "deploy/plain", "-n", ns, "--wait=false"))

    # What to do instead works: scale the Rollout, and the operator resizes what it owns.
    allowed("scale through the Rollout's spec.replicas",
            kubectl_as("dave", "patch", "rollout", "checkout", "-n", ns, "--type", "merge",
                       "-p", '{"spec":{"replicas":6}}'))
    allowed("promote the paused canary", kubectl_as("dave", "annotate", "rollout", "checkout", "-n", ns,
                                                    f"{names.ANN_ACTION}=promote", "--overwrite"))
    wait_phase(kube, ns, "Healthy", timeout=120, revision_=revision(v2))
    assert "shop/app:2" in json.dumps(deployment(kube, ns, "stable")["spec"]["template"])
    wait_for(lambda: deployment(kube, ns, "stable")["spec"]["replicas"] == 6, 60,
             message="the operator scales the stable Deployment to the Rollout's replicas")

    # Deleting a non-critical Rollout works as before, and the garbage collector removes its workloads.
    allowed("delete a non-critical Rollout", kubectl_as("dave", "delete", "rollout", "checkout", "-n", ns))
    wait_for(lambda: kube.get_deployment(ns, "checkout-stable") is None
             and kube.get_deployment(ns, "checkout-canary") is None, 90,
             message="the garbage collector removes the owned Deployments")
    ALLOWED.append("garbage collection of the owned Deployments")


def test_services_the_operator_created_are_guarded(live_operator: OperatorProcess, team: str):
    ns, kube = team, admin()
    obj = rollout(ns, "shop/app:1", PAUSED)
    obj["spec"]["service"] = {"name": "checkout", "port": 80}
    apply_as("dave", obj)
    wait_phase(kube, ns, "Healthy", revision_=revision(obj))
    wait_for(lambda: kubectl_as("dave", "get", "service", "checkout", "-n", ns)[0] == 0, 60, message="Service")
    refused("repoint the operator's Service",
            kubectl_as("dave", "patch", "service", "checkout", "-n", ns, "--type", "merge",
                       "-p", '{"spec":{"selector":{"app":"evil"}}}'), f"belongs to Rollout {ns}/checkout")
    refused("delete the operator's Service", kubectl_as("dave", "delete", "service", "checkout", "-n", ns,
                                                        "--wait=false"), f"belongs to Rollout {ns}/checkout")


def _approve_delete_cli(user: str, ns: str) -> tuple[int, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "controlled_friction.cli.main", "approve-delete", "checkout", "-n", ns,
         "--kubeconfig", str(cluster.kubeconfig_path(user))], capture_output=True, text=True, timeout=60)
    return proc.returncode, (proc.stdout + proc.stderr).strip()


def _delete(user: str, ns: str) -> tuple[int, str]:
    return kubectl_as(user, "delete", "rollout", "checkout", "-n", ns, "--wait=false")


def test_deleting_a_critical_rollout_takes_two_approvers_who_are_not_the_requester(
    live_operator: OperatorProcess, team: str
):
    ns, kube = team, admin()
    v1 = rollout(ns, "shop/app:1", PAUSED, critical=True)
    apply_as("dave", v1)
    wait_phase(kube, ns, "Healthy", revision_=revision(v1))
    uid = kube.get_rollout(ns, "checkout")["metadata"]["uid"]
    hint = f"controlled-friction approve-delete checkout -n {ns}"

    refused("delete a critical Rollout without approvals", _delete("dave", ns), "needs approval by others first",
            "counted none", hint)
    code, out = _approve_delete_cli("alice", ns)
    assert code == 0 and uid in out, out
    refused("delete with one approval", _delete("dave", ns), "counted alice", "1 more from senior-engineers")
    refused("an engineer approves the deletion", _approve_delete_cli("mallory", ns), "may not approve deleting")
    refused("approve the deletion twice", _approve_delete_cli("alice", ns), "already approved deleting")
    refused("approve-delete naming another uid",
            kubectl_as("bob", "annotate", "rollout", "checkout", "-n", ns, f"{names.ANN_APPROVE_DELETE}=not-the-uid"),
            f"does not name the uid {uid}")
    forged = [sign(ApprovalEntry(user=u, groups=[names.SENIOR_GROUP], revision=f"delete:{uid}",
                                 time=datetime.now(UTC), rollout=f"{ns}/checkout"), b"guessed-key")
              for u in ("alice", "bob")]
    refused("hand-written deletion approvals",
            kubectl_as("mallory", "annotate", "rollout", "checkout", "-n", ns, "--overwrite",
                       f"{names.ANN_DELETE_APPROVALS}={dump_record(forged)}"), names.ANN_DELETE_APPROVALS)
    code, out = _approve_delete_cli("bob", ns)
    assert code == 0, out
    refused("delete by one of the two approvers (their own approval does not count)", _delete("alice", ns),
            "your own approval does not count", "counted bob")
    record = kube.get_rollout(ns, "checkout")["metadata"]["annotations"][names.ANN_DELETE_APPROVALS]

    allowed("delete a critical Rollout approved by two others", _delete("dave", ns))
    wait_for(lambda: kube.get_deployment(ns, "checkout-stable") is None, 90,
             message="the garbage collector removes the deleted Rollout's Deployments")
    ALLOWED.append("garbage collection after an approved deletion")

    # A Rollout re-created under the same name starts with no deletion approvals: copying the old
    # record into its manifest is refused, and would not count for the new uid anyway.
    copied = rollout(ns, "shop/app:1", PAUSED, critical=True)
    copied["metadata"]["annotations"] = {names.ANN_DELETE_APPROVALS: record}
    proc = cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(copied), check=False,
                           kubeconfig_file=cluster.kubeconfig_path("mallory"))
    refused("re-create the Rollout with the old deletion approvals", (proc.returncode, proc.stdout + proc.stderr),
            names.ANN_DELETE_APPROVALS)


def test_webhook_down_fails_closed_for_owned_workloads_only(live_operator: OperatorProcess, team: str):
    ns, kube = team, admin()
    v1 = rollout(ns, "shop/app:1", PAUSED)
    apply_as("dave", v1)
    wait_phase(kube, ns, "Healthy", revision_=revision(v1))
    _plain_deployment(ns)
    replicas = deployment(kube, ns, "stable")["spec"]["replicas"]
    live_operator.stop()  # the webhook configurations stay registered (persistent, fail closed)
    try:
        refused("set image on the stable Deployment while the webhook is down",
                kubectl_as("dave", "set", "image", "deploy/checkout-stable", "app=evil/app:666", "-n", ns),
                "failed calling webhook")
        refused("delete the stable Deployment while the webhook is down",
                kubectl_as("dave", "delete", "deploy/checkout-stable", "-n", ns, "--wait=false"),
                "failed calling webhook")
        refused("delete a Rollout while the webhook is down", _delete("dave", ns), "failed calling webhook")
        allowed("set image on an unrelated Deployment while the webhook is down",
                kubectl_as("dave", "set", "image", "deploy/plain", "plain=shop/plain:2", "-n", ns))
        allowed("scale an unrelated Deployment while the webhook is down",
                kubectl_as("dave", "scale", "deploy/plain", "--replicas=3", "-n", ns))
        # The scale subresource cannot be scoped by labels, so its webhook fails open (an outage must
        # not stop every HPA in the cluster): the operator puts the size back when it returns.
        code, out = kubectl_as("dave", "scale", "deploy/checkout-stable", "--replicas=0", "-n", ns)
        assert code == 0, out
    finally:
        live_operator.start()
        live_operator.wait_webhook_ready()
    wait_for(lambda: deployment(kube, ns, "stable")["spec"]["replicas"] == replicas, 90,
             message="the operator restores the stable Deployment scaled while its webhook was down")
    ALLOWED.append("scale of an owned Deployment while the webhook is down, undone by the operator")
    assert "shop/app:1" in json.dumps(deployment(kube, ns, "stable")["spec"]["template"])
