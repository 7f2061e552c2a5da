"""What the CLI asks of a Rollout: approvals, one-shot actions, and the `status --wait` verdict.

The CLI never decides who may approve or act: it writes the annotation and the admission webhook
(which sees the caller's authenticated identity) accepts or rejects it. Rejections come back as API
errors whose message is the webhook's; `api_error_message` digs it out for printing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from controlled_friction import admission, names, template_diff
from controlled_friction.adapters.kube import Kube, NotFound
from controlled_friction.effective_plan import compute_effective_plan, is_ai_assisted, matching_policies
from controlled_friction.models.rollout import EffectivePlan, RolloutSpec
from controlled_friction.revision import revision_of
from controlled_friction.template_diff import ChangeReport

Action = Literal["promote", "abort", "retry"]
ACTIONS: tuple[Action, ...] = ("promote", "abort", "retry")


class CommandError(Exception):
    """A failure to report to the user as one line, with the process exit code."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


def api_error_message(exc: ApiException) -> str:
    """The API server's (or admission webhook's) own message, else the HTTP status and reason."""
    body = exc.body
    if isinstance(body, bytes):
        body = body.decode(errors="replace")
    if isinstance(body, str) and body:
        try:
            data = json.loads(body)
        except json.JSONDecodeError:
            return f"HTTP {exc.status}: {body.strip()}"
        if isinstance(data, dict) and data.get("message"):
            return str(data["message"])
    return f"HTTP {exc.status} {exc.reason or ''}".strip()


def get_rollout(kube: Kube, namespace: str, name: str) -> dict[str, Any]:
    try:
        return kube.get_rollout(namespace, name)
    except NotFound as exc:
        raise CommandError(f"rollout {namespace}/{name} not found") from exc


def preview_plan(kube: Kube, obj: dict[str, Any]) -> EffectivePlan | None:
    """The plan the next template change would get, from the Rollout and today's policies (the
    operator's own computation); None when the spec cannot be read."""
    try:
        spec = RolloutSpec.model_validate(obj.get("spec") or {})
    except ValidationError:
        return None
    meta = obj.get("metadata") or {}
    policies = matching_policies(
        admission.policies_from_objects(kube.list_policies()),
        dict(meta.get("labels") or {}),
        kube.namespace_labels(str(meta.get("namespace", ""))),
    )
    return compute_effective_plan(spec, policies, is_ai_assisted(dict(meta.get("annotations") or {})))


def approval_revision(obj: dict[str, Any], revision: str | None) -> str:
    """The revision to approve: the explicit one, else the canary waiting in status."""
    if revision:
        return revision
    meta = obj.get("metadata") or {}
    st = obj.get("status") or {}
    where = f"{meta.get('namespace')}/{meta.get('name')}"
    canary = st.get("canaryRevision")
    phase = st.get("phase")
    if not canary:
        raise CommandError(
            f"no canary is waiting in {where} (phase {phase or 'unknown'}, stable {st.get('stableRevision') or '-'}); "
            "nothing to approve. Pass --revision REV to approve a revision the operator has not picked up yet."
        )
    if phase == "RolledBack":
        raise CommandError(
            f"canary {canary} of {where} was rolled back; approving it changes nothing. "
            "Use `retry` to run it again, or pass --revision explicitly."
        )
    return str(canary)


def approve(kube: Kube, namespace: str, name: str, revision: str | None = None) -> str:
    """Submit an approval of the canary revision; returns the revision submitted."""
    rev = approval_revision(get_rollout(kube, namespace, name), revision)
    _patch(kube, namespace, name, {names.ANN_APPROVE: rev})
    return rev


def change_report(kube: Kube, obj: dict[str, Any]) -> ChangeReport:
    """Stable -> canary: what `<name>-stable` runs against the Rollout's spec.template, read as the caller."""
    meta = obj.get("metadata") or {}
    ns, name = str(meta.get("namespace", "")), str(meta.get("name", ""))
    dep_name = names.deployment_name(name, names.TRACK_STABLE)
    try:
        deployment = kube.get_deployment(ns, dep_name)
    except ApiException as exc:
        raise CommandError(f"cannot read Deployment {ns}/{dep_name}: {api_error_message(exc)}") from exc
    return template_diff.change_report(obj, deployment)


def acted_revision(obj: dict[str, Any]) -> str | None:
    """The revision an action acts on: the canary in progress, else the rolled-back one."""
    st = obj.get("status") or {}
    rev = st.get("canaryRevision") or (st.get("abortedRevision") if st.get("phase") == "RolledBack" else None)
    return str(rev) if rev else None


def approve_delete(kube: Kube, namespace: str, name: str) -> str:
    """Approve deleting the Rollout as it exists now (bound to its uid); returns the uid."""
    uid = str((get_rollout(kube, namespace, name).get("metadata") or {}).get("uid") or "")
    if not uid:
        raise CommandError(f"rollout {namespace}/{name} has no uid; is this a real API server?")
    _patch(kube, namespace, name, {names.ANN_APPROVE_DELETE: uid})
    return uid


def request_action(
    kube: Kube, namespace: str, name: str, action: Action, expect_revision: str | None = None
) -> dict[str, Any]:
    """Set the one-shot action annotation; returns the Rollout as it was before (for hints).

    With `expect_revision` (the revision the user confirmed, e.g. in the dashboard) the action is
    refused when the Rollout has moved on to another revision meanwhile."""
    if action not in ACTIONS:
        raise CommandError(f"unknown action {action!r}; use one of {', '.join(ACTIONS)}", exit_code=2)
    before = get_rollout(kube, namespace, name)
    current = acted_revision(before)
    if expect_revision is not None and current != expect_revision:
        raise CommandError(
            f"{action} not requested: {namespace}/{name} is now at revision {current or '-'}, "
            f"not {expect_revision} as confirmed; look again"
        )
    _patch(kube, namespace, name, {names.ANN_ACTION: action})
    return before


def action_hint(obj: dict[str, Any], action: Action) -> str | None:
    """A note when the action will probably be ignored by the operator (it still decides)."""
    st = obj.get("status") or {}
    phase = st.get("phase")
    if action == "promote" and phase != "Paused":
        return (
            f"note: phase is {phase}; promote only ends an untimed pause (approval gates, bakes and "
            "analysis still apply)"
        )
    if action == "abort" and not st.get("canaryRevision"):
        return "note: no canary in progress; the operator will ignore the abort"
    if action == "retry" and phase != "RolledBack":
        return f"note: phase is {phase}; retry only restarts a rolled-back revision"
    return None


def _patch(kube: Kube, namespace: str, name: str, changes: dict[str, str | None]) -> None:
    try:
        kube.patch_rollout_annotations(namespace, name, changes)
    except NotFound as exc:
        raise CommandError(f"rollout {namespace}/{name} not found") from exc
    except ApiException as exc:
        raise CommandError(api_error_message(exc)) from exc


# ---------------------------------------------------------------- status --wait


@dataclass(frozen=True)
class WaitOutcome:
    state: Literal["pending", "healthy", "failed"]
    reason: str


def wait_outcome(obj: dict[str, Any]) -> WaitOutcome:
    """Has the rollout of the *current* template finished? Stale verdicts count as pending.

    A Rollout applied a moment ago still shows the previous revision's `Healthy` (or `RolledBack`)
    until the operator reconciles it, so a verdict counts only once the operator has observed this
    generation and handled any pending one-shot action; `Healthy` additionally needs the template's
    revision to be the stable one with no canary left.
    """
    meta = obj.get("metadata") or {}
    st = obj.get("status") or {}
    phase = st.get("phase") or "Pending"
    message = st.get("message") or ""
    generation = meta.get("generation")
    observed = st.get("observedGeneration")
    if generation is not None and (observed is None or observed < generation):
        return WaitOutcome("pending", f"waiting for the operator to observe generation {generation}")
    pending_action = (meta.get("annotations") or {}).get(names.ANN_ACTION)
    if pending_action:
        return WaitOutcome("pending", f"waiting for the operator to handle the {pending_action!r} action")
    template = (obj.get("spec") or {}).get("template")
    want = revision_of(template) if isinstance(template, dict) else None
    if phase == "Invalid":
        return WaitOutcome("failed", message or "the Rollout is invalid")
    if phase == "RolledBack":
        aborted = st.get("abortedRevision")
        if want and aborted and aborted != want:
            return WaitOutcome("pending", f"waiting for the operator to start revision {want}")
        return WaitOutcome("failed", message or "rolled back")
    if phase == "Healthy":
        if st.get("canaryRevision"):
            return WaitOutcome("pending", f"canary {st['canaryRevision']} still in progress")
        if want and st.get("stableRevision") != want:
            return WaitOutcome("pending", f"waiting for revision {want} to become stable")
        return WaitOutcome("healthy", message or f"revision {st.get('stableRevision')} is stable")
    return WaitOutcome("pending", f"{phase}: {message}" if message else phase)
