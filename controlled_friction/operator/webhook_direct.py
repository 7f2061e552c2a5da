"""Answer the hot Rollout webhooks straight from the AdmissionReview, without kopf's per-request machinery.

Every approval and template change goes through two webhooks (`approvals`, `rollout-rules`). kopf
spends ~10 ms of CPU on each request before and after our handler (it wraps both bodies, diffs old
against new, then diffs the whole object again to turn the handler's patch into JSON-patch ops), so
at 50 approvals/s the webhooks saturated a core and queued for seconds (benchmarks/scale.py). Here the
same decision functions answer those webhook ids directly, and the JSON patch is written from the
annotation changes themselves. kopf still serves every other webhook, keeps the server (TLS, routes)
and keeps the webhook configurations registered; the decisions stay in `webhooks`/`admission`.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import kopf
import structlog

from controlled_friction.admission import AdmissionInput
from controlled_friction.operator import metrics

log = structlog.get_logger("controlled_friction.admission")

# (request, kopf's memo, kopf's indices by handler id) -> (annotation changes (None deletes), warnings);
# raises kopf.AdmissionError to refuse.
Answer = Callable[[AdmissionInput, Mapping[str, Any], Mapping[str, Any]], tuple[Mapping[str, str | None], list[str]]]
ANSWERS: dict[str, Answer] = {}  # by webhook (handler) id; filled by `webhooks`


def admission_input(payload: Mapping[str, Any]) -> AdmissionInput:
    """The request part of an AdmissionReview (freshly parsed JSON: nobody else holds it, no copy)."""
    user = payload.get("userInfo") or {}
    return AdmissionInput(
        operation=str(payload.get("operation") or ""),
        user=str(user.get("username") or ""),
        groups=tuple(str(g) for g in user.get("groups") or ()),
        old=payload.get("oldObject"),
        new=payload.get("object"),
        subresource=payload.get("subResource") or None,
    )


def _pointer(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")  # RFC 6901


def annotation_ops(obj: Mapping[str, Any] | None, changes: Mapping[str, str | None]) -> list[dict[str, Any]]:
    """JSON-patch ops that apply `changes` to the object's annotations (None removes one if present)."""
    current = ((obj or {}).get("metadata") or {}).get("annotations")
    ops: list[dict[str, Any]] = []
    if current is None:
        added = {k: v for k, v in changes.items() if v is not None}
        return [{"op": "add", "path": "/metadata/annotations", "value": added}] if added else []
    for key, value in changes.items():
        path = "/metadata/annotations/" + _pointer(key)
        if value is None:
            if key in current:
                ops.append({"op": "remove", "path": path})
        else:  # "add" replaces an existing member
            ops.append({"op": "add", "path": path, "value": value})
    return ops


def respond(review: Mapping[str, Any], answer: Answer, memo: Mapping[str, Any],
            indices: Mapping[str, Any]) -> dict[str, Any]:
    """The AdmissionReview response, as kopf would build it for the same handler outcome."""
    payload = review.get("request") or {}
    out: dict[str, Any] = {"uid": payload.get("uid", ""), "allowed": True}
    try:
        changes, warnings = answer(admission_input(payload), memo, indices)
    except kopf.AdmissionError as exc:
        out.update(allowed=False, status={"message": str(exc) or repr(exc), "code": exc.code or 500})
    except Exception as exc:  # fail closed, like kopf: an error refuses the request
        log.exception("admission handler failed", webhook=str(payload.get("uid")))
        out.update(allowed=False, status={"message": f"{type(exc).__name__}: {exc}", "code": 500})
    else:
        ops = annotation_ops(payload.get("object"), changes)
        if ops:
            out["patchType"] = "JSONPatch"
            out["patch"] = base64.b64encode(json.dumps(ops).encode()).decode("ascii")
        if warnings:
            out["warnings"] = [str(w) for w in warnings]
    return {"apiVersion": review.get("apiVersion", "admission.k8s.io/v1"),
            "kind": review.get("kind", "AdmissionReview"), "response": out}


class DirectPath:
    """Mixin for a kopf webhook server: requests for an id in ANSWERS are answered here, the rest by kopf.

    kopf hands its server one function, a partial of its request handler bound to the operator's memo
    and indices; the direct path reads those two from it, so both paths see the same caches."""

    async def __call__(self, fn: kopf.WebhookFn) -> AsyncIterator[kopf.WebhookClientConfig]:
        bound = getattr(fn, "keywords", None) or {}
        memo, indices = bound.get("memobase"), bound.get("indices")

        async def serve(request: Any, *, webhook: str | None = None, **kw: Any) -> Any:
            with metrics.ADMISSION_SECONDS.labels(webhook or "").time():
                answer = ANSWERS.get(webhook or "")
                if answer is not None and memo is not None and indices is not None:
                    return respond(request, answer, memo, indices)
                return await fn(request, webhook=webhook, **kw)

        async for config in super().__call__(serve):  # type: ignore[misc]
            yield config
