"""The sandbox speaks Gateway API: the standard CRDs are installed at `sandbox up`, the example
HTTPRoute is accepted by the real schema, `traffic_routing`'s JSON patches do what they promise on
the real API server (with the operator's RBAC), and the simulator reads routes and Services as its
data plane. The operator's own use of them (weights following steps) is tested with the control loop.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config

from controlled_friction import names, traffic_routing
from controlled_friction.sandbox import cluster, gateway_api
from controlled_friction.sandbox.cluster import SandboxInfo, kubectl
from controlled_friction.sandbox.operator_proc import install_crds
from controlled_friction.sandbox.routes import list_routing_objects, route_splits
from controlled_friction.sandbox.traffic import RouteSplit

from .waiting import wait_for

pytestmark = pytest.mark.e2e

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "rollout-gateway.yaml"
JSON_PATCH = traffic_routing.JSON_PATCH_CONTENT_TYPE
G, V, P = traffic_routing.GATEWAY_GROUP, traffic_routing.HTTPROUTE_VERSION, traffic_routing.HTTPROUTE_PLURAL


def _example_route(namespace: str) -> dict[str, Any]:
    route = next(d for d in yaml.safe_load_all(EXAMPLE.read_text()) if d and d["kind"] == "HTTPRoute")
    route["metadata"]["namespace"] = namespace
    return route


def _patch(api: client.CustomObjectsApi, namespace: str, patch: list[dict[str, Any]]) -> dict[str, Any]:
    return api.patch_namespaced_custom_object(G, V, namespace, P, "storefront", patch, _content_type=JSON_PATCH)


def _service(name: str, selector: dict[str, str]) -> client.V1Service:
    return client.V1Service(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1ServiceSpec(selector=selector, ports=[client.V1ServicePort(port=80, target_port=8080)]),
    )


def test_standard_crds_are_installed_and_established(sandbox: SandboxInfo) -> None:
    for crd in gateway_api.REQUIRED_CRDS:
        out = yaml.safe_load(kubectl("get", "crd", crd, "-o", "yaml").stdout)
        established = {c["type"]: c["status"] for c in out["status"]["conditions"]}["Established"]
        assert established == "True", crd
        assert out["metadata"]["annotations"]["gateway.networking.k8s.io/bundle-version"] == (
            gateway_api.GATEWAY_API_VERSION
        )
        assert out["metadata"]["annotations"]["gateway.networking.k8s.io/channel"] == "standard"
    served = {v["name"] for v in yaml.safe_load(
        kubectl("get", "crd", f"{P}.{G}", "-o", "yaml").stdout)["spec"]["versions"] if v["served"]}
    assert V in served


def test_operator_patches_only_its_rules_weights_on_the_real_api_server(
    sandbox: SandboxInfo, kube: client.ApiClient, namespace: str
) -> None:
    admin = client.CustomObjectsApi(kube)
    admin.create_namespaced_custom_object(G, V, namespace, P, _example_route(namespace))
    route = admin.get_namespaced_custom_object(G, V, namespace, P, "storefront")  # as defaulted by the server
    stable, canary = "storefront-stable", "storefront-canary"
    assert traffic_routing.route_weights(route, stable, canary).weight == 0  # type: ignore[union-attr]

    # The operator's own identity: RBAC lets it patch routes (and nothing more is needed).
    op_api = client.CustomObjectsApi(config.new_client_from_config(  # type: ignore[no-untyped-call]
        config_file=str(cluster.kubeconfig_path("operator"))))
    patch = traffic_routing.route_weight_patch(route, stable, canary, 7)
    assert isinstance(patch, traffic_routing.RoutePatch) and patch.changed
    after = _patch(op_api, namespace, patch.patch)
    weights = traffic_routing.route_weights(after, stable, canary)
    assert isinstance(weights, traffic_routing.RouteWeights) and weights.weight == 7 and weights.share == 7.0
    assert after["spec"]["rules"][1] == route["spec"]["rules"][1]  # the user's rule, as the server stores it
    assert {k: v for k, v in after["spec"].items() if k != "rules"} == {
        k: v for k, v in route["spec"].items() if k != "rules"}

    # A patch computed from a stale read fails as a whole once the user edited that rule.
    stale = traffic_routing.route_weight_patch(after, stable, canary, 20)
    assert isinstance(stale, traffic_routing.RoutePatch)
    user_edit = [{"op": "add", "path": "/spec/rules/0/backendRefs/-", "value": {"name": "mirror", "port": 80,
                                                                               "weight": 0}}]
    _patch(admin, namespace, user_edit)
    with pytest.raises(client.ApiException) as err:
        _patch(op_api, namespace, stale.patch)
    assert err.value.status == 422
    fresh = admin.get_namespaced_custom_object(G, V, namespace, P, "storefront")
    assert traffic_routing.route_weights(fresh, stable, canary).weight == 7  # type: ignore[union-attr]
    again = traffic_routing.route_weight_patch(fresh, stable, canary, 20)
    assert isinstance(again, traffic_routing.RoutePatch)
    final = _patch(op_api, namespace, again.patch)
    assert [r["name"] for r in final["spec"]["rules"][0]["backendRefs"]] == [stable, canary, "mirror"]
    assert traffic_routing.route_weights(final, stable, canary).weight == 20  # type: ignore[union-attr]


def test_the_simulator_maps_a_real_route_and_services_to_tracks(
    sandbox: SandboxInfo, kube: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(kube)
    for track in (names.TRACK_STABLE, names.TRACK_CANARY):
        core.create_namespaced_service(namespace, _service(
            traffic_routing.service_name("storefront", track), traffic_routing.service_selector("storefront", track)))
    core.create_namespaced_service(namespace, _service("storefront-assets", {"app": "assets"}))
    route = _example_route(namespace)
    route["spec"]["rules"][0]["backendRefs"][0]["weight"] = 97
    route["spec"]["rules"][0]["backendRefs"][1]["weight"] = 3
    client.CustomObjectsApi(kube).create_namespaced_custom_object(G, V, namespace, P, route)

    def list_items(call: Any, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:  # as ClusterSource lists
        return list(json.loads(call(*args, _preload_content=False, **kwargs).data)["items"])

    services, routes = list_routing_objects(list_items, kube)
    services = [s for s in services if s["metadata"]["namespace"] == namespace]
    rollout = {"metadata": {"namespace": namespace, "name": "storefront"},
               "spec": {"trafficRouting": {"gatewayAPI": {"httpRoute": "storefront"}}}}
    splits, problems = route_splits([rollout], services, routes)
    assert problems == []
    assert splits == {(namespace, "storefront"): RouteSplit({"stable": 97, "canary": 3})}


def test_kubectl_scale_rollout_goes_through_the_scale_subresource(sandbox: SandboxInfo, namespace: str) -> None:
    # install_crds' `kubectl wait` can race a just-created CRD that has no conditions yet.
    wait_for(lambda: install_crds() or True, timeout=60, message="Rollout CRDs installed")
    rollout = next(d for d in yaml.safe_load_all(EXAMPLE.read_text()) if d and d["kind"] == "Rollout")
    rollout["metadata"]["namespace"] = namespace
    kubectl("apply", "-f", "-", stdin=yaml.safe_dump(rollout))
    kubectl("scale", "rollout", "storefront", "-n", namespace, "--replicas=7")
    assert kubectl("get", "rollout", "storefront", "-n", namespace, "-o", "jsonpath={.spec.replicas}").stdout == "7"
    scale = json.loads(kubectl("get", "--raw", f"/apis/{names.API_VERSION}/namespaces/{namespace}/rollouts/"
                                                "storefront/scale").stdout)
    assert scale["kind"] == "Scale" and scale["spec"]["replicas"] == 7
