"""HTCondor IDTOKENs, bit-compatible with ``condor_token_create``.

HTCondor signs IDTOKENs with HS256 using a key derived from a pool signing key file:
the file is cut at its first NUL byte, de-scrambled (XOR with DE AD BE EF repeating), doubled for the
``POOL`` key id (HTCondor's historical pool-password convention), and run through HKDF-SHA256 with salt
``htcondor`` and info ``master jwt``. The collector re-derives the key and re-signs header.payload, so
the token must match exactly what HTCondor itself would produce.
"""

from __future__ import annotations

import datetime
import uuid
from itertools import cycle
from typing import Sequence

import jwt
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_SCRAMBLE = bytes.fromhex("deadbeef")
DEFAULT_SCOPES = ("condor:/READ", "condor:/WRITE")


def signing_key_from_file(key_file: bytes, key_id: str = "POOL") -> bytes:
    """The 32-byte HS256 key HTCondor derives from the contents of a signing key file."""
    raw = key_file.split(b"\0", 1)[0]
    if not raw:
        raise ValueError("HTCondor signing key file is empty")
    password = bytes(b ^ s for b, s in zip(raw, cycle(_SCRAMBLE)))
    if key_id == "POOL":
        password = password + password
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=b"htcondor", info=b"master jwt").derive(password)


def scramble_key_file(password: bytes) -> bytes:
    """Inverse of the de-scrambling: the bytes of a signing key file holding ``password`` (for tests/setup)."""
    if b"\0" in password:
        raise ValueError("an HTCondor signing key cannot contain NUL bytes")
    scrambled = bytes(b ^ s for b, s in zip(password, cycle(_SCRAMBLE)))
    if b"\0" in scrambled:  # HTCondor cuts the file at its first NUL: this key would be silently truncated
        raise ValueError("this HTCondor signing key scrambles to a NUL byte (a byte equals DE AD BE EF at its "
                         "position); choose another key")
    return scrambled


def idtoken_claims(*, trust_domain: str, user: str, now: datetime.datetime, lifetime: datetime.timedelta,
                   scopes: Sequence[str] = DEFAULT_SCOPES, jti: str | None = None) -> dict:
    if lifetime <= datetime.timedelta(0):
        raise ValueError("token lifetime must be positive")
    iat = int(now.timestamp())
    claims = {
        "iat": iat,
        "exp": iat + int(lifetime.total_seconds()),
        "iss": trust_domain,
        "jti": jti or uuid.uuid4().hex,
        "sub": f"{user}@{trust_domain}",
    }
    if scopes:
        claims["scope"] = " ".join(scopes)
    return claims


def mint_idtoken(*, signing_key: bytes, key_id: str, **claims_kwargs) -> tuple[bytes, datetime.datetime]:
    """An IDTOKEN as written into a token directory, and its expiry."""
    claims = idtoken_claims(**claims_kwargs)
    token = jwt.encode(claims, signing_key, algorithm="HS256", headers={"kid": key_id})
    return token.encode() + b"\n", datetime.datetime.fromtimestamp(claims["exp"], datetime.timezone.utc)
