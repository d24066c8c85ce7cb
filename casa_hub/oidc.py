"""OpenID Connect pieces oauthenticator leaves out: discovery and id_token verification.

Pure functions plus a small key cache; the HTTP fetch is passed in (the authenticator's ``httpfetch``), so
everything here is testable against a real provider and free of Tornado specifics.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from typing import Awaitable, Callable, Mapping, Sequence

import jwt

# id_tokens must be signed asymmetrically: HS* would let anyone holding the client secret (or, with key
# confusion, the provider's *public* key) forge them; "none" is not a signature at all.
ASYMMETRIC_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
_KEY_TYPES = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}


class OIDCError(Exception):
    """An id_token or provider document that must not be trusted; the message is safe to show users."""


@dataclass(frozen=True)
class ProviderMetadata:
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    userinfo_endpoint: str
    jwks_uri: str
    code_challenge_methods: tuple[str, ...] = ()


def parse_discovery(document: Mapping, expected_issuer: str) -> ProviderMetadata:
    """Validate an ``/.well-known/openid-configuration`` document (OIDC Discovery 1.0 section 4.3)."""
    if document.get("issuer", "").rstrip("/") != expected_issuer.rstrip("/"):
        raise OIDCError(f"the provider says its issuer is {document.get('issuer')!r}, expected {expected_issuer!r}")
    missing = [
        k for k in ("authorization_endpoint", "token_endpoint", "userinfo_endpoint", "jwks_uri") if not document.get(k)
    ]
    if missing:
        raise OIDCError(f"the provider's discovery document lacks {', '.join(missing)}")
    return ProviderMetadata(
        issuer=document["issuer"],
        authorization_endpoint=document["authorization_endpoint"],
        token_endpoint=document["token_endpoint"],
        userinfo_endpoint=document["userinfo_endpoint"],
        jwks_uri=document["jwks_uri"],
        code_challenge_methods=tuple(document.get("code_challenge_methods_supported", ())),
    )


class JWKSCache:
    """The provider's signing keys by ``kid``; an unknown kid triggers one re-fetch (key rotation), at most
    once per ``min_refetch_interval`` seconds so forged kids cannot make us hammer the provider."""

    def __init__(
        self,
        fetch: Callable[[], Awaitable[Mapping]],
        min_refetch_interval: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._fetch = fetch
        self._keys: dict[str, jwt.PyJWK] = {}
        self._declared: dict[str, str | None] = {}
        self._fetched_at: float | None = None
        self._interval = min_refetch_interval
        self._clock = clock
        self._lock = asyncio.Lock()  # concurrent logins with a new kid share one fetch

    async def refresh(self) -> None:
        document = await self._fetch()
        keys, declared = {}, {}
        for jwk in document.get("keys", []):
            if not isinstance(jwk, dict) or not verifies_signatures(jwk) or "kid" not in jwk:
                continue
            try:
                keys[jwk["kid"]] = jwt.PyJWK(jwk)
            except jwt.PyJWKError:
                continue  # a key type we cannot use; others may still be fine
            declared[jwk["kid"]] = jwk.get("alg")
        self._keys, self._declared = keys, declared
        self._fetched_at = self._clock()

    def declared_alg(self, key: jwt.PyJWK) -> str | None:
        """The ``alg`` the provider published with ``key`` (None: not restricted to one algorithm)."""
        return next((self._declared.get(kid) for kid, k in self._keys.items() if k is key), None)

    def _may_refetch(self) -> bool:
        return self._fetched_at is None or self._clock() - self._fetched_at >= self._interval

    async def refetch(self) -> bool:
        """Fetch the keys again unless the last fetch is more recent than ``min_refetch_interval``; True if the
        keys are fresh now."""
        if not self._may_refetch():
            return False
        async with self._lock:
            if self._may_refetch():
                await self.refresh()
        return True

    async def get(self, kid: str | None) -> jwt.PyJWK:
        if kid is None:
            # tokens without a kid are only acceptable when the provider publishes a single key
            if len(self._keys) != 1 and self._may_refetch():
                async with self._lock:
                    if len(self._keys) != 1 and self._may_refetch():
                        await self.refresh()
            if len(self._keys) == 1:
                return next(iter(self._keys.values()))
            raise OIDCError("the id_token names no key id and the provider publishes several keys")
        if kid not in self._keys and self._may_refetch():
            async with self._lock:
                if kid not in self._keys and self._may_refetch():
                    await self.refresh()
        try:
            return self._keys[kid]
        except KeyError:
            raise OIDCError("the id_token was signed with a key the provider does not publish") from None


def verifies_signatures(jwk: Mapping) -> bool:
    """Whether RFC 7517 lets this key verify signatures: ``use`` absent or ``sig`` (4.2), ``key_ops`` absent or
    naming ``verify`` (4.3), and, when both are present, consistent (a ``sig`` key may only sign and verify)."""
    use, ops = jwk.get("use"), jwk.get("key_ops")
    if use is not None and use != "sig":
        return False
    if ops is not None:
        if not isinstance(ops, list) or "verify" not in ops:
            return False
        if use is not None and not set(ops) <= {"sign", "verify"}:
            return False
    return True


def _numeric_date(claims: Mapping, name: str) -> float:
    """A NumericDate claim (RFC 7519 section 2: a JSON number); strings, booleans, NaN, infinities and numbers
    too large for a float are refused (PyJWT does not look at time claims it is told not to verify)."""
    value = claims[name]
    try:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
            raise ValueError
        return float(value)
    except (ValueError, OverflowError):
        raise jwt.InvalidTokenError(f"the {name!r} claim is not a valid time") from None


def _signed_by(token: str, key: jwt.PyJWK, alg: str) -> bool:
    """Whether ``key`` verifies the signature of ``token`` (nothing else checked)."""
    if key.key_type != _KEY_TYPES.get(alg[:2]):
        return False
    try:
        jwt.PyJWS().decode_complete(token, key.key, algorithms=[alg])
        return True
    except (jwt.PyJWTError, ValueError, TypeError):
        return False


async def verify_id_token(
    token: str,
    keys: JWKSCache,
    *,
    issuer: str,
    audience: str,
    algorithms: Sequence[str] = ("RS256", "ES256"),
    leeway: float = 30.0,
    nonce: str | None = None,
    now: float | None = None,
    trusted_audiences: Sequence[str] = (),
) -> dict:
    """Verify an id_token as OpenID Connect Core 1.0 section 3.1.3.7 requires; return its claims.

    Signature with a published key usable for it (RFC 7517 ``use``/``key_ops``/``alg``) and an accepted
    asymmetric ``alg``; no unknown ``crit`` extensions (RFC 7515 4.1.11, refused by PyJWT's header parsing);
    ``iss`` exactly the provider's; ``aud`` containing ``audience`` (our client id) and no audience we do not
    trust; ``azp``, when present, our client id, and present when there are several audiences; ``exp``,
    ``iat`` (and ``nbf``) against the clock with ``leeway``; ``sub`` present; ``nonce`` equal to the one we
    sent, when we sent one.
    """
    allowed = [a for a in algorithms if a in ASYMMETRIC_ALGORITHMS]
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise OIDCError("the id_token is not a well-formed JWT") from None
    alg, kid = header.get("alg"), header.get("kid")
    if alg not in allowed:
        raise OIDCError(f"id_token algorithm {alg!r} is not accepted (allowed: {', '.join(allowed)})")
    key = await keys.get(kid or None)
    if not kid and not _signed_by(token, key, alg) and await keys.refetch():
        # no kid names the key: the provider may have replaced its only key (a restart, a rotation), which a
        # cached JWKS with one key cannot tell; fetched again, at most as often as for unknown kids
        key = await keys.get(None)
    if key.key_type != _KEY_TYPES.get(alg[:2]):  # an RSA key must not verify an ES token, and so on
        raise OIDCError(f"id_token algorithm {alg} does not match the provider's {key.key_type} key {kid!r}")
    declared = keys.declared_alg(key)
    if declared is not None and declared != alg:  # RFC 7517 4.4: the key is meant for one algorithm only
        raise OIDCError(f"the provider's key {kid!r} is for {declared}, not {alg}")
    options = {"require": ["iss", "aud", "exp", "iat", "sub"]}
    try:
        if now is not None:
            # PyJWT has no clock parameter: check time claims ourselves, signature/iss/aud with PyJWT
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[alg],
                audience=audience,
                issuer=issuer,
                options={**options, "verify_exp": False, "verify_iat": False, "verify_nbf": False},
            )
            if _numeric_date(claims, "exp") + leeway < now:
                raise jwt.ExpiredSignatureError("Signature has expired")
            if _numeric_date(claims, "iat") - leeway > now:
                raise jwt.ImmatureSignatureError("The token is not yet valid (iat)")
            if "nbf" in claims and _numeric_date(claims, "nbf") - leeway > now:
                raise jwt.ImmatureSignatureError("The token is not yet valid (nbf)")
        else:
            claims = jwt.decode(
                token, key.key, algorithms=[alg], audience=audience, issuer=issuer, leeway=leeway, options=options
            )
    except jwt.ExpiredSignatureError:
        raise OIDCError("the id_token has expired") from None
    except jwt.InvalidAudienceError:
        raise OIDCError("the id_token was issued for another client (audience mismatch)") from None
    except jwt.InvalidIssuerError:
        raise OIDCError("the id_token was issued by another provider (issuer mismatch)") from None
    except jwt.InvalidSignatureError:
        raise OIDCError("the id_token signature is invalid") from None
    except jwt.PyJWTError as e:
        raise OIDCError(f"the id_token is invalid: {e}") from None
    audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
    untrusted = [a for a in audiences if a != audience and a not in trusted_audiences]
    if untrusted:
        raise OIDCError("the id_token is also meant for an audience this client does not trust")
    if "azp" in claims and claims["azp"] != audience:
        raise OIDCError("the id_token was issued to another authorized party (azp)")
    if len(audiences) > 1 and "azp" not in claims:
        raise OIDCError("the id_token has several audiences and names no authorized party (azp)")
    if nonce is not None and claims.get("nonce") != nonce:
        raise OIDCError("the id_token nonce does not match this login")
    return claims
