"""The WLCG storage token, judged by a second, independent validator: the SciTokens library's ``Enforcer``.

The token is what ``CasaMinter.mint`` writes (``xcache.token``, minted with this same library's ``SciToken``
through ``xcache.SciTokenIssuedAt``, which only lets the hub's clock decide ``iat``/``nbf``/``exp``). The library
verifies it as a consumer does, whoever minted it: it fetches ``<iss>/.well-known/openid-configuration`` and the
JWKS it names over https from the hub's issuer documents (served on 127.0.0.1 by tests/issuer_server.py, trusted
through a throw-away CA), checks the signature, ``exp``/``nbf``/``iat`` (``SciToken.deserialize``), then ``iss``,
``aud`` and the scopes (``Enforcer.test``).

The Python library (1.9) names the rights as they are spelt in the token: ``storage.read`` / ``storage.create``
(WLCG profile), not the SciTokens 1.0 ``read`` / ``write``, which it does not map; and it registers no validator
for ``wlcg.ver``, so the test adds one (XRootD's scitokens-cpp knows the WLCG profile itself).
"""

from __future__ import annotations

import datetime

import jwt
import pytest
import scitokens  # pinned in requirements/test.txt: the independent validator, nothing here is skipped
from scitokens.utils import keycache
from scitokens.utils.errors import MissingKeyException

from casa_hub.credentials import issuer as issuer_mod
from casa_hub.credentials import storage, xcache
from tests.issuer_server import IssuerServer, issuer_documents
from tests.pki import TestPKI
from tests.support import make_minter
from tests.user_names import HOSTILE_PAIRS, pair_id

AUDIENCE = "https://xcache.casa.test:1094"
SCOPES = ["storage.read:/store", "storage.create:/store/user/{userdir}"]
HOUR = datetime.timedelta(hours=1)


class Site:
    def __init__(self, server: IssuerServer, issuer_url: str, minter, other_url: str, other_minter):
        self.server, self.issuer_url, self.minter = server, issuer_url, minter
        self.other_url, self.other_minter = other_url, other_minter

    def token(self, user: str, **mint) -> str:
        return self.minter.mint(user, **mint).files["xcache.token"].content.decode().strip()


@pytest.fixture(scope="module", params=["ES256", "RS256"])
def site(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(f"scitokens-{request.param}")
    pki = TestPKI.create()
    cert, key = pki.server_cert()
    (tmp / "issuer.crt").write_bytes(cert)
    (tmp / "issuer.key").write_bytes(key)
    (tmp / "ca.pem").write_bytes(pki.ca_pem)
    with pytest.MonkeyPatch.context() as mp, IssuerServer(tmp / "issuer.crt", tmp / "issuer.key") as server:
        # the library fetches keys with urllib's default context: trust only the test CA; a private key cache
        mp.setenv("SSL_CERT_FILE", str(tmp / "ca.pem"))
        mp.delenv("SSL_CERT_DIR", raising=False)
        for proxy in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
            mp.delenv(proxy, raising=False)
        mp.setenv("XDG_CACHE_HOME", str(tmp / "cache"))
        mp.setattr(keycache, "KEYCACHE_INSTANCE", None)
        base = f"https://127.0.0.1:{server.port}"
        issuer_url, other_url = f"{base}/hub/casa-issuer", f"{base}/other/casa-issuer"
        minter = make_minter(
            tmp / "keys",
            algorithm=request.param,
            CasaMinter={"issuer_url": issuer_url},
            XCacheToken={"audience": [AUDIENCE], "scopes": SCOPES},
        )
        other = make_minter(
            tmp / "other-keys",
            algorithm=request.param,
            CasaMinter={"issuer_url": other_url},
            XCacheToken={"audience": [AUDIENCE], "scopes": SCOPES},
        )
        server.documents.update(issuer_documents(minter, issuer_url))
        server.documents.update(issuer_documents(other, other_url))
        yield Site(server, issuer_url, minter, other_url, other)
    keycache.KEYCACHE_INSTANCE = None  # its cache file was in tmp


def enforcer(issuer: str, audience=AUDIENCE) -> "scitokens.Enforcer":
    e = scitokens.Enforcer(issuer, audience=audience)
    e.add_validator("wlcg.ver", lambda v: v == "1.0")
    return e


def allowed(site: Site, token: str, authz: str, path: str, *, audience=AUDIENCE) -> bool:
    e = enforcer(site.issuer_url, audience)
    return e.test(scitokens.SciToken.deserialize(token), authz, path)


def area(user: str) -> str:
    return f"/store/user/{storage.user_dir(user)}"


def test_enforcer_grants_the_users_scopes(site):
    token = site.token("alice")
    mine = area("alice")
    for path in ("/store", "/store/data/run1.root", f"{mine}/out.root", area("bob") + "/x.root"):
        assert allowed(site, token, "storage.read", path), path
    for path in (mine, f"{mine}/out.root", f"{mine}/sub/dir/f.root"):
        assert allowed(site, token, "storage.create", path), path
    for path in (
        "/store",
        "/store/data/run1.root",
        "/store/user",
        "/store/user/alice",
        f"{mine[:-1]}/x.root",
        area("bob") + "/x.root",
        "/other/x",
    ):
        assert not allowed(site, token, "storage.create", path), path
    for authz, path in (
        ("storage.modify", f"{mine}/out.root"),
        ("storage.read", "/etc/passwd"),
        ("read", "/store/x"),
        ("write", f"{mine}/x"),
    ):  # no SciTokens-1.0 rights in the token
        assert not allowed(site, token, authz, path), (authz, path)


@pytest.mark.parametrize("pair", HOSTILE_PAIRS, ids=pair_id)
def test_enforcer_gives_no_user_the_others_area(site, pair):
    first, second, why = pair
    for owner, other in ((first, second), (second, first)):
        token = site.token(owner)
        assert allowed(site, token, "storage.create", f"{area(owner)}/f.root"), why
        for path in (area(other), f"{area(other)}/f.root", f"{area(other)}/sub/f.root"):
            assert not allowed(site, token, "storage.create", path), (owner, path, why)


def test_expired_token_is_refused(site):
    old = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(
        seconds=site.minter.kind("xcache").lifetime + 60
    )
    token = site.token("alice", now=old)
    with pytest.raises(jwt.ExpiredSignatureError):
        scitokens.SciToken.deserialize(token)


def test_wrong_audience_is_refused(site):
    token = scitokens.SciToken.deserialize(site.token("alice"))
    e = enforcer(site.issuer_url, audience="https://other-xcache.casa.test:1094")
    assert not e.test(token, "storage.read", "/store/x")
    assert "aud" in e.last_failure
    assert enforcer(site.issuer_url).test(token, "storage.read", "/store/x")  # the same token, right audience


def test_another_issuers_key_is_refused(site):
    ours = site.minter.issuer_keys[0]
    stranger = issuer_mod.load_issuer_key(issuer_mod.generate_issuer_key_pem(ours.algorithm))
    kw = dict(
        issuer=site.issuer_url,
        subject="alice",
        scopes=storage.render_scopes(SCOPES, "alice"),
        audience=AUDIENCE,
        now=datetime.datetime.now(datetime.timezone.utc),
        lifetime=HOUR,
    )
    # a stranger's key claiming our kid: the signature does not verify
    forged = issuer_mod.IssuerKey(stranger.private_key, stranger.algorithm, ours.kid)
    token, _ = xcache.mint_wlcg_token(forged, **kw)
    with pytest.raises(jwt.InvalidSignatureError):
        scitokens.SciToken.deserialize(token.decode().strip())
    # a stranger's key under its own kid: our JWKS does not have it
    token, _ = xcache.mint_wlcg_token(stranger, **kw)
    with pytest.raises(MissingKeyException):
        scitokens.SciToken.deserialize(token.decode().strip())
    # a valid token of another issuer (its keys fetched from its own documents): not ours to accept
    other_token = site.other_minter.mint("alice").files["xcache.token"].content.decode().strip()
    theirs = scitokens.SciToken.deserialize(other_token)
    assert not enforcer(site.issuer_url).test(theirs, "storage.read", "/store/x")
    assert enforcer(site.other_url).test(theirs, "storage.read", "/store/x")
