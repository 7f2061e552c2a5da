"""End-to-end: approvals through the real kube-apiserver, as the contract's users, and forgeries."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import yaml

from controlled_friction import names
from controlled_friction.models.approval import ApprovalEntry, dump_record, sign
from controlled_friction.sandbox import cluster
from controlled_friction.sandbox.operator_proc import OperatorProcess, remove_webhook_configurations

from .rollouts import admin, apply_as, kubectl_as, revision, rollout, status, wait_phase
from .waiting import wait_for

pytestmark = pytest.mark.e2e
GATED = [{"setWeight": 20}, {"pause": {"duration": "2s"}}, {"setWeight": 50}]
TRIED: list[str] = []


@pytest.fixture(scope="module", autouse=True)
def _forgery_summary() -> Iterator[None]:
    yield
    print(f"\napproval forgery variants tried through the API server: {len(TRIED)} ({', '.join(TRIED)})")


def _approve(user: str, ns: str, rev: str) -> tuple[int, str]:
    return kubectl_as(user, "annotate", "rollout", "checkout", "-n", ns, f"{names.ANN_APPROVE}={rev}")


def _at_gate(ns: str, author: str = "dave", **kw) -> tuple[str, dict]:
    kube = admin()
    v1 = rollout(ns, "shop/app:1", GATED, critical=True, **kw)
    apply_as(author, v1)
    wait_phase(kube, ns, "Healthy", revision_=revision(v1))
    v2 = rollout(ns, "shop/app:2", GATED, critical=True, **kw)
    apply_as(author, v2)
    wait_phase(kube, ns, "AwaitingApproval", timeout=90)
    return revision(v2), v2


def _refused(variant: str, code: int, out: str, *needles: str) -> None:
    TRIED.append(variant)
    assert code != 0, f"{variant}: accepted ({out})"
    for n in needles:
        assert n in out, f"{variant}: message lacks {n!r}: {out}"


def test_forgeries_are_refused_and_seniors_open_the_gate(live_operator: OperatorProcess, namespace: str):
    kube = admin()
    rev, _ = _at_gate(namespace, author="carol")  # carol is senior, but the author
    assert kube.get_rollout(namespace, "checkout")["metadata"]["annotations"][names.ANN_AUTHOR] == "carol"

    _refused("author approves", *_approve("carol", namespace, rev), "author")
    _refused("engineer approves", *_approve("dave", namespace, rev), "senior-engineers")
    _refused("wrong revision", *_approve("alice", namespace, "0123456789"), "canary revision")
    code, out = kubectl_as("mallory", "annotate", "rollout", "checkout", "-n", namespace, "--overwrite",
                           f"{names.ANN_AUTHOR}=mallory")
    _refused("author set by hand", code, out, names.ANN_AUTHOR)
    forged = sign(ApprovalEntry(user="alice", groups=[names.SENIOR_GROUP], revision=rev,
                                time=datetime.now(UTC), rollout=f"{namespace}/checkout"), b"guessed-key")
    code, out = kubectl_as("mallory", "annotate", "rollout", "checkout", "-n", namespace, "--overwrite",
                           f"{names.ANN_APPROVALS}={dump_record([forged])}")
    _refused("hand-written approvals record", code, out, names.ANN_APPROVALS)

    code, out = _approve("alice", namespace, rev)
    assert code == 0, out
    _refused("same person twice", *_approve("alice", namespace, rev), "already approved")
    obj = kube.get_rollout(namespace, "checkout")
    record = json.loads(obj["metadata"]["annotations"][names.ANN_APPROVALS])
    assert [(e["user"], e["revision"]) for e in record] == [("alice", rev)]
    assert names.ANN_APPROVE not in obj["metadata"]["annotations"]
    code, out = kubectl_as("mallory", "annotate", "rollout", "checkout", "-n", namespace,
                           f"{names.ANN_APPROVALS}-")
    _refused("approvals record removed", code, out)
    copied = dict(record[0], user="bob")  # alice's signature on bob's name
    code, out = kubectl_as("bob", "annotate", "rollout", "checkout", "-n", namespace, "--overwrite",
                           f"{names.ANN_APPROVALS}={json.dumps([record[0], copied])}")
    _refused("entry copied under another name", code, out)

    wait_for(lambda: status(kube, namespace).get("approvalsSummary") == "1/2", 30, message="1/2")
    assert status(kube, namespace)["phase"] == "AwaitingApproval"
    code, out = _approve("bob", namespace, rev)
    assert code == 0, out
    st = wait_phase(kube, namespace, "Healthy", timeout=120, revision_=rev)
    assert sorted(st["history"][-1]["approvers"]) == ["alice", "bob"]


def test_template_change_voids_earlier_approvals(live_operator: OperatorProcess, namespace: str):
    kube = admin()
    rev2, _ = _at_gate(namespace)
    code, out = _approve("alice", namespace, rev2)
    assert code == 0, out
    wait_for(lambda: status(kube, namespace).get("approvalsSummary") == "1/2", 30, message="1/2")
    v3 = rollout(namespace, "shop/app:3", GATED, critical=True)
    apply_as("dave", v3)
    st = wait_for(lambda: (s := status(kube, namespace)).get("canaryRevision") == revision(v3)
                  and s.get("phase") == "AwaitingApproval" and s, 90, message="gate of the new revision")
    assert st["approvals"] == [] and st["approvalsSummary"] == "0/2"
    record = json.loads(kube.get_rollout(namespace, "checkout")["metadata"]["annotations"].get(
        names.ANN_APPROVALS, "[]"))
    assert all(e["revision"] == revision(v3) for e in record)
    TRIED.append("approval of an older revision after a template change")


def test_expired_approval_does_not_count(live_operator: OperatorProcess, namespace: str):
    short = {
        "apiVersion": names.API_VERSION,
        "kind": "FrictionPolicy",
        "metadata": {"name": f"short-expiry-{namespace}"},
        "spec": {
            "selector": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}},
            "rules": {"approvals": {"count": 1, "approverGroups": [names.SENIOR_GROUP], "expiry": "4s"}},
        },
    }
    cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(short))
    try:
        kube = admin()
        rev, _ = _at_gate(namespace)
        code, out = _approve("alice", namespace, rev)
        assert code == 0, out
        wait_for(lambda: status(kube, namespace).get("approvalsSummary", "").startswith("1/"), 30, message="counted")
        # Four seconds later the approval has expired: the gate stays closed and the count drops.
        wait_for(lambda: status(kube, namespace).get("approvalsSummary", "").startswith("0/"), 30,
                 message="approval expired")
        assert status(kube, namespace)["phase"] == "AwaitingApproval"
        TRIED.append("expired approval")
    finally:
        cluster.kubectl("delete", "frictionpolicy", short["metadata"]["name"], "--ignore-not-found")


def test_record_written_while_webhook_bypassed_is_ignored(live_operator: OperatorProcess, namespace: str):
    """Break-glass: the webhook configurations are deleted; a forged record must still not count."""
    kube = admin()
    rev, _ = _at_gate(namespace)
    live_operator.stop()
    remove_webhook_configurations()
    try:
        entries = [
            sign(ApprovalEntry(user=u, groups=[names.SENIOR_GROUP], revision=rev, time=datetime.now(UTC),
                               rollout=f"{namespace}/checkout"), b"not-the-key")
            for u in ("alice", "bob")
        ]
        code, out = kubectl_as("mallory", "annotate", "rollout", "checkout", "-n", namespace, "--overwrite",
                               f"{names.ANN_APPROVALS}={dump_record(entries)}")
        assert code == 0, out  # nothing stops the write while the webhook is gone...
    finally:
        live_operator.start()
        live_operator.wait_webhook_ready()
    # ...but the operator counts only signatures made with its key.
    wait_for(lambda: any(e["reason"] == "ApprovalIgnored" for e in kube.list_events(namespace, "checkout")), 30,
             message="ApprovalIgnored event")
    st = status(kube, namespace)
    assert st["phase"] == "AwaitingApproval" and st["approvals"] == []
    TRIED.append("forged record while the webhook was bypassed")


def test_author_named_while_webhook_bypassed_cannot_launder_a_self_approval(live_operator: OperatorProcess,
                                                                           namespace: str):
    """Break-glass: carol changes the template and names alice as its author while the webhooks are
    gone, hoping to approve her own change once they are back. The author is not signed for the new
    revision, so the webhook refuses every approval and the operator counts none."""
    kube = admin()
    _at_gate(namespace)  # dave's v2 waits at the gate
    live_operator.stop()
    remove_webhook_configurations()
    v3 = rollout(namespace, "shop/app:3", GATED, critical=True)
    v3["metadata"]["annotations"] = {names.ANN_AUTHOR: "alice"}
    try:
        apply_as("carol", v3)  # nothing checks who wrote the template while the webhook is gone
    finally:
        live_operator.start()
        live_operator.wait_webhook_ready()
    rev3 = revision(v3)
    st = wait_for(lambda: (s := status(kube, namespace)).get("canaryRevision") == rev3
                  and s.get("phase") == "AwaitingApproval" and s, 90, message="gate of the laundered revision")
    assert kube.get_rollout(namespace, "checkout")["metadata"]["annotations"][names.ANN_AUTHOR] == "alice"
    for user in ("carol", "bob"):
        _refused(f"approve a revision whose author was named while the webhook was bypassed ({user})",
                 *_approve(user, namespace, rev3), "its author was not recorded by the admission webhook")
    wait_for(lambda: any(e["reason"] == "AuthorNotVerified" for e in kube.list_events(namespace, "checkout")), 30,
             message="AuthorNotVerified event")
    st = status(kube, namespace)
    assert st["phase"] == "AwaitingApproval" and st["approvals"] == [] and st["approvalsSummary"] == "0/2"
    assert "not recorded by the admission webhook" in st["message"]
