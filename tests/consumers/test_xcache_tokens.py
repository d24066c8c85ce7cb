"""Casa's XCache credentials against real XRootD 5.5 (SciTokens + macaroons plugins) and a real XCache.

Every rejection below is XRootD's own decision; the tokens come from the same pure functions the hub uses.
"""

from __future__ import annotations

import base64
import datetime
import http.client
import os
import shutil
import ssl
import subprocess
import tempfile
from pathlib import Path

import pytest

from casa_hub.credentials import xcache
from casa_hub.credentials.issuer import IssuerKey, generate_issuer_key_pem, load_issuer_key
from tests.consumers import xrd
from tests.issuer_server import IssuerServer, issuer_documents
from tests.pki import TestPKI
from tests.support import make_minter, need

pytestmark = pytest.mark.consumer("xrootd")

HOUR = datetime.timedelta(hours=1)


def _have_xrootd() -> bool:
    libs = Path("/usr/lib/x86_64-linux-gnu")
    return all([shutil.which("xrootd"), shutil.which("xrdcp"), shutil.which("unshare"),
                (libs / "libXrdAccSciTokens-5.so").exists(), (libs / "libXrdMacaroons-5.so").exists(),
                (libs / "libXrdPss-5.so").exists(), (libs / "libXrdPfc-5.so").exists()])


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    need(_have_xrootd(), "XRootD 5.5 with the SciTokens, macaroons, Pss and Pfc plugins")
    tmp = tmp_path_factory.mktemp("xcache")
    # xrootd drops to the xrootd user: its files must not sit below pytest's 0700 directories
    work = Path(tempfile.mkdtemp(prefix="casa-xrd-"))
    work.chmod(0o755)
    pki = TestPKI.create()
    issuer_cert, issuer_key = pki.server_cert()
    (tmp / "issuer.crt").write_bytes(issuer_cert)
    (tmp / "issuer.key").write_bytes(issuer_key)
    with IssuerServer(tmp / "issuer.crt", tmp / "issuer.key") as issuer:
        issuer_url = f"https://127.0.0.1:{issuer.port}/hub/casa-issuer"
        minter = make_minter(tmp / "keys", issuer_url=issuer_url, xcache_audience=[xrd.AUDIENCE],
                             macaroon_location=xrd.SITE_NAME)
        issuer.documents.update(issuer_documents(minter, issuer_url))
        prepare_workdir_secret = Path(minter.macaroon_secret_file).read_bytes()
        xrd.prepare_workdir(work, pki=pki, issuer_url=issuer_url, macaroon_secret=prepare_workdir_secret)
        servers = []
        try:
            servers.append(xrd.start_server(work, "origin", xrd.ORIGIN_CFG))
            servers.append(xrd.start_server(work, "backend", xrd.BACKEND_CFG))
            servers.append(xrd.start_server(work, "cache", xrd.CACHE_CFG, backend_port=servers[1].port))
            yield Site(minter, pki, work, tmp, issuer_url, *servers)
        finally:
            for s in servers:
                xrd.stop_server(s)
            shutil.rmtree(work, ignore_errors=True)


class Site:
    def __init__(self, minter, pki, work, tmp, issuer_url, origin, backend, cache):
        self.minter, self.pki, self.work, self.tmp, self.issuer_url = minter, pki, work, tmp, issuer_url
        self.origin, self.backend, self.cache = origin, backend, cache
        self.ssl = ssl.create_default_context(cadata=pki.ca_pem.decode())

    def https(self, server, method, path, token: bytes | str | None = None, body: bytes | None = None):
        conn = http.client.HTTPSConnection("127.0.0.1", server.http_port, context=self.ssl, timeout=20)
        headers = {}
        if token is not None:
            token = token.decode() if isinstance(token, bytes) else token
            headers["Authorization"] = f"Bearer {token.strip()}"
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def xrdcp(self, server, path: str, token: bytes | None, dest: Path) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BEARER_TOKEN", "XDG_RUNTIME"))}
        env["X509_CERT_DIR"] = str(self.work / "certs")
        env["XRD_CONNECTIONRETRY"] = "1"
        env["XRD_REQUESTTIMEOUT"] = "20"
        if token is not None:
            tf = self.tmp / f"token-{dest.name}"
            tf.write_bytes(token)
            tf.chmod(0o600)
            env["BEARER_TOKEN_FILE"] = str(tf)
        return subprocess.run(["xrdcp", "-f", "-s", f"{server.root_url}/{path}", str(dest)], env=env,
                              capture_output=True, text=True, timeout=60)

    def token(self, key: IssuerKey | None = None, **overrides) -> bytes:
        claims = dict(issuer=self.issuer_url, subject="alice", scopes=["storage.read:/store"],
                      audience=xrd.AUDIENCE, now=datetime.datetime.now(datetime.timezone.utc), lifetime=HOUR)
        claims.update(overrides)
        token, _ = xcache.mint_wlcg_token(key or self.minter.issuer_keys[0], **claims)
        return token


# ---------------------------------------------------------------- accepted

def test_minted_token_reads_file_over_roots(site, tmp_path):
    bundle = site.minter.mint("alice")
    result = site.xrdcp(site.origin, xrd.TEST_FILE, bundle.files["xcache.token"].content, tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out").read_bytes() == xrd.TEST_BYTES


def test_minted_token_reads_file_over_https(site):
    bundle = site.minter.mint("alice")
    status, body = site.https(site.origin, "GET", xrd.TEST_FILE, bundle.files["xcache.token"].content)
    assert status == 200
    assert body == xrd.TEST_BYTES


def test_minted_token_reads_through_xcache(site, tmp_path):
    bundle = site.minter.mint("bob")
    token = bundle.files["xcache.token"].content
    result = site.xrdcp(site.cache, xrd.TEST_FILE, token, tmp_path / "via-cache")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "via-cache").read_bytes() == xrd.TEST_BYTES
    # and over the cache's https endpoint, now served from the cache
    status, body = site.https(site.cache, "GET", xrd.TEST_FILE, token)
    assert (status, body) == (200, xrd.TEST_BYTES)


def test_create_scope_allows_upload_to_own_area(site):
    token = site.token(scopes=["storage.create:/store/user/alice"])
    status, _ = site.https(site.origin, "PUT", "/store/user/alice/out.txt", token, body=b"result\n")
    assert status in (200, 201), status
    assert (site.work / "ns" / "store" / "user" / "alice" / "out.txt").read_bytes() == b"result\n"


def test_macaroon_accepted(site):
    bundle = site.minter.mint("alice")
    status, body = site.https(site.origin, "GET", xrd.TEST_FILE, bundle.files["xcache.macaroon"].content)
    assert (status, body) == (200, xrd.TEST_BYTES)


# ---------------------------------------------------------------- rejected (SciTokens)

def _assert_denied(site, token, server=None):
    status, _ = site.https(server or site.origin, "GET", xrd.TEST_FILE, token)
    assert status in (401, 403), f"expected a refusal, got HTTP {status}"


def test_no_token_is_refused(site, tmp_path):
    _assert_denied(site, None)
    result = site.xrdcp(site.origin, xrd.TEST_FILE, None, tmp_path / "x")
    assert result.returncode != 0
    assert not (tmp_path / "x").exists()


def test_no_token_is_refused_by_cache(site):
    _assert_denied(site, None, site.cache)


def test_expired_token_is_refused(site, tmp_path):
    past = datetime.datetime.now(datetime.timezone.utc) - 3 * HOUR
    token = site.token(now=past, lifetime=HOUR)
    _assert_denied(site, token)
    result = site.xrdcp(site.origin, xrd.TEST_FILE, token, tmp_path / "x")
    assert result.returncode != 0


def test_wrong_scope_path_is_refused(site):
    _assert_denied(site, site.token(scopes=["storage.read:/other"]))


def test_wrong_audience_is_refused(site):
    _assert_denied(site, site.token(audience="https://some-other-cache.example.org"))


def test_unknown_issuer_is_refused(site):
    _assert_denied(site, site.token(issuer="https://127.0.0.1:1/not-casa"))


def test_forged_signature_is_refused(site):
    # a key the issuer never published, presented under the real key id
    real = site.minter.issuer_keys[0]
    forger = load_issuer_key(generate_issuer_key_pem(), kid=real.kid)
    _assert_denied(site, site.token(key=forger))


def test_unknown_key_id_is_refused(site):
    real = site.minter.issuer_keys[0]
    _assert_denied(site, site.token(key=IssuerKey(real.private_key, real.algorithm, "no-such-kid")))


def test_read_token_cannot_write(site):
    token = site.minter.mint("alice").files["xcache.token"].content
    status, _ = site.https(site.origin, "PUT", "/store/user/alice/sneaky.txt", token, body=b"x")
    assert status in (401, 403), status
    assert not (site.work / "ns" / "store" / "user" / "alice" / "sneaky.txt").exists()


def test_cache_refuses_wrong_scope(site, tmp_path):
    token = site.token(scopes=["storage.read:/other"])
    result = site.xrdcp(site.cache, xrd.TEST_FILE, token, tmp_path / "x")
    assert result.returncode != 0


# ---------------------------------------------------------------- rejected (macaroons)

def _macaroon(site, secret=None, path="/store", now=None, lifetime=HOUR) -> bytes:
    secret = secret if secret is not None else base64.b64decode(Path(site.minter.macaroon_secret_file).read_bytes())
    mac, _ = xcache.mint_macaroon(secret=secret, location=xrd.SITE_NAME, user="alice", path=path,
                                  now=now or datetime.datetime.now(datetime.timezone.utc), lifetime=lifetime)
    return mac


def test_macaroon_from_pure_function_is_accepted(site):
    """Control for the macaroon refusals below: the same recipe with the right inputs is accepted."""
    status, _ = site.https(site.origin, "GET", xrd.TEST_FILE, _macaroon(site))
    assert status == 200


def test_expired_macaroon_is_refused(site):
    past = datetime.datetime.now(datetime.timezone.utc) - 3 * HOUR
    _assert_denied(site, _macaroon(site, now=past))


def test_macaroon_for_other_path_is_refused(site):
    _assert_denied(site, _macaroon(site, path="/other"))


def test_macaroon_with_wrong_key_is_refused(site):
    _assert_denied(site, _macaroon(site, secret=os.urandom(32)))
