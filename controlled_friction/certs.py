"""A private CA and a serving certificate for the admission webhook server.

kube-apiserver only calls webhooks over HTTPS and checks the certificate's SANs (never the CN), so the
serving certificate names every address the API server may use: 127.0.0.1 for the local sandbox,
`<service>.<namespace>.svc` in a cluster. Kopf's own self-signed generation depends on `certbuilder`,
which fails on current OpenSSL; `cryptography` is already a dependency.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_VALIDITY = timedelta(days=3650)
CERT_VALIDITY = timedelta(days=365)
RENEW_BEFORE = timedelta(days=30)
Key = ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class CertPaths:
    ca: Path
    cert: Path
    key: Path


def paths_in(directory: Path) -> CertPaths:
    return CertPaths(ca=directory / "ca.crt", cert=directory / "tls.crt", key=directory / "tls.key")


def service_hosts(service: str, namespace: str) -> list[str]:
    """DNS names kube-apiserver uses for a webhook behind a Service reference."""
    return [service, f"{service}.{namespace}", f"{service}.{namespace}.svc", f"{service}.{namespace}.svc.cluster.local"]


def generate(hosts: list[str], directory: Path, *, now: datetime | None = None) -> CertPaths:
    """CA + serving certificate for `hosts` (IPs and DNS names) in `directory`.

    Existing files are reused when the serving certificate still covers every host, chains to the CA,
    matches its key and stays valid for more than 30 days; otherwise a fresh pair is written.
    """
    if not hosts:
        raise ValueError("at least one host (IP address or DNS name) is needed for the certificate")
    now = now or datetime.now(UTC)
    directory.mkdir(parents=True, exist_ok=True)
    paths = paths_in(directory)
    if _reusable(paths, hosts, now):
        return paths

    ca_key, ca_cert = make_ca("controlled-friction webhook CA", now)
    key, cert = make_serving(ca_key, ca_cert, hosts, now)

    # Key first, certificate last: kopf's server reloads when the files change, and the pair must match.
    _write(paths.key, key_pem(key), private=True)
    _write(paths.ca, ca_cert.public_bytes(serialization.Encoding.PEM))
    _write(paths.cert, cert.public_bytes(serialization.Encoding.PEM))
    return paths


def make_ca(common_name: str, now: datetime, validity: timedelta = CA_VALIDITY) -> tuple[Key, x509.Certificate]:
    """A self-signed CA that may sign end-entity certificates only."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + validity)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def make_serving(
    ca_key: Key,
    ca_cert: x509.Certificate,
    hosts: list[str],
    now: datetime,
    validity: timedelta = CERT_VALIDITY,
    common_name: str | None = None,
) -> tuple[Key, x509.Certificate]:
    """A TLS server certificate for `hosts` (IP addresses and DNS names, all put in the SANs)."""
    key = ec.generate_private_key(ec.SECP256R1())
    cn = common_name or next((h for h in hosts if not _is_ip(h)), hosts[0])
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn[:64])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + validity)
        .add_extension(x509.SubjectAlternativeName(_sans(hosts)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def key_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    encoding, fmt = serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8
    return key.private_bytes(encoding, fmt, serialization.NoEncryption())


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _sans(hosts: list[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys(hosts):  # keep order, drop repeats
        if _is_ip(host):
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        else:
            names.append(x509.DNSName(host))
    return names


def covered_hosts(cert: x509.Certificate) -> set[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return {str(ip) for ip in san.get_values_for_type(x509.IPAddress)} | set(san.get_values_for_type(x509.DNSName))


def _reusable(paths: CertPaths, hosts: list[str], now: datetime) -> bool:
    if not (paths.ca.is_file() and paths.cert.is_file() and paths.key.is_file()):
        return False
    try:
        ca = x509.load_pem_x509_certificate(paths.ca.read_bytes())
        cert = x509.load_pem_x509_certificate(paths.cert.read_bytes())
        key = serialization.load_pem_private_key(paths.key.read_bytes(), password=None)
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    wanted = {str(ipaddress.ip_address(h)) if _is_ip(h) else h for h in hosts}
    fresh = min(cert.not_valid_after_utc, ca.not_valid_after_utc) - now > RENEW_BEFORE
    same_key = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) == cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return fresh and same_key and wanted <= covered_hosts(cert)


def _write(path: Path, data: bytes, *, private: bool = False) -> None:
    # Write-then-rename so a reader never sees half a file.
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
