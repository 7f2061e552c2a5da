"""Self-contained kubeconfig documents (CA embedded) that authenticate with a bearer token."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

import yaml

CLUSTER_NAME = "cf-sandbox"


def render(server: str, ca_pem: bytes, user: str, token: str, namespace: str = "default") -> str:
    context = f"{user}@{CLUSTER_NAME}"
    doc: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": CLUSTER_NAME,
                "cluster": {
                    "server": server,
                    "certificate-authority-data": base64.b64encode(ca_pem).decode(),
                },
            }
        ],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [
            {"name": context, "context": {"cluster": CLUSTER_NAME, "user": user, "namespace": namespace}}
        ],
        "current-context": context,
        "preferences": {},
    }
    return yaml.safe_dump(doc, sort_keys=False)


def write(path: Path, text: str) -> Path:
    """Write a kubeconfig readable only by us (it holds a bearer token), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    tmp.replace(path)
    return path
