"""Builders and readers shared by the end-to-end tests."""

from __future__ import annotations

from typing import Any

import yaml

from controlled_friction import names
from controlled_friction.adapters.kube import Kube, load_api_client
from controlled_friction.revision import revision_of
from controlled_friction.sandbox import cluster

from .waiting import wait_for

POLICY = "e2e-critical"
ERRORS = {"name": "errors", "kind": "errorRatio", "maxRatio": 0.05}
ORDERS = {"name": "orders", "kind": "orderRateDrop", "maxDrop": 0.5}


def critical_policy() -> dict[str, Any]:
    return {
        "apiVersion": names.API_VERSION,
        "kind": "FrictionPolicy",
        "metadata": {"name": POLICY},
        "spec": {
            "selector": {"rolloutSelector": {"matchLabels": {names.LABEL_TIER: "critical"}}},
            "rules": {"approvals": {"count": 2, "approverGroups": [names.SENIOR_GROUP], "expiry": "1h"},
                      "deletion": {"count": 2, "approverGroups": [names.SENIOR_GROUP], "expiry": "1h"}},
        },
    }


def rollout(
    namespace: str,
    image: str,
    steps: list[dict[str, Any]],
    *,
    name: str = "checkout",
    replicas: int = 4,
    metrics: list[dict[str, Any]] | None = None,
    critical: bool = False,
    sim: dict[str, str] | None = None,
    **analysis: Any,
) -> dict[str, Any]:
    return {
        "apiVersion": names.API_VERSION,
        "kind": "Rollout",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {names.LABEL_TIER: "critical"} if critical else {},
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {
                    "labels": {"app": name},
                    "annotations": {names.SIM_PREFIX + k: v for k, v in (sim or {}).items()},
                },
                "spec": {"containers": [{"name": "app", "image": image}]},
            },
            "strategy": {"canary": {"steps": steps}},
            "analysis": {"interval": "2s", "window": "10s", "minRequests": 10, "metrics": metrics or [],
                         **analysis},
        },
    }


def revision(obj: dict[str, Any]) -> str:
    return revision_of(obj["spec"]["template"])


def apply_as(user: str, obj: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(obj), kubeconfig_file=cluster.kubeconfig_path(user))


def kubectl_as(user: str, *args: str) -> tuple[int, str]:
    proc = cluster.kubectl(*args, kubeconfig_file=cluster.kubeconfig_path(user), check=False)
    return proc.returncode, (proc.stdout + proc.stderr).strip()


def admin() -> Kube:
    return Kube(load_api_client(str(cluster.kubeconfig_path("admin"))))


def status(kube: Kube, ns: str, name: str = "checkout") -> dict[str, Any]:
    return kube.get_rollout(ns, name).get("status") or {}


def wait_phase(kube: Kube, ns: str, phase: str, timeout: float = 120, name: str = "checkout",
               revision_: str | None = None) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        st = status(kube, ns, name)
        if st.get("phase") != phase:
            return None
        if revision_ and phase == "Healthy" and st.get("stableRevision") != revision_:
            return None
        return st

    try:
        return wait_for(check, timeout, message=f"{ns}/{name} phase {phase}")
    except TimeoutError as exc:
        st = status(kube, ns, name)
        raise TimeoutError(f"{exc}; now phase={st.get('phase')} message={st.get('message')!r}") from None


def deployment(kube: Kube, ns: str, track: str, name: str = "checkout") -> dict[str, Any]:
    dep = kube.get_deployment(ns, names.deployment_name(name, track))
    assert dep is not None, f"{name}-{track} missing"
    return dep


# ---------------------------------------------------------------- fault-tolerance helpers (issue 6)


def user_kube(user: str) -> Kube:
    """The adapter acting as a sandbox identity (alice, bob, dave, ..., admin, operator)."""
    return Kube(load_api_client(str(cluster.kubeconfig_path(user))))


def create_rollout(kube: Kube, obj: dict[str, Any]) -> dict[str, Any]:
    ns = obj["metadata"]["namespace"]
    out = kube.custom.create_namespaced_custom_object(names.GROUP, names.VERSION, ns, names.ROLLOUT_PLURAL, obj)
    return dict(out)  # type: ignore[call-overload]


def patch_spec(kube: Kube, obj: dict[str, Any]) -> dict[str, Any]:
    """Merge-patch the Rollout's spec to `obj`'s (a new template makes a new revision)."""
    meta = obj["metadata"]
    out = kube.custom.patch_namespaced_custom_object(
        names.GROUP, names.VERSION, meta["namespace"], names.ROLLOUT_PLURAL, meta["name"], {"spec": obj["spec"]}
    )
    return dict(out)  # type: ignore[call-overload]


def operator_metrics(port: int) -> list[tuple[str, dict[str, str], float]]:
    """Samples of the operator's /metrics as (name, labels, value)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as rsp:
        text = rsp.read().decode()
    return [(s.name, dict(s.labels), float(s.value)) for fam in text_string_to_metric_families(text)
            for s in fam.samples]


def metric_sum(samples: list[tuple[str, dict[str, str], float]], name: str, **labels: str) -> float:
    return sum(v for n, lab, v in samples if n == name and all(lab.get(k) == x for k, x in labels.items()))


def event_counts(kube: Kube, ns: str, name: str, reason: str, contains: str = "") -> int:
    """How many times the operator recorded Events with this reason (identical Events bump `count`)."""
    return sum(int(e.get("count") or 1) for e in kube.list_events(ns, name)
               if e.get("reason") == reason and contains in (e.get("message") or ""))


class StepWatch:
    """Polls one rollout and remembers when each step started: a start must never change."""

    def __init__(self, kube: Kube, ns: str, name: str, canary: str) -> None:
        self.kube, self.ns, self.name, self.canary = kube, ns, name, canary
        self.starts: dict[int, str] = {}
        self.problems: list[str] = []
        self.phases: list[str] = []

    def __call__(self) -> dict[str, Any]:
        st = status(self.kube, self.ns, self.name)
        if not self.phases or self.phases[-1] != st.get("phase"):
            self.phases.append(str(st.get("phase")))
        if st.get("canaryRevision") == self.canary and st.get("stepStartedAt"):
            idx = int(st.get("currentStepIndex") or 0)
            first = self.starts.setdefault(idx, st["stepStartedAt"])
            if first != st["stepStartedAt"]:
                self.problems.append(f"step {idx} restarted: {first} -> {st['stepStartedAt']}")
            if idx < max(self.starts):
                self.problems.append(f"step index went back to {idx}")
        return st

    def until(self, predicate: Any, timeout: float, what: str) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            st = self()
            return st if predicate(st) else None

        found: dict[str, Any] | None = wait_for(check, timeout, message=what)
        assert found is not None
        return found


def canary_steps(*items: int | str) -> list[dict[str, Any]]:
    """Steps from a short form: a number is a setWeight, a string a timed pause (`canary_steps(20, "15s")`)."""
    return [{"setWeight": i} if isinstance(i, int) else {"pause": {"duration": i}} for i in items]
