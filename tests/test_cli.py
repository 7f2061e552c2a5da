"""The CLI surface without a cluster: help, usage errors, unreachable clusters, and the pure helpers.

Commands against a real cluster are covered by the end-to-end tests.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.client.exceptions import ApiException
from typer.testing import CliRunner

from controlled_friction import names
from controlled_friction.cli import actions
from controlled_friction.cli.main import app, default_namespace
from controlled_friction.revision import revision_of

runner = CliRunner()
TEMPLATE = {"metadata": {"labels": {"app": "a"}}, "spec": {"containers": [{"name": "a", "image": "a:2"}]}}
REV = revision_of(TEMPLATE)
CLUSTER_COMMANDS = ("status", "explain", "history", "approve", "approve-delete", "promote", "abort", "retry")


def invoke(*args: str) -> Any:
    return runner.invoke(app, list(args), env={"NO_COLOR": "1", "TERMINAL_WIDTH": "200", "COLUMNS": "200"})


# ---------------------------------------------------------------- help


def test_top_level_help_lists_every_command() -> None:
    res = invoke("--help")
    assert res.exit_code == 0, res.output
    for cmd in ("run", "demo", "sandbox", *CLUSTER_COMMANDS):
        assert cmd in res.output


@pytest.mark.parametrize("command", CLUSTER_COMMANDS)
def test_cluster_commands_take_the_connection_options(command: str) -> None:
    res = invoke(command, "--help")
    assert res.exit_code == 0, res.output
    for opt in ("--kubeconfig", "--context", "--namespace", "-n"):
        assert opt in res.output, f"{command} lacks {opt}"


def test_status_help_documents_watch_wait_timeout_and_all_namespaces() -> None:
    out = invoke("status", "--help").output
    for opt in ("--watch", "--wait", "--timeout", "--all-namespaces", "-A", "10m"):
        assert opt in out


def test_run_help_documents_operator_flags() -> None:
    res = invoke("run", "--help")
    assert res.exit_code == 0
    for opt in (
        "--peering",
        "--priority",
        "--webhook-mode",
        "--webhook-host",
        "--webhook-port",
        "9443",
        "--metrics-port",
        "8080",
        "--health-port",
        "8081",
        "--verbose",
        "--kubeconfig",
    ):
        assert opt in res.output, opt


def test_approve_help_documents_revision() -> None:
    assert "--revision" in invoke("approve", "--help").output


@pytest.mark.parametrize("args", [("demo", "--help"), ("sandbox", "--help")])
def test_other_commands_have_help(args: tuple[str, ...]) -> None:
    assert invoke(*args).exit_code == 0


# ---------------------------------------------------------------- usage errors (exit 2)


@pytest.mark.parametrize(
    "args",
    [
        ("approve",),
        ("approve-delete",),
        ("explain",),
        ("history",),
        ("promote",),
        ("status", "--wait"),
        ("status", "x", "--wait", "--watch"),
        ("status", "x", "-A"),
        ("status", "x", "--wait", "--timeout", "soon"),
        ("run", "--webhook-mode", "sideways"),
        ("run", "--metrics-port", "70000"),
        ("no-such-command",),
    ],
)
def test_usage_errors_exit_2(args: tuple[str, ...]) -> None:
    res = invoke(*args)
    assert res.exit_code == 2, res.output


# ---------------------------------------------------------------- no cluster (exit 1, no traceback)


def test_missing_kubeconfig_is_reported(tmp_path: Path) -> None:
    res = invoke("status", "--kubeconfig", str(tmp_path / "nope.yaml"))
    assert res.exit_code == 1
    assert "cannot load kubeconfig" in res.output
    assert "Traceback" not in res.output


def _kubeconfig(path: Path, server: str, namespace: str | None = None) -> Path:
    ctx: dict[str, Any] = {"cluster": "c", "user": "u"}
    if namespace:
        ctx["namespace"] = namespace
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": server, "insecure-skip-tls-verify": True}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [
                    {"name": "main", "context": ctx},
                    {"name": "other", "context": {**ctx, "namespace": "ops"}},
                ],
                "current-context": "main",
            }
        )
    )
    return path


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again when the block ends: connections are refused


@pytest.mark.parametrize("args", [("status",), ("approve", "x", "--revision", "abc"), ("abort", "x")])
def test_unreachable_api_server_is_one_red_line(tmp_path: Path, args: tuple[str, ...]) -> None:
    kc = _kubeconfig(tmp_path / "kc", f"https://127.0.0.1:{_closed_port()}")
    res = invoke(*args, "--kubeconfig", str(kc))
    assert res.exit_code == 1, res.output
    assert "cannot reach the Kubernetes API server" in res.output
    assert "Traceback" not in res.output


def test_default_namespace_follows_the_context(tmp_path: Path) -> None:
    kc = str(_kubeconfig(tmp_path / "kc", "https://127.0.0.1:1", namespace="shop"))
    assert default_namespace(kc, None) == "shop"
    assert default_namespace(kc, "other") == "ops"
    bare = str(_kubeconfig(tmp_path / "kc2", "https://127.0.0.1:1"))
    assert default_namespace(bare, None) == "default"


# ---------------------------------------------------------------- status --wait verdicts


def obj(status: dict[str, Any], generation: int = 2, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "metadata": {"name": "a", "namespace": "n", "generation": generation, "annotations": annotations or {}},
        "spec": {"template": TEMPLATE},
        "status": status,
    }


def test_wait_ignores_healthy_of_the_previous_revision() -> None:
    stale = obj({"phase": "Healthy", "stableRevision": "0000000000", "observedGeneration": 1})
    assert actions.wait_outcome(stale).state == "pending"
    seen_not_started = obj({"phase": "Healthy", "stableRevision": "0000000000", "observedGeneration": 2})
    assert actions.wait_outcome(seen_not_started).state == "pending"
    canary = obj({"phase": "Healthy", "stableRevision": REV, "canaryRevision": "1111111111", "observedGeneration": 2})
    assert actions.wait_outcome(canary).state == "pending"
    done = obj({"phase": "Healthy", "stableRevision": REV, "observedGeneration": 2, "message": "promoted"})
    assert actions.wait_outcome(done) == actions.WaitOutcome("healthy", "promoted")


def test_wait_fails_on_rollback_and_invalid_of_the_current_generation() -> None:
    rolled = obj(
        {
            "phase": "RolledBack",
            "observedGeneration": 2,
            "abortedRevision": REV,
            "message": "rolled back: orders dropped",
        }
    )
    assert actions.wait_outcome(rolled) == actions.WaitOutcome("failed", "rolled back: orders dropped")
    invalid = obj({"phase": "Invalid", "observedGeneration": 2, "message": "invalid spec: x"})
    assert actions.wait_outcome(invalid) == actions.WaitOutcome("failed", "invalid spec: x")
    # the verdict of an older generation, or before a pending action is handled, is not final
    assert actions.wait_outcome(obj({"phase": "RolledBack", "observedGeneration": 1})).state == "pending"
    retrying = obj(
        {"phase": "RolledBack", "observedGeneration": 2, "abortedRevision": REV},
        annotations={names.ANN_ACTION: "retry"},
    )
    assert actions.wait_outcome(retrying).state == "pending"
    other = obj({"phase": "RolledBack", "observedGeneration": 2, "abortedRevision": "2222222222"})
    assert actions.wait_outcome(other).state == "pending"


def test_wait_in_progress_says_where_it_is() -> None:
    out = actions.wait_outcome(
        obj({"phase": "AwaitingApproval", "observedGeneration": 2, "message": "step 3/6: approvals 1/2"})
    )
    assert out == actions.WaitOutcome("pending", "AwaitingApproval: step 3/6: approvals 1/2")


# ---------------------------------------------------------------- approval target and API errors


def test_approval_defaults_to_the_canary_revision() -> None:
    waiting = obj({"phase": "AwaitingApproval", "canaryRevision": REV, "stableRevision": "0000000000"})
    assert actions.approval_revision(waiting, None) == REV
    assert actions.approval_revision(waiting, "explicit00") == "explicit00"


@pytest.mark.parametrize(
    ("status", "needle"),
    [
        ({"phase": "Healthy", "stableRevision": REV}, "no canary is waiting"),
        ({"phase": "RolledBack", "canaryRevision": REV}, "was rolled back"),
    ],
)
def test_approval_without_a_waiting_canary_is_an_error(status: dict[str, Any], needle: str) -> None:
    with pytest.raises(actions.CommandError, match=needle):
        actions.approval_revision(obj(status), None)


def test_webhook_denial_message_is_extracted() -> None:
    body = json.dumps(
        {
            "kind": "Status",
            "status": "Failure",
            "code": 403,
            "reason": "Forbidden",
            "message": 'admission webhook "approvals.controlled-friction.io" denied the request: '
            "dave authored revision abc and cannot approve it",
        }
    )
    msg = actions.api_error_message(ApiException(status=403, reason="Forbidden", body=body))
    assert msg.endswith("dave authored revision abc and cannot approve it")
    assert actions.api_error_message(ApiException(status=502, reason="Bad Gateway")) == "HTTP 502 Bad Gateway"
    assert actions.api_error_message(ApiException(status=500, reason="x", body="oops")) == "HTTP 500: oops"


def test_action_hints() -> None:
    assert "untimed pause" in (actions.action_hint(obj({"phase": "Progressing"}), "promote") or "")
    assert actions.action_hint(obj({"phase": "Paused", "canaryRevision": REV}), "promote") is None
    assert "rolled-back" in (actions.action_hint(obj({"phase": "Healthy"}), "retry") or "")
    assert actions.action_hint(obj({"phase": "RolledBack"}), "retry") is None
    assert "no canary" in (actions.action_hint(obj({"phase": "Healthy"}), "abort") or "")


def test_approve_delete_annotates_the_rollouts_uid() -> None:
    from controlled_friction import names
    from controlled_friction.cli import actions

    class Kube:
        patched: dict[str, Any] = {}

        def get_rollout(self, namespace: str, name: str) -> dict[str, Any]:
            return {"metadata": {"name": name, "namespace": namespace, "uid": "u-1"}}

        def patch_rollout_annotations(self, namespace: str, name: str, changes: dict[str, Any]) -> None:
            self.patched = changes

    kube = Kube()
    assert actions.approve_delete(kube, "shop", "checkout") == "u-1"  # type: ignore[arg-type]
    assert kube.patched == {names.ANN_APPROVE_DELETE: "u-1"}
