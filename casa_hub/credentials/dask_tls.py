"""Per-user Dask TLS: a stable per-user CA whose key stays with the hub, and short-lived role certificates.

The CA key is derived (HKDF-SHA256) from a hub-held secret, the user name and a generation number, so the
hub can re-create it at any time without storing per-user keys, and the CA a user's clients trust stays
the same across logins, refreshes and hub restarts. The CA certificate is signed deterministically
(RFC 6979) over a fixed validity window, so re-creating it gives the very same bytes. Rotating leaves never
touches the CA; bumping the generation (admin action) rotates it.

All functions are pure: bytes and values in, bytes out.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import ipaddress
import re
from dataclasses import dataclass
from typing import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# order of the P-256 group: private scalars must be in [1, n-1]
_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551

# which TLS roles a Dask certificate plays: schedulers and workers both accept and make connections
ROLE_USAGES = {
    "scheduler": (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH),
    "worker": (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH),
    "client": (ExtendedKeyUsageOID.CLIENT_AUTH,),
}
ROLES = tuple(ROLE_USAGES)

# the CA validity is a fixed window so that re-creating the certificate yields identical bytes
CA_NOT_BEFORE = datetime.datetime(2025, 1, 1, tzinfo=datetime.timezone.utc)


def derive_ca_key(secret: bytes, user: str, generation: int = 0) -> ec.EllipticCurvePrivateKey:
    """The user's CA key, reproducible from the hub secret; never leaves the hub."""
    if len(secret) < 32:
        raise ValueError("the Dask CA secret must be at least 32 bytes")
    info = b"casa-hub dask-ca v1\0" + user.encode() + b"\0" + str(generation).encode()
    # 48 bytes then reduce: the modulo bias is below 2**-128
    okm = HKDF(algorithm=hashes.SHA256(), length=48, salt=b"casa-hub", info=info).derive(secret)
    scalar = int.from_bytes(okm, "big") % (_P256_ORDER - 1) + 1
    return ec.derive_private_key(scalar, ec.SECP256R1())


def _serial(*parts: bytes) -> int:
    # positive, < 2**159 as RFC 5280 requires, and unique per (key, role, time)
    return int.from_bytes(hashlib.sha256(b"\0".join(parts)).digest()[:19], "big") | 1


# X.509 allows at most 64 bytes (UTF-8) in a common name (RFC 5280 ub-common-name)
CN_MAX_BYTES = 64
_CN_HASH_HEX = 16


def common_name(prefix: str, user: str, suffix: str = "") -> str:
    """The common name ``{prefix}{user}{suffix}`` for ``user``, at most 64 bytes (UTF-8) and never shared.

    When the full text fits it is used as is. Otherwise it becomes the longest readable start of
    ``{prefix}{user}`` (cut between characters), ``/``, the first 16 hex digits of sha256(user) and ``suffix``.
    Hub user names never contain ``/``, so a shortened name (which always does) can never equal a name that
    fits, and two shortened names differ by their hash; a name that fits is ``prefix + user + suffix`` and
    tells its user apart by itself. (A ``user`` with ``/`` in it, which the hub refuses, is always shortened,
    so this holds for any text.) ``prefix`` and ``suffix`` are the caller's fixed wording: no ``/`` in them.
    """
    if "/" in prefix or "/" in suffix:
        raise ValueError("a common name's fixed wording must not contain '/'")
    full = f"{prefix}{user}{suffix}"
    if "/" not in user and len(full.encode()) <= CN_MAX_BYTES:
        return full
    tail = f"/{hashlib.sha256(user.encode()).hexdigest()[:_CN_HASH_HEX]}{suffix}"
    budget = CN_MAX_BYTES - len(tail.encode())
    head = f"{prefix}{user}"
    kept = 0
    for char in head:
        budget -= len(char.encode())
        if budget < 0:
            break
        kept += 1
    if kept <= len(prefix):
        raise ValueError(f"{prefix!r} and {suffix!r} leave no room for the user name in a common name")
    return head[:kept] + tail


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Casa Hub"), x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    )


def ca_certificate(
    ca_key: ec.EllipticCurvePrivateKey,
    user: str,
    generation: int = 0,
    lifetime: datetime.timedelta = datetime.timedelta(days=3650),
) -> bytes:
    """The user's self-signed CA certificate (PEM). Same inputs -> same bytes."""
    name = _name(common_name("Casa Dask CA for ", user, f" (generation {generation})"))
    public = ca_key.public_key()
    ski = x509.SubjectKeyIdentifier.from_public_key(public)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(_serial(ski.digest, str(generation).encode()))
        .not_valid_before(CA_NOT_BEFORE)
        .not_valid_after(CA_NOT_BEFORE + lifetime)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(ca_key, hashes.SHA256(), ecdsa_deterministic=True)
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def dns_label(name: str, max_length: int = 63) -> str:
    """A DNS label (RFC 1123, at most ``max_length`` characters) for any user name: kept as is when already
    safe and free of ``--``, otherwise the safe characters, ``--`` and a short hash. A kept name never
    contains ``--`` and a hashed one always does, so no user can take another's label by choosing it as
    their name (``alice-smith-<hash>`` for ``alice.smith``), and different names never collide."""
    safe = "".join(c if c.isascii() and (c.isalnum() or c == "-") else "-" for c in name.lower()).strip("-")
    if safe == name and 0 < len(name) <= max_length and "--" not in name:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    safe = re.sub("-+", "-", safe)
    return f"{safe[: max(0, max_length - 10)].strip('-') or 'u'}--{digest}"


@functools.lru_cache(maxsize=1024)
def _san(names: tuple[str, ...]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for n in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            entries.append(x509.DNSName(n))
    return x509.SubjectAlternativeName(entries)


@dataclass(frozen=True)
class UserCA:
    """A user's CA: its key (hub only), its certificate and what leaves copy from it."""

    key: ec.EllipticCurvePrivateKey
    cert_pem: bytes
    subject: x509.Name
    not_after: datetime.datetime
    authority_key_id: x509.AuthorityKeyIdentifier

    def __repr__(self) -> str:
        return f"UserCA(subject={self.subject.rfc4514_string()!r})"


def user_ca(secret: bytes, user: str, generation: int = 0) -> UserCA:
    """Derive a user's CA key and build its certificate (deterministic)."""
    key = derive_ca_key(secret, user, generation)
    pem = ca_certificate(key, user, generation)
    cert = x509.load_pem_x509_certificate(pem)
    return UserCA(
        key,
        pem,
        cert.subject,
        cert.not_valid_after_utc,
        x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()),
    )


@dataclass(frozen=True)
class LeafCertificate:
    role: str
    cert_pem: bytes
    key_pem: bytes
    expires_at: datetime.datetime

    def __repr__(self) -> str:
        return f"LeafCertificate(role={self.role!r}, expires_at={self.expires_at})"


_ROLE_EKU = {role: x509.ExtendedKeyUsage(list(usages)) for role, usages in ROLE_USAGES.items()}
_LEAF_CONSTRAINTS = x509.BasicConstraints(ca=False, path_length=None)
_LEAF_KEY_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=True,
    key_cert_sign=False,
    crl_sign=False,
    encipher_only=False,
    decipher_only=False,
)


def issue_leaf(
    *, ca: UserCA, user: str, role: str, hostnames: Sequence[str], now: datetime.datetime, lifetime: datetime.timedelta
) -> LeafCertificate:
    """A fresh key and a certificate for one Dask role, signed by the user's CA (never past the CA's end)."""
    if role not in ROLE_USAGES:
        raise ValueError(f"unknown Dask TLS role {role!r}; expected one of {ROLES}")
    if lifetime <= datetime.timedelta(0):
        raise ValueError("certificate lifetime must be positive")
    key = ec.generate_private_key(ec.SECP256R1())
    not_before = now - datetime.timedelta(minutes=5)  # tolerate clock skew between hub and nodes
    not_after = min(now + lifetime, ca.not_after)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name(f"{role}.", user)))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(_LEAF_CONSTRAINTS, critical=True)
        .add_extension(_LEAF_KEY_USAGE, critical=True)
        .add_extension(_ROLE_EKU[role], critical=False)
        .add_extension(ca.authority_key_id, critical=False)
    )
    if hostnames:
        builder = builder.add_extension(_san(tuple(hostnames)), critical=False)
    cert = builder.sign(ca.key, hashes.SHA256())
    return LeafCertificate(
        role=role,
        cert_pem=cert.public_bytes(serialization.Encoding.PEM),
        key_pem=key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
        expires_at=not_after,
    )
