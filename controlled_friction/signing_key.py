"""The HMAC key that signs approval entries: one Secret, readable only by the operator's ServiceAccount.

This is the only module that touches that Secret. Whoever can read it can forge approvals, so RBAC on
it must stay with the operator (see README, "How approvals work").
"""

from __future__ import annotations

import base64
import os
import secrets
from pathlib import Path

from kubernetes import client

from controlled_friction import names

KEY_SECRET_NAME = "controlled-friction-approval-key"
KEY_FIELD = "key"
KEY_BYTES = 32
ENV_KEY_FILE = "CF_APPROVAL_KEY_FILE"


class SigningKeyError(RuntimeError):
    """The key exists but cannot be used; never silently replaced (that would void every approval)."""


def load_or_create_key(
    namespace: str = names.OPERATOR_NAMESPACE,
    name: str = KEY_SECRET_NAME,
    *,
    api: client.CoreV1Api | None = None,
) -> bytes:
    """The signing key from its Secret, creating the Secret with 32 random bytes when absent."""
    api = api or client.CoreV1Api(api_client())
    try:
        return _key_of(api.read_namespaced_secret(name, namespace), namespace, name)
    except client.ApiException as exc:
        if exc.status != 404:
            raise
    body = client.V1Secret(
        metadata=client.V1ObjectMeta(
            name=name,
            namespace=namespace,
            labels={"app.kubernetes.io/name": "controlled-friction", "app.kubernetes.io/component": "approvals"},
        ),
        type="Opaque",
        data={KEY_FIELD: base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode()},
    )
    try:
        return _key_of(api.create_namespaced_secret(namespace, body), namespace, name)
    except client.ApiException as exc:
        if exc.status != 409:
            raise
    # Another replica created it first: use theirs, so both sign and verify with the same key.
    return _key_of(api.read_namespaced_secret(name, namespace), namespace, name)


def api_client() -> client.ApiClient:
    """In-cluster credentials inside a pod, else the kubeconfig ($KUBECONFIG or ~/.kube/config)."""
    from controlled_friction.adapters.kube import load_api_client

    return load_api_client()


def _key_of(secret: client.V1Secret, namespace: str, name: str) -> bytes:
    raw = (secret.data or {}).get(KEY_FIELD)
    key = base64.b64decode(raw) if raw else b""
    if len(key) < 16:
        raise SigningKeyError(
            f"Secret {namespace}/{name} has no usable `{KEY_FIELD}` (need at least 16 bytes); "
            "delete it to have a new key generated (this voids all recorded approvals)"
        )
    return key


def key_from_env() -> bytes | None:
    """The key from the file named by CF_APPROVAL_KEY_FILE (e.g. a mounted Secret), if set."""
    path = os.environ.get(ENV_KEY_FILE)
    if not path:
        return None
    key = Path(path).read_bytes().strip()
    if len(key) < 16:
        raise SigningKeyError(f"{ENV_KEY_FILE}={path} holds fewer than 16 bytes")
    return key


def load_key(namespace: str = names.OPERATOR_NAMESPACE) -> bytes:
    """The key from CF_APPROVAL_KEY_FILE if set, else from (or into) the Secret."""
    return key_from_env() or load_or_create_key(namespace)
