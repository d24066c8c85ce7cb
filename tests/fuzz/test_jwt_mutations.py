"""id_tokens mutated claim by claim, header by header and byte by byte -> refused with OIDCError, never a crash,
and accepted only when the mutation is benign.

The tokens are signed with locally generated keys published in a real JWKS (an RSA key and an EC key), and
verified with ``casa_hub.oidc.verify_id_token`` exactly as ``CasaAuthenticator.get_token_info`` calls it
(``now`` and ``nonce`` given, default algorithms and leeway).

Benign, precisely:

* claim-wise: the signed claims satisfy :func:`acceptable` (an independent statement of the rules the
  docstrings promise: ``iss`` the issuer; ``aud`` the client or a list of strings holding it, with ``azp`` the
  client when there are several; ``exp``/``iat``/``nbf`` JSON numbers, finite, within the leeway; ``sub`` a
  string; ``nonce`` the login's). Then the verified claims must be exactly the signed ones.
* header-wise: never benign unless alg is an allowed asymmetric algorithm matching the type of the key that
  ``kid`` names in the JWKS, and the token is signed by that key.
* byte-wise: the three segments are unchanged except for signature characters that base64url-decode to the
  very same signature bytes (padding bits); then the claims must be the original ones.

Casa-issued credentials (casa_hub/credentials/issuer.py, xcache.py) are only minted on our side; nothing of
ours verifies them (XRootD, HTCondor and ServiceX do), so there is no verifier of ours to fuzz.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import math

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from casa_hub.oidc import JWKSCache, OIDCError, verify_id_token
from tests.hub.id_tokens import CLIENT, _claims, _header

FUZZ = settings(
    max_examples=200, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow]
)

ISSUER = "https://idp.casa.test/realms/casa"
NONCE = "n-0123456789abcdef"
NOW = 1_800_000_000.0
LEEWAY = 30.0
BASE_CLAIMS = {
    "iss": ISSUER,
    "aud": CLIENT,
    "sub": "alice-sub",
    "iat": int(NOW) - 5,
    "exp": int(NOW) + 600,
    "nonce": NONCE,
    "preferred_username": "alice",
}

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
OTHER_RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
KEYS = {"rsa-1": RSA_KEY, "ec-1": EC_KEY}


def _jwk(private, kid: str) -> dict:
    algo = jwt.algorithms.RSAAlgorithm if isinstance(private, rsa.RSAPrivateKey) else jwt.algorithms.ECAlgorithm
    return {**json.loads(algo.to_jwk(private.public_key())), "kid": kid, "use": "sig"}


JWKS = {"keys": [_jwk(RSA_KEY, "rsa-1"), _jwk(EC_KEY, "ec-1")]}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign(claims, header: dict, key) -> str:
    """A JWS over ``claims`` (any JSON value, serialized as is: no PyJWT claim checks) signed by ``key``."""
    payload = json.dumps(claims).encode()
    return jwt.api_jws.encode(payload, key, algorithm=header["alg"], headers=header)


async def _verify(token: str) -> dict:
    async def fetch():
        return JWKS

    return await verify_id_token(
        token, JWKSCache(fetch), issuer=ISSUER, audience=CLIENT, nonce=NONCE, now=NOW, leeway=LEEWAY
    )


def run(token: str):
    """('ok', claims) or ('refused', message); any other exception propagates and fails the test."""
    try:
        return "ok", asyncio.run(_verify(token))
    except OIDCError as e:
        assert str(e), "an OIDCError must say why"
        return "refused", str(e)


GENUINE = sign(BASE_CLAIMS, {"alg": "RS256", "kid": "rsa-1", "typ": "JWT"}, RSA_KEY)


def test_the_genuine_token_verifies():
    """The baseline the mutations start from is accepted, with its claims."""
    assert run(GENUINE) == ("ok", BASE_CLAIMS)
    assert _claims(GENUINE) == BASE_CLAIMS and _header(GENUINE)["kid"] == "rsa-1"


# ------------------------------------------------------------------ the oracle
def _numeric_date(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        value = float(value)
    except OverflowError:
        return None
    return value if math.isfinite(value) else None


def acceptable(claims) -> bool:
    """The documented rules for an id_token's claims (signature and header checked apart)."""
    if not isinstance(claims, dict):
        return False
    if claims.get("iss") != ISSUER or not isinstance(claims.get("iss"), str):
        return False
    aud = claims.get("aud")
    if isinstance(aud, str):
        if aud != CLIENT:
            return False
    elif isinstance(aud, list) and all(isinstance(a, str) for a in aud) and CLIENT in aud:
        if any(a != CLIENT for a in aud):  # OIDC Core 3.1.3.7 (3): no audience the client does not trust
            return False
    else:
        return False
    if "azp" in claims and claims["azp"] != CLIENT:  # 3.1.3.7 (5)
        return False
    if not isinstance(claims.get("sub"), str):
        return False
    exp, iat = _numeric_date(claims.get("exp")), _numeric_date(claims.get("iat"))
    if exp is None or iat is None or exp + LEEWAY < NOW or iat - LEEWAY > NOW:
        return False
    if "nbf" in claims:
        nbf = _numeric_date(claims["nbf"])
        if nbf is None or nbf - LEEWAY > NOW:
            return False
    if "jti" in claims and not isinstance(claims["jti"], str):
        return False
    return claims.get("nonce") == NONCE


# ------------------------------------------------------------------ claim-wise mutations
CLAIMS = ("iss", "aud", "azp", "exp", "iat", "nbf", "sub", "nonce", "jti")
wild_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=2**63, max_value=10**400).map(lambda n: n),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.text(st.characters(codec="utf-8")),
    st.lists(st.one_of(st.text(max_size=12), st.integers(), st.none()), max_size=4),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)
times = st.one_of(
    st.integers(int(NOW) - 10**6, int(NOW) + 10**6),
    st.floats(NOW - 100, NOW + 100),
    st.sampled_from([int(NOW - LEEWAY), int(NOW + LEEWAY), int(NOW - LEEWAY) - 1, int(NOW + LEEWAY) + 1]),
    st.just(str(int(NOW) + 600)),
    st.just(float("nan")),
    st.just(float("inf")),
    st.just(10**400),
)
plausible = {
    "iss": st.sampled_from([ISSUER, ISSUER + "/", ISSUER.upper(), "https://evil.example.org", ISSUER + "\u200b"]),
    "aud": st.one_of(
        st.sampled_from(
            [
                CLIENT,
                [CLIENT],
                [CLIENT, "other"],
                ["other", CLIENT],
                ["other"],
                [],
                CLIENT + " ",
                [CLIENT, 1],
                CLIENT.upper(),
            ]
        )
    ),
    "azp": st.sampled_from([CLIENT, "other", None]),
    "exp": times,
    "iat": times,
    "nbf": times,
    "sub": st.one_of(st.text(max_size=20), st.sampled_from(["bob-sub", "alice-sub"])),
    "nonce": st.sampled_from([NONCE, NONCE + "x", NONCE.upper(), "", None]),
    "jti": st.one_of(st.text(max_size=8), st.integers()),
}
claim_ops = st.lists(
    st.one_of(
        st.tuples(st.just("drop"), st.sampled_from(CLAIMS), st.none()),
        st.sampled_from(CLAIMS).flatmap(
            lambda c: st.tuples(st.just("set"), st.just(c), st.one_of(plausible[c], wild_values))
        ),
        st.tuples(st.just("extra"), st.text(min_size=1, max_size=10), wild_values),
    ),
    min_size=1,
    max_size=4,
)


def apply_ops(claims: dict, ops) -> dict:
    out = dict(claims)
    for op, name, value in ops:
        if op == "drop":
            out.pop(name, None)
        else:
            out[name] = value
    return out


@FUZZ
@given(ops=claim_ops)
@example(ops=[("set", "exp", float("nan"))])
@example(ops=[("set", "exp", "1800000600")])
@example(ops=[("set", "iat", [1])])
@example(ops=[("set", "exp", 10**400)])
@example(ops=[("set", "nbf", int(NOW) + 3600)])
@example(ops=[("set", "aud", [CLIENT, "other"]), ("set", "azp", CLIENT)])
@example(ops=[("set", "aud", [CLIENT, "other"])])
def test_claim_mutations_are_refused_unless_benign(ops):
    """Claims mutated (dropped, retyped, replaced, added) and then validly signed by the provider's key: the
    token verifies exactly when the claims are acceptable, and then returns exactly those claims; anything
    else is an OIDCError."""
    claims = apply_ops(BASE_CLAIMS, ops)
    outcome, value = run(sign(claims, {"alg": "RS256", "kid": "rsa-1", "typ": "JWT"}, RSA_KEY))
    if acceptable(claims):
        assert outcome == "ok", value
        assert value == json.loads(json.dumps(claims))
    else:
        assert outcome == "refused", f"accepted bad claims {claims!r}"


@settings(FUZZ, max_examples=50)
@given(
    payload=st.one_of(
        st.lists(st.integers(), max_size=3), st.text(max_size=10), st.integers(), st.none(), st.floats(allow_nan=True)
    )
)
def test_non_object_payloads_are_refused(payload):
    """A validly signed token whose payload is JSON but not an object is refused."""
    assert run(sign(payload, {"alg": "RS256", "kid": "rsa-1"}, RSA_KEY))[0] == "refused"


# ------------------------------------------------------------------ header mutations
def _hs256_with_public_key(claims: dict, header: dict) -> str:
    secret = RSA_KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    return signing_input + "." + b64(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest())


headers = st.fixed_dictionaries(
    {
        "alg": st.one_of(
            st.sampled_from(
                ["RS256", "ES256", "RS384", "PS256", "ES384", "EdDSA", "none", "None", "HS256", "HS512", "", "rs256"]
            ),
            wild_values,
        ),
        "kid": st.one_of(st.sampled_from(["rsa-1", "ec-1", "rotated-away", "", "rsa-1 "]), wild_values),
    },
    optional={
        "typ": st.sampled_from(["JWT", "at+jwt", "", "JWE"]),
        "crit": st.lists(st.text(max_size=5), max_size=2),
        "jku": st.just("https://evil.example.org/jwks"),
        "x5u": st.just("https://evil.example.org/x5c"),
    },
)
signers = st.sampled_from(["rsa", "ec", "other-rsa", "hs-public", "unsigned"])


@FUZZ
@given(header=headers, signer=signers)
def test_header_mutations_are_refused_unless_benign(header, signer):
    """alg none/HS256 (with the provider's public key as HMAC secret)/unknown, unknown or wrong-type kids,
    tokens signed by a key other than the one the kid names, odd header members: refused, never a crash.
    The only acceptance: an allowed asymmetric alg, the kid of a published key of that type, signed by it."""
    header = {k: v for k, v in header.items() if v is not None or k == "kid"}
    alg, kid = header.get("alg"), header.get("kid")
    try:
        if signer == "unsigned":
            token = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(BASE_CLAIMS).encode())}."
        elif signer == "hs-public":
            token = _hs256_with_public_key(BASE_CLAIMS, {**header, "alg": "HS256"})
            alg = "HS256"
        else:
            key = {"rsa": RSA_KEY, "ec": EC_KEY, "other-rsa": OTHER_RSA}[signer]
            token = jwt.api_jws.encode(json.dumps(BASE_CLAIMS).encode(), key, algorithm=alg, headers=header)
    except (NotImplementedError, TypeError, ValueError, KeyError, AttributeError, jwt.PyJWTError):
        # PyJWT cannot make such a token: put the header on a genuine body and signature instead
        token = f"{b64(json.dumps(header).encode())}.{GENUINE.split('.', 1)[1]}"
        signer = "transplanted"
    outcome, value = run(token)
    benign = (
        signer in ("rsa", "ec")
        and alg in ("RS256", "ES256")
        and isinstance(kid, str)
        and KEYS.get(kid) is {"rsa": RSA_KEY, "ec": EC_KEY}[signer]
        and alg[:2] == ("RS" if signer == "rsa" else "ES")
        and "crit" not in header
    )
    if benign:
        assert outcome == "ok" and value == BASE_CLAIMS, value
    else:
        assert outcome == "refused", f"accepted a token with header {header!r} signed by {signer}"


# ------------------------------------------------------------------ byte-wise mutations
def _b64decode(segment: str) -> bytes | None:
    try:
        return base64.urlsafe_b64decode(segment.encode("ascii") + b"=" * (-len(segment) % 4))
    except (ValueError, UnicodeEncodeError):
        return None


def byte_benign(token: str) -> bool:
    parts, original = token.split("."), GENUINE.split(".")
    return (
        len(parts) == 3
        and parts[:2] == original[:2]
        and _b64decode(parts[2]) is not None
        and _b64decode(parts[2]) == _b64decode(original[2])
    )


byte_mutations = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, len(GENUINE) - 1), st.integers(0, 7)),
    st.tuples(st.just("truncate"), st.integers(0, len(GENUINE) - 1), st.none()),
    st.tuples(st.just("insert"), st.integers(0, len(GENUINE)), st.text(min_size=1, max_size=4)),
    st.tuples(st.just("delete"), st.integers(0, len(GENUINE) - 1), st.integers(1, 8)),
    st.tuples(
        st.just("segments"),
        st.lists(st.sampled_from([0, 1, 2]), min_size=0, max_size=5),
        st.text(st.sampled_from("abcAB09-_.="), max_size=8),
    ),
)


def mutate(token: str, mutation) -> str:
    op, a, b = mutation
    if op != "segments":
        if not token:
            return token if op != "insert" else b
        a %= len(token) + (op == "insert")
    if op == "flip":
        return token[:a] + chr(ord(token[a]) ^ (1 << b)) + token[a + 1 :]
    if op == "truncate":
        return token[:a]
    if op == "insert":
        return token[:a] + b + token[a:]
    if op == "delete":
        return token[:a] + token[a + b :]
    parts = token.split(".")
    return ".".join([parts[i % len(parts)] for i in a] + ([b] if b else []))


@FUZZ
@given(mutations=st.lists(byte_mutations, min_size=1, max_size=3))
@example(mutations=[("segments", [0, 1, 2, 2], "")])
@example(mutations=[("segments", [0, 1, 2], "")])
@example(mutations=[("flip", len(GENUINE) - 1, 0)])
def test_byte_mutations_are_refused_unless_benign(mutations):
    """Bit flips (into any character), truncations, insertions, deletions, extra/missing/reordered segments:
    refused with OIDCError, except signature-padding changes that decode to the same signature, which give
    exactly the original claims."""
    token = GENUINE
    for m in mutations:
        token = mutate(token, m)
    outcome, value = run(token)
    if byte_benign(token):
        assert outcome == "ok" and value == BASE_CLAIMS, value
    else:
        assert outcome == "refused", f"accepted a mutated token {token!r}"
