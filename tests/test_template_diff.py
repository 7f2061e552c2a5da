"""The stable -> canary template diff (pure), and the CLI commands that show it: diff, status, approve."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from typer.testing import CliRunner

from controlled_friction import names, template_diff
from controlled_friction.cli import main
from controlled_friction.revision import revision_of
from controlled_friction.template_diff import ANN_CHANGE_RECORD, NO_CHANGE, change_report, diff_templates, summarize
from controlled_friction.workloads import pod_template


def template(image: str = "shop/checkout:2.4.1", env: dict[str, str] | None = None,
             **container: Any) -> dict[str, Any]:
    c: dict[str, Any] = {"name": "app", "image": image, **container}
    if env is not None:
        c["env"] = [{"name": k, "value": v} for k, v in env.items()]
    return {"metadata": {"labels": {"app": "checkout"}}, "spec": {"containers": [c]}}


def served(tpl: dict[str, Any], track: str = "stable") -> dict[str, Any]:
    """What the API server hands back for a Deployment the operator made from `tpl`: operator labels
    and the server's defaults filled in."""
    out = pod_template(tpl, "checkout", track, revision_of(tpl))
    out["metadata"]["creationTimestamp"] = None
    spec = out["spec"]
    spec.update(restartPolicy="Always", terminationGracePeriodSeconds=30, dnsPolicy="ClusterFirst",
                securityContext={}, schedulerName="default-scheduler")
    for c in spec["containers"]:
        c.setdefault("resources", {})
        c.update(terminationMessagePath="/dev/termination-log", terminationMessagePolicy="File",
                 imagePullPolicy=template_diff.default_pull_policy(c["image"]))
        for p in c.get("ports", []):
            p.setdefault("protocol", "TCP")
        for probe in ("livenessProbe", "readinessProbe"):
            if probe in c:
                c[probe] = {"timeoutSeconds": 1, "periodSeconds": 10, "successThreshold": 1, "failureThreshold": 3,
                            **c[probe]}
                if "httpGet" in c[probe]:
                    c[probe]["httpGet"].setdefault("scheme", "HTTP")
    return out


# ---------------------------------------------------------------- diff and summary


def test_same_template_served_with_defaults_and_labels_is_no_change() -> None:
    tpl = template(env={"A": "1"}, ports=[{"containerPort": 8080}],
                   readinessProbe={"httpGet": {"path": "/ready", "port": 8080}})
    assert diff_templates(served(tpl), tpl) == []
    assert summarize([]) == NO_CHANGE


def test_image_tag_and_one_env_var_is_the_issue_example() -> None:
    stable = template(env={"LOG_LEVEL": "info", "REGION": "eu"})
    canary = template("shop/checkout:2.5.0", env={"REGION": "eu", "LOG_LEVEL": "debug"})  # reordered too
    changes = diff_templates(served(stable), canary)
    assert [(c.path, c.kind, c.old, c.new) for c in changes] == [
        ("spec.containers[app].image", "changed", "shop/checkout:2.4.1", "shop/checkout:2.5.0"),
        ("spec.containers[app].env[LOG_LEVEL].value", "changed", "info", "debug"),
    ]
    assert summarize(changes, canary) == "image checkout:2.4.1 → 2.5.0, 1 env var changed"


def test_env_vars_added_and_removed_are_counted_by_name() -> None:
    stable, canary = template(env={"A": "1", "B": "2"}), template(env={"B": "2", "C": "3", "D": "4"})
    changes = diff_templates(stable, canary)
    assert {(c.path, c.kind) for c in changes} == {
        ("spec.containers[app].env[A]", "removed"),
        ("spec.containers[app].env[C]", "added"),
        ("spec.containers[app].env[D]", "added"),
    }
    assert summarize(changes, canary) == "2 env vars added, 1 env var removed"
    # no env list at all on one side: still one change per variable
    changes = diff_templates(template(), template(env={"X": "1"}))
    assert [(c.path, c.kind, c.new) for c in changes] == [
        ("spec.containers[app].env[X]", "added", {"name": "X", "value": "1"})
    ]


def test_resources_probes_command_and_annotations() -> None:
    stable = template(resources={"limits": {"cpu": "500m"}}, readinessProbe={"httpGet": {"path": "/r", "port": 80}})
    canary = template(resources={"limits": {"cpu": "1"}}, readinessProbe={"httpGet": {"path": "/ready", "port": 80}},
                      command=["serve", "--fast"])
    canary["metadata"]["annotations"] = {names.SIM_ORDER_DROP: "0.99"}
    changes = diff_templates(served(stable), canary)
    paths = {c.path: c for c in changes}
    assert paths["spec.containers[app].resources.limits.cpu"].new == "1"
    assert paths["spec.containers[app].readinessProbe.httpGet.path"].old == "/r"
    assert paths["spec.containers[app].command"].kind == "added"
    assert paths[f'metadata.annotations["{names.SIM_ORDER_DROP}"]'].new == "0.99"
    assert summarize(changes, canary) == (
        "1 pod annotation added, resources changed, readiness probe changed, command changed"
    )


def test_containers_are_matched_by_name_and_named_in_a_multi_container_summary() -> None:
    stable = template()
    stable["spec"]["containers"].append({"name": "proxy", "image": "envoy:1.30"})
    canary = copy.deepcopy(stable)
    canary["spec"]["containers"].reverse()
    canary["spec"]["containers"][0]["image"] = "envoy:1.31"
    canary["spec"]["containers"].append({"name": "agent", "image": "agent:1"})
    changes = diff_templates(stable, canary)
    assert [(c.path, c.kind) for c in changes] == [
        ("spec.containers[proxy].image", "changed"),
        ("spec.containers[agent]", "added"),
    ]
    assert summarize(changes, canary) == "image envoy:1.30 → 1.31 (proxy), container agent added"


def test_operator_labels_and_explicit_defaults_are_no_change_but_other_labels_are() -> None:
    tpl = template(imagePullPolicy="IfNotPresent")
    assert diff_templates(served(template()), tpl) == []
    relabelled = copy.deepcopy(tpl)
    relabelled["metadata"]["labels"]["team"] = "payments"
    assert summarize(diff_templates(served(tpl), relabelled)) == "1 pod label added"
    # a non-default pull policy is a change
    assert summarize(diff_templates(served(tpl), template(imagePullPolicy="Always"))) == "1 other change"


@pytest.mark.parametrize(
    ("old", "new", "text"),
    [
        ("shop/checkout:2.4.1", "shop/checkout:2.5.0", "checkout:2.4.1 → 2.5.0"),
        ("reg:5000/shop/app:1", "reg:5000/shop/app:2", "app:1 → 2"),
        ("shop/app:1", "other/app:1", "shop/app:1 → other/app:1"),
        ("app", "app:2", "app → app:2"),
        ("app@sha256:aa", "app@sha256:bb", "app@sha256:aa → sha256:bb"),
    ],
)
def test_image_change_wording(old: str, new: str, text: str) -> None:
    assert template_diff.image_change(old, new) == text


def test_default_pull_policy_follows_the_tag() -> None:
    assert template_diff.default_pull_policy("app") == "Always"
    assert template_diff.default_pull_policy("app:latest") == "Always"
    assert template_diff.default_pull_policy("reg:5000/app") == "Always"
    assert template_diff.default_pull_policy("app:2") == "IfNotPresent"
    assert template_diff.default_pull_policy("app@sha256:aa") == "IfNotPresent"


# ---------------------------------------------------------------- the report for one Rollout

STABLE = template(env={"LOG_LEVEL": "info"})
CANARY = template("shop/checkout:2.5.0", env={"LOG_LEVEL": "debug"})
RECORD = "SHOP-142 https://tickets.example/SHOP-142: faster checkout page"


def rollout(tpl: dict[str, Any] = CANARY, **ann: str) -> dict[str, Any]:
    return {
        "apiVersion": names.API_VERSION,
        "kind": "Rollout",
        "metadata": {"name": "checkout", "namespace": "shop", "generation": 2,
                     "annotations": {names.ANN_AUTHOR: "carol", ANN_CHANGE_RECORD: RECORD, **ann}},
        "spec": {"template": tpl},
        "status": {"phase": "AwaitingApproval", "canaryRevision": revision_of(tpl),
                   "stableRevision": revision_of(STABLE), "observedGeneration": 2, "approvalsSummary": "0/2"},
    }


def deployment(tpl: dict[str, Any] = STABLE) -> dict[str, Any]:
    return {"metadata": {"name": "checkout-stable"}, "spec": {"replicas": 4, "template": served(tpl)}}


def test_report_names_revisions_author_and_change_record() -> None:
    report = change_report(rollout(), deployment())
    data = report.to_json()
    assert data["stableRevision"] == revision_of(STABLE) and data["canaryRevision"] == revision_of(CANARY)
    assert data["author"] == "carol" and data["changeRecord"] == RECORD and data["stableFound"] is True
    assert data["summary"] == "image checkout:2.4.1 → 2.5.0, 1 env var changed"
    assert [c["path"] for c in data["changes"]] == ["spec.containers[app].image",
                                                    "spec.containers[app].env[LOG_LEVEL].value"]
    json.dumps(data)  # JSON-ready


def test_report_without_a_stable_deployment_says_so() -> None:
    report = change_report(rollout(), None)
    assert not report.stable_found and "no stable Deployment" in report.summary
    assert report.changes and all(c.kind == "added" for c in report.changes)


# ---------------------------------------------------------------- CLI: diff, status, approve


class FakeKube:
    def __init__(self, obj: dict[str, Any], dep: dict[str, Any] | None) -> None:
        self.obj, self.dep = obj, dep
        self.patches: list[dict[str, Any]] = []

    def get_rollout(self, namespace: str, name: str) -> dict[str, Any]:
        return self.obj

    def get_deployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        assert name == "checkout-stable"
        return self.dep

    def list_events(self, namespace: str, name: str) -> list[dict[str, Any]]:
        return []

    def patch_rollout_annotations(self, namespace: str, name: str, changes: dict[str, Any]) -> dict[str, Any]:
        self.patches.append(changes)
        return self.obj


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeKube:
    kube = FakeKube(rollout(), deployment())
    monkeypatch.setattr(main, "connect", lambda kubeconfig, context: kube)
    return kube


def run(*args: str, stdin: str | None = None) -> Any:
    return CliRunner().invoke(main.app, [*args, "-n", "shop"], input=stdin,
                              env={"NO_COLOR": "1", "COLUMNS": "200"})


def test_diff_command_text_and_json(fake: FakeKube) -> None:
    res = run("diff", "checkout")
    assert res.exit_code == 0, res.output
    for needle in ("Summary", "image checkout:2.4.1 → 2.5.0, 1 env var changed", "carol", RECORD,
                   "~ spec.containers[app].image: shop/checkout:2.4.1 → shop/checkout:2.5.0",
                   "~ spec.containers[app].env[LOG_LEVEL].value: info → debug"):
        assert needle in res.output, needle
    res = run("diff", "checkout", "-o", "json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["summary"] == "image checkout:2.4.1 → 2.5.0, 1 env var changed"
    assert data["author"] == "carol" and data["changeRecord"] == RECORD


def test_status_shows_the_change_summary_and_record(fake: FakeKube) -> None:
    res = run("status", "checkout")
    assert res.exit_code == 0, res.output
    assert any("Change " in ln and "image checkout:2.4.1 → 2.5.0, 1 env var changed" in ln
               for ln in res.output.splitlines()), res.output
    assert RECORD in res.output


def test_approve_shows_the_change_and_needs_confirmation(fake: FakeKube, monkeypatch: pytest.MonkeyPatch) -> None:
    rev = revision_of(CANARY)
    # not a terminal and no --yes: nothing is written
    res = run("approve", "checkout")
    assert res.exit_code == 2, res.output
    assert "image checkout:2.4.1 → 2.5.0" in res.output and RECORD in res.output and "--yes" in res.output
    assert fake.patches == []
    monkeypatch.setattr(main, "_stdin_is_terminal", lambda: True)
    res = run("approve", "checkout", stdin="n\n")
    assert res.exit_code == 1 and "not approved" in res.output and fake.patches == []
    res = run("approve", "checkout", stdin="y\n")
    assert res.exit_code == 0, res.output
    assert f"Approve revision {rev}" in res.output
    assert fake.patches == [{names.ANN_APPROVE: rev}]


def test_approve_yes_skips_the_prompt(fake: FakeKube) -> None:
    res = run("approve", "checkout", "--yes")
    assert res.exit_code == 0, res.output
    assert fake.patches == [{names.ANN_APPROVE: revision_of(CANARY)}]
    assert "submitted" in res.output
