"""Casa's XCache credentials against a real XRootD 5.5 origin and a real XCache (XrdPss + XrdPfc).

Every verdict is XRootD's own: SciTokens (scitokens-cpp fetching the minter's own issuer documents over
https) and macaroons (libXrdMacaroons). Tokens come from ``CasaMinter.mint`` or, for the refusals, from the
same pure functions the minter uses. A refusal is asserted twice: the client sees XRootD's
"permission denied" (HTTP 403 / xrdcp exit 54 with kXR_NotAuthorized 3010) and the server log names the
reason, so a test cannot pass because the request was refused for some other reason.
"""

from __future__ import annotations

import datetime
import os
import re
import time
from pathlib import Path

import pytest

from casa_hub.credentials.issuer import IssuerKey, generate_issuer_key_pem, load_issuer_key
from tests.consumers import xrootd_server as xs
from tests.consumers.xrootd_site import NOT_AUTHORIZED, XRDCP_NOT_AUTHORIZED, Endpoint, assert_refused

pytestmark = pytest.mark.consumer("xrootd")

HOUR = xs.HOUR


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


ENDPOINTS = [("origin", "https"), ("origin", "roots"), ("cache", "https"), ("cache", "roots")]


@pytest.fixture(params=ENDPOINTS, ids=[f"{s}-{t}" for s, t in ENDPOINTS])
def endpoint(request, site) -> Endpoint:
    server, transport = request.param
    return Endpoint(site, getattr(site, server), transport)


def wait_until(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


# ---------------------------------------------------------------- accepted


def test_minted_token_reads_file(site, endpoint, tmp_path):
    token = site.minter.mint("alice").files["xcache.token"].content
    out = endpoint.read(token, tmp_path / "out")
    assert out.ok, out.detail
    assert (tmp_path / "out").read_bytes() == xs.TEST_BYTES
    # granted by the token's scope, for its subject (not by some other rule)
    log = endpoint.server.log_since(out.log_offset)
    assert "subject=alice" in log and "Grant authorization based on scopes for operation=read" in log, log
    if endpoint.transport == "roots":
        assert "login as alice" in log, log  # ztn authenticated the session as the token's subject


def test_cache_miss_is_fetched_with_the_cache_service_token_and_kept(site, tmp_path):
    token = site.minter.mint("carol").files["xcache.token"].content
    out = Endpoint(site, site.cache, "roots").read(token, tmp_path / "out", path=xs.CACHE_FILE)
    assert out.ok, out.detail
    assert (tmp_path / "out").read_bytes() == xs.CACHE_BYTES
    cached = site.work / "cache-ns" / xs.CACHE_FILE.lstrip("/")
    # XrdPfc writes blocks from a background thread: wait (bounded) for its copy
    assert wait_until(lambda: cached.exists() and cached.read_bytes() == xs.CACHE_BYTES), "XrdPfc kept no copy"
    assert Path(f"{cached}.cinfo").exists()
    # the origin authorized the cache's own identity for the miss, and never saw the user's token
    origin_log = site.origin.log_since(0)
    grant = rf"subject={xs.SERVICE_SUBJECT}, .*\n.*operation=read, path={re.escape(xs.CACHE_FILE)}"
    assert re.search(grant, origin_log), origin_log
    assert "subject=carol" not in origin_log


def test_minted_macaroon_reads_file_over_https(site, tmp_path):
    macaroon = site.minter.mint("alice").files["xcache.macaroon"].content
    out = Endpoint(site, site.origin, "https").read(macaroon, tmp_path / "out")
    assert out.ok, out.detail
    assert (tmp_path / "out").read_bytes() == xs.TEST_BYTES
    assert "Macaroon verification successful" in site.origin.log_since(out.log_offset)


def test_create_scope_allows_upload_to_own_area_over_https(site):
    token = site.token(scopes=["storage.create:/user/alice"])  # base_path /store: scopes are relative
    status, body = site.https(site.origin, "PUT", "/store/user/alice/https.txt", token, body=b"result\n")
    assert status in (200, 201), (status, body)
    assert (site.work / "origin-ns/store/user/alice/https.txt").read_bytes() == b"result\n"


def test_minted_write_token_uploads_with_xrdcp(site, tmp_path, monkeypatch):
    # the documented hub setting for a user's writable area; xrdcp stats the target, so it also needs read
    monkeypatch.setattr(site.minter.kind("xcache"), "scopes", ["storage.read:/", "storage.create:/user/{userdir}"])
    token = site.minter.mint("erin").files["xcache.token"].content
    (tmp_path / "src").write_bytes(b"histograms\n")
    r = site.xrdcp(str(tmp_path / "src"), site.origin.root_url + "/store/user/erin~/hist.txt", token)
    assert r.returncode == 0, r.stderr
    assert (site.work / "origin-ns/store/user/erin~/hist.txt").read_bytes() == b"histograms\n"


# ---------------------------------------------------------------- refused: WLCG tokens, origin and cache


def test_no_token_is_refused(endpoint, tmp_path):
    # no token: the request falls through SciTokens to the empty authdb
    assert_refused(endpoint, None, tmp_path, r"acc_Audit: \S+ deny (https|unix) ")


def test_expired_token_is_refused(site, endpoint, tmp_path):
    token = site.token(now=_now() - 3 * HOUR, lifetime=HOUR)
    assert_refused(endpoint, token, tmp_path, "token verification failed: token expired")


def test_wrong_scope_path_is_refused(site, endpoint, tmp_path):
    token = site.token(scopes=["storage.read:/other"])
    # a valid token whose only grant is elsewhere
    assert_refused(endpoint, token, tmp_path, "authorizations=/store/other:read", r"deny .* /store/data/run1\.root")


def test_wrong_audience_is_refused(site, endpoint, tmp_path):
    token = site.token(audience="https://another-cache.example.org")
    assert_refused(endpoint, token, tmp_path, "'aud' claim verification failed")


def test_unknown_issuer_is_refused(site, endpoint, tmp_path):
    # signed by the real key, but claiming an issuer the site does not trust
    token = site.token(issuer="https://127.0.0.1:1/not-casa")
    assert_refused(endpoint, token, tmp_path, "Token issuer is not in list of allowed issuers")


def test_forged_signature_is_refused(site, endpoint, tmp_path):
    # a key the issuer never published, presented under the real key id
    forger = load_issuer_key(generate_issuer_key_pem(), kid=site.minter.issuer_keys[0].kid)
    assert_refused(endpoint, site.token(key=forger), tmp_path, "Invalid signature")


def test_unknown_key_id_is_refused(site, endpoint, tmp_path):
    real = site.minter.issuer_keys[0]
    token = site.token(key=IssuerKey(real.private_key, real.algorithm, "no-such-kid"))
    assert_refused(endpoint, token, tmp_path, "Key ID is not published by the issuer")


# ---------------------------------------------------------------- refused: writes


def test_read_token_cannot_upload_over_https(site):
    token = site.minter.mint("alice").files["xcache.token"].content
    since = site.origin.log_size()
    status, body = site.https(site.origin, "PUT", "/store/user/alice/sneaky.txt", token, body=b"x")
    assert (status, b"permission denied" in body) == (403, True), (status, body)
    assert not (site.work / "origin-ns/store/user/alice/sneaky.txt").exists()
    assert "Unable to create /store/user/alice/sneaky.txt" in site.origin.wait_for_log("ofs_open", since)


def test_read_token_cannot_upload_with_xrdcp(site, tmp_path):
    token = site.minter.mint("alice").files["xcache.token"].content
    (tmp_path / "src").write_bytes(b"x")
    r = site.xrdcp(str(tmp_path / "src"), site.origin.root_url + "/store/user/alice/sneaky2.txt", token)
    assert r.returncode == XRDCP_NOT_AUTHORIZED and NOT_AUTHORIZED in r.stderr, r.stderr
    assert "Unable to create /store/user/alice/sneaky2.txt; permission denied" in r.stderr
    assert not (site.work / "origin-ns/store/user/alice/sneaky2.txt").exists()


def test_create_scope_does_not_reach_another_users_area(site):
    token = site.token(scopes=["storage.create:/user/alice"])
    status, body = site.https(site.origin, "PUT", "/store/user/bob/intruder.txt", token, body=b"x")
    assert (status, b"permission denied" in body) == (403, True), (status, body)
    assert not (site.work / "origin-ns/store/user/bob/intruder.txt").exists()


# ---------------------------------------------------------------- refused: macaroons (origin, https)


@pytest.fixture
def origin_https(site) -> Endpoint:
    return Endpoint(site, site.origin, "https")


def test_macaroon_recipe_control(site, origin_https, tmp_path):
    """Control for the refusals below: the same recipe with the right inputs is accepted."""
    out = origin_https.read(site.macaroon(), tmp_path / "out")
    assert out.ok, out.detail


def test_expired_macaroon_is_refused(site, origin_https, tmp_path):
    assert_refused(origin_https, site.macaroon(now=_now() - 3 * HOUR), tmp_path, "Macaroon expired at")


def test_macaroon_for_another_path_is_refused(site, origin_https, tmp_path):
    assert_refused(origin_https, site.macaroon(path="/other"), tmp_path, "path request NOT allowed /store/data/run1")


def test_macaroon_signed_with_another_key_is_refused(site, origin_https, tmp_path):
    log = assert_refused(
        origin_https,
        site.macaroon(secret=os.urandom(32)),
        tmp_path,
        "Macaroon verification failed",
        "Macaroon has not expired",
        "path request verified",
    )
    # every caveat held: only the signature can have failed
    assert "NOT allowed" not in log and "expired at" not in log
