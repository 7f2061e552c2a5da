"""The signed approval record kept in the `controlled-friction.io/approvals` annotation.

The admission webhook appends one entry per verified approval; the controller counts only entries
whose signature verifies, so a record written while the webhook was down or bypassed is ignored.
The signature binds the rollout, user, groups, revision and time, so an entry cannot be replayed on
another rollout or revision.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from controlled_friction.revision import canonical_json


class ApprovalEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    user: str
    groups: list[str] = Field(default_factory=list)
    revision: str
    time: datetime
    rollout: str = Field(description="namespace/name the approval was given for")
    signature: str = ""

    def payload(self) -> bytes:
        fields = {
            "user": self.user,
            "groups": sorted(self.groups),
            "revision": self.revision,
            "time": self.time.isoformat(),
            "rollout": self.rollout,
        }
        return canonical_json(fields).encode()


def sign(entry: ApprovalEntry, key: bytes) -> ApprovalEntry:
    digest = hmac.new(key, entry.payload(), hashlib.sha256).hexdigest()
    return entry.model_copy(update={"signature": digest})


def verify(entry: ApprovalEntry, key: bytes) -> bool:
    if not key or not entry.signature:
        return False
    expected = hmac.new(key, entry.payload(), hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, entry.signature)


def _author_payload(rollout: str, revision: str, author: str) -> bytes:
    return canonical_json({"kind": "author", "rollout": rollout, "revision": revision, "author": author}).encode()


def sign_author(rollout: str, revision: str, author: str, key: bytes) -> str:
    """Signature of "`author` made `revision` of `rollout`", written by the webhook next to `author`.

    Without it, someone who can bypass the webhook (break-glass) could change the template and name
    another person as its author, then approve their own change once the webhook is back.
    """
    return hmac.new(key, _author_payload(rollout, revision, author), hashlib.sha256).hexdigest()


def verify_author(signature: str | None, rollout: str, revision: str, author: str | None, key: bytes) -> bool:
    if not key or not signature or not author:
        return False
    return hmac.compare_digest(sign_author(rollout, revision, author, key), signature)


def parse_record(raw: str | None) -> tuple[list[ApprovalEntry], list[str]]:
    """Entries of an approvals annotation, plus a problem per entry that could not be read."""
    if not raw:
        return [], []
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        return [], [f"approvals annotation is not JSON: {exc.msg}"]
    if not isinstance(data, list):
        return [], ["approvals annotation must be a JSON list"]
    entries, problems = [], []
    for i, item in enumerate(data):
        try:
            entries.append(ApprovalEntry.model_validate(item))
        except ValidationError as exc:
            problems.append(f"approvals[{i}] unreadable: {exc.errors()[0]['msg']}")
    return entries, problems


def dump_record(entries: list[ApprovalEntry]) -> str:
    return json.dumps([e.model_dump(mode="json") for e in entries], separators=(",", ":"))
