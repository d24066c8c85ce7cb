"""Faults: a credential consumer restarted in the middle of a user's session.

* XRootD (origin and XCache, ``xrootd_server.py``): the server is stopped (SIGTERM) and started again on the
  same ports with the same configuration, as a service manager does. A token minted before the restart must
  still be accepted, a token minted after it (a refresh) too, and forged or expired tokens must still be
  refused. Whether the restarted server has the issuer's keys depends on scitokens-cpp's key cache
  (``$XDG_CACHE_HOME/scitokens/scitokens_cpp.sqllite``, which outlives the process): with the cache kept it
  does not contact the issuer at all (so an issuer outage during the restart is invisible); with the cache
  gone (a fresh container) it fetches the issuer documents again, and refuses every token while the issuer
  is down, then accepts them as soon as the issuer is back (no negative caching).
* HTCondor (``condor_pool.py``): condor_master and all its children are stopped and started again with the
  same configuration, spool and pool key (re-read from the hub's copy into a new namespace). IDTOKENs are
  stateless: one minted before the restart, and one minted while the pool was down, authenticate (ping at
  WRITE, condor_q/condor_rm/condor_submit as the user) afterwards; one signed with another key does not.

Every verdict is the daemon's own, asserted on its answer and on its log, as in test_xrootd.py and
test_htcondor.py (their shared fixtures are in conftest.py, their helpers in xrootd_site.py and
htcondor_client.py).
"""

from __future__ import annotations

import datetime
import json
import re
import secrets
import shutil
import socket
import threading
import time
from contextlib import contextmanager
from http.server import ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from casa_hub.credentials.issuer import generate_issuer_key_pem, load_issuer_key
from casa_hub.credentials.kinds.htcondor import TOKEN_FILE as CONDOR_TOKEN
from tests.consumers import condor_pool
from tests.consumers import xrootd_server as xs
from tests.consumers.htcondor_client import AUTH_FAILED, TD, _ping, _refused, _token
from tests.consumers.xrootd_site import Endpoint, assert_refused
from tests.support import wait_for_port

HOUR = datetime.timedelta(hours=1)
TRANSPORTS = ("roots", "https")
RESTART_DEADLINE = 10.0  # seconds: a bound on how long a consumer may take to come back, never a sleep


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


# ================================================================ XRootD

xrootd = pytest.mark.consumer("xrootd")


def _key_cache(site: xs.Site) -> Path:
    """scitokens-cpp's issuer key cache, shared by the origin and the cache (same XDG_CACHE_HOME)."""
    return site.work / "xdg-cache" / "scitokens" / "scitokens_cpp.sqllite"


def _wipe_key_cache(site: xs.Site) -> None:
    for p in _key_cache(site).parent.glob("scitokens_cpp.sqllite*"):
        p.unlink()


@pytest.fixture
def issuer_fetches(site, monkeypatch) -> list[str]:
    """Paths requested from the Casa issuer endpoint (the hub's issuer documents) during the test."""
    fetched: list[str] = []
    handler = site.issuer.httpd.RequestHandlerClass
    real = handler.do_GET

    def do_GET(self):  # noqa: N802 - BaseHTTPRequestHandler's name
        fetched.append(self.path)
        return real(self)

    monkeypatch.setattr(handler, "do_GET", do_GET)
    return fetched


@contextmanager
def issuer_down(site: xs.Site):
    """The issuer endpoint is down (connection refused) inside the block, then serves again on the same port.

    IssuerServer has no stop/start of its own: its listening socket is closed, and a new server with the same
    handler and TLS context is bound to the same port afterwards (and handed back to the fixture to stop)."""
    srv = site.issuer
    port, handler, tls = srv.port, srv.httpd.RequestHandlerClass, srv.httpd.socket.context
    srv.httpd.shutdown()
    srv.httpd.server_close()
    srv._thread.join(5)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    try:
        yield
    finally:
        httpd = ThreadingHTTPServer(("127.0.0.1", port), handler)
        httpd.socket = tls.wrap_socket(httpd.socket, server_side=True)
        srv.httpd, srv._thread = httpd, threading.Thread(target=httpd.serve_forever, daemon=True)
        srv._thread.start()
        wait_for_port(port, timeout=5)


def _read_ok(
    site: xs.Site,
    server: xs.XrootdServer,
    transport: str,
    token: bytes,
    tmp_path: Path,
    path: str = xs.TEST_FILE,
    expected: bytes = xs.TEST_BYTES,
) -> str:
    """The read succeeded, granted by the token's scopes for its subject; returns the request's log."""
    dest = tmp_path / f"read-{server.name}-{transport}-{secrets.token_hex(4)}"
    out = Endpoint(site, server, transport).read(token, dest, path=path)
    assert out.ok, f"{server.name} over {transport}: {out.detail}"
    assert dest.read_bytes() == expected
    grant = "Grant authorization based on scopes for operation=read"
    log = server.wait_for_log(grant, out.log_offset)
    assert grant in log and "subject=alice" in log, log
    return log


def _assert_restarted(server: xs.XrootdServer, old_pid: int, log_offset: int) -> None:
    assert server.proc.pid != old_pid and server.proc.poll() is None
    # the new process initialized again, appending to the same log
    assert f"xrootd {server.name}@" in server.log_since(log_offset)
    assert "initialization completed" in server.log_since(log_offset)


def _assert_still_refuses_bad_tokens(site: xs.Site, server: xs.XrootdServer, tmp_path: Path) -> None:
    forger = load_issuer_key(generate_issuer_key_pem(), kid=site.minter.issuer_keys[0].kid)
    for transport in TRANSPORTS:
        endpoint = Endpoint(site, server, transport)
        assert_refused(endpoint, site.token(key=forger), tmp_path, "Invalid signature")
        assert_refused(
            endpoint,
            site.token(now=_now() - 3 * HOUR, lifetime=HOUR),
            tmp_path,
            "token verification failed: token expired",
        )


@xrootd
@pytest.mark.parametrize("name", ["origin", "cache"])
def test_xrootd_restart_keeps_the_session_token_and_accepts_a_refreshed_one(site, name, issuer_fetches, tmp_path):
    server: xs.XrootdServer = getattr(site, name)
    before = site.minter.mint("alice").files["xcache.token"].content
    for transport in TRANSPORTS:
        _read_ok(site, server, transport, before, tmp_path)

    old_pid, offset = server.proc.pid, server.log_size()
    seconds = server.restart(timeout=RESTART_DEADLINE)
    print(f"\nxrootd {name} restarted (SIGTERM -> listening again) in {seconds:.2f} s")
    _assert_restarted(server, old_pid, offset)
    issuer_fetches.clear()

    # the token from before the restart: the new process parses and verifies it afresh ...
    log = _read_ok(site, server, "roots", before, tmp_path)
    assert "Token not found in recent cache; parsing." in log, log
    _read_ok(site, server, "https", before, tmp_path)
    # ... with the issuer keys scitokens-cpp cached on disk before the restart: no request to the issuer
    assert _key_cache(site).exists()
    assert issuer_fetches == []

    # a refresh after the restart
    after = site.minter.mint("alice").files["xcache.token"].content
    assert after != before
    for transport in TRANSPORTS:
        _read_ok(site, server, transport, after, tmp_path)
    # the restart opened no hole
    _assert_still_refuses_bad_tokens(site, server, tmp_path)


@xrootd
def test_xrootd_restart_with_a_fresh_key_cache_fetches_the_issuer_keys_again(site, issuer_fetches, tmp_path):
    before = site.minter.mint("alice").files["xcache.token"].content
    _read_ok(site, site.origin, "roots", before, tmp_path)

    old_pid, offset = site.origin.proc.pid, site.origin.log_size()
    site.origin.stop()
    _wipe_key_cache(site)  # as in a fresh container: nothing of the old process survives
    site.origin.start(timeout=RESTART_DEADLINE)
    _assert_restarted(site.origin, old_pid, offset)
    issuer_fetches.clear()

    _read_ok(site, site.origin, "roots", before, tmp_path)
    base = urlsplit(site.issuer_url).path
    assert f"{base}/.well-known/openid-configuration" in issuer_fetches, issuer_fetches
    assert f"{base}/jwks.json" in issuer_fetches, issuer_fetches
    assert _key_cache(site).exists()
    _read_ok(site, site.origin, "https", site.minter.mint("alice").files["xcache.token"].content, tmp_path)
    _assert_still_refuses_bad_tokens(site, site.origin, tmp_path)


@xrootd
def test_xrootd_restarted_while_the_issuer_is_down_serves_from_its_key_cache(site, issuer_fetches, tmp_path):
    """Observed behaviour, pinned: with the on-disk key cache kept, a restart does not need the issuer."""
    before = site.minter.mint("alice").files["xcache.token"].content
    _read_ok(site, site.origin, "roots", before, tmp_path)
    with issuer_down(site):
        old_pid, offset = site.origin.proc.pid, site.origin.log_size()
        site.origin.restart(timeout=RESTART_DEADLINE)
        _assert_restarted(site.origin, old_pid, offset)
        issuer_fetches.clear()
        during = site.minter.mint("alice").files["xcache.token"].content  # a refresh during the outage
        for transport in TRANSPORTS:
            _read_ok(site, site.origin, transport, before, tmp_path)
            _read_ok(site, site.origin, transport, during, tmp_path)
        _assert_still_refuses_bad_tokens(site, site.origin, tmp_path)
    assert issuer_fetches == []


@xrootd
def test_xrootd_restarted_without_key_cache_while_the_issuer_is_down_refuses_until_it_is_back(
    site, issuer_fetches, tmp_path
):
    before = site.minter.mint("alice").files["xcache.token"].content
    _read_ok(site, site.origin, "roots", before, tmp_path)
    with issuer_down(site):
        old_pid, offset = site.origin.proc.pid, site.origin.log_size()
        site.origin.stop()
        _wipe_key_cache(site)
        site.origin.start(timeout=RESTART_DEADLINE)
        _assert_restarted(site.origin, old_pid, offset)
        # fails closed: the valid token is refused, because the keys cannot be had
        for transport in TRANSPORTS:
            # (ztn fails the login and the session falls through to "unix"; https fails the ACL generation)
            assert_refused(
                Endpoint(site, site.origin, transport),
                before,
                tmp_path,
                "Failed to deserialize SciToken: Couldn't connect to server",
                r"acc_Audit: \S+ deny ",
            )
        assert issuer_fetches == []  # nothing answered
    # the issuer is back: the same token is accepted again (bounded wait, no negative caching expected)
    t0, attempts = time.monotonic(), 1
    endpoint = Endpoint(site, site.origin, "roots")
    while not (out := endpoint.read(before, tmp_path / "back")).ok:
        assert out.refused, out.detail
        assert time.monotonic() - t0 < RESTART_DEADLINE, f"refused {RESTART_DEADLINE} s after the issuer came back"
        time.sleep(0.2)
        attempts += 1
    print(f"\naccepted {time.monotonic() - t0:.2f} s after the issuer came back (read attempt {attempts})")
    assert any(p.endswith("/jwks.json") for p in issuer_fetches), issuer_fetches
    _read_ok(site, site.origin, "https", before, tmp_path)
    _assert_still_refuses_bad_tokens(site, site.origin, tmp_path)


@xrootd
def test_xcache_fetches_a_miss_from_a_restarted_origin_with_its_service_token(site, tmp_path):
    """The cache keeps running while the origin beneath it restarts: its next miss reconnects and the new
    origin authorizes the cache's own service token."""
    files = {}
    for n in ("a", "b"):
        rel = f"/store/data/restart-{n}-{secrets.token_hex(3)}.root"
        p = site.work / "origin-ns" / rel.lstrip("/")
        p.write_bytes(f"restart payload {n}\n".encode() * 256)
        shutil.chown(p, "xrootd", "xrootd")
        files[n] = (rel, p.read_bytes())
    token = site.minter.mint("alice").files["xcache.token"].content
    _read_ok(site, site.cache, "roots", token, tmp_path, *files["a"])  # the cache now talks to the origin

    old_pid, offset = site.origin.proc.pid, site.origin.log_size()
    site.origin.restart(timeout=RESTART_DEADLINE)
    _assert_restarted(site.origin, old_pid, offset)

    _read_ok(site, site.cache, "roots", token, tmp_path, *files["b"])
    origin_log = site.origin.log_since(offset)
    grant = rf"subject={xs.SERVICE_SUBJECT}, .*\n.*operation=read, path={re.escape(files['b'][0])}"
    assert re.search(grant, origin_log), origin_log
    assert "subject=alice" not in origin_log


# ================================================================ HTCondor

htcondor = pytest.mark.consumer("htcondor")
HELD_JOB = b"executable = /bin/true\nhold = true\nqueue\n"


def _install_token(pool: condor_pool.Pool, token: bytes, name: str) -> dict[str, str]:
    """A token directory owned by alice holding ``token`` (as a session's bundle mount does)."""
    d = pool.user_dir("alice") / name
    pool.give("alice", d / "casa", token, 0o600)
    return {"_CONDOR_SEC_TOKEN_DIRECTORY": str(d)}


def _condor(pool: condor_pool.Pool, env: dict[str, str], *args: str, input: bytes | None = None):
    r = pool.run("alice", list(args), env=env, cwd=pool.user_dir("alice"), input=input)
    assert r.returncode == 0, f"{args[0]}: {r.stderr.decode()}"
    return r.stdout.decode()


def _granted_write(pool: condor_pool.Pool, offset: int) -> bool:
    return (
        f"PERMISSION GRANTED to alice@{TD} from host 127.0.0.1 for command 60021 (DC_NOP_WRITE)"
        in pool.log("SchedLog")[offset:]
    )


@htcondor
def test_condor_pool_restart_keeps_the_session_token_and_one_minted_while_down(htc, pool, pool_minter):
    before = pool_minter.mint("alice").files[CONDOR_TOKEN].content
    assert _ping(htc, pool, before)["MyRemoteUserName"] == f"alice@{TD}"
    env_before = _install_token(pool, before, "tokens-before")
    cluster = int(_condor(pool, env_before, "/usr/bin/condor_submit", "-terse", input=HELD_JOB).split(".")[0])

    master0, schedd0 = len(pool.log("MasterLog")), len(pool.log("SchedLog"))
    old_pids = set(pool.pids())
    t0 = time.monotonic()
    condor_pool.stop_daemons(pool)
    stopped = time.monotonic() - t0
    # down: no pool process, nothing on the collector port, the user's token gets no answer
    assert pool.pids() == []
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", pool.port), timeout=2).close()
    with pytest.raises(htc.HTCondorException):
        htc.ping(pool.collector, "WRITE", htc.SecurityContext(token=before.decode().strip()))
    # the hub refreshes the user's credentials while the pool is down
    during = pool_minter.mint("alice").files[CONDOR_TOKEN].content
    assert during != before

    started = condor_pool.start_daemons(pool, timeout=RESTART_DEADLINE * 3)
    print(f"\nHTCondor pool stopped in {stopped:.2f} s, started again (schedd answering) in {started:.2f} s")
    assert not old_pids & set(pool.pids())
    assert "condor_master (CONDOR_MASTER) STARTING UP" in pool.log("MasterLog")[master0:]
    assert "condor_schedd (CONDOR_SCHEDD) STARTING UP" in pool.log("SchedLog")[schedd0:]

    for token in (before, during):
        offset = len(pool.log("SchedLog"))
        ad = _ping(htc, pool, token, "WRITE")
        assert (ad["AuthorizationSucceeded"], ad["AuthMethods"], ad["MyRemoteUserName"]) == (
            True,
            "IDTOKENS",
            f"alice@{TD}",
        )
        assert (
            htc.ping(pool.collector, "WRITE", htc.SecurityContext(token=token.decode().strip()))["MyRemoteUserName"]
            == f"alice@{TD}"
        )
        deadline = time.monotonic() + 5
        while not _granted_write(pool, offset):  # the schedd's own record of the grant (bounded wait)
            assert time.monotonic() < deadline, pool.log("SchedLog")[offset:][-3000:]
            time.sleep(0.05)

    # the job queued before the restart survived it, and the pre-restart token still manages it
    (job,) = json.loads(
        _condor(
            pool,
            env_before,
            "/usr/bin/condor_q",
            "-json",
            "-attributes",
            "ClusterId,Owner,User,JobStatus",
            str(cluster),
        )
    )
    assert (job["Owner"], job["User"], job["JobStatus"]) == ("alice", f"alice@{TD}", 5)
    _condor(pool, env_before, "/usr/bin/condor_rm", str(cluster))
    # the token minted while the pool was down submits as alice
    env_during = _install_token(pool, during, "tokens-during")
    cluster2 = int(_condor(pool, env_during, "/usr/bin/condor_submit", "-terse", input=HELD_JOB).split(".")[0])
    (job,) = json.loads(
        _condor(pool, env_during, "/usr/bin/condor_q", "-json", "-attributes", "Owner,User", str(cluster2))
    )
    assert (job["Owner"], job["User"]) == ("alice", f"alice@{TD}")
    _condor(pool, env_during, "/usr/bin/condor_rm", str(cluster2))


@htcondor
def test_condor_pool_restart_still_refuses_a_token_signed_with_another_key(htc, pool):
    seconds = condor_pool.restart_pool(pool, timeout=RESTART_DEADLINE * 3)
    print(f"\nHTCondor pool restarted in {seconds:.2f} s")
    claims = dict(now=_now(), jti="casa-restart-" + secrets.token_hex(4))
    # control: the same claims signed with the pool key are accepted by the restarted pool
    assert _ping(htc, pool, _token(pool, **claims))["MyRemoteUserName"] == f"alice@{TD}"
    schedd_log, client_log = _refused(htc, pool, _token(pool, signing_key=secrets.token_bytes(32), **claims))
    assert "getTokenSigningKey(): for id=POOL" in schedd_log
    assert "Error from client" in schedd_log and AUTH_FAILED in schedd_log
    assert "Authentication was a Success" not in schedd_log
    # and an expired one
    schedd_log, _ = _refused(htc, pool, _token(pool, now=_now() - 3 * HOUR))
    assert "User token has been expired for" in schedd_log
