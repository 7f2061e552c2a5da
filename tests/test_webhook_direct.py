"""The direct path of the Rollout webhooks: same answers as the decisions, as a real AdmissionReview.

The chain is played as kube-apiserver plays it: the mutating answer's JSON patch is applied (with the
`jsonpatch` library, as a third party would), then the validating webhook sees the result.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import functools
import json
from typing import Any

import jsonpatch
from prometheus_client import REGISTRY

from controlled_friction import names
from controlled_friction.operator import webhooks  # noqa: F401  (registers the direct answers)
from controlled_friction.operator.webhook_direct import ANSWERS, DirectPath, annotation_ops, respond
from tests.test_admission import GROUPS, KEY, R2, admit, edit, entries_of, rollout

MEMO = {"approval_key": KEY}
INDICES: dict[str, Any] = {"policy_index": {}, "namespace_index": {}}


def review(user: str, old: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "u-1",
            "operation": "CREATE" if old is None else "UPDATE",
            "userInfo": {"username": user, "groups": list(GROUPS[user])},
            "object": copy.deepcopy(new),
            "oldObject": copy.deepcopy(old),
        },
    }


def chain(user: str, old: dict[str, Any] | None, new: dict[str, Any], memo: dict[str, Any] = MEMO,
          ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(mutating response, object after its patch, validating response)."""
    mutated = respond(review(user, old, new), ANSWERS["approvals"], memo, INDICES)
    obj = copy.deepcopy(new)
    if "patch" in mutated["response"]:
        assert mutated["response"]["patchType"] == "JSONPatch"
        ops = json.loads(base64.b64decode(mutated["response"]["patch"]))
        obj = jsonpatch.apply_patch(obj, ops)
    validated = respond(review(user, old, obj), ANSWERS["rollout-rules"], memo, INDICES)
    return mutated, obj, validated


def test_an_approval_through_the_direct_path_is_signed_and_allowed():
    obj = rollout()
    mutated, after, validated = chain("alice", obj, edit(obj, approve=R2))
    assert mutated["response"]["allowed"] and validated["response"]["allowed"], validated
    assert mutated["response"]["uid"] == "u-1"
    assert names.ANN_APPROVE not in after["metadata"]["annotations"]
    assert [e.user for e in entries_of(after)] == ["alice"]
    # The same object the decision functions produce when applied directly (at the entry's time).
    assert after == admit("alice", obj, edit(obj, approve=R2), now=entries_of(after)[0].time).obj


def test_the_author_is_refused_with_the_decision_message_and_code():
    obj = rollout()  # authored by dave
    _, _after, validated = chain("dave", obj, edit(obj, approve=R2))
    resp = validated["response"]
    assert resp["allowed"] is False
    assert resp["status"]["code"] == 403
    assert resp["status"]["message"] == admit("dave", obj, edit(obj, approve=R2)).text


def test_without_the_signing_key_every_request_is_refused():
    obj = rollout()
    mutated, _, validated = chain("alice", obj, edit(obj, approve=R2), memo={})
    assert mutated["response"]["allowed"] is False and mutated["response"]["status"]["code"] == 503
    assert validated["response"]["allowed"] is False


def test_an_unexpected_error_refuses_the_request():
    def broken(*_: Any) -> Any:
        raise ValueError("boom")

    resp = respond(review("alice", None, rollout()), broken, MEMO, INDICES)["response"]
    assert resp["allowed"] is False and resp["status"]["code"] == 500 and "boom" in resp["status"]["message"]


def test_annotation_ops_escape_keys_add_the_map_and_skip_absent_removals():
    assert annotation_ops({"metadata": {}}, {"a/b": "1", "gone": None}) == [
        {"op": "add", "path": "/metadata/annotations", "value": {"a/b": "1"}}]
    assert annotation_ops({"metadata": {}}, {"gone": None}) == []
    ops = annotation_ops({"metadata": {"annotations": {"x~y/z": "old", "keep": "1"}}},
                         {"x~y/z": None, "absent": None, "new/one": "v"})
    assert ops == [{"op": "remove", "path": "/metadata/annotations/x~0y~1z"},
                   {"op": "add", "path": "/metadata/annotations/new~1one", "value": "v"}]


def test_other_webhooks_still_go_through_kopf():
    seen: list[str | None] = []

    async def kopf_fn(request: Any, *, webhook: str | None = None, memobase: Any = None, indices: Any = None,
                      **_: Any) -> dict[str, Any]:
        seen.append(webhook)
        return {"via": "kopf"}

    class Server:
        async def __call__(self, fn: Any) -> Any:
            yield await fn(review("alice", None, rollout()), webhook="owned-deployments")
            yield await fn(review("alice", None, rollout()), webhook="rollout-rules")

    class Direct(DirectPath, Server):
        pass

    async def run() -> list[Any]:
        bound = functools.partial(kopf_fn, memobase=MEMO, indices=INDICES)
        return [r async for r in Direct()(bound)]  # type: ignore[arg-type]

    def served(hook: str) -> float:
        return REGISTRY.get_sample_value("controlled_friction_admission_duration_seconds_count",
                                         {"webhook": hook}) or 0.0

    before = served("owned-deployments"), served("rollout-rules")
    first, second = asyncio.run(run())
    assert first == {"via": "kopf"} and seen == ["owned-deployments"]
    assert second["response"]["uid"] == "u-1" and "allowed" in second["response"]
    # Both paths are timed in the server, per webhook (the benchmark compares it with the API server's view).
    assert (served("owned-deployments"), served("rollout-rules")) == (before[0] + 1, before[1] + 1)
