"""The webhook's CA and serving certificate, checked with `cryptography` and with Python's TLS stack."""

from __future__ import annotations

import ipaddress
import socket
import ssl
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from controlled_friction import certs

HOSTS = ["127.0.0.1", *certs.service_hosts("controlled-friction-webhook", "controlled-friction")]


def load(paths: certs.CertPaths) -> tuple[x509.Certificate, x509.Certificate, object]:
    ca = x509.load_pem_x509_certificate(paths.ca.read_bytes())
    cert = x509.load_pem_x509_certificate(paths.cert.read_bytes())
    key = serialization.load_pem_private_key(paths.key.read_bytes(), password=None)
    return ca, cert, key


def spki(public_key: object) -> bytes:
    return public_key.public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def test_certificate_verifies_against_the_ca_and_has_the_sans(tmp_path: Path):
    paths = certs.generate(HOSTS, tmp_path)
    ca, cert, key = load(paths)
    cert.verify_directly_issued_by(ca)  # raises if not signed by the CA
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert san.get_values_for_type(x509.DNSName) == [
        "controlled-friction-webhook",
        "controlled-friction-webhook.controlled-friction",
        "controlled-friction-webhook.controlled-friction.svc",
        "controlled-friction-webhook.controlled-friction.svc.cluster.local",
    ]
    assert spki(key.public_key()) == spki(cert.public_key())  # type: ignore[attr-defined]
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert cert.not_valid_after_utc - datetime.now(UTC) > timedelta(days=300)
    assert oct(paths.key.stat().st_mode & 0o777) == "0o600"


def test_tls_handshake_with_the_generated_pair(tmp_path: Path):
    """What kube-apiserver does: trust only the CA, check the name, complete a handshake."""
    paths = certs.generate(HOSTS, tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(paths.cert, paths.key)
    client_ctx = ssl.create_default_context(cafile=str(paths.ca))
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            conn, _ = listener.accept()
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                tls.sendall(b"ok")
        except BaseException as exc:  # surfaced in the main thread
            errors.append(exc)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        client_ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        assert tls.recv(2) == b"ok"
    thread.join(timeout=10)
    listener.close()
    assert errors == []


def test_existing_files_are_reused_when_they_still_fit(tmp_path: Path):
    first = certs.generate(HOSTS, tmp_path)
    before = {p: p.read_bytes() for p in (first.ca, first.cert, first.key)}
    again = certs.generate(HOSTS[:2], tmp_path)  # a subset of the covered hosts
    assert again == first
    assert {p: p.read_bytes() for p in (again.ca, again.cert, again.key)} == before


def test_new_host_or_near_expiry_regenerates(tmp_path: Path):
    first = certs.generate(["127.0.0.1"], tmp_path)
    old_cert = first.cert.read_bytes()
    wider = certs.generate(["127.0.0.1", "::1", "webhook.example"], tmp_path)
    _, cert, _ = load(wider)
    assert cert.public_bytes(serialization.Encoding.PEM) != old_cert
    assert certs.covered_hosts(cert) == {"127.0.0.1", "::1", "webhook.example"}

    # Eleven months later the certificate has less than 30 days left: a fresh one is written.
    later = datetime.now(UTC) + timedelta(days=340)
    renewed = certs.generate(["127.0.0.1"], tmp_path, now=later)
    _, new_cert, _ = load(renewed)
    assert new_cert.not_valid_after_utc > later + timedelta(days=300)


def test_mismatched_key_regenerates(tmp_path: Path):
    first = certs.generate(["127.0.0.1"], tmp_path)
    other = tmp_path / "other"
    stranger = certs.generate(["127.0.0.1"], other)
    first.key.write_bytes(stranger.key.read_bytes())
    again = certs.generate(["127.0.0.1"], tmp_path)
    _, cert, key = load(again)
    assert spki(key.public_key()) == spki(cert.public_key())  # type: ignore[attr-defined]
