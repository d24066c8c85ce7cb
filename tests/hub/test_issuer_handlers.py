"""The facility issuer's public documents (casa_hub.handlers) on a real Tornado server: what a token consumer
(XRootD's SciTokens plugin, PyJWT's PyJWKClient) fetches, with no authentication, as JSON, cacheable, and
with retired keys still published during a rotation."""

from __future__ import annotations

import asyncio
import json

import httpx
import jwt
import pytest
from tornado import web
from tornado.httpserver import HTTPServer
from traitlets.config import Config

from casa_hub import keys
from casa_hub.authenticator import CasaAuthenticator
from casa_hub.handlers import issuer_handlers
from tests.support import free_port, make_minter

PREFIX = "/hub"


@pytest.fixture
async def issuer(tmp_path):
    """A minter with a current and a retired key, its documents served under the hub prefix."""
    port = free_port()
    retired = tmp_path / "retired.pem"
    retired.write_bytes(keys.generate("issuer", "RS256"))
    minter = make_minter(
        tmp_path / "keys",
        CasaMinter={
            "issuer_url": f"http://127.0.0.1:{port}{PREFIX}/casa-issuer",
            "issuer_retired_key_files": [str(retired)],
        },
    )
    app = web.Application([(PREFIX + route, handler, kwargs) for route, handler, kwargs in issuer_handlers(minter)])
    server = HTTPServer(app)
    server.listen(port, "127.0.0.1")
    try:
        yield minter, f"http://127.0.0.1:{port}{PREFIX}/casa-issuer"
    finally:
        server.stop()
        await server.close_all_connections()


async def test_openid_configuration_points_at_the_jwks(issuer):
    minter, base = issuer
    async with httpx.AsyncClient(timeout=10) as http:
        r = await http.get(base + "/.well-known/openid-configuration")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert "max-age=" in r.headers["cache-control"] and "public" in r.headers["cache-control"]
    doc = r.json()
    assert doc["issuer"] == minter.issuer_url == base
    assert doc["jwks_uri"] == base + "/jwks.json"


async def test_jwks_publishes_current_and_retired_public_keys_only(issuer):
    minter, base = issuer
    async with httpx.AsyncClient(timeout=10) as http:
        r = await http.get(base + "/jwks.json")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert "max-age=" in r.headers["cache-control"]
    published = r.json()["keys"]
    assert [k["kid"] for k in published] == [k.kid for k in minter.issuer_keys]
    assert {k["kty"] for k in published} == {"EC", "RSA"}
    for jwk in published:  # public members only: no private exponent / scalar
        assert not {"d", "p", "q", "dp", "dq", "qi"} & set(jwk)
    assert "PRIVATE" not in r.text


async def test_no_authentication_needed_and_only_get(issuer):
    _, base = issuer
    async with httpx.AsyncClient(timeout=10) as http:
        for path in ("/.well-known/openid-configuration", "/jwks.json"):
            r = await http.get(base + path, headers={"Cookie": "", "Authorization": ""})
            assert r.status_code == 200
            assert (await http.post(base + path, content=b"{}")).status_code == 405
        assert (await http.get(base + "/jwks.jsonx")).status_code == 404


async def test_a_minted_token_verifies_the_way_a_consumer_does_it(issuer):
    """Discovery, then PyJWT's PyJWKClient on the advertised jwks_uri, then iss/aud/exp checks."""
    minter, base = issuer
    bundle = minter.mint("alice")
    token = bundle.files["xcache.token"].content.decode().strip()

    def consumer():
        with httpx.Client(timeout=10) as http:
            config = http.get(
                jwt.decode(token, options={"verify_signature": False})["iss"] + "/.well-known/openid-configuration"
            ).json()
        signing_key = jwt.PyJWKClient(config["jwks_uri"], cache_keys=True).get_signing_key_from_jwt(token)
        return jwt.decode(
            token,
            signing_key.key,
            algorithms=["ES256", "RS256"],
            audience=minter.kind("xcache").audience[0],
            issuer=config["issuer"],
        )

    claims = await asyncio.to_thread(consumer)
    assert claims["sub"] == "alice" and claims["iss"] == base


async def test_a_token_signed_by_a_retired_key_still_verifies(issuer):
    minter, _ = issuer
    retired = minter.issuer_keys[1]
    token = jwt.encode(
        {"sub": "alice", "iss": minter.issuer_url},
        retired.private_key,
        algorithm=retired.algorithm,
        headers={"kid": retired.kid},
    )

    def verify():
        key = jwt.PyJWKClient(minter.issuer_url + "/jwks.json").get_signing_key_from_jwt(token)
        return jwt.decode(token, key.key, algorithms=[retired.algorithm], issuer=minter.issuer_url)

    assert (await asyncio.to_thread(verify))["sub"] == "alice"


def test_authenticator_serves_the_documents_of_its_own_minter(tmp_path):
    minter = make_minter(tmp_path / "keys")
    c = Config()
    c.CasaAuthenticator.oidc_issuer = "http://127.0.0.1:1"
    c.CasaAuthenticator.client_id = "casa-test"
    c.merge(minter.config)  # CasaMinter and its kinds' sections
    auth = CasaAuthenticator(config=c)
    routes = {
        route: (handler, kwargs)
        for route, handler, *rest in auth.get_handlers(None)
        for kwargs in (rest[0] if rest else {},)
    }
    for route in (r"/casa-issuer/\.well-known/openid-configuration", r"/casa-issuer/jwks\.json"):
        assert routes[route][1]["minter"] is auth.minter
    assert json.dumps(auth.minter.jwks())  # serialisable, keys loaded at construction
