"""Which approvals count: verified, of this revision and rollout, fresh, distinct, not the author's,
from the required groups (who may approve is `approvers`, shared with the admission webhook). Pure;
the planner counts with it at every gate."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from controlled_friction.approvers import barred_approvers, in_required_groups, required_groups
from controlled_friction.decisions import ApprovalObs
from controlled_friction.models.approval import ApprovalEntry
from controlled_friction.models.rollout import CountedApproval, PlannedApproval

CLOCK_SKEW = timedelta(minutes=5)


@dataclass(frozen=True)
class ApprovalCount:
    counted: list[CountedApproval]
    met: bool
    summary: str
    missing: str
    # When the first counted approval expires (the count can only drop then), if they expire at all.
    expires_at: datetime | None = None


def count_approvals(
    requirements: list[PlannedApproval],
    approvals: tuple[ApprovalObs, ...],
    *,
    rollout_key: str,
    revision: str,
    annotations: Mapping[str, str],
    expiry_seconds: float | None,
    now: datetime,
) -> ApprovalCount:
    """Verified, unexpired, distinct approvals of this revision, checked per requirement; never those
    of the author or change author the Rollout's `annotations` name (`approvers.barred_approvers`)."""
    barred = barred_approvers(annotations)
    valid: dict[str, ApprovalEntry] = {}
    for obs in approvals:
        e = obs.entry
        if not obs.signature_ok or e.revision != revision or e.rollout != rollout_key:
            continue
        if e.user in barred or e.time > now + CLOCK_SKEW:
            continue
        if expiry_seconds is not None and (now - e.time).total_seconds() > expiry_seconds:
            continue
        if e.user not in valid or e.time < valid[e.user].time:
            valid[e.user] = e
    # Counted: approvals that satisfy at least one requirement (all valid ones when there is none).
    eligible = {
        u: e for u, e in valid.items()
        if not requirements or any(in_required_groups(e.groups, r.groups) for r in requirements)
    }
    counted = [CountedApproval(user=u, time=e.time) for u, e in sorted(eligible.items())]
    missing = []
    for req in requirements:
        ok = [u for u, e in valid.items() if in_required_groups(e.groups, req.groups)]
        if len(ok) < req.count:
            groups = ", ".join(required_groups(req.groups))
            missing.append(f"{req.count - len(ok)} more from {groups} (required by {req.source})")
    need = max((r.count for r in requirements), default=0)
    summary = f"{len(counted)}/{need}" if need else "-"
    expires = None
    if expiry_seconds is not None and eligible:
        expires = min(e.time for e in eligible.values()) + timedelta(seconds=expiry_seconds)
    return ApprovalCount(counted, not missing, summary, "; ".join(missing), expires)
