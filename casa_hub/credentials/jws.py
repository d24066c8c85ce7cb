"""JWS compact serialisation with a fixed header, for signing many tokens with one key (pure).

``JWSSigner(algorithm, key, headers).encode(claims)`` gives exactly the bytes ``jwt.encode(claims, key,
algorithm, headers=headers)`` gives (PyJWT: header JSON with sorted keys, compact separators, ``typ: JWT``
unless overridden; claims JSON in insertion order), tested byte for byte. It encodes the header and prepares the
key once instead of on every token, which is most of PyJWT's cost for a small HS256 or ES256 token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any, Mapping

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature


def b64url(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


class JWSSigner:
    """Signs JWTs with one key and one header (``HS256`` with a bytes key, ``ES256`` with an EC P-256 key,
    ``RS256`` with an RSA key)."""

    __slots__ = ("algorithm", "_prefix", "_sign")

    def __init__(self, algorithm: str, key: Any, headers: Mapping[str, Any] | None = None):
        header = {"typ": "JWT", "alg": algorithm, **(headers or {})}
        if not header["typ"]:
            del header["typ"]
        self.algorithm = algorithm
        self._prefix = b64url(json.dumps(header, separators=(",", ":"), sort_keys=True).encode()) + b"."
        if algorithm == "HS256":
            if not isinstance(key, bytes) or not key:
                raise TypeError("HS256 needs a non-empty bytes key")
            self._sign = lambda message: hmac.new(key, message, hashlib.sha256).digest()
        elif algorithm == "ES256":
            if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
                raise TypeError("ES256 needs an EC P-256 private key")
            ecdsa = ec.ECDSA(hashes.SHA256())

            def sign_es256(message: bytes) -> bytes:
                r, s = decode_dss_signature(key.sign(message, ecdsa))  # JWS wants r || s, not DER
                return r.to_bytes(32, "big") + s.to_bytes(32, "big")

            self._sign = sign_es256
        elif algorithm == "RS256":
            if not isinstance(key, rsa.RSAPrivateKey):
                raise TypeError("RS256 needs an RSA private key")
            pkcs1, sha256 = padding.PKCS1v15(), hashes.SHA256()
            self._sign = lambda message: key.sign(message, pkcs1, sha256)
        else:
            raise ValueError(f"unsupported JWS algorithm {algorithm!r}")

    def encode(self, claims: Mapping[str, Any]) -> str:
        """The signed token for ``claims`` (a JSON object; ``iat``/``exp``/``nbf`` as integers)."""
        signing_input = self._prefix + b64url(json.dumps(claims, separators=(",", ":")).encode())
        return (signing_input + b"." + b64url(self._sign(signing_input))).decode()
