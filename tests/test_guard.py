"""The workloads a Rollout owns are the operator's alone: `guard.workload_problems` as a pure decision.

Each walk-around an engineer with the namespace `edit` role could try is a case here; the e2e test
`tests/e2e/test_walkarounds.py` sends the same ones through the real API server.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from controlled_friction import guard, names
from controlled_friction.admission import AdmissionInput

OPERATORS = frozenset({names.OPERATOR_USERNAME})
OWNER = guard.Owner("checkout", "uid-1")
DAVE = ("engineers", "system:authenticated")


def deployment(track: str = "stable", *, owned: bool = True, image: str = "shop/app:1") -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": f"checkout-{track}",
        "namespace": "shop",
        "labels": {names.LABEL_ROLLOUT: "checkout", names.LABEL_TRACK: track},
        "annotations": {"deployment.kubernetes.io/revision": "1"},
    }
    if owned:
        meta["ownerReferences"] = [{"apiVersion": names.API_VERSION, "kind": "Rollout", "name": "checkout",
                                    "uid": "uid-1", "controller": True, "blockOwnerDeletion": True}]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": {
            "replicas": 4,
            "selector": {"matchLabels": {"app": "checkout", names.LABEL_TRACK: track}},
            "template": {"metadata": {"labels": {"app": "checkout"}},
                         "spec": {"containers": [{"name": "app", "image": image}]}},
        },
        "status": {"replicas": 4},
    }


def changed(obj: dict[str, Any], *path: str, value: Any) -> dict[str, Any]:
    out = copy.deepcopy(obj)
    node = out
    for part in path[:-1]:
        node = node[part]
    if value is None:
        node.pop(path[-1], None)
    else:
        node[path[-1]] = value
    return out


def decide(op: str, old: dict[str, Any] | None, new: dict[str, Any] | None, *, user: str = "dave",
           kind: str = "Deployment", subresource: str | None = None, owner: guard.Owner | None = None,
           owner_live: bool = True) -> list[str]:
    req = AdmissionInput(op, user, DAVE, old, new, subresource)
    found = owner if owner is not None else guard.owning_rollout(old or new)
    problems = guard.workload_problems(req, kind=kind, owner=found, owner_live=owner_live, operator_users=OPERATORS)
    return [p.message for p in problems]


def set_image(dep: dict[str, Any], image: str = "evil/app:666") -> dict[str, Any]:
    return changed(dep, "spec", "template", "spec", "containers", value=[{"name": "app", "image": image}])


def test_set_image_on_the_stable_deployment_is_refused_naming_the_rollout_and_the_way_out():
    dep = deployment()
    [message] = decide("UPDATE", dep, set_image(dep))
    assert "deployment shop/checkout-stable belongs to Rollout shop/checkout" in message
    assert "spec.template" in message and "kubectl edit rollout checkout -n shop" in message


@pytest.mark.parametrize("field,value", [
    (("spec", "replicas"), 0),
    (("spec", "selector"), {"matchLabels": {"app": "checkout"}}),
])
def test_replicas_and_selector_are_the_operators(field: tuple[str, ...], value: Any):
    dep = deployment("canary")
    [message] = decide("UPDATE", dep, changed(dep, *field, value=value))
    assert ".".join(field) in message and "Rollout shop/checkout" in message
    if field == ("spec", "replicas"):
        assert "set the Rollout's spec.replicas" in message and "kubectl patch rollout checkout -n shop" in message


def test_scaling_through_the_scale_subresource_is_refused():
    old = {"kind": "Scale", "metadata": {"name": "checkout-stable", "namespace": "shop"}, "spec": {"replicas": 4}}
    new = changed(old, "spec", "replicas", value=0)
    [message] = decide("UPDATE", old, new, subresource="scale", owner=OWNER)
    assert "spec.replicas" in message and "Rollout shop/checkout" in message
    assert decide("UPDATE", old, copy.deepcopy(old), subresource="scale", owner=OWNER) == []


def test_deleting_an_owned_deployment_is_refused_unless_its_rollout_is_going():
    dep = deployment("canary")
    [message] = decide("DELETE", dep, None)
    assert "deployment shop/checkout-canary belongs to Rollout shop/checkout" in message
    assert "controlled-friction abort checkout -n shop" in message
    assert decide("DELETE", dep, None, owner_live=False) == []  # the garbage collector after the Rollout
    assert decide("DELETE", dep, None, user=names.GARBAGE_COLLECTOR_USERNAME) == []


def test_taking_the_deployment_out_of_the_webhooks_scope_is_refused():
    dep = deployment()
    unlabelled = changed(dep, "metadata", "labels", value={"app": "checkout"})
    assert any(f"metadata.labels ({names.PREFIX}*)" in m for m in decide("UPDATE", dep, unlabelled))
    orphaned = changed(dep, "metadata", "ownerReferences", value=None)
    assert any("metadata.ownerReferences" in m for m in decide("UPDATE", dep, orphaned))


def test_what_controllers_and_tools_write_passes():
    dep = deployment()
    annotated = changed(dep, "metadata", "annotations", value={"deployment.kubernetes.io/revision": "2"})
    assert decide("UPDATE", dep, annotated) == []
    other_label = changed(dep, "metadata", "labels", value={**dep["metadata"]["labels"], "team": "shop"})
    assert decide("UPDATE", dep, other_label) == []
    status = changed(dep, "status", value={"replicas": 3})
    assert decide("UPDATE", dep, status, subresource="status") == []


def test_the_operator_may_do_anything():
    dep = deployment()
    assert decide("UPDATE", dep, set_image(dep), user=names.OPERATOR_USERNAME) == []
    assert decide("DELETE", dep, None, user=names.OPERATOR_USERNAME) == []


def test_workloads_no_rollout_owns_pass():
    dep = deployment(owned=False)
    assert decide("UPDATE", dep, set_image(dep)) == []
    assert decide("DELETE", dep, None) == []
    argo = changed(deployment(), "metadata", "ownerReferences",
                   value=[{"apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout", "name": "checkout", "uid": "x"}])
    assert guard.owning_rollout(argo) is None


def test_an_orphan_to_be_can_be_changed():
    dep = deployment()
    assert decide("UPDATE", dep, set_image(dep), owner_live=False) == []


def test_services_the_operator_created_are_guarded_too():
    svc = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "checkout-canary", "namespace": "shop", "labels": {names.LABEL_ROLLOUT: "checkout"},
                     "ownerReferences": deployment()["metadata"]["ownerReferences"]},
        "spec": {"selector": {names.LABEL_TRACK: "canary"}, "ports": [{"port": 80}]},
    }
    [message] = decide("UPDATE", svc, changed(svc, "spec", "selector", value={"app": "other"}), kind="Service")
    assert "service shop/checkout-canary belongs to Rollout shop/checkout" in message and "spec" in message
    assert decide("DELETE", svc, None, kind="Service")
    assert decide("UPDATE", svc, changed(svc, "metadata", "annotations", value={"a": "b"}), kind="Service") == []


def test_the_webhook_configuration_scopes_the_guards_and_fails_closed_except_for_scale():
    """What kopf registers: object selector on the contract label (old or new object), Fail, UPDATE and
    DELETE; the unscopable scale subresource fails open."""
    import kopf
    from kopf._cogs.structs import references
    from kopf._core.engines import admission as kopf_admission

    from controlled_friction.operator import webhook_filters, webhooks  # noqa: F401  (registers the handlers)

    webhook_filters.install(names.OPERATOR_USERNAME)
    resources = [references.Resource(group="apps", version="v1", plural="deployments", namespaced=True),
                 references.Resource(group="", version="v1", plural="services", namespaced=True)]
    hooks = {h["name"].split(".")[0]: h for h in kopf_admission.build_webhooks(
        kopf.get_default_registry()._webhooks.get_all_handlers(), resources=resources,
        name_suffix=names.GROUP, client_config={"url": "https://127.0.0.1:9443"})}
    for name, resource in (("owned-deployments", "deployments"), ("owned-services", "services")):
        hook = hooks[name]
        assert hook["objectSelector"] == {"matchExpressions": [{"key": names.LABEL_ROLLOUT, "operator": "Exists"}]}
        assert hook["failurePolicy"] == "Fail"
        assert [(r["resources"], r["operations"]) for r in hook["rules"]] == [([resource], ["UPDATE", "DELETE"])]
        assert any(names.OPERATOR_USERNAME in c["expression"] for c in hook["matchConditions"])
    scale = hooks["owned-deployments-scale"]
    assert scale["failurePolicy"] == "Ignore" and scale.get("objectSelector") is None
    assert [r["resources"] for r in scale["rules"]] == [["deployments/scale"]]
    assert {"name": "operator-deployment-name", "expression": "request.name.endsWith('-stable') || "
            "request.name.endsWith('-canary')"} in scale["matchConditions"]
