"""How long from the rollback decision to a canary share of 0: a route write vs scaling pods down.

    CF_SANDBOX_PORT_BASE=... .venv/bin/python -m benchmarks.rollback_speed [--runs 3] [--json PATH]

Through the real sandbox (kube-apiserver, controller-manager, kwok) and the real operator process:
one Rollout routed by a Gateway API HTTPRoute and one without a router, each with 4 stable replicas
and a canary paused at 20%. Each run applies a new canary revision, waits for the pause, then writes
the `abort` action and polls (every 20 ms) for

- the decision: status.phase RolledBack (the operator's status write);
- canary share 0 as the data plane sees it: with a router, the route's canary backendRef weight 0
  (what a Gateway — and the sandbox's simulator — splits by); without one, the canary Deployment's
  `readyReplicas` 0 (the simulator splits by ready pods, and so does a plain Service).

It reports decision -> share 0 (and abort -> share 0) per mode. It prints; it never asserts.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import yaml

from controlled_friction import names, traffic_routing
from controlled_friction.adapters.kube import Kube, load_api_client
from controlled_friction.revision import revision_of
from controlled_friction.sandbox import cluster
from controlled_friction.sandbox.operator_proc import OperatorProcess, install_crds, remove_webhook_configurations

G, V, P = traffic_routing.GATEWAY_GROUP, traffic_routing.HTTPROUTE_VERSION, traffic_routing.HTTPROUTE_PLURAL
POLL = 0.02


def rollout(ns: str, image: str, routed: bool) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "replicas": 4,
        "selector": {"matchLabels": {"app": "checkout"}},
        "template": {"metadata": {"labels": {"app": "checkout"}},
                     "spec": {"containers": [{"name": "app", "image": image}]}},
        "strategy": {"canary": {"steps": [{"setWeight": 20}, {"pause": {}}]}},
    }
    if routed:
        spec["trafficRouting"] = {"gatewayAPI": {"httpRoute": "checkout"}}
    return {"apiVersion": names.API_VERSION, "kind": "Rollout", "metadata": {"name": "checkout", "namespace": ns},
            "spec": spec}


def http_route(ns: str) -> dict[str, Any]:
    stable = traffic_routing.service_name("checkout", "stable")
    return {"apiVersion": f"{G}/{V}", "kind": "HTTPRoute", "metadata": {"name": "checkout", "namespace": ns},
            "spec": {"rules": [{"backendRefs": [{"name": stable, "port": 80, "weight": 100}]}]}}


def wait(predicate: Callable[[], Any], timeout: float, what: str) -> float:
    """Poll until `predicate` is truthy; the monotonic instant it first was."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return time.monotonic()
        except Exception:  # a transient API error is "not yet"
            pass
        time.sleep(POLL)
    raise TimeoutError(what)


def apply(obj: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(obj))


def one_run(kube: Kube, routed: bool) -> dict[str, float]:
    ns = f"bench-rollback-{'route' if routed else 'pods'}-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", ns)
    try:
        wait(lambda: kube.core.read_namespaced_service_account("default", ns), 30, "default ServiceAccount")
        if routed:
            kube.custom.create_namespaced_custom_object(G, V, ns, P, http_route(ns))

        def phase() -> str | None:
            return (kube.get_rollout(ns, "checkout").get("status") or {}).get("phase")

        v1 = rollout(ns, "shop/app:1", routed)
        apply(v1)
        wait(lambda: phase() == "Healthy", 120, "v1 Healthy")
        v2 = rollout(ns, "shop/app:2", routed)
        apply(v2)
        wait(lambda: phase() == "Paused" and (kube.get_rollout(ns, "checkout").get("status") or {})
             .get("canaryRevision") == revision_of(v2["spec"]["template"]), 120, "v2 paused at 20%")

        def share_zero() -> bool:
            if routed:
                route = kube.custom.get_namespaced_custom_object(G, V, ns, P, "checkout")
                state = traffic_routing.route_weights(route, traffic_routing.service_name("checkout", "stable"),
                                                      traffic_routing.service_name("checkout", "canary"))
                return isinstance(state, traffic_routing.RouteWeights) and state.share == 0.0
            dep = kube.get_deployment(ns, names.deployment_name("checkout", "canary")) or {}
            return int((dep.get("status") or {}).get("readyReplicas") or 0) == 0

        assert not share_zero(), "the canary has no share before the abort"
        t0 = time.monotonic()
        cluster.kubectl("annotate", "rollout", "checkout", "-n", ns, f"{names.ANN_ACTION}=abort", "--overwrite")
        decided: float | None = None
        zero: float | None = None
        deadline = t0 + 120
        while (decided is None or zero is None) and time.monotonic() < deadline:
            now = time.monotonic()
            if decided is None and phase() == "RolledBack":
                decided = now
            if zero is None and share_zero():
                zero = now
            time.sleep(POLL)
        if decided is None or zero is None:
            raise TimeoutError(f"decided={decided} zero={zero}")
        return {"abort_to_decision": decided - t0, "decision_to_zero": max(0.0, zero - decided),
                "abort_to_zero": zero - t0}
    finally:
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def summary(runs: list[dict[str, float]]) -> dict[str, float]:
    out = {}
    for key in ("abort_to_decision", "decision_to_zero", "abort_to_zero"):
        values = [r[key] for r in runs]
        out[f"{key}_median"] = round(statistics.median(values), 3)
        out[f"{key}_max"] = round(max(values), 3)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)
    cluster.up(quiet=True)
    install_crds()
    info = cluster.info()
    op = OperatorProcess(log_path=info.state_dir / "logs" / "bench-rollback-operator.log",
                         webhook_port=info.ports["webhook"], metrics_port=0)
    op.start()
    try:
        op.wait_webhook_ready()
        kube = Kube(load_api_client(str(cluster.kubeconfig_path("admin"))))
        results: dict[str, Any] = {}
        for mode, routed in (("router", True), ("replicas", False)):
            runs = [one_run(kube, routed) for _ in range(args.runs)]
            results[mode] = {"runs": runs, **summary(runs)}
            s = results[mode]
            print(f"{mode:9s} decision -> canary share 0: median {s['decision_to_zero_median']:.3f}s "
                  f"(max {s['decision_to_zero_max']:.3f}s); abort -> share 0: median {s['abort_to_zero_median']:.3f}s",
                  flush=True)
    finally:
        op.stop()
        remove_webhook_configurations()  # a stopped operator's fail-closed webhooks would block the sandbox
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
