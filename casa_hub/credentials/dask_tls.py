"""Per-user Dask TLS: a stable per-user CA whose key stays with the hub, and short-lived role certificates.

The CA key is derived (HKDF-SHA256) from a hub-held secret, the user name and a generation number, so the
hub can re-create it at any time without storing per-user keys, and the CA a user's clients trust stays
the same across logins, refreshes and hub restarts. The CA certificate is signed deterministically
(RFC 6979) over a fixed validity window, so re-creating it gives the very same bytes. Rotating leaves never
touches the CA; bumping the generation (admin action) rotates it.

All functions are pure: bytes and values in, bytes out.
"""

from __future__ import annotations

import base64
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


# ---------------------------------------------------------------------------------------------- DER
# The user's CA certificate and the role certificates are assembled from DER pieces (the Python certificate
# builder costs about as much as the signature itself); tests/unit/test_dask_tls_and_bundle.py checks that the
# pieces give byte for byte what the builder gives (:func:`ca_certificate`, :func:`issue_leaf`).
def _der(tag: int, body: bytes) -> bytes:
    n = len(body)
    if n < 0x80:
        return bytes((tag, n)) + body
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(size))) + size + body


def _der_integer(value: int) -> bytes:
    return _der(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big"))  # + 1: room for the sign bit


def _der_time(t: datetime.datetime) -> bytes:
    t = t.astimezone(datetime.timezone.utc) if t.tzinfo else t  # naive times are UTC, as for the builder
    if 1950 <= t.year < 2050:  # RFC 5280 4.1.2.5: UTCTime until 2049, GeneralizedTime from 2050
        return _der(0x17, t.strftime("%y%m%d%H%M%SZ").encode())
    return _der(0x18, t.strftime("%Y%m%d%H%M%SZ").encode())


def _der_oid(dotted: str) -> bytes:
    arcs = [int(a) for a in dotted.split(".")]
    out = bytearray((40 * arcs[0] + arcs[1],))
    for arc in arcs[2:]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        out += bytes(reversed(chunk))
    return _der(0x06, bytes(out))


def _der_extension(value: x509.ExtensionType, critical: bool) -> bytes:
    flag = b"\x01\x01\xff" if critical else b""  # BOOLEAN TRUE; FALSE is the DEFAULT, so never encoded
    return _der(0x30, _der_oid(value.oid.dotted_string) + flag + _der(0x04, value.public_bytes()))


_OID_ORGANIZATION = _der_oid(NameOID.ORGANIZATION_NAME.dotted_string)
_OID_COMMON_NAME = _der_oid(NameOID.COMMON_NAME.dotted_string)


def _name_der(cn: str) -> bytes:
    """``O=Casa Hub, CN=cn`` as :func:`_name` encodes it (UTF8String values, one attribute per RDN)."""
    organization = _der(0x31, _der(0x30, _OID_ORGANIZATION + _der(0x0C, b"Casa Hub")))
    return _der(0x30, organization + _der(0x31, _der(0x30, _OID_COMMON_NAME + _der(0x0C, cn.encode()))))


_V3 = bytes.fromhex("a003020102")  # [0] EXPLICIT INTEGER 2
_ECDSA_WITH_SHA256 = _der(0x30, _der_oid("1.2.840.10045.4.3.2"))
_ECDSA_SHA256 = ec.ECDSA(hashes.SHA256())
_SPKI = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _pem(der: bytes, label: bytes = b"CERTIFICATE") -> bytes:
    b64 = base64.b64encode(der)
    lines = b"\n".join(b64[i : i + 64] for i in range(0, len(b64), 64))
    return b"-----BEGIN " + label + b"-----\n" + lines + b"\n-----END " + label + b"-----\n"


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


CA_LIFETIME = datetime.timedelta(days=3650)
_CA_CONSTRAINTS = x509.BasicConstraints(ca=True, path_length=0)
_CA_KEY_USAGE = x509.KeyUsage(
    digital_signature=False,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)


def _ca_common_name(user: str, generation: int) -> str:
    return common_name("Casa Dask CA for ", user, f" (generation {generation})")


def ca_certificate(
    ca_key: ec.EllipticCurvePrivateKey,
    user: str,
    generation: int = 0,
    lifetime: datetime.timedelta = CA_LIFETIME,
) -> bytes:
    """The user's self-signed CA certificate (PEM). Same inputs -> same bytes.

    The reference: :func:`user_ca` assembles the same bytes from DER pieces, faster (tested)."""
    name = _name(_ca_common_name(user, generation))
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
        .add_extension(_CA_CONSTRAINTS, critical=True)
        .add_extension(_CA_KEY_USAGE, critical=True)
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
    """A user's CA: its key (hub only), its certificate and what leaves copy from it (its name, its key id)."""

    key: ec.EllipticCurvePrivateKey
    cert_pem: bytes
    common_name: str
    not_after: datetime.datetime
    key_id: bytes  # SHA-1 of the public key: the CA's subject key id, the leaves' authority key id

    def __repr__(self) -> str:
        return f"UserCA(subject={self.subject.rfc4514_string()!r})"

    @property
    def subject(self) -> x509.Name:
        return _name(self.common_name)

    @property
    def authority_key_id(self) -> x509.AuthorityKeyIdentifier:
        return x509.AuthorityKeyIdentifier(self.key_id, None, None)


_CA_EXTENSIONS = _der_extension(_CA_CONSTRAINTS, True) + _der_extension(_CA_KEY_USAGE, True)
_OID_SUBJECT_KEY_ID = _der_oid(x509.SubjectKeyIdentifier.oid.dotted_string)
_DETERMINISTIC_ECDSA = ec.ECDSA(hashes.SHA256(), deterministic_signing=True)


def user_ca(secret: bytes, user: str, generation: int = 0) -> UserCA:
    """Derive a user's CA key and build its certificate: the bytes :func:`ca_certificate` gives (RFC 6979
    signature over the same to-be-signed bytes), assembled from DER pieces."""
    key = derive_ca_key(secret, user, generation)
    public = key.public_key()
    point = public.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    key_id = hashlib.sha1(point).digest()  # RFC 5280 4.2.1.2 (1): SHA-1 of the subjectPublicKey bits
    cn = _ca_common_name(user, generation)
    name = _name_der(cn)
    not_after = CA_NOT_BEFORE + CA_LIFETIME
    ski = _der(0x30, _OID_SUBJECT_KEY_ID + _der(0x04, _der(0x04, key_id)))
    tbs = _der(
        0x30,
        _V3
        + _der_integer(_serial(key_id, str(generation).encode()))
        + _ECDSA_WITH_SHA256
        + name
        + _der(0x30, _der_time(CA_NOT_BEFORE) + _der_time(not_after))
        + name
        + public.public_bytes(*_SPKI)
        + _der(0xA3, _der(0x30, _CA_EXTENSIONS + ski)),
    )
    certificate = _der(0x30, tbs + _ECDSA_WITH_SHA256 + _der(0x03, b"\x00" + key.sign(tbs, _DETERMINISTIC_ECDSA)))
    return UserCA(key, _pem(certificate), cn, not_after, key_id)


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


def _leaf_builder(
    *,
    ca: UserCA,
    user: str,
    role: str,
    hostnames: Sequence[str],
    public_key: ec.EllipticCurvePublicKey,
    serial: int,
    not_before: datetime.datetime,
    not_after: datetime.datetime,
) -> x509.CertificateBuilder:
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name(f"{role}.", user)))
        .issuer_name(ca.subject)
        .public_key(public_key)
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(_LEAF_CONSTRAINTS, critical=True)
        .add_extension(_LEAF_KEY_USAGE, critical=True)
        .add_extension(_ROLE_EKU[role], critical=False)
        .add_extension(ca.authority_key_id, critical=False)
    )
    if hostnames:
        builder = builder.add_extension(_san(tuple(hostnames)), critical=False)
    return builder


def _leaf_times(ca: UserCA, now: datetime.datetime, lifetime: datetime.timedelta):
    if lifetime <= datetime.timedelta(0):
        raise ValueError("certificate lifetime must be positive")
    not_before = now - datetime.timedelta(minutes=5)  # tolerate clock skew between hub and nodes
    return not_before, min(now + lifetime, ca.not_after)


def _check_role(role: str) -> None:
    if role not in ROLE_USAGES:
        raise ValueError(f"unknown Dask TLS role {role!r}; expected one of {ROLES}")


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def issue_leaf(
    *, ca: UserCA, user: str, role: str, hostnames: Sequence[str], now: datetime.datetime, lifetime: datetime.timedelta
) -> LeafCertificate:
    """A fresh key and a certificate for one Dask role, signed by the user's CA (never past the CA's end).

    The reference: :class:`LeafIssuer` makes the same certificates faster (tested to give the same bytes)."""
    _check_role(role)
    not_before, not_after = _leaf_times(ca, now, lifetime)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _leaf_builder(
        ca=ca,
        user=user,
        role=role,
        hostnames=hostnames,
        public_key=key.public_key(),
        serial=x509.random_serial_number(),
        not_before=not_before,
        not_after=not_after,
    ).sign(ca.key, hashes.SHA256())
    return LeafCertificate(role, cert.public_bytes(serialization.Encoding.PEM), _private_pem(key), not_after)


# ---------------------------------------------------------------------------------------------- DER templates
# A leaf's to-be-signed part is the same for every mint of a user's role except the serial, the validity and the
# public key. LeafIssuer encodes the rest once (per user) and splices the three in, then signs with the CA key:
# the Python certificate builder costs about as much as the signature itself.
_ROLE_EXTENSIONS = {
    role: _der_extension(_LEAF_CONSTRAINTS, True) + _der_extension(_LEAF_KEY_USAGE, True) + _der_extension(eku, False)
    for role, eku in _ROLE_EKU.items()
}


_OID_AUTHORITY_KEY_ID = _der_oid(x509.AuthorityKeyIdentifier.oid.dotted_string)
_OID_SUBJECT_ALT_NAME = _der_oid(x509.SubjectAlternativeName.oid.dotted_string)


def _san_extension_der(names: Sequence[str]) -> bytes:
    """The subjectAltName extension :func:`_san` gives: IP addresses as ``iPAddress``, the rest ``dNSName``."""
    general_names = b""
    for n in names:
        try:  # only what starts like an IPv4 address or holds an IPv6 ':' can be one (a failed parse is slow)
            if not (n[:1].isdigit() or ":" in n):
                raise ValueError(n)
            general_names += _der(0x87, ipaddress.ip_address(n).packed)  # [7] iPAddress
        except ValueError:
            general_names += _der(0x82, n.encode("ascii"))  # [2] dNSName (IA5String)
    return _der(0x30, _OID_SUBJECT_ALT_NAME + _der(0x04, _der(0x30, general_names)))


class LeafIssuer:
    """Issues one user's Dask role certificates, as :func:`issue_leaf` does, from DER templates built once.

    It holds only public parts (names, extensions) and the user's :class:`UserCA`; every certificate still gets
    a fresh key pair, a random serial and its own validity."""

    __slots__ = ("ca", "user", "hostnames", "_templates")

    def __init__(self, ca: UserCA, user: str, hostnames: Sequence[str]):
        self.ca, self.user, self.hostnames = ca, user, tuple(hostnames)
        issuer = _name_der(ca.common_name)
        tail = _der(0x30, _OID_AUTHORITY_KEY_ID + _der(0x04, _der(0x30, _der(0x80, ca.key_id))))
        san = _san_extension_der(self.hostnames) if self.hostnames else b""
        self._templates = {}
        for role in ROLES:
            extensions = _ROLE_EXTENSIONS[role] + tail
            if role != "client":
                extensions += san
            subject = _name_der(common_name(f"{role}.", user))
            self._templates[role] = (issuer, subject, _der(0xA3, _der(0x30, extensions)))

    def issue(
        self,
        role: str,
        now: datetime.datetime,
        lifetime: datetime.timedelta,
        *,
        key: ec.EllipticCurvePrivateKey | None = None,
        serial: int | None = None,
    ) -> LeafCertificate:
        """A certificate and fresh key for ``role`` (``key``/``serial`` only to compare with the reference)."""
        _check_role(role)
        not_before, not_after = _leaf_times(self.ca, now, lifetime)
        key = key or ec.generate_private_key(ec.SECP256R1())
        issuer, subject, extensions = self._templates[role]
        tbs = _der(
            0x30,
            _V3
            + _der_integer(serial if serial is not None else x509.random_serial_number())
            + _ECDSA_WITH_SHA256
            + issuer
            + _der(0x30, _der_time(not_before) + _der_time(not_after))
            + subject
            + key.public_key().public_bytes(*_SPKI)
            + extensions,
        )
        signature = self.ca.key.sign(tbs, _ECDSA_SHA256)
        certificate = _der(0x30, tbs + _ECDSA_WITH_SHA256 + _der(0x03, b"\x00" + signature))
        return LeafCertificate(role, _pem(certificate), _private_pem(key), not_after)
