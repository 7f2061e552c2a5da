"""Rollouts routed by a Gateway API HTTPRoute, through the real sandbox: the operator's weights on the
route follow the steps exactly, the simulator (the data plane) measures that share, a rule the user
owns in the same route is never touched, a rollback is a route write that leaves stable alone, an
operator restart mid-step resumes the same weight without a write, a deleted route holds the canary,
and an HPA object's scale writes resize the canary mid-canary.
"""

from __future__ import annotations

import copy
import time
from typing import Any

import pytest
from kubernetes import client

from controlled_friction import names, traffic_routing
from controlled_friction.adapters.prometheus import PrometheusClient
from controlled_friction.sandbox import cluster
from controlled_friction.sandbox.cluster import SandboxInfo
from controlled_friction.sandbox.operator_proc import OperatorProcess

from .rollouts import admin, apply_as, deployment, kubectl_as, revision, rollout, status, wait_phase
from .waiting import wait_for

pytestmark = pytest.mark.e2e

G, V, P = traffic_routing.GATEWAY_GROUP, traffic_routing.HTTPROUTE_VERSION, traffic_routing.HTTPROUTE_PLURAL
STABLE, CANARY = traffic_routing.service_name("checkout", "stable"), traffic_routing.service_name("checkout", "canary")
USER_RULE = {"matches": [{"path": {"type": "PathPrefix", "value": "/static"}}],
             "backendRefs": [{"name": "assets", "port": 80, "weight": 1}]}


def http_route(namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{G}/{V}", "kind": "HTTPRoute",
        "metadata": {"name": "checkout", "namespace": namespace},
        "spec": {
            "parentRefs": [{"name": "shop-gateway"}],
            "rules": [
                {"matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                 "backendRefs": [{"name": STABLE, "port": 80, "weight": 100}]},  # the operator adds the canary
                copy.deepcopy(USER_RULE),
            ],
        },
    }


def routed(namespace: str, image: str, steps: list[dict[str, Any]], **kw: Any) -> dict[str, Any]:
    obj = rollout(namespace, image, steps, **kw)
    obj["spec"]["trafficRouting"] = {"gatewayAPI": {"httpRoute": "checkout"}}
    obj["spec"]["service"] = {"name": "checkout", "port": 80, "targetPort": 8080}
    return obj


def get_route(api: client.CustomObjectsApi, ns: str) -> dict[str, Any]:
    return dict(api.get_namespaced_custom_object(G, V, ns, P, "checkout"))


def route_weight(api: client.CustomObjectsApi, ns: str) -> int | None:
    state = traffic_routing.route_weights(get_route(api, ns), STABLE, CANARY)
    return state.weight if isinstance(state, traffic_routing.RouteWeights) else None


def wait_weight(api: client.CustomObjectsApi, kube: Any, ns: str, weight: int, timeout: float = 90) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        st = status(kube, ns)
        ok = route_weight(api, ns) == weight and st.get("canaryWeight") == weight and st.get("routeWeight") == weight
        return st if ok else None

    try:
        found: dict[str, Any] = wait_for(check, timeout, message=f"route and status at weight {weight}")
    except TimeoutError as exc:
        st = status(kube, ns)
        raise TimeoutError(f"{exc}; route weight {route_weight(api, ns)}, phase {st.get('phase')}: "
                           f"{st.get('message')}") from None
    return found


def measured_share(sandbox: SandboxInfo, ns: str, window: str = "60s") -> tuple[float, float]:
    """The simulator's canary share of requests over `window`, as Prometheus scraped its counters."""
    prom = PrometheusClient(f"http://127.0.0.1:{sandbox.ports['prometheus']}")
    sel = f'namespace="{ns}",service="checkout"'
    canary = prom.instant(f'sum(increase(http_requests_total{{{sel},track="canary"}}[{window}]))') or 0.0
    total = prom.instant(f"sum(increase(http_requests_total{{{sel}}}[{window}]))") or 0.0
    return (100.0 * canary / total if total else 0.0), total


def test_route_weights_follow_the_steps_the_share_is_measured_restart_resumes_and_rollback_is_a_route_write(
    live_operator: OperatorProcess, sandbox: SandboxInfo, namespace: str, kube: client.ApiClient,
) -> None:
    ns, api, k = namespace, client.CustomObjectsApi(kube), admin()
    api.create_namespaced_custom_object(G, V, ns, P, http_route(ns))
    user_rule = get_route(api, ns)["spec"]["rules"][1]  # as the API server defaulted it (group, kind)
    assert user_rule["backendRefs"][0]["name"] == USER_RULE["backendRefs"][0]["name"]
    steps = [{"setWeight": 5}, {"pause": {"duration": "75s"}}, {"setWeight": 30}, {"pause": {}}]
    v1 = routed(ns, "shop/app:1", steps)
    apply_as("dave", v1)
    wait_phase(k, ns, "Healthy", timeout=90, revision_=revision(v1))
    core = client.CoreV1Api(kube)
    for track, svc in (("stable", STABLE), ("canary", CANARY)):
        sel = core.read_namespaced_service(svc, ns).spec.selector
        assert sel == traffic_routing.service_selector("checkout", track)
    assert route_weight(api, ns) == 0  # the operator's rule: stable 100, canary 0

    v2 = routed(ns, "shop/app:2", steps)
    apply_as("dave", v2)
    st = wait_weight(api, k, ns, 5)
    # 5% of 4 replicas, exactly: without a router 1 canary pod next to 4 would be 20%.
    assert deployment(k, ns, "canary")["spec"]["replicas"] == 1
    assert deployment(k, ns, "stable")["spec"]["replicas"] == 4
    assert st["effectiveWeight"] == 5.0
    assert get_route(api, ns)["spec"]["rules"][1] == user_rule
    started = time.monotonic()
    wait_for(lambda: time.monotonic() - started > 63, timeout=80, interval=2, message="a minute at 5%")
    share, total = measured_share(sandbox, ns)
    assert total > 2000, f"only {total:.0f} requests in a minute (50 req/s expected)"
    assert abs(share - 5.0) <= 2.0, f"measured canary share {share:.2f}% for weight 5%"
    print(f"measured canary share {share:.2f}% over {total:.0f} requests at weight 5%")

    wait_weight(api, k, ns, 30, timeout=60)
    wait_phase(k, ns, "Paused", timeout=30)
    assert deployment(k, ns, "canary")["spec"]["replicas"] == 2  # ceil(4 * 30%)
    assert get_route(api, ns)["spec"]["rules"][1] == user_rule

    # An operator restart mid-step resumes the same weight, without writing the route.
    rv = get_route(api, ns)["metadata"]["resourceVersion"]
    live_operator.stop()
    live_operator.start()
    live_operator.wait_webhook_ready()
    time.sleep(8)
    st = status(k, ns)
    assert (st["phase"], st["canaryWeight"], st["routeWeight"]) == ("Paused", 30, 30), st.get("message")
    assert get_route(api, ns)["metadata"]["resourceVersion"] == rv

    # Rollback: the route goes to 0 first (one write); stable is never touched.
    stable_before = deployment(k, ns, "stable")
    code, out = kubectl_as("alice", "annotate", "rollout", "checkout", "-n", ns, f"{names.ANN_ACTION}=abort",
                           "--overwrite")
    assert code == 0, out
    wait_phase(k, ns, "RolledBack", timeout=60)
    wait_for(lambda: route_weight(api, ns) == 0, timeout=30, message="route back to stable 100")
    wait_for(lambda: deployment(k, ns, "canary")["spec"]["replicas"] == 0, timeout=60, message="canary scaled down")
    stable_after = deployment(k, ns, "stable")
    assert stable_after["metadata"]["generation"] == stable_before["metadata"]["generation"]
    assert stable_after["spec"]["template"] == stable_before["spec"]["template"]
    assert get_route(api, ns)["spec"]["rules"][1] == user_rule


def test_deleting_the_route_mid_canary_holds_with_a_clear_message(
    live_operator: OperatorProcess, namespace: str, kube: client.ApiClient,
) -> None:
    ns, api, k = namespace, client.CustomObjectsApi(kube), admin()
    api.create_namespaced_custom_object(G, V, ns, P, http_route(ns))
    steps = [{"setWeight": 20}, {"pause": {"duration": "10s"}}, {"setWeight": 50}]
    v1 = routed(ns, "shop/app:1", steps)
    apply_as("dave", v1)
    wait_phase(k, ns, "Healthy", timeout=90, revision_=revision(v1))
    apply_as("dave", routed(ns, "shop/app:2", steps))
    wait_weight(api, k, ns, 20)
    stable_before = deployment(k, ns, "stable")
    api.delete_namespaced_custom_object(G, V, ns, P, "checkout")
    st = wait_phase(k, ns, "Paused", timeout=30)
    assert "not found" in st["message"] and "create the route" in st["message"], st["message"]
    time.sleep(15)  # well past the bake: still held, never promoted
    st = status(k, ns)
    assert st["phase"] == "Paused" and st["currentStepIndex"] == 1 and st["stableRevision"] == revision(v1)
    assert deployment(k, ns, "stable")["spec"]["template"] == stable_before["spec"]["template"]
    assert deployment(k, ns, "canary")["spec"]["replicas"] == 1  # the canary stays as it was


def test_an_hpa_scale_write_resizes_the_canary_for_its_share_mid_canary(
    live_operator: OperatorProcess, namespace: str, kube: client.ApiClient,
) -> None:
    """The HPA controller runs in the sandbox's controller-manager, but there is no metrics API, so it
    cannot compute a recommendation: the test creates a real HPA targeting the Rollout (the API server
    validates its scaleTargetRef against the scale subresource) and then writes the scale subresource
    as the HPA controller would (PUT .../rollouts/checkout/scale)."""
    ns, api, k = namespace, client.CustomObjectsApi(kube), admin()
    api.create_namespaced_custom_object(G, V, ns, P, http_route(ns))
    steps = [{"setWeight": 25}, {"pause": {}}]
    v1 = routed(ns, "shop/app:1", steps)
    apply_as("dave", v1)
    wait_phase(k, ns, "Healthy", timeout=90, revision_=revision(v1))
    st = status(k, ns)
    assert st["replicas"] == 4 and st["selector"].endswith(f"{names.LABEL_TRACK}=stable")
    hpa = {
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "checkout", "namespace": ns},
        "spec": {"scaleTargetRef": {"apiVersion": names.API_VERSION, "kind": "Rollout", "name": "checkout"},
                 "minReplicas": 2, "maxReplicas": 12,
                 "metrics": [{"type": "Resource", "resource": {"name": "cpu",
                                                               "target": {"type": "Utilization",
                                                                          "averageUtilization": 60}}}]},
    }
    client.AutoscalingV2Api(kube).create_namespaced_horizontal_pod_autoscaler(ns, hpa)
    apply_as("dave", routed(ns, "shop/app:2", steps))
    wait_weight(api, k, ns, 25)
    assert deployment(k, ns, "canary")["spec"]["replicas"] == 1  # ceil(4 * 25%)

    scale = api.get_namespaced_custom_object_scale(names.GROUP, names.VERSION, ns, names.ROLLOUT_PLURAL, "checkout")
    assert scale["status"]["replicas"] == 4 and "selector" in scale["status"]
    scale["spec"]["replicas"] = 12
    api.replace_namespaced_custom_object_scale(names.GROUP, names.VERSION, ns, names.ROLLOUT_PLURAL, "checkout",
                                               scale)
    wait_for(lambda: deployment(k, ns, "canary")["spec"]["replicas"] == 3, timeout=60,
             message="canary resized to ceil(12 * 25%) = 3")
    wait_for(lambda: deployment(k, ns, "stable")["spec"]["replicas"] == 12, timeout=30, message="stable at 12")
    wait_for(lambda: status(k, ns).get("replicas") == 12, timeout=30, message="status.replicas follows")
    assert route_weight(api, ns) == 25 and status(k, ns)["phase"] == "Paused"
    cluster.kubectl("get", "hpa", "checkout", "-n", ns)  # the object the HPA controller reconciles is there
