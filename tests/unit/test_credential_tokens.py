"""Pure unit tests of the token minting functions: exact claims, signatures checked against the JWKS."""

from __future__ import annotations

import base64
import datetime
import json

import jwt
import pytest
import scitokens
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given, settings
from hypothesis import strategies as st
from pymacaroons import Macaroon, Verifier
from scitokens.utils.errors import MissingIssuerException, MissingKeyException, UnsupportedKeyException

from casa_hub.credentials import htcondor, issuer, servicex, xcache

NOW = datetime.datetime(2026, 11, 23, 12, 0, tzinfo=datetime.timezone.utc)
T = int(NOW.timestamp())
HOUR = datetime.timedelta(hours=1)


@pytest.fixture(scope="module", params=["ES256", "RS256"])
def key(request):
    return issuer.load_issuer_key(issuer.generate_issuer_key_pem(request.param))


def _verify_with_jwks(token: str, jwks: dict, audience) -> dict:
    header = jwt.get_unverified_header(token)
    (jwk,) = [k for k in jwks["keys"] if k["kid"] == header["kid"]]
    public = jwt.PyJWK(jwk).key
    return jwt.decode(
        token,
        public,
        algorithms=[jwk["alg"]],
        audience=audience,
        options={"verify_exp": False, "verify_iat": False, "verify_nbf": False},
    )


def test_wlcg_claims_exact():
    claims = xcache.wlcg_token_claims(
        issuer="https://hub/casa-issuer",
        subject="alice",
        scopes=["storage.read:/store"],
        audience="https://xcache",
        now=NOW,
        lifetime=HOUR,
        jti="j1",
    )
    assert claims == {
        "wlcg.ver": "1.0",
        "iss": "https://hub/casa-issuer",
        "sub": "alice",
        "aud": "https://xcache",
        "scope": "storage.read:/store",
        "iat": T,
        "nbf": T,
        "exp": T + 3600,
        "jti": "j1",
    }


def test_wlcg_token_verifies_against_published_jwks(key):
    token, exp = xcache.mint_wlcg_token(
        key,
        issuer="https://i",
        subject="alice",
        scopes=["storage.read:/store"],
        audience=["a1", "a2"],
        now=NOW,
        lifetime=HOUR,
    )
    claims = _verify_with_jwks(token.decode().strip(), issuer.jwks_document([key]), audience="a2")
    assert claims["sub"] == "alice" and claims["exp"] == T + 3600 and claims["aud"] == ["a1", "a2"]
    assert exp == NOW + HOUR
    assert jwt.get_unverified_header(token.decode().strip())["alg"] == key.algorithm


def _segments(token: bytes) -> tuple[dict, dict, str]:
    """Header, claims (unverified) and signing input (``header.payload`` as sent) of a token."""
    token = token.strip()
    signing_input = token.decode().rpartition(".")[0]
    return jwt.get_unverified_header(token), jwt.decode(token, options={"verify_signature": False}), signing_input


def test_wlcg_token_is_the_scitoken_of_its_claims(key):
    """Every claim of wlcg_token_claims, issued at the hub's ``now`` (two days ago: an expired token), header
    ``alg`` + ``kid`` + ``typ``; the signature verifies under the issuer's public key (scitokens' deserialize)."""
    two_days_ago = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=2)
    kw = dict(
        issuer="https://hub/casa-issuer",
        subject="alice",
        scopes=["storage.read:/store", "storage.create:/store/user/alice~"],
        audience=["https://xcache:1094", "https://origin:1094"],
        now=two_days_ago,
        lifetime=HOUR,
        jti="j-1",
    )
    token, expires_at = xcache.mint_wlcg_token(key, **kw)
    assert token.endswith(b"\n") and token.count(b"\n") == 1
    header, claims, _ = _segments(token)
    assert header == {"alg": key.algorithm, "kid": key.kid, "typ": "JWT"}
    assert claims == xcache.wlcg_token_claims(**kw)
    assert claims["iat"] == claims["nbf"] == int(two_days_ago.timestamp())
    assert expires_at == datetime.datetime.fromtimestamp(claims["exp"], datetime.timezone.utc)
    public_pem = key.private_key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(jwt.ExpiredSignatureError):  # scitokens' own verification: signature good, but expired
        scitokens.SciToken.deserialize(token.strip(), public_key=public_pem)


def test_issued_at_changes_nothing_but_the_clock_of_scitokens_serialize(key):
    """SciTokenIssuedAt.serialize against the library's own SciToken.serialize, same key and claims: the same
    header and payload bytes once the issue time is the same (so a scitokens release that changes serialize,
    or the attributes the subclass reads, fails here)."""
    claims = {"wlcg.ver": "1.0", "sub": "alice", "aud": "https://x", "scope": "storage.read:/store", "jti": "j-2"}
    theirs = scitokens.SciToken(key=key.private_key, algorithm=key.algorithm, key_id=key.kid)
    theirs.update_claims(claims)
    their_token = theirs.serialize(issuer="https://hub/casa-issuer", lifetime=1800)
    _, their_claims, their_signing_input = _segments(their_token)
    ours = xcache.SciTokenIssuedAt(key.private_key, key.algorithm, key.kid, issued_at=their_claims["iat"])
    ours.update_claims(claims)
    our_token = ours.serialize(issuer="https://hub/casa-issuer", lifetime=1800)
    assert _segments(our_token)[2] == their_signing_input
    assert dict(ours.claims()) == dict(theirs.claims())  # and the object afterwards, too
    if key.algorithm == "RS256":  # PKCS#1 v1.5 is deterministic: the whole token is the library's
        assert our_token == their_token


def test_scitoken_issued_at_refuses_what_the_library_refuses(key):
    other = "RS256" if key.algorithm == "ES256" else "ES256"
    with pytest.raises(UnsupportedKeyException):  # the key is not one for that algorithm
        xcache.SciTokenIssuedAt(key.private_key, other, key.kid, issued_at=T)
    token = xcache.SciTokenIssuedAt(key.private_key, key.algorithm, key.kid, issued_at=T)
    with pytest.raises(MissingIssuerException):
        token.serialize(lifetime=60)
    with pytest.raises(MissingKeyException):
        xcache.SciTokenIssuedAt(None, key.algorithm, key.kid, issued_at=T).serialize(issuer="https://i")


def test_jwks_has_public_members_only(key):
    (jwk,) = issuer.jwks_document([key])["keys"]
    assert not {"d", "p", "q", "dp", "dq", "qi"} & set(jwk)
    assert jwk["kid"] == issuer.jwk_thumbprint(jwk) and jwk["use"] == "sig"


def test_kid_is_rfc7638_thumbprint():
    import hashlib

    k = issuer.load_issuer_key(issuer.generate_issuer_key_pem("ES256"))
    jwk = k.jwk
    # RFC 7638: required members only, lexicographic order, no whitespace
    canonical = f'{{"crv":"P-256","kty":"EC","x":"{jwk["x"]}","y":"{jwk["y"]}"}}'.encode()
    expected = base64.urlsafe_b64encode(hashlib.sha256(canonical).digest()).rstrip(b"=").decode()
    assert k.kid == expected


def test_openid_configuration_names_issuer_and_jwks():
    doc = issuer.openid_configuration("https://hub/casa-issuer", "https://hub/casa-issuer/jwks.json")
    assert doc["issuer"] == "https://hub/casa-issuer" and doc["jwks_uri"].endswith("/jwks.json")


@pytest.mark.parametrize(
    "bad",
    [
        dict(lifetime=datetime.timedelta(0)),
        dict(lifetime=-HOUR),
        dict(scopes=[]),
    ],
)
def test_wlcg_bad_input_is_refused(bad):
    kw = dict(issuer="i", subject="s", scopes=["storage.read:/"], audience="a", now=NOW, lifetime=HOUR)
    kw.update(bad)
    with pytest.raises(ValueError):
        xcache.wlcg_token_claims(**kw)


def test_small_rsa_issuer_key_is_refused():
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    small = rsa.generate_private_key(public_exponent=65537, key_size=1024).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(ValueError, match="2048"):
        issuer.load_issuer_key(small)


# ---------------------------------------------------------------- macaroons


def test_macaroon_caveats_and_signature():
    secret = b"k" * 32
    mac, before = xcache.mint_macaroon(
        secret=secret, location="SITE", user="alice", path="/store", now=NOW, lifetime=HOUR
    )
    m = Macaroon.deserialize(mac.decode().strip())
    assert m.location == "SITE"
    assert [c.caveat_id for c in m.caveats] == [
        "name:alice",
        "activity:DOWNLOAD,READ_METADATA,LIST",
        "path:/store",
        "before:2026-11-23T13:00:00Z",
    ]
    assert before == NOW + HOUR
    v = Verifier()
    v.satisfy_general(lambda c: True)
    assert v.verify(m, secret)
    with pytest.raises(Exception):
        v.verify(m, b"x" * 32)


@pytest.mark.parametrize("lifetime", [datetime.timedelta(hours=25), datetime.timedelta(0)])
def test_macaroon_lifetime_is_capped(lifetime):
    with pytest.raises(ValueError, match="24h"):
        xcache.mint_macaroon(secret=b"k", location="S", user="u", path="/", now=NOW, lifetime=lifetime)


# ---------------------------------------------------------------- HTCondor


def _reference_condor_key(file_bytes: bytes, key_id: str) -> bytes:
    """Independent re-statement of HTCondor's derivation (TESTBED.md), written differently on purpose."""
    raw = file_bytes[: file_bytes.index(b"\0")] if b"\0" in file_bytes else file_bytes
    mask = b"\xde\xad\xbe\xef" * (len(raw) // 4 + 1)
    password = bytes(a ^ b for a, b in zip(raw, mask))
    if key_id == "POOL":
        password *= 2
    return HKDF(hashes.SHA256(), 32, salt=b"htcondor", info=b"master jwt").derive(password)


@pytest.mark.parametrize("key_id", ["POOL", "casa"])
def test_condor_key_derivation_matches_reference(key_id):
    file_bytes = htcondor.scramble_key_file(b"correct horse battery") + b"\0trailing garbage"
    assert htcondor.signing_key_from_file(file_bytes, key_id) == _reference_condor_key(file_bytes, key_id)


def test_condor_pool_and_named_keys_differ():
    f = htcondor.scramble_key_file(b"pw")
    assert htcondor.signing_key_from_file(f, "POOL") != htcondor.signing_key_from_file(f, "other")


def test_idtoken_claims_and_header():
    token, exp = htcondor.mint_idtoken(
        signing_key=b"s" * 32,
        key_id="POOL",
        trust_domain="pool.example",
        user="alice",
        now=NOW,
        lifetime=HOUR,
        jti="abc",
    )
    token = token.decode().strip()
    assert jwt.get_unverified_header(token) == {"alg": "HS256", "kid": "POOL", "typ": "JWT"}
    claims = jwt.decode(token, b"s" * 32, algorithms=["HS256"], options={"verify_exp": False, "verify_iat": False})
    assert claims == {
        "iat": T,
        "exp": T + 3600,
        "iss": "pool.example",
        "jti": "abc",
        "sub": "alice@pool.example",
        "scope": "condor:/READ condor:/WRITE",
    }
    assert exp == NOW + HOUR


def test_empty_condor_key_is_refused():
    with pytest.raises(ValueError, match="empty"):
        htcondor.signing_key_from_file(b"\0abc")


# ---------------------------------------------------------------- ServiceX


def test_servicex_token_claims_match_flask_jwt_extended():
    token, claims = servicex.mint_servicex_token(
        secret=b"x" * 40, identity="alice@example.org", now=NOW, lifetime=HOUR, jti="J"
    )
    assert claims == {
        "fresh": False,
        "iat": T,
        "jti": "J",
        "type": "access",
        "sub": "alice@example.org",
        "nbf": T,
        "exp": T + 3600,
    }
    assert jwt.decode(
        token, b"x" * 40, algorithms=["HS256"], options={"verify_exp": False, "verify_iat": False, "verify_nbf": False}
    )


def test_servicex_yaml_is_what_the_client_reads():
    import yaml
    from servicex.configuration import Configuration

    doc = yaml.safe_load(servicex.servicex_yaml(endpoint="https://sx", name="casa"))
    cfg = Configuration.model_validate(doc)
    assert cfg.default_endpoint == "casa"
    # no token in the file: Casa never hands out refresh tokens (the access token has its own file)
    assert cfg.endpoint_dict()["casa"].endpoint == "https://sx" and not cfg.endpoint_dict()["casa"].token


@pytest.mark.parametrize("bad", [dict(token_type="refresh"), dict(identity=""), dict(lifetime=datetime.timedelta(0))])
def test_servicex_bad_input(bad):
    kw = dict(identity="a", now=NOW, lifetime=HOUR)
    kw.update(bad)
    with pytest.raises((ValueError, TypeError)):  # TypeError: there is no refresh token type any more
        servicex.servicex_token_claims(**kw)


# ---------------------------------------------------------------- properties


@settings(max_examples=60, deadline=None)
@given(user=st.text(min_size=1, max_size=80))
def test_any_user_name_yields_a_token_for_exactly_that_subject(user):
    token, _ = htcondor.mint_idtoken(
        signing_key=b"s" * 32, key_id="POOL", trust_domain="d", user=user, now=NOW, lifetime=HOUR
    )
    payload = token.decode().strip().split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert claims["sub"] == f"{htcondor.condor_user(user)}@d"
    assert claims["sub"].count("@") == 1  # HTCondor splits at the first "@": the account is exactly ours


@settings(max_examples=60, deadline=None)
@given(name=st.text(min_size=1, max_size=40), endpoint=st.text(min_size=1, max_size=40))
def test_servicex_yaml_round_trips_any_text(name, endpoint):
    import yaml

    doc = yaml.safe_load(servicex.servicex_yaml(endpoint=endpoint, name=name))
    assert doc["default-endpoint"] == name and doc["api_endpoints"][0]["endpoint"] == endpoint


def test_condor_key_that_would_scramble_to_nul_is_refused():
    with pytest.raises(ValueError, match="NUL"):
        htcondor.scramble_key_file(b"x\xad")  # 0xAD at position 1 meets the AD of DE AD BE EF
