"""Admission decisions for Rollouts and FrictionPolicies: pure functions, no I/O, no clock.

The two-person rule rests on three facts the webhooks establish for every write to a Rollout:

* `author` always names whoever last changed `spec.template` (the mutating webhook writes it from the
  API server's userInfo, the validating webhook rejects any other change to it);
* the `approvals` record only grows by one HMAC-signed entry per request, for the requesting user,
  the current canary revision and this rollout, written by the mutating webhook;
* that entry is admitted only if the requester may approve (approver group, not the author, not
  the CI-claimed change author, not twice, something to approve).

The same webhooks keep a deletion-approval record (`deletion`), refuse the `DELETE` of a Rollout
whose policy requires approvals that are not there, and check change records (`change_record`).

`operator/webhooks.py` adapts kopf's kwargs to `AdmissionInput` and turns `Problem`s into
`kopf.AdmissionError`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel, ValidationError

from controlled_friction import approvers, change_record, deletion, names
from controlled_friction.analysis import query_problems
from controlled_friction.errors import readable_errors
from controlled_friction.models.approval import (
    ApprovalEntry,
    dump_record,
    parse_record,
    sign,
    sign_author,
    verify,
    verify_author,
)
from controlled_friction.models.policy import FrictionPolicySpec, FrictionRules, NamedPolicy
from controlled_friction.models.rollout import ApprovalStep, RolloutSpec
from controlled_friction.revision import revision_of
from controlled_friction.validation import name_problems, spec_problems

# An appended entry must be dated within this much of "now": the webhook writes it moments before the
# validating phase, so anything older was copied from elsewhere (or a dry run) and is a replay.
APPROVAL_MAX_SKEW = timedelta(minutes=5)
FORBIDDEN = 403
UNPROCESSABLE = 422
KOPF_PREFIX = "kopf.zalando.org/"
WRITE_OPERATIONS = ("CREATE", "UPDATE")


@dataclass(frozen=True)
class AdmissionInput:
    """What the API server tells a webhook about one request."""

    operation: str
    user: str
    groups: tuple[str, ...] = ()
    old: Mapping[str, Any] | None = None
    new: Mapping[str, Any] | None = None
    subresource: str | None = None


@dataclass(frozen=True)
class Mutation:
    """Annotation changes for the mutating webhook (None deletes), and warnings for the requester."""

    annotations: dict[str, str | None] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class Problem:
    """Why a request is denied; `code` is 403 for rule breaches, 422 for invalid content."""

    message: str
    code: int = FORBIDDEN

    def __str__(self) -> str:
        return self.message


def denial(problems: list[Problem]) -> tuple[str, int] | None:
    """One message (a line per problem) and one HTTP code for the API server, or None to allow."""
    if not problems:
        return None
    code = FORBIDDEN if any(p.code == FORBIDDEN for p in problems) else UNPROCESSABLE
    return "\n".join(p.message for p in problems), code


# ---------------------------------------------------------------- object helpers


def _meta(obj: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return (obj or {}).get("metadata") or {}


def _annotations(obj: Mapping[str, Any] | None) -> Mapping[str, str]:
    return _meta(obj).get("annotations") or {}


def _revision(obj: Mapping[str, Any] | None) -> str | None:
    template = ((obj or {}).get("spec") or {}).get("template")
    return revision_of(dict(template)) if isinstance(template, Mapping) else None


def rollout_id(obj: Mapping[str, Any] | None) -> str:
    meta = _meta(obj)
    return f"{meta.get('namespace') or ''}/{meta.get('name') or ''}"


def _stable_revision(req: AdmissionInput) -> str | None:
    # The old object's status: status in the request body of a main-resource write is the user's
    # (the API server resets it only after mutating admission), status writes never come here.
    status = (req.old or {}).get("status") or {}
    value = status.get("stableRevision")
    return value if isinstance(value, str) and value else None


def _template_changed(req: AdmissionInput) -> bool:
    return req.operation == "CREATE" or _revision(req.old) != _revision(req.new)


def _passes_untouched(req: AdmissionInput) -> bool:
    """Requests the approval rules never look at: the operator, subresources, deletes."""
    return (
        req.user == names.OPERATOR_USERNAME
        or req.subresource is not None
        or req.operation not in WRITE_OPERATIONS
        or req.new is None
    )


def _utc(t: datetime) -> datetime:
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


# ---------------------------------------------------------------- mutating webhook


def mutate_rollout(req: AdmissionInput, key: bytes, now: datetime) -> Mutation:
    """Record the author of a template change and turn an `approve` annotation into a signed entry.

    The entry is signed for whoever sends the request; whether that person may approve is the
    validating webhook's decision, which sees this very entry and rejects the whole request if not.
    An `approve` naming the wrong revision (or the stable one) is left in place so that the validating
    webhook can say what is wrong.
    """
    if _passes_untouched(req):
        return Mutation()
    ann = _annotations(req.new)
    old_ann = _annotations(req.old)
    rev = _revision(req.new)
    changes: dict[str, str | None] = {}
    warnings: list[str] = []

    entries, unreadable = parse_record(ann.get(names.ANN_APPROVALS))
    record = list(entries)
    touched = False
    if _template_changed(req) and rev is not None:
        if ann.get(names.ANN_AUTHOR) != req.user:
            changes[names.ANN_AUTHOR] = req.user
        signature = sign_author(rollout_id(req.new), rev, req.user, key)
        if ann.get(names.ANN_AUTHOR_SIGNATURE) != signature:
            changes[names.ANN_AUTHOR_SIGNATURE] = signature
        record = [e for e in record if e.revision == rev]
        touched = True
        if req.operation == "UPDATE" and len(record) < len(entries):
            warnings.append(
                f"spec.template changed (new revision {rev}): "
                f"{len(entries) - len(record)} approval(s) of the previous revision no longer count"
            )

    approve = ann.get(names.ANN_APPROVE)
    if approve is not None:
        if req.operation == "UPDATE" and approve == old_ann.get(names.ANN_APPROVE):
            # Left over from a time without webhooks; this request did not ask to approve anything.
            changes[names.ANN_APPROVE] = None
            warnings.append(
                f"removed a leftover {names.ANN_APPROVE} annotation that was never recorded; set it again to approve"
            )
        elif rev is not None and approve.strip() == rev and rev != _stable_revision(req):
            entry = ApprovalEntry(
                user=req.user,
                groups=sorted(set(req.groups)),
                revision=rev,
                time=_utc(now).replace(microsecond=0),
                rollout=rollout_id(req.new),
            )
            record.append(sign(entry, key))
            changes[names.ANN_APPROVE] = None
            touched = True

    if touched and (record != entries or unreadable):
        changes[names.ANN_APPROVALS] = dump_record(record) if record else None
    changes.update(_mutate_delete_approval(req, key, now, warnings))
    if _template_changed(req) and req.operation == "UPDATE":
        kept_record = (ann.get(names.ANN_CHANGE_RECORD) or "").strip()
        if kept_record and kept_record == (old_ann.get(names.ANN_CHANGE_RECORD) or "").strip():
            warnings.append(f"{names.ANN_CHANGE_RECORD} is the same as for the previous revision "
                            f"({kept_record}); update it if this change has its own ticket")
    return Mutation(annotations=changes, warnings=tuple(warnings))


def _uid(req: AdmissionInput) -> str:
    return str(_meta(req.new).get("uid") or _meta(req.old).get("uid") or "")


def _mutate_delete_approval(
    req: AdmissionInput, key: bytes, now: datetime, warnings: list[str]
) -> dict[str, str | None]:
    """`approve-delete: <uid>` becomes a signed entry of `delete-approvals` for the requester."""
    ann, old_ann = _annotations(req.new), _annotations(req.old)
    value = ann.get(names.ANN_APPROVE_DELETE)
    if value is None or req.operation != "UPDATE":
        return {}
    if value == old_ann.get(names.ANN_APPROVE_DELETE):
        warnings.append(f"removed a leftover {names.ANN_APPROVE_DELETE} annotation that was never recorded; "
                        "set it again to approve the deletion")
        return {names.ANN_APPROVE_DELETE: None}
    uid = _uid(req)
    if not uid or value.strip() != uid:
        return {}  # the validating webhook says what is wrong
    entry = deletion.new_entry(req.user, req.groups, rollout_id(req.new), uid, now, key)
    return {
        names.ANN_APPROVE_DELETE: None,
        names.ANN_DELETE_APPROVALS: deletion.appended(ann.get(names.ANN_DELETE_APPROVALS), entry),
    }


# ---------------------------------------------------------------- validating webhook


def needs_policy_context(req: AdmissionInput) -> bool:
    """True when `validate_rollout` may check an approver's groups (so the shell must read policies)."""
    if _passes_untouched(req):
        return False
    if _template_changed(req):  # change-record and approval rules of the matching policies
        return True
    ann, old_ann = _annotations(req.new), _annotations(req.old)
    return any(ann.get(k) is not None and ann.get(k) != old_ann.get(k)
               for k in (names.ANN_APPROVALS, names.ANN_DELETE_APPROVALS))


def validate_rollout(
    req: AdmissionInput,
    key: bytes,
    policies: list[NamedPolicy],
    namespace_labels: Mapping[str, str],
    now: datetime,
) -> list[Problem]:
    """Everything wrong with a write to a Rollout (empty: allowed)."""
    if _passes_untouched(req):
        return []
    problems: list[Problem] = []
    old_spec = (req.old or {}).get("spec")
    new = req.new or {}
    if req.operation == "CREATE" or old_spec != new.get("spec"):
        problems += rollout_spec_problems(new.get("spec"))
    if req.operation == "CREATE":
        problems += [Problem(p, UNPROCESSABLE) for p in name_problems(str(_meta(new).get("name") or ""))]
    problems += _approve_problems(req)
    problems += _author_problems(req)
    problems += _author_signature_problems(req, key)
    problems += _record_problems(req, key, policies, namespace_labels, _utc(now))
    problems += _change_record_problems(req, policies, namespace_labels)
    problems += _delete_approval_problems(req, key, policies, namespace_labels, _utc(now))
    return problems


def acceptance_notes(req: AdmissionInput) -> list[str]:
    """What an accepted request recorded, for the requester (admission warnings): approvals, with the
    change record of what was approved, and deletion approvals."""
    if _passes_untouched(req):
        return []
    ann, old_ann = _annotations(req.new), _annotations(req.old)
    notes = []
    record = change_record.describe(ann.get(names.ANN_CHANGE_RECORD))
    for key_, what in ((names.ANN_APPROVALS, "revision"), (names.ANN_DELETE_APPROVALS, "deletion")):
        new_entries, _ = parse_record(ann.get(key_))
        old_entries, _ = parse_record(old_ann.get(key_))
        if len(new_entries) > len(old_entries) and new_entries[-1] not in old_entries:
            last = new_entries[-1]
            if what == "revision":
                notes.append(f"approval of revision {last.revision} of {rollout_id(req.new)} recorded for "
                             f"{last.user} ({record})")
            else:
                notes.append(f"approval to delete {rollout_id(req.new)} (uid {_uid(req)}) recorded for {last.user}; "
                             "it counts for a deletion requested by someone else")
    return notes


def validate_rollout_delete(
    req: AdmissionInput,
    key: bytes,
    policies: list[NamedPolicy],
    namespace_labels: Mapping[str, str],
    now: datetime,
    namespace_terminating: bool = False,
) -> list[Problem]:
    """A `DELETE` of a Rollout whose policies require deletion approvals that are not all there.

    A terminating namespace's Rollouts are removed by the namespace controller: out of scope."""
    if req.operation != "DELETE" or req.old is None or namespace_terminating:
        return []
    reqs = deletion.requirements(req.old, policies, namespace_labels)
    if not reqs:
        return []
    rollout = rollout_id(req.old)
    entries, _ = parse_record(_annotations(req.old).get(names.ANN_DELETE_APPROVALS))
    got = deletion.count(entries, reqs, key=key, rollout=rollout, uid=_uid(req), requester=req.user, now=now)
    if got.met:
        return []
    own = " (your own approval does not count: the requester is never one of the approvers)" if any(
        e.user == req.user for e in entries) else ""
    sources = ", ".join(sorted({r.source for r in reqs}))
    return [
        Problem(
            f"deleting Rollout {rollout} (and its Deployments) needs approval by others first ({sources}): "
            f"counted {', '.join(got.counted) or 'none'}{own}; missing {'; '.join(got.missing)}. "
            f"Approvers run: {deletion.hint(req.old)}; then delete it again"
        )
    ]


def _change_record_problems(
    req: AdmissionInput, policies: list[NamedPolicy], namespace_labels: Mapping[str, str]
) -> list[Problem]:
    ann, old_ann = _annotations(req.new), _annotations(req.old)
    value = ann.get(names.ANN_CHANGE_RECORD)
    rev = _revision(req.new)
    template_changed = _template_changed(req) and rev is not None
    if value is not None and (value != old_ann.get(names.ANN_CHANGE_RECORD) or template_changed):
        _, wrong = change_record.parse(value)
        if wrong:
            return [Problem(wrong, UNPROCESSABLE)]
    if template_changed and not (value or "").strip():
        required = change_record.requiring_policies(req.new or {}, policies, namespace_labels)
        if required:
            return [
                Problem(
                    f"{rollout_id(req.new)}: this change of spec.template (revision {rev}) needs a change record "
                    f"(required by policy {', '.join(required)}): add the annotation {names.ANN_CHANGE_RECORD}: "
                    f"{change_record.FORMAT}"
                )
            ]
    return []


def _delete_approval_problems(
    req: AdmissionInput,
    key: bytes,
    policies: list[NamedPolicy],
    namespace_labels: Mapping[str, str],
    now: datetime,
) -> list[Problem]:
    ann, old_ann = _annotations(req.new), _annotations(req.old)
    rollout, uid = rollout_id(req.new), _uid(req)
    problems: list[Problem] = []
    value = ann.get(names.ANN_APPROVE_DELETE)
    if value is not None and not (req.operation == "UPDATE" and value == old_ann.get(names.ANN_APPROVE_DELETE)):
        if req.operation == "CREATE":
            problems.append(Problem(f"{names.ANN_APPROVE_DELETE}: {rollout} does not exist yet; approve its "
                                    "deletion once it does", UNPROCESSABLE))
        elif value.strip() != uid:
            problems.append(Problem(f"{names.ANN_APPROVE_DELETE}={value} does not name the uid {uid} of {rollout}; "
                                    f"run: {deletion.hint(req.new or {})}", UNPROCESSABLE))
        else:
            problems.append(Problem(f"{names.ANN_APPROVE_DELETE} was not recorded: the approvals (mutating) webhook "
                                    "did not process this request; ask the platform team to check its registration"))
    raw_new, raw_old = ann.get(names.ANN_DELETE_APPROVALS), old_ann.get(names.ANN_DELETE_APPROVALS)
    if raw_new == raw_old:
        return problems
    new_entries, unreadable = parse_record(raw_new)
    old_entries, _ = parse_record(raw_old)
    if unreadable or new_entries[: len(old_entries)] != old_entries:
        return [*problems, Problem(
            f"{names.ANN_DELETE_APPROVALS} is written only by the admission webhook and cannot be edited, "
            f"reordered or removed; to approve the deletion of {rollout}, run: {deletion.hint(req.new or {})}"
        )]
    reqs = deletion.requirements(req.new or {}, policies, namespace_labels)
    groups = deletion.approver_groups(reqs)
    longest = max((r.expiry_seconds for r in reqs), default=0.0)
    seen = {e.user for e in old_entries if e.revision == deletion.subject(uid)
            and (now - _utc(e.time)).total_seconds() <= longest}
    for i, entry in enumerate(new_entries[len(old_entries):], start=len(old_entries)):
        wrong = _forgery_signs(entry, req, key, rollout, deletion.subject(uid), now, bound_to="this Rollout")
        if wrong:
            problems.append(Problem(
                f"{names.ANN_DELETE_APPROVALS}[{i}] (user {entry.user!r}) is rejected: " + "; ".join(wrong)
                + f". Deletion approvals are recorded only by the admission webhook: run {deletion.hint(req.new or {})}"
            ))
        elif not reqs:
            problems.append(Problem(f"no FrictionPolicy requires approval to delete {rollout}: it can be deleted "
                                    "without one", UNPROCESSABLE))
        elif not set(req.groups) & set(groups):
            problems.append(Problem(
                f"{entry.user!r} may not approve deleting {rollout}: deletion approvals must come from a member of "
                f"{', '.join(groups)} ({', '.join(sorted({r.source for r in reqs}))}); {entry.user!r} is in "
                f"{', '.join(sorted(req.groups)) or 'no groups'}"
            ))
        elif entry.user in seen:
            problems.append(Problem(f"{entry.user!r} has already approved deleting {rollout}; the next approval "
                                    "must come from another person"))
        seen.add(entry.user)
    return problems


def _approve_hint(req: AdmissionInput, rev: str) -> str:
    meta = _meta(req.new)
    return (
        f"kubectl annotate rollout {meta.get('name')} -n {meta.get('namespace')} {names.ANN_APPROVE}={rev} --overwrite"
    )


def _approve_problems(req: AdmissionInput) -> list[Problem]:
    """An `approve` the mutating webhook did not consume: say why it cannot be recorded."""
    value = _annotations(req.new).get(names.ANN_APPROVE)
    if value is None or (req.operation == "UPDATE" and value == _annotations(req.old).get(names.ANN_APPROVE)):
        return []
    rev = _revision(req.new)
    if rev is None:
        return [Problem(f"{names.ANN_APPROVE}: nothing to approve, spec.template is missing", UNPROCESSABLE)]
    if value.strip() != rev:
        return [
            Problem(
                f"{names.ANN_APPROVE}={value} does not name the canary revision {rev} of "
                f"{rollout_id(req.new)}; approve exactly the revision being rolled out: {_approve_hint(req, rev)}",
                UNPROCESSABLE,
            )
        ]
    if rev == _stable_revision(req):
        return [
            Problem(
                f"revision {rev} is already the stable revision of {rollout_id(req.new)}; there is nothing to approve",
                UNPROCESSABLE,
            )
        ]
    return [
        Problem(
            f"{names.ANN_APPROVE} was not recorded: the approvals (mutating) webhook did not process this "
            "request; ask the platform team to check the operator's webhook registration"
        )
    ]


def _author_problems(req: AdmissionInput) -> list[Problem]:
    new_author = _annotations(req.new).get(names.ANN_AUTHOR)
    old_author = _annotations(req.old).get(names.ANN_AUTHOR) if req.old is not None else None
    if _template_changed(req):
        if _revision(req.new) is None or new_author == req.user:
            return []
        return [
            Problem(
                f"{names.ANN_AUTHOR} must name who changes spec.template ({req.user!r}), not {new_author!r}; "
                "the admission webhook sets it, do not write it yourself"
            )
        ]
    if new_author == old_author:
        return []
    change = "removes it" if new_author is None else f"changes it from {old_author!r} to {new_author!r}"
    return [
        Problem(
            f"{names.ANN_AUTHOR} records who last changed spec.template and only the admission webhook "
            f"writes it; this request {change}: undo that change"
        )
    ]


def _author_signature_problems(req: AdmissionInput, key: bytes) -> list[Problem]:
    """The author signature changes only with the template, and then it is the webhook's own."""
    ann, old_ann = _annotations(req.new), _annotations(req.old)
    new_sig = ann.get(names.ANN_AUTHOR_SIGNATURE)
    rev = _revision(req.new)
    if _template_changed(req) and rev is not None:
        if verify_author(new_sig, rollout_id(req.new), rev, req.user, key):
            return []
    elif new_sig == old_ann.get(names.ANN_AUTHOR_SIGNATURE):
        return []
    return [
        Problem(
            f"{names.ANN_AUTHOR_SIGNATURE} is written only by the admission webhook, with {names.ANN_AUTHOR}, "
            "when spec.template changes; remove it from your manifest or undo your change to it"
        )
    ]


def _record_problems(
    req: AdmissionInput,
    key: bytes,
    policies: list[NamedPolicy],
    namespace_labels: Mapping[str, str],
    now: datetime,
) -> list[Problem]:
    ann, old_ann = _annotations(req.new), _annotations(req.old)
    raw_new, raw_old = ann.get(names.ANN_APPROVALS), old_ann.get(names.ANN_APPROVALS)
    template_changed = _template_changed(req)
    if raw_new == raw_old and not template_changed:
        return []
    new_entries, unreadable = parse_record(raw_new)
    if unreadable:
        return [
            Problem(
                f"{names.ANN_APPROVALS} is written only by the admission webhook and the operator, and this "
                f"value is not a valid record ({'; '.join(unreadable)}); to approve, set "
                f"{names.ANN_APPROVE}=<canary revision> instead"
            )
        ]
    old_entries, _ = parse_record(raw_old)
    rev = _revision(req.new)
    # A new template voids approvals of other revisions, so the webhook may drop those.
    kept = [e for e in old_entries if e.revision == rev] if template_changed else old_entries
    if new_entries[: len(kept)] != kept:
        return [
            Problem(
                f"recorded approvals in {names.ANN_APPROVALS} cannot be edited, reordered or removed "
                "(only a change of spec.template voids them); undo your change to that annotation"
            )
        ]

    problems: list[Problem] = []
    rollout = rollout_id(req.new)
    seen = {(e.user, e.revision) for e in kept}
    if len(new_entries) > len(kept) and rev is not None and not verify_author(
        ann.get(names.ANN_AUTHOR_SIGNATURE), rollout, rev, ann.get(names.ANN_AUTHOR), key
    ):
        # Without a verified author nobody can be excluded as the author, so nobody may approve.
        problems.append(
            Problem(
                f"revision {rev} of {rollout} cannot be approved: its author was not recorded by the admission "
                "webhook (spec.template changed while the webhook was bypassed); ask the author to change "
                "spec.template again with the webhook running"
            )
        )
    for i, entry in enumerate(new_entries[len(kept) :], start=len(kept)):
        wrong = _forgery_signs(entry, req, key, rollout, rev, now)
        if wrong:
            problems.append(
                Problem(
                    f"{names.ANN_APPROVALS}[{i}] (user {entry.user!r}, revision {entry.revision}) is rejected: "
                    + "; ".join(wrong)
                    + f". Approvals are recorded only by the admission webhook: set {names.ANN_APPROVE}="
                    f"{rev or '<canary revision>'} instead"
                )
            )
            continue
        record = change_record.describe(ann.get(names.ANN_CHANGE_RECORD))
        problems += [Problem(f"{p.message} ({record})", p.code)
                     for p in _approval_rule_problems(req, entry, policies, namespace_labels, seen)]
        seen.add((entry.user, entry.revision))
    return problems


def _forgery_signs(
    entry: ApprovalEntry, req: AdmissionInput, key: bytes, rollout: str, rev: str | None, now: datetime,
    bound_to: str = "",
) -> list[str]:
    """Everything that shows an appended entry is not the one the webhook just wrote for this request."""
    wrong = []
    if not verify(entry, key):
        wrong.append("its signature does not verify")
    if entry.rollout != rollout:
        wrong.append(f"it was given for rollout {entry.rollout}, not {rollout}")
    if entry.user != req.user:
        wrong.append(f"it names {entry.user!r} but the request comes from {req.user!r}")
    if sorted(set(entry.groups)) != sorted(set(req.groups)):
        wrong.append("its groups are not the requester's groups")
    if entry.revision != rev and bound_to:
        wrong.append(f"it was given for {entry.revision}, not {bound_to} ({rev})")
    elif entry.revision != rev:
        wrong.append(f"it is for revision {entry.revision}, but the canary revision is {rev}")
    if abs(_utc(entry.time) - now) > APPROVAL_MAX_SKEW:
        wrong.append(f"it is dated {_utc(entry.time).isoformat()}, not now (copied or replayed)")
    return wrong


def _approval_rule_problems(
    req: AdmissionInput,
    entry: ApprovalEntry,
    policies: list[NamedPolicy],
    namespace_labels: Mapping[str, str],
    seen: set[tuple[str, str]],
) -> list[Problem]:
    ann = _annotations(req.new)
    who, rev, rollout = entry.user, entry.revision, rollout_id(req.new)
    problems = []
    if rev == _stable_revision(req):
        problems.append(
            Problem(
                f"revision {rev} is already the stable revision of {rollout}; there is nothing to approve",
                UNPROCESSABLE,
            )
        )
    if who in approvers.barred_approvers(ann):  # the planner never counts them either; say which bar applies
        if who == approvers.author(ann):
            problems.append(
                Problem(
                    f"{who!r} cannot approve revision {rev} of {rollout}: they are its author (they last changed "
                    "spec.template); under the two-person rule someone else must approve"
                )
            )
        if who == approvers.change_author(ann):
            problems.append(
                Problem(
                    f"{who!r} cannot approve revision {rev} of {rollout}: CI names them as the author of the "
                    f"change ({names.ANN_CHANGE_AUTHOR}); under the two-person rule someone else must approve"
                )
            )
    groups, sources = approver_groups(req.new or {}, policies, namespace_labels)
    if not approvers.in_required_groups(req.groups, groups):
        problems.append(
            Problem(
                f"{who!r} may not approve {rollout}: approvals must come from a member of "
                f"{', '.join(groups)} ({', '.join(sources)}); {who!r} is in "
                f"{', '.join(sorted(req.groups)) or 'no groups'}"
            )
        )
    if (who, rev) in seen:
        problems.append(
            Problem(
                f"{who!r} has already approved revision {rev} of {rollout}; the next approval must come from "
                "another person"
            )
        )
    return problems


def approver_groups(
    rollout: Mapping[str, Any], policies: Iterable[NamedPolicy], namespace_labels: Mapping[str, str]
) -> tuple[list[str], list[str]]:
    """Groups allowed to approve this rollout, and where that rule comes from.

    The union of the approver groups of every matching policy that requires approvals (plus its
    `aiAssisted` rules when the rollout is marked AI-assisted) and of the rollout's own approval steps
    that ask for approvals; `approvers.DEFAULT_GROUPS` when none names any. The effective plan gives a
    Rollout approval step that names no groups these groups, so the planner counts exactly whom this
    admits.
    """
    labels = dict(_meta(rollout).get("labels") or {})
    ai = str(_annotations(rollout).get(names.ANN_AI_ASSISTED, "")).strip().lower() == "true"
    groups: set[str] = set()
    sources: list[str] = []
    for policy in policies:
        if not policy.spec.selector.matches(labels, dict(namespace_labels)):
            continue
        rules: list[FrictionRules] = [policy.spec.rules]
        if ai and policy.spec.ai_assisted is not None:
            rules.append(policy.spec.ai_assisted)
        for rule in rules:
            if rule.approvals is not None:
                groups.update(rule.approvals.approver_groups)
                if f"policy {policy.name}" not in sources:
                    sources.append(f"policy {policy.name}")
    own = _own_approver_groups(rollout)
    if own:
        groups.update(own)
        sources.append("the rollout's own approval step")
    if not groups:
        sources = ["the default when no policy names approver groups"]
    return approvers.required_groups(groups), sources


def _own_approver_groups(rollout: Mapping[str, Any]) -> set[str]:
    """Groups named by the rollout's own approval steps that ask for approvals (count > 0): the planner
    counts them at that gate, so they must be able to approve. A step with count 0 asks nothing, and
    its groups count nowhere. They never weaken a policy's gate, which counts only its own groups."""
    steps = (((rollout.get("spec") or {}).get("strategy") or {}).get("canary") or {}).get("steps") or []
    out: set[str] = set()
    for step in steps if isinstance(steps, list) else []:
        raw = step.get("approval") if isinstance(step, Mapping) else None
        if raw is None:
            continue
        try:  # read as the planner reads it
            approval = ApprovalStep.model_validate(raw)
        except ValidationError:  # the spec check refuses it; it names no one here
            continue
        if approval.count > 0:
            out.update(g for g in approval.approver_groups if g)
    return out


def policies_from_objects(items: Iterable[Mapping[str, Any]]) -> list[NamedPolicy]:
    """FrictionPolicy objects as read from the API; invalid ones are skipped (their status says why)."""
    out = []
    for item in items:
        try:
            spec = FrictionPolicySpec.model_validate(item.get("spec") or {})
        except ValidationError:
            continue
        out.append(NamedPolicy(name=str(_meta(item).get("name", "")), spec=spec))
    return out


# ---------------------------------------------------------------- specs


def validate_policy(req: AdmissionInput) -> list[Problem]:
    """Everything wrong with a write to a FrictionPolicy (empty: allowed)."""
    if _passes_untouched(req):
        return []
    new = req.new or {}
    if req.operation == "UPDATE" and (req.old or {}).get("spec") == new.get("spec"):
        return []
    return policy_spec_problems(new.get("spec"))


def _schema_problems(model: type[BaseModel], spec: Any) -> tuple[Any, list[str]]:
    """`spec` parsed as `model`, or None and what is wrong with it."""
    if not isinstance(spec, Mapping):
        return None, ["spec: is required"]
    try:
        return model.model_validate(dict(spec)), []
    except ValidationError as exc:
        return None, readable_errors(exc)


def rollout_spec_problems(spec: Any) -> list[Problem]:
    parsed, problems = _schema_problems(RolloutSpec, spec)
    if parsed is not None:
        # The planner's own checks, so the webhook refuses exactly what the operator would mark Invalid.
        problems = spec_problems(parsed)
    return [Problem(p, UNPROCESSABLE) for p in problems]


def policy_spec_problems(spec: Any) -> list[Problem]:
    parsed, problems = _schema_problems(FrictionPolicySpec, spec)
    if parsed is not None:
        problems = query_problems(parsed.rules.required_metrics, "spec.rules.requiredMetrics")
        if parsed.ai_assisted is not None:
            problems += query_problems(parsed.ai_assisted.required_metrics, "spec.aiAssisted.requiredMetrics")
    return [Problem(p, UNPROCESSABLE) for p in problems]

