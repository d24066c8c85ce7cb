"""id_token verification (casa_hub.oidc) against the real provider's JWKS and genuine tokens; forgeries of
every kind are refused with a clear reason."""

from __future__ import annotations

import base64
import json
import time

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from casa_hub.oidc import JWKSCache, OIDCError, parse_discovery, verify_id_token
from tests.hub.id_tokens import CLIENT, _claims, _header
from tests.hub.oidc import code_flow_tokens, start_provider, stop_provider


@pytest.fixture(scope="module")
def provider(tmp_path_factory):
    p = start_provider(tmp_path_factory.mktemp("oidc"))
    try:
        yield p
    finally:
        stop_provider(p)


@pytest.fixture(scope="module")
def metadata(provider):
    return parse_discovery(provider.get_json("/.well-known/openid-configuration"), provider.url)


@pytest.fixture
def keys(metadata):
    async def fetch():
        async with httpx.AsyncClient(timeout=10) as http:
            return (await http.get(metadata.jwks_uri)).json()

    return JWKSCache(fetch)


@pytest.fixture(scope="module")
def genuine(provider):
    return code_flow_tokens(provider, "alice", client_id=CLIENT)["id_token"]


async def _verify(token, keys, metadata, **kw):
    return await verify_id_token(token, keys, issuer=metadata.issuer, audience=kw.pop("audience", CLIENT), **kw)


async def test_genuine_id_token_verifies(genuine, keys, metadata):
    claims = await _verify(genuine, keys, metadata)
    assert claims["sub"] == "alice" and claims["aud"] in (CLIENT, [CLIENT]) and claims["iss"] == metadata.issuer


def test_discovery_issuer_mismatch_is_refused(provider):
    doc = provider.get_json("/.well-known/openid-configuration")
    with pytest.raises(OIDCError, match="issuer"):
        parse_discovery(doc, "https://evil.example.org")


def _resign(token: str, key, alg: str, **changes) -> str:
    claims = {**_claims(token), **changes}
    return jwt.encode(
        claims, key, algorithm=alg, headers={k: v for k, v in _header(token).items() if k not in ("alg", "typ")}
    )


async def test_forged_signature_is_refused(genuine, keys, metadata):
    forger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(OIDCError, match="signature is invalid"):
        await _verify(_resign(genuine, forger, "RS256"), keys, metadata)


async def test_alg_none_is_refused(genuine, keys, metadata):
    header = base64.urlsafe_b64encode(json.dumps({"alg": "none", "typ": "JWT"}).encode()).rstrip(b"=")
    body = genuine.split(".")[1].encode()
    with pytest.raises(OIDCError, match="'none' is not accepted"):
        await _verify((header + b"." + body + b".").decode(), keys, metadata)


async def test_hs256_with_the_public_key_is_refused(genuine, keys, metadata, provider):
    """Key confusion: an attacker signs HS256 using the provider's public key as the HMAC secret."""
    jwks = provider.get_json("/jwks")
    public_pem = jwt.PyJWK(jwks["keys"][0]).key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    import hashlib
    import hmac

    header = base64.urlsafe_b64encode(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()).rstrip(b"=")
    body = genuine.split(".")[1].encode()
    signature = base64.urlsafe_b64encode(hmac.new(public_pem, header + b"." + body, hashlib.sha256).digest())
    token = b".".join([header, body, signature.rstrip(b"=")]).decode()
    with pytest.raises(OIDCError, match="'HS256' is not accepted"):
        await _verify(token, keys, metadata, algorithms=["RS256", "HS256"])


async def test_es256_header_on_rsa_key_is_refused(genuine, keys, metadata):
    other = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(OIDCError, match="does not match"):
        await _verify(_resign(genuine, other, "ES256"), keys, metadata)


async def test_expired_id_token_is_refused(genuine, keys, metadata):
    later = _claims(genuine)["exp"] + 3600
    with pytest.raises(OIDCError, match="expired"):
        await _verify(genuine, keys, metadata, now=later)


async def test_wrong_audience_is_refused(genuine, keys, metadata):
    with pytest.raises(OIDCError, match="audience"):
        await _verify(genuine, keys, metadata, audience="another-client")


async def test_wrong_issuer_is_refused(genuine, keys):
    class Meta:
        issuer = "https://other-provider.example.org"

    with pytest.raises(OIDCError, match="issuer"):
        await verify_id_token(genuine, keys, issuer=Meta.issuer, audience=CLIENT)


async def test_unknown_kid_is_refused_and_refetch_is_bounded(genuine, metadata):
    calls = []

    async def fetch():
        calls.append(time.monotonic())
        async with httpx.AsyncClient(timeout=10) as http:
            return (await http.get(metadata.jwks_uri)).json()

    keys = JWKSCache(fetch, min_refetch_interval=3600)
    forger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = jwt.encode(_claims(genuine), forger, algorithm="RS256", headers={"kid": "rotated-away"})
    for _ in range(5):
        with pytest.raises(OIDCError, match="does not publish"):
            await _verify(token, keys, metadata)
    assert len(calls) == 1  # forged kids cannot make us hammer the provider


async def test_nonce_mismatch_is_refused(genuine, keys, metadata):
    with pytest.raises(OIDCError, match="nonce"):
        await _verify(genuine, keys, metadata, nonce="expected-nonce")


async def test_nonce_sent_at_authorize_is_required_back(provider, keys, metadata):
    token = code_flow_tokens(provider, "alice", client_id=CLIENT, nonce="n-123")["id_token"]
    assert (await _verify(token, keys, metadata, nonce="n-123"))["nonce"] == "n-123"
    with pytest.raises(OIDCError, match="nonce does not match"):
        await _verify(token, keys, metadata, nonce="a-replayed-login")


async def test_key_rotation_unknown_kid_triggers_one_refetch(genuine, metadata):
    """The provider rotated to a new key: our cached JWKS lacks its kid, so the JWKS is fetched again, once."""
    async with httpx.AsyncClient(timeout=10) as http:
        published = (await http.get(metadata.jwks_uri)).json()
    new_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    new_jwk = {**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(new_key.public_key())), "kid": "k2", "use": "sig"}
    calls = []

    async def fetch():
        calls.append(1)
        return published if len(calls) == 1 else {"keys": [*published["keys"], new_jwk]}

    keys = JWKSCache(fetch, min_refetch_interval=0)
    await keys.refresh()
    rotated = jwt.encode(_claims(genuine), new_key, algorithm="RS256", headers={"kid": "k2"})
    assert (await _verify(rotated, keys, metadata))["sub"] == "alice" and len(calls) == 2
    await _verify(rotated, keys, metadata)
    assert len(calls) == 2  # a known kid is served from the cache
    # the mock names no kid: fine while it publishes one key, ambiguous once it publishes two
    with pytest.raises(OIDCError, match="names no key id"):
        await _verify(genuine, keys, metadata)


@pytest.mark.parametrize("mutation", range(0, 40))
async def test_byte_mutations_are_refused(genuine, keys, metadata, mutation):
    raw = bytearray(genuine.encode())
    pos = (mutation * 37) % len(raw)
    raw[pos] = ord("A") if raw[pos] != ord("A") else ord("B")
    token = raw.decode(errors="replace")
    if token == genuine:
        pytest.fail("mutation did not change the token")
    try:
        claims = await _verify(token, keys, metadata)
    except OIDCError:
        return
    # base64url padding bits: a flip in the last char's unused bits can decode to the same bytes
    assert claims == await _verify(genuine, keys, metadata)


# ---------------------------------------------------------------- the demo provider itself (casa_demo.oidc_provider)
def _authorize(provider, pkce: dict, redirect_uri="http://127.0.0.1:1/callback") -> dict:
    """POST the provider's login form for alice; the parameters it redirects back with."""
    from urllib.parse import parse_qs, urlencode, urlsplit

    params = {
        "response_type": "code",
        "client_id": CLIENT,
        "redirect_uri": redirect_uri,
        "scope": "openid",
        "state": "s",
        **pkce,
    }
    r = httpx.post(f"{provider.url}/oauth2/authorize?{urlencode(params)}", data={"sub": "alice"}, timeout=10)
    if r.status_code != 302:
        return {"error": [f"HTTP {r.status_code}"]}
    return parse_qs(urlsplit(r.headers["location"]).query)


def _challenge(verifier: str) -> str:
    import hashlib

    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


@pytest.mark.parametrize(
    "pkce",
    [
        {},  # no PKCE at all
        {"code_challenge": _challenge("v" * 50)},  # method omitted: would mean "plain"
        {"code_challenge": "v" * 50, "code_challenge_method": "plain"},
    ],
)
def test_demo_provider_refuses_authorize_without_s256_pkce(provider, pkce):
    answer = _authorize(provider, pkce)
    assert "code" not in answer and answer["error"] == ["invalid_request"]
    assert "PKCE is required" in answer["error_description"][0]
    assert provider.get_json("/.well-known/openid-configuration")["code_challenge_methods_supported"] == ["S256"]


@pytest.mark.parametrize("verifier", [None, "not-the-right-verifier-" + "x" * 30])
def test_demo_provider_refuses_a_code_without_its_verifier(provider, verifier):
    code = _authorize(provider, {"code_challenge": _challenge("v" * 50), "code_challenge_method": "S256"})["code"][0]
    data = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": "http://127.0.0.1:1/callback",
        "client_id": CLIENT,
        "client_secret": "x",
        **({"code_verifier": verifier} if verifier else {}),
    }
    r = httpx.post(f"{provider.url}/oauth2/token", data=data, timeout=10)
    assert r.status_code == 400 and r.json()["error"] in ("invalid_request", "invalid_grant"), r.text


def test_demo_provider_refreshes_with_client_secret_post_and_serves_groups(provider):
    tokens = code_flow_tokens(provider, "alice", client_id=CLIENT)
    r = httpx.post(
        f"{provider.url}/oauth2/token",
        timeout=10,
        data={
            "grant_type": "refresh_token",
            "refresh_token": tokens["refresh_token"],
            "client_id": CLIENT,
            "client_secret": "x",
        },
    )
    assert r.status_code == 200, r.text
    info = httpx.get(
        f"{provider.url}/userinfo", timeout=10, headers={"Authorization": f"Bearer {r.json()['access_token']}"}
    ).json()
    assert info["groups"] == ["cms", "gpu-users"] and info["preferred_username"] == "alice"


# ------------------------------------------------------------------ OIDC Core 3.1.3.7 and RFC 7517 key usage
def _own_key_jwks(**jwk_members):
    """A provider key of our own (so tokens can carry any claims), published with ``jwk_members``."""
    private = ec.generate_private_key(ec.SECP256R1())
    jwk = {**json.loads(jwt.algorithms.ECAlgorithm.to_jwk(private.public_key())), "kid": "k1", **jwk_members}

    async def fetch():
        return {"keys": [jwk]}

    return private, JWKSCache(fetch)


def _token(private, alg="ES256", headers=None, **claims):
    now = int(time.time())
    base = {"iss": "https://op.test", "aud": CLIENT, "sub": "alice", "iat": now, "exp": now + 300}
    return jwt.encode({**base, **claims}, private, algorithm=alg, headers={"kid": "k1", **(headers or {})})


async def _check(token, keys, **kw):
    return await verify_id_token(token, keys, issuer="https://op.test", audience=CLIENT, **kw)


@pytest.mark.parametrize(
    "members",
    [{}, {"use": "sig"}, {"key_ops": ["verify"]}, {"alg": "ES256"}, {"use": "sig", "key_ops": ["sign", "verify"]}],
)
async def test_keys_published_for_signatures_verify(members):
    private, keys = _own_key_jwks(**members)
    assert (await _check(_token(private), keys))["sub"] == "alice"


@pytest.mark.parametrize(
    "members",
    [{"use": "enc"}, {"key_ops": ["encrypt"]}, {"key_ops": "verify"}, {"use": "sig", "key_ops": ["verify", "encrypt"]}],
)
async def test_keys_not_published_for_verification_are_never_used(members):
    """RFC 7517 4.2/4.3: a key for encryption, without ``verify`` in its operations, or with ``use`` and
    ``key_ops`` that disagree does not verify signatures, even when it would."""
    private, keys = _own_key_jwks(**members)
    with pytest.raises(OIDCError, match="key the provider does not publish"):
        await _check(_token(private), keys)


async def test_a_key_published_for_another_algorithm_is_refused():
    private, keys = _own_key_jwks(alg="ES384")  # RFC 7517 4.4: the key is meant for ES384 only
    with pytest.raises(OIDCError, match="is for ES384, not ES256"):
        await _check(_token(private), keys)


async def test_critical_header_extensions_are_refused():
    """RFC 7515 4.1.11: extensions this client does not understand are refused (by PyJWT's header parsing)."""
    private, keys = _own_key_jwks()
    with pytest.raises(OIDCError, match="not a well-formed JWT"):
        await _check(_token(private, headers={"crit": ["exp"], "exp": 1}), keys)


@pytest.mark.parametrize(
    "claims,reason",
    [
        ({"azp": "someone-else"}, "another authorized party"),
        ({"aud": [CLIENT, "other-client"], "azp": CLIENT}, "audience this client does not trust"),
        ({"aud": [CLIENT, "trusted-api"]}, "names no authorized party"),
    ],
)
async def test_audience_and_authorized_party_rules(claims, reason):
    private, keys = _own_key_jwks()
    with pytest.raises(OIDCError, match=reason):
        await _check(_token(private, **claims), keys, trusted_audiences=["trusted-api"])


async def test_a_trusted_extra_audience_with_our_azp_verifies():
    private, keys = _own_key_jwks()
    claims = await _check(
        _token(private, aud=[CLIENT, "trusted-api"], azp=CLIENT), keys, trusted_audiences=["trusted-api"]
    )
    assert claims["azp"] == CLIENT
