"""Revision identity: first 10 hex chars of sha256 over the canonical JSON of ``spec.template``."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def revision_of(template: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(template).encode()).hexdigest()[:10]
