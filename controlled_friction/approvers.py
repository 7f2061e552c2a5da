"""Who may approve a revision: never its author or the change author CI names, and only a member of
the required groups, where an empty list of groups means `DEFAULT_GROUPS`, never "anyone".

Pure. The admission webhook refuses approvals by these rules and the planner counts them by the
same rules, so an approval the webhook admits is one the planner counts, and the other way round.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from controlled_friction import names

# What an empty list of approver groups means, wherever one occurs (security fails closed).
DEFAULT_GROUPS: tuple[str, ...] = (names.SENIOR_GROUP,)


def author(annotations: Mapping[str, str]) -> str:
    """Who last changed spec.template, as the admission webhook recorded it (exactly: it is signed)."""
    return annotations.get(names.ANN_AUTHOR) or ""


def change_author(annotations: Mapping[str, str]) -> str:
    """Who CI says wrote the change; surrounding whitespace (as YAML block scalars leave it) is ignored."""
    return (annotations.get(names.ANN_CHANGE_AUTHOR) or "").strip()


def barred_approvers(annotations: Mapping[str, str]) -> frozenset[str]:
    """The people whose approval of this revision never counts: its author and its change author."""
    return frozenset(u for u in (author(annotations), change_author(annotations)) if u)


def required_groups(groups: Iterable[str]) -> list[str]:
    """The groups an approver must be in: those named (sorted), or `DEFAULT_GROUPS` when none is."""
    return sorted({g for g in groups if g}) or list(DEFAULT_GROUPS)


def in_required_groups(member_of: Iterable[str], groups: Iterable[str]) -> bool:
    """Whether someone in the groups `member_of` may approve where `groups` are required."""
    return not set(required_groups(groups)).isdisjoint(member_of)
