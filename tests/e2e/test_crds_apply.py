"""The generated CRDs against a real kube-apiserver: accepted as structural, explained, validated,
defaulted, and a status with every field survives a write unpruned.

The session operator (if another test started it) may reconcile the objects created here, so every
comparison uses one API response (the object as stored by that very write, or a Table that carries its
object) rather than a later read.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from controlled_friction import names, sequential
from controlled_friction.models.policy import FrictionPolicyStatus
from controlled_friction.models.rollout import (
    AddedBy,
    AnalysisState,
    Condition,
    CountedApproval,
    CounterTotals,
    EffectivePlan,
    HistoryEntry,
    Measurement,
    MetricSpec,
    MetricState,
    PlannedApproval,
    PlannedStep,
    PostPromotionWatch,
    RestartedTest,
    RolloutStatus,
)
from controlled_friction.sandbox.cluster import SandboxInfo, kubectl
from controlled_friction.sandbox.operator_proc import crd_manifests, install_crds

from .waiting import wait_for

pytestmark = pytest.mark.e2e

CRD_NAMES = (f"{names.ROLLOUT_PLURAL}.{names.GROUP}", f"{names.POLICY_PLURAL}.{names.GROUP}")
TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io"


@pytest.fixture(scope="module")
def crds(sandbox: SandboxInfo) -> None:
    install_crds()


def _rollout(namespace: str, name: str = "web", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "replicas": 2,
        "selector": {"matchLabels": {"app": name}},
        "template": {
            "metadata": {"labels": {"app": name}},
            "spec": {"containers": [{"name": "app", "image": "registry.example/web:1"}]},
        },
        "strategy": {"canary": {"steps": [{"setWeight": 10}, {"pause": {"duration": "30s"}}]}},
    }
    body.update(spec)
    return {
        "apiVersion": names.API_VERSION,
        "kind": "Rollout",
        "metadata": {"name": name, "namespace": namespace},
        "spec": body,
    }


def _dry_run(obj: dict[str, Any]) -> Any:
    return kubectl("apply", "--dry-run=server", "--validate=strict", "-o", "json", "-f", "-",
                   stdin=json.dumps(obj), check=False)


def _explained(path: str, *needles: str) -> str:
    """`kubectl explain` output once it mentions every needle. The API server publishes a CRD's
    OpenAPI (and a changed description) a moment after the CRD is established or updated."""
    def ready() -> str:
        proc = kubectl("explain", path, check=False)
        return proc.stdout if proc.returncode == 0 and all(n in proc.stdout for n in needles) else ""
    return wait_for(ready, timeout=60, message=f"kubectl explain {path} mentioning {needles}")


# ---------------------------------------------------------------- the CRDs themselves


def test_crds_are_established_and_structural(crds: None, kube: client.ApiClient) -> None:
    ext = client.ApiextensionsV1Api(kube)
    for name in CRD_NAMES:
        crd = ext.read_custom_resource_definition(name)
        assert crd.status is not None and crd.status.conditions
        conditions = {c.type: c for c in crd.status.conditions}
        assert conditions["Established"].status == "True"
        assert conditions["NamesAccepted"].status == "True"
        assert "NonStructuralSchema" not in conditions, conditions["NonStructuralSchema"].message
    # What the server stores is what we generated (no field dropped or rewritten on the way in).
    generated = {d["metadata"]["name"]: d for d in yaml.safe_load_all(crd_manifests()) if d}
    for name in CRD_NAMES:
        stored = kube.sanitize_for_serialization(ext.read_custom_resource_definition(name))  # type: ignore[no-untyped-call]
        assert stored["spec"]["versions"][0]["schema"] == generated[name]["spec"]["versions"][0]["schema"]


def test_kubectl_explain_shows_field_descriptions(crds: None) -> None:
    out = _explained("rollout.spec.strategy", "How a new revision is rolled out.", "canary", "Canary plan.")
    assert "FIELD: strategy" in out or "RESOURCE: strategy" in out
    _explained("rollouts.spec.strategy.canary.steps.pause.duration",
               "Omit to wait for a `promote` action", "Duration such as '30s'")
    _explained("cfro.status.phase", "AwaitingApproval")
    _explained("fpol.spec.rules.approvals",
               "Approval gate required before the canary grows past its first step.",
               "approverGroups", "Groups whose members may approve.")


# ---------------------------------------------------------------- validation and defaults


def test_server_applies_defaults_in_wire_form(crds: None, namespace: str) -> None:
    rollout = _rollout(namespace, analysis={"metrics": [{"name": "errors", "kind": "errorRatio", "maxRatio": 0.1}]})
    rollout["spec"]["strategy"]["canary"]["steps"].append({"analysis": {}})
    proc = _dry_run(rollout)
    assert proc.returncode == 0, proc.stderr
    spec = json.loads(proc.stdout)["spec"]
    assert spec["analysis"]["interval"] == "2s"  # the default: judge fast (issue 12)
    assert spec["analysis"]["failureLimit"] == 2
    assert spec["strategy"]["canary"]["steps"][2]["analysis"]["duration"] == "1m"
    assert spec["replicas"] == 2  # given values are kept


def test_durations_accept_strings_and_integers(crds: None, namespace: str) -> None:
    for duration in ("1h30m", "90", 90, "500ms"):
        rollout = _rollout(namespace)
        rollout["spec"]["strategy"]["canary"]["steps"][1]["pause"]["duration"] = duration
        proc = _dry_run(rollout)
        assert proc.returncode == 0, (duration, proc.stderr)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda s: s["strategy"]["canary"]["steps"][1]["pause"].update(duration="2 minutes"),
         "spec.strategy.canary.steps[1].pause.duration"),
        (lambda s: s["strategy"]["canary"]["steps"][0].update(setWeight=101),
         "spec.strategy.canary.steps[0].setWeight"),
        (lambda s: s["strategy"]["canary"].update(steps=[]), "spec.strategy.canary.steps"),
        (lambda s: s.update(analysis={"metrics": [{"name": "Bad_Name", "kind": "errorRatio"}]}),
         "spec.analysis.metrics[0].name"),
        (lambda s: s.update(analysis={"metrics": [{"name": "m", "kind": "latency"}]}),
         "spec.analysis.metrics[0].kind"),
        (lambda s: s.pop("strategy"), "spec.strategy"),
        (lambda s: s.update(strategy={"canary": {"steps": [{"setWeigth": 5}]}}), "setWeigth"),
    ],
    ids=["duration", "weight", "no-steps", "metric-name", "metric-kind", "no-strategy", "typo"],
)
def test_server_rejects_invalid_specs_naming_the_field(crds: None, namespace: str, change: Any, expected: str) -> None:
    rollout = _rollout(namespace)
    change(rollout["spec"])
    proc = _dry_run(rollout)
    assert proc.returncode != 0
    assert expected in proc.stderr, proc.stderr


# ---------------------------------------------------------------- status round trip

T0 = datetime(2026, 3, 4, 5, 6, 7, 123456, tzinfo=UTC)
T1 = datetime(2026, 3, 4, 5, 8, 0, tzinfo=UTC)


def full_status() -> RolloutStatus:
    """A status with every field set (the coverage test below fails if a new field is missing)."""
    metrics = [
        MetricSpec(name="errors", kind="errorRatio", max_ratio=0.02, max_increase_over_stable=0.01, window=120),
        MetricSpec(name="orders", kind="orderRateDrop", max_drop=0.2, max_baseline_drop=0.3),
        MetricSpec(name="p99", kind="query", query='histogram_quantile(0.99, sum by (le) (rate(x_bucket[{{window}}])))',
                   min=0.0, max=0.4),
    ]
    measurement = Measurement(metric="orders", verdict="fail", value=0.0123, bound="drop ≤ 0.2",
                              message="canary orders per request 99% below stable", time=T0, decisive=True,
                              evidence=250.0, threshold=100.0, canary_requests=120.0, needed_requests=300.0)
    plan = EffectivePlan(
        steps=[
            PlannedStep(kind="setWeight", set_weight=5, added_by=[AddedBy(policy="critical", rule="maxFirstWeight")]),
            PlannedStep(kind="pause", pause_seconds=120.0),
            PlannedStep(kind="approval", approvals=[PlannedApproval(count=2, groups=["senior-engineers"],
                                                                    source="critical")]),
            PlannedStep(kind="analysis", metrics=["errors", "p99"], analysis_seconds=300.5),
        ],
        policies=["critical"],
        metrics=metrics,
        metric_sources={"errors": ["rollout"], "orders": ["rollout", "critical"], "p99": ["rollout"]},
        analysis_interval_seconds=10.0,
        quiet_limit_seconds=300.0,
        post_promotion_watch_seconds=600.0,
        approval_expiry_seconds=86400.0,
        ai_assisted=True,
        frozen_reason="freeze window weekend",
    )
    test = sequential.observe(sequential.start(max_ratio=0.02, max_increase_over_stable=0.01),
                              sequential.Counts(canary_requests=100, canary_events=90, stable_requests=400,
                                                stable_events=2))  # rejected: every field is set
    state = MetricState(metric="orders", mode="observe", consecutive_failures=1, consecutive_inconclusive=2,
                        consecutive_errors=3, passes_in_step=4, last=measurement, baseline=4.2, baseline_known=True,
                        quiet_since=T0, totals=CounterTotals(canary_requests=100, canary_events=3,
                                                             stable_requests=400, stable_events=2),
                        sequential=test, restarts=[RestartedTest(index=1, test=test)])
    analysis = AnalysisState(last_run_at=T1, metrics=[state])
    return RolloutStatus(
        phase="AwaitingApproval",
        message="waiting for 2 approvals from senior-engineers",
        observed_generation=3,
        stable_revision="0123456789",
        canary_revision="abcdef0123",
        replicas=9,
        selector="app=checkout",
        canary_weight=5,
        effective_weight=12.5,
        current_step_index=2,
        step_started_at=T0,
        rollout_started_at=T1,
        approvals=[CountedApproval(user="alice", time=T1)],
        approvals_summary="1/2",
        aborted_revision="fedcba9876",
        stable_template={"metadata": {"labels": {"app": "checkout"}},
                         "spec": {"containers": [{"name": "app", "image": "shop/checkout:1"}]}},
        effective_plan=plan,
        analysis=analysis,
        previous_stable_revision="9876543210",
        previous_stable_template={"metadata": {"labels": {"app": "checkout"}},
                                  "spec": {"containers": [{"name": "app", "image": "shop/checkout:0"}]}},
        route_weight=5,
        watch=PostPromotionWatch(revision="0123456789", since=T0, until=T1, analysis=analysis),
        history=[HistoryEntry(revision="fedcba9876", outcome="RolledBack", at=T0, reason="orders -99%",
                              approvers=["alice", "bob"], author="dave",
                              change_record="CHG-1234 raise the checkout timeout")],
        conditions=[Condition(type="Progressing", status="True", reason="AwaitingApproval", message="waiting",
                              last_transition_time=T0)],
    )


def _paths(value: Any, prefix: str = "") -> set[str]:
    out: set[str] = set()
    if isinstance(value, dict):
        for k, v in value.items():
            out.add(f"{prefix}.{k}")
            out |= _paths(v, f"{prefix}.{k}")
    elif isinstance(value, list):
        for v in value:
            out |= _paths(v, f"{prefix}[]")
    return out


def _schema_paths(schema: dict[str, Any], prefix: str = "") -> set[str]:
    out: set[str] = set()
    for k, sub in schema.get("properties", {}).items():
        out.add(f"{prefix}.{k}")
        out |= _schema_paths(sub, f"{prefix}.{k}")
    if "items" in schema:
        out |= _schema_paths(schema["items"], f"{prefix}[]")
    return out


def test_full_status_covers_every_declared_status_field() -> None:
    (crd,) = [d for d in yaml.safe_load_all(crd_manifests()) if d and d["spec"]["names"]["kind"] == "Rollout"]
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    declared = {p for p in _schema_paths(schema) if not p.startswith(".effectivePlan.metricSources.")}
    assert declared - _paths(full_status().wire()) == set()


def _replace_status(api: client.CustomObjectsApi, namespace: str | None, plural: str, name: str,
                    status: dict[str, Any]) -> dict[str, Any]:
    """PUT the status subresource; the response is the object exactly as the API server stored it."""
    def attempt() -> Any:
        obj: Any
        if namespace:
            obj = api.get_namespaced_custom_object(names.GROUP, names.VERSION, namespace, plural, name)
        else:
            obj = api.get_cluster_custom_object(names.GROUP, names.VERSION, plural, name)
        obj["status"] = status
        try:
            if namespace:
                return api.replace_namespaced_custom_object_status(
                    names.GROUP, names.VERSION, namespace, plural, name, obj)
            return api.replace_cluster_custom_object_status(names.GROUP, names.VERSION, plural, name, obj)
        except ApiException as exc:
            if exc.status == 409:  # the operator wrote in between: read again
                return None
            raise
    stored: dict[str, Any] = wait_for(attempt, timeout=30, interval=0.2, message=f"status write of {name}")
    return stored


@pytest.fixture
def rollout_name(crds: None, kube: client.ApiClient, namespace: str) -> Iterator[str]:
    api = client.CustomObjectsApi(kube)
    name = "roundtrip"
    api.create_namespaced_custom_object(names.GROUP, names.VERSION, namespace, names.ROLLOUT_PLURAL,
                                        _rollout(namespace, name))
    yield name


def test_full_status_survives_a_write_unpruned(kube: client.ApiClient, namespace: str, rollout_name: str) -> None:
    api = client.CustomObjectsApi(kube)
    written = full_status().wire()
    stored = _replace_status(api, namespace, names.ROLLOUT_PLURAL, rollout_name, written)
    assert stored["status"] == written
    assert RolloutStatus.model_validate(stored["status"]) == full_status()


def test_printer_columns_show_the_status(kube: client.ApiClient, namespace: str, rollout_name: str) -> None:
    api = client.CustomObjectsApi(kube)
    _replace_status(api, namespace, names.ROLLOUT_PLURAL, rollout_name, full_status().wire())
    # A server-side Table with the object it was computed from: cells and status always agree.
    request = kube.param_serialize(
        "GET", f"/apis/{names.GROUP}/{names.VERSION}/namespaces/{namespace}/{names.ROLLOUT_PLURAL}/{rollout_name}",
        query_params=[("includeObject", "Object")], header_params={"Accept": TABLE}, auth_settings=["BearerToken"],
    )
    response = kube.call_api(*request)
    response.read()  # type: ignore[no-untyped-call]
    table: Any = json.loads(response.data or b"{}")
    headers = [c["name"] for c in table["columnDefinitions"]]
    assert headers == ["Name", "Phase", "Weight", "Step", "Approvals", "Canary", "Stable", "Message", "Age"]
    (row,) = table["rows"]
    cells = dict(zip(headers, row["cells"], strict=True))
    status = row["object"]["status"]
    assert cells["Phase"] == status["phase"]
    assert cells["Weight"] == status["canaryWeight"]
    assert cells["Step"] == status["currentStepIndex"]
    assert cells["Approvals"] == status["approvalsSummary"]
    for column, field in (("Canary", "canaryRevision"), ("Stable", "stableRevision"), ("Message", "message")):
        assert cells[column] == status.get(field), column
    wide = kubectl("get", "cfro", rollout_name, "-n", namespace, "-o", "wide").stdout.split("\n")[0].split()
    assert wide == ["NAME", "PHASE", "WEIGHT", "STEP", "APPROVALS", "CANARY", "STABLE", "MESSAGE", "AGE"]
    narrow = kubectl("get", "cfro", rollout_name, "-n", namespace).stdout.split("\n")[0].split()
    assert narrow == ["NAME", "PHASE", "WEIGHT", "STEP", "APPROVALS", "CANARY", "AGE"]


def test_policy_status_round_trip_and_columns(crds: None, kube: client.ApiClient) -> None:
    api = client.CustomObjectsApi(kube)
    name = f"e2e-crd-{uuid.uuid4().hex[:8]}"
    policy = {
        "apiVersion": names.API_VERSION,
        "kind": "FrictionPolicy",
        "metadata": {"name": name},
        # Selects nothing, so it cannot change the plans of other tests' rollouts.
        "spec": {"selector": {"rolloutSelector": {"matchLabels": {"e2e-crd-test": name}}},
                 "rules": {"minBake": "1m"}},
    }
    api.create_cluster_custom_object(names.GROUP, names.VERSION, names.POLICY_PLURAL, policy)
    try:
        written = FrictionPolicyStatus(valid=False, message="rules.minBake: invalid").wire()
        stored = _replace_status(api, None, names.POLICY_PLURAL, name, written)
        assert stored["status"] == written
        header = kubectl("get", "fpol", name).stdout.split("\n")[0].split()
        assert header == ["NAME", "VALID", "AGE"]
    finally:
        api.delete_cluster_custom_object(names.GROUP, names.VERSION, names.POLICY_PLURAL, name)
