"""XCache / XRootD credentials: a WLCG-profile (SciTokens-compatible) JWT and a legacy macaroon."""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import uuid
from typing import Sequence

import jwt
import scitokens
from scitokens.utils.errors import MissingIssuerException, MissingKeyException

from .issuer import IssuerKey

WLCG_VERSION = "1.0"
MACAROON_MAX_LIFETIME = datetime.timedelta(hours=24)  # XRootD refuses macaroons valid for longer
MACAROON_READ_ACTIVITIES = ("DOWNLOAD", "READ_METADATA", "LIST")


def wlcg_token_claims(
    *,
    issuer: str,
    subject: str,
    scopes: Sequence[str],
    audience: str | Sequence[str],
    now: datetime.datetime,
    lifetime: datetime.timedelta,
    jti: str | None = None,
) -> dict:
    """Claims of a WLCG profile 1.0 access token (https://doi.org/10.5281/zenodo.3460258)."""
    if lifetime <= datetime.timedelta(0):
        raise ValueError("token lifetime must be positive")
    if not scopes:
        raise ValueError("a storage token needs at least one scope")
    iat = int(now.timestamp())
    return {
        "wlcg.ver": WLCG_VERSION,
        "iss": issuer,
        "sub": subject,
        "aud": audience if isinstance(audience, str) else list(audience),
        "scope": " ".join(scopes),
        "iat": iat,
        "nbf": iat,
        "exp": iat + int(lifetime.total_seconds()),
        "jti": jti or str(uuid.uuid4()),
    }


class SciTokenIssuedAt(scitokens.SciToken):
    """A ``scitokens.SciToken`` that is issued at a given time instead of at ``time.time()``.

    ``SciToken.serialize(lifetime=...)`` (scitokens 1.9) stamps ``iat``/``nbf``/``exp`` from its own clock and
    has no parameter for the time, but the hub's mint is pure: its caller decides ``now`` (refresh plans, tests
    minting tokens that have already expired). This overrides only that: :meth:`serialize` is the library's
    1.9.7 ``serialize`` with ``issued_at`` in place of ``int(time.time())`` and without its debug log line of
    the payload; key, algorithm (RS256/ES256, checked against the key by ``SciToken``), ``kid`` header, claims,
    ``jti`` and the PyJWT encoding are the library's. tests/unit/test_credential_tokens.py checks it against
    ``SciToken.serialize`` for the same claims, so a library change that breaks it fails there.
    """

    def __init__(self, key, algorithm: str, key_id: str, *, issued_at: int):
        super().__init__(key=key, algorithm=algorithm, key_id=key_id)
        self.issued_at = int(issued_at)

    def serialize(self, include_key=False, issuer=None, lifetime=600) -> bytes:
        if include_key is not False:
            raise NotImplementedError()  # as the library: a key in the token is not supported
        if self._key is None:
            raise MissingKeyException("Unable to serialize, missing private key")
        if issuer is None and "iss" not in self:
            raise MissingIssuerException("Issuer not specified in claims or as argument")
        payload = dict(self._verified_claims)
        payload.update(self._claims)
        payload.update(
            {
                "iss": issuer or self["iss"],
                "exp": self.issued_at + int(lifetime),
                "iat": self.issued_at,
                "nbf": self.issued_at,
            }
        )
        if "jti" not in payload:
            payload["jti"] = self._claims["jti"] = str(uuid.uuid4())
        headers = {"kid": self._key_id} if self._key_id is not None else None
        encoded = jwt.encode(payload, self._key, algorithm=self._key_alg, headers=headers)
        self._serialized_token = encoded
        self._verified_claims.update(self._claims)  # as the library: serialized claims count as verified
        self._claims = {}
        return encoded.encode()


def mint_wlcg_token(key: IssuerKey, **claims_kwargs) -> tuple[bytes, datetime.datetime]:
    """Mint a WLCG token with the SciTokens library, issued at ``now``; returns the token bytes (as written to
    ``BEARER_TOKEN_FILE``) and its expiry."""
    claims = wlcg_token_claims(**claims_kwargs)
    token = SciTokenIssuedAt(key.private_key, key.algorithm, key.kid, issued_at=claims["iat"])
    token.update_claims(claims)  # iat, nbf and exp are serialize's: the same values, from issued_at + lifetime
    serialized = token.serialize(lifetime=claims["exp"] - claims["iat"])
    return serialized + b"\n", datetime.datetime.fromtimestamp(claims["exp"], datetime.timezone.utc)


def mint_macaroon(
    *,
    secret: bytes,
    location: str,
    user: str,
    path: str,
    now: datetime.datetime,
    lifetime: datetime.timedelta,
    activities: Sequence[str] = MACAROON_READ_ACTIVITIES,
) -> tuple[bytes, datetime.datetime]:
    """A macaroon in XRootD's (libXrdMacaroons) dialect.

    ``secret`` is the raw key (XRootD base64-decodes its ``macaroons.secretkey`` file to get it),
    ``location`` must equal the server's ``all.sitename``. Lifetimes over 24 h are refused because XRootD
    rejects them anyway.
    """
    if not datetime.timedelta(0) < lifetime <= MACAROON_MAX_LIFETIME:
        raise ValueError(f"macaroon lifetime must be in (0, 24h], got {lifetime}")
    if not path.startswith("/"):
        raise ValueError(f"macaroon path must be absolute, got {path!r}")
    before = (now + lifetime).astimezone(datetime.timezone.utc).replace(microsecond=0)
    caveats = (
        f"name:{user}",
        f"activity:{','.join(activities)}",
        f"path:{path}",
        f"before:{before.strftime('%Y-%m-%dT%H:%M:%SZ')}",
    )
    return serialize_macaroon_v1(location, str(uuid.uuid4()), derive_macaroon_key(secret), caveats) + b"\n", before


def derive_macaroon_key(secret: bytes) -> bytes:
    """The HMAC key a macaroon's signature chain starts from (libmacaroons: HMAC of the secret under a fixed
    key); derive it once per secret."""
    return hmac.new(b"macaroons-key-generator", secret, hashlib.sha256).digest()


def _packet(key: bytes, data: bytes) -> bytes:
    size = 4 + len(key) + 1 + len(data) + 1  # hex length, key, space, data, newline
    if size > 0xFFFF:
        raise ValueError(f"macaroon field {key.decode()} is too long ({size} bytes)")
    return b"%04x%s %s\n" % (size, key, data)


def serialize_macaroon_v1(location: str, identifier: str, derived_key: bytes, caveats: Sequence[str]) -> bytes:
    """A macaroon with first-party ``caveats``, in the V1 binary format XRootD's libmacaroons reads: the
    signature is HMAC-SHA256 chained over the identifier and each caveat; fields are length-prefixed packets,
    the whole base64url without padding. Byte for byte what pymacaroons gives (tested), without its objects."""
    identifier_bytes = identifier.encode()
    signature = hmac.new(derived_key, identifier_bytes, hashlib.sha256).digest()
    packets = [_packet(b"location", location.encode()), _packet(b"identifier", identifier_bytes)]
    for caveat in caveats:
        data = caveat.encode()
        signature = hmac.new(signature, data, hashlib.sha256).digest()
        packets.append(_packet(b"cid", data))
    packets.append(_packet(b"signature", signature))
    return base64.urlsafe_b64encode(b"".join(packets)).rstrip(b"=")
