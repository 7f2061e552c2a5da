"""HTTP health probes for sandbox components (stdlib only, 127.0.0.1 only)."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from pathlib import Path

from controlled_friction.sandbox.components import Component


def _context(tls: str | None, ca: Path) -> ssl.SSLContext | None:
    if tls == "ca":
        return ssl.create_default_context(cafile=str(ca))
    if tls == "self-signed":
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # throwaway cert the component generated for itself
        return ctx
    return None


def probe(component: Component, ca: Path, timeout: float = 2.0) -> bool:
    """True if the component's health endpoint answers 200 (and etcd says health=true)."""
    try:
        with urllib.request.urlopen(
            component.health_url, timeout=timeout, context=_context(component.tls, ca)
        ) as resp:
            if resp.status != 200:
                return False
            body = resp.read()
    except (urllib.error.URLError, OSError, ssl.SSLError, ValueError):
        return False
    if component.name == "etcd":
        try:
            return bool(json.loads(body).get("health") == "true")
        except ValueError:
            return False
    return True
