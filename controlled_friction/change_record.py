"""The change record a template change carries: what it is for, in a form an auditor can follow.

Annotation `controlled-friction.io/change-record` (CONTRACT), format `<reference> <summary>`:

* reference: a ticket id (`CHG-1234`, `OPS_SEC-42`: letters/digits, a dash, a number) or an
  http(s) URL, with no spaces;
* summary: one line of at least `MIN_SUMMARY` characters saying what changes;
* at most `MAX_LENGTH` characters in all.

Whenever the annotation is written it must be well-formed; a FrictionPolicy with
`requireChangeRecord: true` (or `aiAssisted.requireChangeRecord` for AI-assisted changes) makes it
mandatory on every template change of the Rollouts it matches. Pure; the admission webhook decides
with it, the CLI shows the record, the planner keeps it in the revision's history entry.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from controlled_friction import names
from controlled_friction.models.policy import NamedPolicy

MAX_LENGTH = 300
MIN_SUMMARY = 8
TICKET = re.compile(r"^[A-Za-z][A-Za-z0-9]*(?:[_.][A-Za-z0-9]+)*-[0-9]+$")
URL = re.compile(r"^https?://[A-Za-z0-9.-]+(?::[0-9]+)?(?:[/?#]\S*)?$")
FORMAT = '"<TICKET-ID or URL> <one-line summary>", e.g. "CHG-1234 raise checkout pool size to 20"'


@dataclass(frozen=True)
class ChangeRecord:
    reference: str
    summary: str

    def __str__(self) -> str:
        return f"{self.reference} {self.summary}"


def parse(value: str) -> tuple[ChangeRecord | None, str | None]:
    """The record, or None and what is wrong with it (one sentence, naming the annotation)."""
    where = names.ANN_CHANGE_RECORD
    if "\n" in value or "\r" in value:
        return None, f"{where} must be one line, formatted {FORMAT}"
    text = value.strip()
    if len(text) > MAX_LENGTH:
        return None, f"{where} is {len(text)} characters long; at most {MAX_LENGTH} are allowed ({FORMAT})"
    reference, _, summary = text.partition(" ")
    summary = summary.strip()
    if not reference:
        return None, f"{where} is empty; write {FORMAT}"
    if not (TICKET.match(reference) or URL.match(reference)):
        return None, (f"{where} must start with a ticket id (like CHG-1234) or an http(s) URL, not "
                      f"{reference[:60]!r}; write {FORMAT}")
    if len(summary) < MIN_SUMMARY or not re.search(r"[A-Za-z]", summary):
        return None, (f"{where} needs a one-line summary of at least {MIN_SUMMARY} characters after "
                      f"{reference[:60]!r}; write {FORMAT}")
    return ChangeRecord(reference, summary), None


def requiring_policies(
    rollout: Mapping[str, Any], policies: Iterable[NamedPolicy], namespace_labels: Mapping[str, str]
) -> list[str]:
    """Names of the matching policies that require a change record for this Rollout's changes."""
    meta = rollout.get("metadata") or {}
    labels = dict(meta.get("labels") or {})
    ai = str((meta.get("annotations") or {}).get(names.ANN_AI_ASSISTED, "")).strip().lower() == "true"
    out = []
    for policy in policies:
        if not policy.spec.selector.matches(labels, dict(namespace_labels)):
            continue
        extra = policy.spec.ai_assisted if ai else None
        if policy.spec.rules.require_change_record or (extra is not None and extra.require_change_record):
            out.append(policy.name)
    return out


def describe(value: str | None) -> str:
    """How a record is quoted in messages for approvers."""
    return f"change record: {value.strip()}" if value and value.strip() else "no change record given"
