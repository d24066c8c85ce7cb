"""Per-user storage areas against a real XRootD 5.5.3 origin and XCache: no user name reaches another's area.

XRootD 5.5.3 authorises SciTokens scopes and macaroon ``path:`` caveats by plain *string* prefix after
stripping a trailing ``/`` (upstream fixed it in 5.7 for SciTokens and in 2025 for macaroons). The minter
therefore renders ``{userdir}`` (casa_hub.credentials.storage.user_dir: injective, prefix-free, ends in ``~``).
For every pair of hostile user names (tests/user_names.py) each user's token creates files in its own area
and XRootD itself refuses it to read, list or write the other's area, on the origin and on the cache. The
last tests pin the server behaviour that made ``{username}`` unsafe, so they show this file can fail.

The site is the admin guide's: ``base_path = /`` (scope paths are namespace paths) and the hub setting
``["storage.read:/store/public", "storage.read:/store/user/{userdir}", "storage.create:/store/user/{userdir}"]``
(the own-area read scope lets users read back their results; xrdcp also stats a target before writing it).
The cache is read-only (XrdPss + XrdPfc): there, the own-area check is a read.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from casa_hub.credentials.storage import user_dir
from tests.consumers import xrootd_server as xs
from tests.support import need
from tests.user_names import HOSTILE_PAIRS, pair_id

pytestmark = pytest.mark.consumer("xrootd")

SCOPES = ["storage.read:/store/public", "storage.read:/store/user/{userdir}", "storage.create:/store/user/{userdir}"]
MACAROON_PATH = "/store/user/{userdir}"
PUBLIC_FILE = "/store/public/readme.txt"
PAIRS = [pytest.param(i, p, id=pair_id(p)) for i, p in enumerate(HOSTILE_PAIRS)]
# roots:// (ztn + xrdcp/xrdfs processes) for the pairs that matter most; https covers every pair
ROOTS_REASONS = {
    "string prefix",
    "the storage terminator in a name",
    "an escape sequence spelled out in a name",
    "percent-encoded slash",
    "non-Latin prefix",
    "very long prefix",
}
ROOTS_PAIRS = [p for p in PAIRS if p.values[1][2] in ROOTS_REASONS]


@pytest.fixture(scope="module")
def site(site):
    """The tier's XRootD site (tests/consumers/conftest.py), set up as the admin guide says."""
    need(shutil.which("xrdfs") is not None, "xrdfs")
    # the admin guide's scitokens.cfg (base_path = /: scope paths are namespace paths); restart to load it
    (site.work / "scitokens.cfg").write_text(
        xs.SCITOKENS_CFG.format(audience=xs.AUDIENCE, issuer=site.issuer_url, base_path="/")
    )
    public = site.work / "origin-ns" / PUBLIC_FILE.lstrip("/")
    public.parent.mkdir()
    public.write_bytes(b"public\n")
    for p in (public.parent, public):
        shutil.chown(p, "xrootd", "xrootd")
    site.origin.restart()
    site.cache.restart()
    site.minter.kind("xcache").scopes = SCOPES
    site.minter.kind("macaroon").path = MACAROON_PATH
    return site


class User:
    def __init__(self, site: xs.Site, name: str):
        bundle = site.minter.mint(name)
        self.name = name
        self.token = bundle.files["xcache.token"].content
        self.macaroon = bundle.files["xcache.macaroon"].content
        self.area = bundle.env["CASA_STORAGE_AREA"]
        assert self.area == f"/store/user/{user_dir(name)}"


def _on_disk(site: xs.Site, path: str) -> Path:
    return site.work / "origin-ns" / path.lstrip("/")


def _https_refused(
    site: xs.Site, server: xs.XrootdServer, method: str, path: str, credential: bytes, body: bytes | None = None
) -> None:
    """XRootD's own authorization refused the request: 403 "permission denied" and a deny for this path in
    *this* server's log (for the cache: the cache refused, not the origin behind it)."""
    since = server.log_size()
    status, answer = site.https(server, method, path, credential, body=body)
    assert (status, b"permission denied" in answer) == (403, True), (server.name, method, path, status, answer)
    pattern = rf"(deny .*|NOT allowed ){re.escape(path.rstrip('/'))}"
    log = server.wait_for_log(pattern, since)
    assert re.search(pattern, log), f"no refusal of {path} in the {server.name} log:\n{log}"


def _https_ok(site, server, method, path, credential, body=None) -> bytes:
    status, answer = site.https(server, method, path, credential, body=body)
    assert status in ((200, 201) if method == "PUT" else (200,)), (server.name, method, path, status, answer)
    return answer


# ---------------------------------------------------------------- every hostile pair, https, origin + cache


@pytest.mark.parametrize(("index", "pair"), PAIRS)
def test_pair_isolated_over_https(site, index, pair):
    users = [User(site, pair[0]), User(site, pair[1])]
    files = {}
    for u in users:
        path = files[u.name] = f"{u.area}/h{index}.txt"
        _https_ok(site, site.origin, "PUT", path, u.token, body=u.name.encode())
        assert _on_disk(site, path).read_bytes() == u.name.encode()
        for server in (site.origin, site.cache):
            assert _https_ok(site, server, "GET", path, u.token) == u.name.encode()
            assert _https_ok(site, server, "GET", PUBLIC_FILE, u.token) == b"public\n"
    for me, other in (users, users[::-1]):
        for server in (site.origin, site.cache):
            _https_refused(site, server, "GET", files[other.name], me.token)
            _https_refused(site, server, "GET", other.area + "/", me.token)  # XrdHttp's directory listing
            _https_refused(site, server, "PROPFIND", other.area, me.token)
            intruder = f"{other.area}/from-{user_dir(me.name)}-h{index}.txt"
            _https_refused(site, server, "PUT", intruder, me.token, body=b"x")
            assert not _on_disk(site, intruder).exists()


@pytest.mark.parametrize(("index", "pair"), PAIRS)
def test_pair_isolated_with_macaroons(site, index, pair):
    users = [User(site, pair[0]), User(site, pair[1])]
    files = {}
    for u in users:
        files[u.name] = f"{u.area}/m{index}.txt"
        _https_ok(site, site.origin, "PUT", files[u.name], u.token, body=b"m")
        assert _https_ok(site, site.origin, "GET", files[u.name], u.macaroon) == b"m"
    for me, other in (users, users[::-1]):
        _https_refused(site, site.origin, "GET", files[other.name], me.macaroon)
        _https_refused(site, site.origin, "GET", other.area + "/", me.macaroon)


# ---------------------------------------------------------------- a subset over roots:// (ztn)


def _xrdfs(site: xs.Site, server: xs.XrootdServer, token: bytes, *args: str) -> subprocess.CompletedProcess:
    """``xrdfs`` with the token in BEARER_TOKEN_FILE, as Site.xrdcp does for xrdcp."""
    env = xs._clean_env(
        X509_CERT_DIR=str(site.work / "certs"),
        XRD_CONNECTIONRETRY="1",
        XRD_REQUESTTIMEOUT="20",
        XRD_STREAMERRORWINDOW="0",
        XDG_RUNTIME_DIR=str(site.client_dir),
    )
    fd, name = tempfile.mkstemp(dir=site.client_dir, prefix="token-")
    with os.fdopen(fd, "wb") as f:
        f.write(token)
    env["BEARER_TOKEN_FILE"] = name
    return subprocess.run(["xrdfs", server.root_url, *args], env=env, capture_output=True, text=True, timeout=60)


def _roots_refused(result: subprocess.CompletedProcess, what: str) -> None:
    assert result.returncode != 0 and "[3010]" in result.stderr and "permission denied" in result.stderr, (
        what,
        result.returncode,
        result.stderr,
    )


@pytest.mark.parametrize(("index", "pair"), ROOTS_PAIRS)
def test_pair_isolated_over_roots(site, index, pair, tmp_path):
    users = [User(site, pair[0]), User(site, pair[1])]
    src = tmp_path / "src"
    src.write_bytes(b"roots\n")
    files = {}
    for u in users:
        files[u.name] = f"{u.area}/r{index}.txt"
        r = site.xrdcp(str(src), site.origin.root_url + files[u.name], u.token)
        assert r.returncode == 0, r.stderr
        assert _on_disk(site, files[u.name]).read_bytes() == b"roots\n"
        r = site.xrdcp(site.cache.root_url + files[u.name], str(tmp_path / "back"), u.token)
        assert r.returncode == 0 and (tmp_path / "back").read_bytes() == b"roots\n", r.stderr
    for me, other in (users, users[::-1]):
        for server in (site.origin, site.cache):
            _roots_refused(
                site.xrdcp(server.root_url + files[other.name], str(tmp_path / "stolen"), me.token),
                f"read {files[other.name]} at the {server.name}",
            )
            assert not (tmp_path / "stolen").exists()
            _roots_refused(_xrdfs(site, server, me.token, "ls", other.area), f"list {other.area} at {server.name}")
        intruder = f"{other.area}/from-{user_dir(me.name)}-r{index}.txt"
        _roots_refused(site.xrdcp(str(src), site.origin.root_url + intruder, me.token), f"write {intruder}")
        assert not _on_disk(site, intruder).exists()


# ---------------------------------------------------------------- why {username} was unsafe (server behaviour)


def test_xrootd_grants_token_scopes_by_string_prefix(site):
    """With scopes rendered from ``{username}`` (the old documented template), ``ali`` writes and reads
    ``alice``'s area: on the origin and on the cache. Also a trailing ``/`` does not help (XRootD strips it)."""
    alice = site.token(subject="alice", scopes=["storage.read:/store/user/alice", "storage.create:/store/user/alice"])
    _https_ok(site, site.origin, "PUT", "/store/user/alice/results.txt", alice, body=b"alice's\n")
    for scope_path in ("/store/user/ali", "/store/user/ali/"):
        ali = site.token(subject="ali", scopes=[f"storage.read:{scope_path}", f"storage.create:{scope_path}"])
        for server in (site.origin, site.cache):
            assert _https_ok(site, server, "GET", "/store/user/alice/results.txt", ali) == b"alice's\n"
        since = site.origin.log_size()
        target = f"/store/user/alice/planted{len(scope_path)}.txt"
        _https_ok(site, site.origin, "PUT", target, ali, body=b"ali was here\n")
        assert _on_disk(site, target).read_bytes() == b"ali was here\n"
        assert "authorizations=/store/user/ali:read" in site.origin.log_since(since)  # the '/' is gone


def test_xrootd_grants_macaroon_paths_by_string_prefix(site):
    """The same for macaroons: a ``path:/store/user/ali`` caveat opens ``/store/user/alice/...``. (Observed:
    5.5.3's macaroon plugin keeps a trailing ``/``; its SciTokens plugin above strips it.)"""
    alice = site.token(subject="alice", scopes=["storage.create:/store/user/alice"])
    _https_ok(site, site.origin, "PUT", "/store/user/alice/mac.txt", alice, body=b"m\n")
    mac = site.macaroon(path="/store/user/ali")
    assert _https_ok(site, site.origin, "GET", "/store/user/alice/mac.txt", mac) == b"m\n"
    assert "path request verified for /store/user/alice/mac.txt" in site.origin.log_since(0)
    _https_refused(site, site.origin, "GET", "/store/user/alice/mac.txt", site.macaroon(path="/store/user/ali/"))


def test_userdir_scopes_close_the_prefix_hole(site):
    """The control for the two tests above, on the same files: ``ali``'s minted credentials get nothing of
    ``alice``'s, whether her area is ``alice~`` or a legacy ``alice`` directory."""
    ali = User(site, "ali")
    for path in ("/store/user/alice/results.txt", "/store/user/alice/mac.txt"):
        if not _on_disk(site, path).exists():  # when run alone
            owner = site.token(subject="alice", scopes=["storage.create:/store/user/alice"])
            _https_ok(site, site.origin, "PUT", path, owner, body=b"x")
        for server in (site.origin, site.cache):
            _https_refused(site, server, "GET", path, ali.token)
        _https_refused(site, site.origin, "GET", path, ali.macaroon)
    _https_refused(site, site.origin, "PUT", "/store/user/alice/planted-again.txt", ali.token, body=b"x")
