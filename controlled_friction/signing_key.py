"""The HMAC key that signs approval entries: one Secret, readable only by the operator's ServiceAccount.

Whoever can read that Secret can forge approvals, so RBAC on it must stay with the operator (see
README, "How approvals work"). The Secret is read and created through the Kubernetes adapter.
"""

from __future__ import annotations

import base64
import secrets
from pathlib import Path
from typing import Any

from controlled_friction import names
from controlled_friction.adapters.kube import Conflict, Kube, NotFound

KEY_SECRET_NAME = "controlled-friction-approval-key"
KEY_FIELD = "key"
KEY_BYTES = 32
ENV_KEY_FILE = "CF_APPROVAL_KEY_FILE"


class SigningKeyError(RuntimeError):
    """The key exists but cannot be used; never silently replaced (that would void every approval)."""


def load_or_create_key(kube: Kube, namespace: str = names.OPERATOR_NAMESPACE, name: str = KEY_SECRET_NAME) -> bytes:
    """The signing key from its Secret, creating the Secret with 32 random bytes when absent."""
    try:
        return _key_of(kube.read_secret_data(namespace, name), namespace, name)
    except NotFound:
        pass
    data = {KEY_FIELD: base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode()}
    labels = {"app.kubernetes.io/name": "controlled-friction", "app.kubernetes.io/component": "approvals"}
    try:
        return _key_of(kube.create_secret(namespace, name, data, labels), namespace, name)
    except Conflict:
        # Another replica created it first: use theirs, so both sign and verify with the same key.
        return _key_of(kube.read_secret_data(namespace, name), namespace, name)


def _key_of(data: dict[str, Any], namespace: str, name: str) -> bytes:
    raw = data.get(KEY_FIELD)
    key = base64.b64decode(raw) if raw else b""
    if len(key) < 16:
        raise SigningKeyError(
            f"Secret {namespace}/{name} has no usable `{KEY_FIELD}` (need at least 16 bytes); "
            "delete it to have a new key generated (this voids all recorded approvals)"
        )
    return key


def key_from_file(path: str) -> bytes:
    """The key from a file (e.g. a mounted Secret), for CF_APPROVAL_KEY_FILE."""
    key = Path(path).read_bytes().strip()
    if len(key) < 16:
        raise SigningKeyError(f"{ENV_KEY_FILE}={path} holds fewer than 16 bytes")
    return key
