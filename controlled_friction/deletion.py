"""Deleting a critical Rollout takes more than one person: the deletion is approved like a revision.

A FrictionPolicy rule `deletion: {count, approverGroups, expiry}` makes `DELETE` of the Rollouts it
matches wait for `count` approvals of that deletion:

* an approver writes `controlled-friction.io/approve-delete: <the Rollout's metadata.uid>`
  (`controlled-friction approve-delete NAME` does it); the mutating webhook removes it and appends
  an HMAC-signed entry for the requester to `controlled-friction.io/delete-approvals`, bound to
  `delete:<uid>` and the Rollout's namespace/name, so a Rollout re-created under the same name
  needs new approvals and an entry cannot be copied to another Rollout or to a revision's record;
* the validating webhook admits that entry only for a member of the rule's groups, once per
  person while unexpired, and refuses any hand-written or edited record;
* on `DELETE` it counts entries that verify, are bound to this Rollout and uid, are younger than
  `expiry`, come from distinct members of each rule's groups, and are not the requester's own.

Pure: `admission` calls these for the webhooks. Namespace deletion is out of scope: the namespace
controller removes a terminating namespace's Rollouts unasked (the shell says when it terminates).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from controlled_friction import names
from controlled_friction.durations import format_duration
from controlled_friction.models.approval import ApprovalEntry, dump_record, parse_record, sign, verify
from controlled_friction.models.policy import NamedPolicy

SUBJECT_PREFIX = "delete:"
CLOCK_SKEW = timedelta(minutes=5)


@dataclass(frozen=True)
class Requirement:
    count: int
    groups: tuple[str, ...]
    expiry_seconds: float
    source: str  # "policy <name>"


@dataclass(frozen=True)
class Count:
    counted: tuple[str, ...]  # users whose approvals count, sorted
    missing: tuple[str, ...]  # one line per requirement not met

    @property
    def met(self) -> bool:
        return not self.missing


def subject(uid: str) -> str:
    """What a deletion approval is bound to (in the entry's `revision` field, which is signed)."""
    return f"{SUBJECT_PREFIX}{uid}"


def _meta(obj: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return (obj or {}).get("metadata") or {}


def _utc(t: datetime) -> datetime:
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def requirements(
    rollout: Mapping[str, Any], policies: Iterable[NamedPolicy], namespace_labels: Mapping[str, str]
) -> list[Requirement]:
    """The deletion rules of every policy matching the Rollout (its `aiAssisted` rules too when marked)."""
    meta = _meta(rollout)
    labels = dict(meta.get("labels") or {})
    ai = str((meta.get("annotations") or {}).get(names.ANN_AI_ASSISTED, "")).strip().lower() == "true"
    out = []
    for policy in policies:
        if not policy.spec.selector.matches(labels, dict(namespace_labels)):
            continue
        rules = [policy.spec.rules] + ([policy.spec.ai_assisted] if ai and policy.spec.ai_assisted else [])
        for rule in rules:
            if rule.deletion is not None:
                out.append(Requirement(rule.deletion.count, tuple(sorted(rule.deletion.approver_groups)),
                                       float(rule.deletion.expiry), f"policy {policy.name}"))
    return out


def approver_groups(reqs: Iterable[Requirement]) -> list[str]:
    return sorted({g for r in reqs for g in r.groups})


def count(
    entries: Iterable[ApprovalEntry],
    reqs: list[Requirement],
    *,
    key: bytes,
    rollout: str,
    uid: str,
    requester: str,
    now: datetime,
) -> Count:
    """Which deletion approvals count for `requester` deleting `rollout` now, per requirement."""
    now = _utc(now)
    valid = [
        e for e in entries
        if verify(e, key) and e.revision == subject(uid) and e.rollout == rollout and e.user != requester
        and _utc(e.time) <= now + CLOCK_SKEW
    ]
    counted: set[str] = set()
    missing = []
    for req in reqs:
        users = {e.user for e in valid
                 if set(e.groups) & set(req.groups) and (now - _utc(e.time)).total_seconds() <= req.expiry_seconds}
        counted |= users
        if len(users) < req.count:
            missing.append(f"{req.count - len(users)} more from {', '.join(req.groups)} within "
                           f"{format_duration(req.expiry_seconds)} (required by {req.source})")
    return Count(tuple(sorted(counted)), tuple(missing))


def hint(rollout: Mapping[str, Any]) -> str:
    meta = _meta(rollout)
    return f"controlled-friction approve-delete {meta.get('name')} -n {meta.get('namespace')}"


def new_entry(user: str, groups: Iterable[str], rollout: str, uid: str, now: datetime, key: bytes) -> ApprovalEntry:
    entry = ApprovalEntry(user=user, groups=sorted(set(groups)), revision=subject(uid),
                          time=_utc(now).replace(microsecond=0), rollout=rollout)
    return sign(entry, key)


def appended(raw: str | None, entry: ApprovalEntry) -> str:
    entries, _ = parse_record(raw)
    return dump_record([*entries, entry])
