"""Certificates and keys for the sandbox API server, generated once per state directory.

Only what token authentication needs: a CA, a serving certificate for kube-apiserver signed by it,
and the ServiceAccount token signing key pair. Nothing here leaves 127.0.0.1.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from controlled_friction import certs
from controlled_friction.sandbox.layout import HOST, SERVICE_IP, Paths

VALIDITY = dt.timedelta(days=3650)
DNS_NAMES = (
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def ensure_pki(p: Paths) -> None:
    """Create whatever is missing. Existing material is kept so kubeconfigs stay valid across `up`s."""
    if not (p.ca_cert.exists() and p.ca_key.exists()):
        ca_key, ca_cert = certs.make_ca("controlled-friction-sandbox-ca", dt.datetime.now(dt.UTC), VALIDITY)
        _write_private(p.ca_key, certs.key_pem(ca_key))
        p.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
        p.serving_cert.unlink(missing_ok=True)  # a new CA invalidates the old serving cert
    if not (p.serving_cert.exists() and p.serving_key.exists()):
        loaded = serialization.load_pem_private_key(p.ca_key.read_bytes(), password=None)
        assert isinstance(loaded, ec.EllipticCurvePrivateKey)
        ca_cert = x509.load_pem_x509_certificate(p.ca_cert.read_bytes())
        key, cert = certs.make_serving(
            loaded, ca_cert, [*DNS_NAMES, HOST, SERVICE_IP], dt.datetime.now(dt.UTC), VALIDITY, "kube-apiserver"
        )
        _write_private(p.serving_key, certs.key_pem(key))
        p.serving_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if not (p.sa_key.exists() and p.sa_pub.exists()):
        # RSA: the algorithm every ServiceAccount token consumer (kopf included) accepts.
        sa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        _write_private(p.sa_key, certs.key_pem(sa))
        p.sa_pub.write_bytes(
            sa.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
