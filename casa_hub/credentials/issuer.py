"""The facility token issuer: its signing key, public JWKS and OIDC-style metadata (pure functions).

XRootD's SciTokens plugin (and any WLCG token consumer) verifies a token by fetching
``{iss}/.well-known/openid-configuration`` and then its ``jwks_uri``; the hub serves the two documents
built here. The private key is loaded from PEM bytes the hub holds; nothing here touches files.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from typing import Any, Mapping

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from .jws import JWSSigner

SUPPORTED_ALGORITHMS = ("ES256", "RS256")


def _b64url_uint(n: int, length: int | None = None) -> str:
    length = length or (n.bit_length() + 7) // 8
    return base64.urlsafe_b64encode(n.to_bytes(length, "big")).rstrip(b"=").decode()


def public_jwk(public_key) -> dict[str, str]:
    """The RFC 7517 JWK (public members only) of an EC P-256 or RSA public key."""
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        if not isinstance(public_key.curve, ec.SECP256R1):
            raise ValueError("only EC keys on P-256 are supported for ES256")
        nums = public_key.public_numbers()
        return {"kty": "EC", "crv": "P-256", "x": _b64url_uint(nums.x, 32), "y": _b64url_uint(nums.y, 32)}
    if isinstance(public_key, rsa.RSAPublicKey):
        nums = public_key.public_numbers()
        return {"kty": "RSA", "n": _b64url_uint(nums.n), "e": _b64url_uint(nums.e)}
    raise TypeError(f"unsupported key type {type(public_key).__name__}")


def jwk_thumbprint(jwk: Mapping[str, str]) -> str:
    """RFC 7638 thumbprint: a stable key id that changes whenever the key does."""
    required = {"EC": ("crv", "kty", "x", "y"), "RSA": ("e", "kty", "n")}[jwk["kty"]]
    canonical = json.dumps({k: jwk[k] for k in required}, separators=(",", ":"), sort_keys=True)
    return base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=").decode()


@dataclass(frozen=True)
class IssuerKey:
    """A private signing key with its algorithm and key id."""

    private_key: Any
    algorithm: str
    kid: str

    def __repr__(self) -> str:  # never print key material
        return f"IssuerKey(algorithm={self.algorithm!r}, kid={self.kid!r})"

    @property
    def jwk(self) -> dict[str, str]:
        return dict(public_jwk(self.private_key.public_key()), kid=self.kid, alg=self.algorithm, use="sig")

    def sign(self, claims: Mapping[str, Any], typ: str = "JWT") -> str:
        """A JWT signed with this key (the bytes ``jwt.encode`` would give), header ``kid`` + ``typ``."""
        signers = self.__dict__.setdefault("_signers", {})  # one per typ: header and key prepared once
        signer = signers.get(typ)
        if signer is None:
            signer = signers[typ] = JWSSigner(self.algorithm, self.private_key, {"kid": self.kid, "typ": typ})
        return signer.encode(claims)


def load_issuer_key(pem: bytes, kid: str | None = None) -> IssuerKey:
    """Load a PEM private key; the algorithm follows the key type (EC P-256 -> ES256, RSA -> RS256)."""
    key = serialization.load_pem_private_key(pem, password=None)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        algorithm = "ES256"
    elif isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < 2048:
            raise ValueError(f"RSA issuer keys must be at least 2048 bits, got {key.key_size}")
        algorithm = "RS256"
    else:
        raise ValueError(f"unsupported issuer key type {type(key).__name__}: use EC P-256 or RSA")
    jwk = public_jwk(key.public_key())
    return IssuerKey(key, algorithm, kid or jwk_thumbprint(jwk))


def generate_issuer_key_pem(algorithm: str = "ES256") -> bytes:
    """A fresh PKCS#8 PEM signing key (for admins' set-up scripts and tests, not for every login)."""
    if algorithm == "ES256":
        key = ec.generate_private_key(ec.SECP256R1())
    elif algorithm == "RS256":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        raise ValueError(f"algorithm must be one of {SUPPORTED_ALGORITHMS}, got {algorithm!r}")
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def jwks_document(keys: list[IssuerKey] | tuple[IssuerKey, ...]) -> dict:
    """The JWKS served at ``jwks_uri``: every key still trusted (current first, then retired ones)."""
    return {"keys": [k.jwk for k in keys]}


def openid_configuration(issuer: str, jwks_uri: str, algorithms=SUPPORTED_ALGORITHMS) -> dict:
    """The minimal discovery document WLCG token consumers read (issuer + jwks_uri)."""
    return {
        "issuer": issuer,
        "jwks_uri": jwks_uri,
        "id_token_signing_alg_values_supported": list(algorithms),
        "token_endpoint_auth_methods_supported": [],
        "response_types_supported": [],
        "subject_types_supported": ["public"],
        "scopes_supported": ["storage.read", "storage.create", "storage.modify", "storage.stage"],
    }
