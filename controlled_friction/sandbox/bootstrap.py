"""Objects the sandbox creates once the API server is up: RBAC for the contract identities, the
operator's namespace and ServiceAccount (with a least-privilege ClusterRole), and the fake Nodes.

Pure data: `cluster.py` applies it with `kubectl apply --server-side`, which is idempotent.
"""

from __future__ import annotations

from typing import Any

from controlled_friction.names import (
    GROUP,
    OPERATOR_NAMESPACE,
    OPERATOR_SERVICE_ACCOUNT,
    POLICY_PLURAL,
    ROLLOUT_PLURAL,
    SENIOR_GROUP,
)
from controlled_friction.sandbox.identities import ENGINEERS_GROUP
from controlled_friction.traffic_routing import GATEWAY_GROUP

Manifest = dict[str, Any]

NODE_NAMES = ("kwok-node-0", "kwok-node-1", "kwok-node-2")
ENGINEER_ROLE = "cf-sandbox:engineer"
OPERATOR_ROLE = "cf-sandbox:operator"
READ = ["get", "list", "watch"]
ALL = ["*"]


def _rule(groups: list[str], resources: list[str], verbs: list[str]) -> dict[str, list[str]]:
    return {"apiGroups": groups, "resources": resources, "verbs": verbs}


def _cluster_role(name: str, rules: list[dict[str, list[str]]]) -> Manifest:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/part-of": "cf-sandbox"}},
        "rules": rules,
    }


def _binding(kind: str, name: str, role_kind: str, role: str, subject: dict[str, str],
             namespace: str | None = None) -> Manifest:
    meta: dict[str, Any] = {"name": name, "labels": {"app.kubernetes.io/part-of": "cf-sandbox"}}
    if namespace:
        meta["namespace"] = namespace
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": kind,
        "metadata": meta,
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": role},
        "subjects": [subject],
    }


def engineer_rbac() -> list[Manifest]:
    """Seniors and engineers may work with Rollouts and read workloads everywhere, nothing more.

    Who may *approve* is not RBAC's business: both groups can patch the approve annotation; the
    admission webhook and the operator decide whether the approval counts.
    """
    role = _cluster_role(ENGINEER_ROLE, [
        _rule([GROUP], [ROLLOUT_PLURAL], ["get", "list", "watch", "create", "update", "patch"]),
        _rule([GROUP], [f"{ROLLOUT_PLURAL}/status"], READ),
        _rule([GROUP], [POLICY_PLURAL], READ),
        _rule(["apps"], ["deployments", "replicasets"], READ),
        _rule([""], ["pods", "events", "namespaces"], READ),
        _rule(["events.k8s.io"], ["events"], READ),
        _rule([GATEWAY_GROUP], ["httproutes"], READ),
    ])
    bindings = [
        _binding("ClusterRoleBinding", f"{ENGINEER_ROLE}:{group}", "ClusterRole", ENGINEER_ROLE,
                 {"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": group})
        for group in (SENIOR_GROUP, ENGINEERS_GROUP)
    ]
    return [role, *bindings]


def operator_rbac() -> list[Manifest]:
    """Namespace, ServiceAccount and what the kopf operator needs. Deliberately not cluster-admin."""
    sa_subject = {"kind": "ServiceAccount", "name": OPERATOR_SERVICE_ACCOUNT, "namespace": OPERATOR_NAMESPACE}
    role = _cluster_role(OPERATOR_ROLE, [
        _rule([GROUP], [ROLLOUT_PLURAL, f"{ROLLOUT_PLURAL}/status"], ALL),
        _rule([GROUP], [POLICY_PLURAL], READ),
        _rule([GROUP], [f"{POLICY_PLURAL}/status"], ["get", "patch", "update"]),
        _rule(["apps"], ["deployments"], ALL),
        _rule(["apps"], ["replicasets"], READ),
        _rule([""], ["pods"], READ),
        _rule([""], ["services"], ["get", "list", "watch", "create", "patch", "update"]),
        # Only the weights of its own rule's backendRefs (a JSON patch); never create or delete routes.
        _rule([GATEWAY_GROUP], ["httproutes"], ["get", "list", "watch", "patch"]),
        _rule([""], ["events"], ["create", "patch"]),
        _rule(["events.k8s.io"], ["events"], ["create", "patch"]),
        _rule([""], ["namespaces"], READ),
        _rule(["apiextensions.k8s.io"], ["customresourcedefinitions"], READ),
        _rule(["admissionregistration.k8s.io"],
              ["mutatingwebhookconfigurations", "validatingwebhookconfigurations"], ALL),
        _rule(["coordination.k8s.io"], ["leases"], ALL),
        _rule(["kopf.dev"], ["kopfpeerings", "clusterkopfpeerings"], ALL),
    ])
    secrets_role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": OPERATOR_ROLE, "namespace": OPERATOR_NAMESPACE},
        "rules": [_rule([""], ["secrets"], ALL)],
    }
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": OPERATOR_NAMESPACE}},
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": OPERATOR_SERVICE_ACCOUNT, "namespace": OPERATOR_NAMESPACE},
        },
        role,
        _binding("ClusterRoleBinding", OPERATOR_ROLE, "ClusterRole", OPERATOR_ROLE, sa_subject),
        secrets_role,
        _binding("RoleBinding", OPERATOR_ROLE, "Role", OPERATOR_ROLE, sa_subject, OPERATOR_NAMESPACE),
    ]


def nodes() -> list[Manifest]:
    """Fake Nodes; kwok (run with --manage-all-nodes) fills in their status and renews their Leases."""
    return [
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
                "labels": {
                    "type": "kwok",
                    "kubernetes.io/hostname": name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "topology.kubernetes.io/zone": f"sandbox-{i % 3}",
                },
            },
        }
        for i, name in enumerate(NODE_NAMES)
    ]


def all_manifests() -> list[Manifest]:
    return [*operator_rbac(), *engineer_rbac(), *nodes()]
