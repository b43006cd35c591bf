"""A small certificate authority for a RAM cluster: a CA, and certificates for members and clients.

``ram cluster up --tls`` uses it for the nodes' HTTPS APIs; the same member certificates serve for
Raft peer TLS and PostgreSQL (each is valid for both server and client authentication). A real
deployment may use certificates from its own PKI instead: nothing in RAM requires these.

Private keys are written with mode 0600 from the moment the file exists (``os.open`` with the mode,
never written first and restricted afterwards), optionally owned by another user (PostgreSQL refuses
a key that its OS user does not own). Keys are ECDSA P-256: small, fast, accepted by OpenSSL,
PostgreSQL and Python's ``ssl`` alike.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
CA_DAYS = 3650
CERT_DAYS = 825  # the longest a public CA may issue for; plenty for a test or staging cluster


@dataclass(frozen=True)
class CertFiles:
    """Where a certificate and its private key were written."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class CA:
    """A CA that can sign: its files, certificate and key."""

    files: CertFiles
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def cert_path(self) -> Path:
        return self.files.cert


def _write(path: Path, data: bytes, mode: int, uid: int | None = None, gid: int | None = None) -> Path:
    """Create ``path`` with ``mode`` (and owner) before a byte is written; an existing file is
    replaced atomically by a new one (so an old, more open mode never carries over)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), mode)
    try:
        if uid is not None or gid is not None:
            os.fchown(fd, -1 if uid is None else uid, -1 if gid is None else gid)
        os.fchmod(fd, mode)  # the umask may have removed bits we want (never adds any)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, path)
    return path


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def make_ca(directory: Path, *, name: str = "RAM cluster CA", days: int = CA_DAYS) -> CA:
    """A new CA in ``directory`` (``ca.crt`` 0644, ``ca.key`` 0600); returns it for signing."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                          key_encipherment=False, data_encipherment=False, key_agreement=False,
                          encipher_only=False, decipher_only=False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_path = _write(directory / CA_KEY, _key_pem(key), 0o600)
    cert_path = _write(directory / CA_CERT, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return CA(CertFiles(cert_path, key_path), cert, key)


def load_ca(directory: Path) -> CA:
    """The CA that :func:`make_ca` wrote to ``directory``."""
    cert_path, key_path = directory / CA_CERT, directory / CA_KEY
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{key_path}: not an EC private key written by ram")
    return CA(CertFiles(cert_path, key_path), cert, key)


def _san(hosts: Sequence[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys(hosts):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host.strip("[]"))))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def make_cert(
    ca: CA,
    name: str,
    hosts: Sequence[str],
    directory: Path,
    *,
    days: int = CERT_DAYS,
    server: bool = True,
    client: bool = True,
    uid: int | None = None,
    gid: int | None = None,
) -> CertFiles:
    """A certificate for ``name`` signed by ``ca``, valid for ``hosts`` (names or IP addresses; empty
    for a client-only certificate), written as ``<directory>/<name>.crt`` (0644) and ``<name>.key``
    (0600, owned by ``uid``/``gid`` when given). By default usable both as a server certificate
    (API, Raft listener, PostgreSQL) and as a client certificate (mutual TLS between members)."""
    if server and not hosts:
        raise ValueError("a server certificate needs at least one host name or address")
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    usages = [ExtendedKeyUsageOID.SERVER_AUTH] if server else []
    usages += [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, key_encipherment=False, key_cert_sign=False, crl_sign=False,
                          content_commitment=False, data_encipherment=False, key_agreement=True,
                          encipher_only=False, decipher_only=False),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
    )
    if hosts:
        builder = builder.add_extension(_san(hosts), critical=False)
    cert = builder.sign(ca.key, hashes.SHA256())
    key_path = _write(directory / f"{name}.key", _key_pem(key), 0o600, uid, gid)
    cert_path = _write(directory / f"{name}.crt", cert.public_bytes(serialization.Encoding.PEM), 0o644, uid, gid)
    return CertFiles(cert_path, key_path)
