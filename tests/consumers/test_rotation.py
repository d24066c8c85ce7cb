"""Key rotation at the real consumers, step by step as ``casa-hub-keys rotate KIND`` prints it (admin guide §11).

* Issuer key at XRootD (xrootd_server.py): the JWKS gains the new key, then loses the old one. scitokens-cpp
  keeps the issuer's JWKS in its key cache (``$XDG_CACHE_HOME/scitokens``) and fetches it again only once the
  entry's ``next_update`` (600 s after the fetch) has passed; it does not fetch on an unknown ``kid``. The
  tests move ``next_update`` into the past, which is what 10 minutes do, instead of waiting them.
* HTCondor signing key (condor_pool.py): ``POOL2`` installed next to ``POOL``, then ``POOL`` removed.
* ServiceX secret (sx_contract.py): the contract server restarted with a new ``JWT_SECRET_KEY``.
* Dask CA (``DaskTLS.ca_generation`` bumped): what a running scheduler does with old and new bundles.

127.0.0.1 only; every loop is bounded; every server started here is stopped here.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import secrets
import sqlite3
import time
from pathlib import Path

import pytest

from casa_hub import keys
from casa_hub.credentials.issuer import generate_issuer_key_pem, jwks_document, load_issuer_key
from tests.consumers import xrootd_server as xs
from tests.consumers.htcondor_client import TD
from tests.consumers.sx_contract import ContractServer, User
from tests.consumers.xrootd_site import Endpoint, assert_refused
from tests.support import make_minter, write_bundle

TRANSPORTS = ("roots", "https")
TOKEN_FILE = "condor-tokens/casa"  # the bundle's IDTOKEN (docs/dev/contracts.md)


# ================================================================ issuer key at XRootD
def _key_cache(site: xs.Site) -> Path:
    return site.work / "xdg-cache" / "scitokens" / "scitokens_cpp.sqllite"


def _cached_kids(site: xs.Site) -> set[str]:
    with sqlite3.connect(_key_cache(site)) as db:
        (keys_json,) = db.execute("select keys from keycache where issuer = ?", (site.issuer_url,)).fetchone()
    return {k["kid"] for k in json.loads(keys_json)["jwks"]["keys"]}


def _refresh_interval(site: xs.Site) -> int:
    with sqlite3.connect(_key_cache(site)) as db:
        (keys_json,) = db.execute("select keys from keycache where issuer = ?", (site.issuer_url,)).fetchone()
    return json.loads(keys_json)["next_update"] - int(time.time())


def _let_the_key_cache_age(site: xs.Site) -> None:
    """What the 600 s after the last fetch do: the cached JWKS becomes due for its refresh."""
    with sqlite3.connect(_key_cache(site)) as db:
        for issuer, keys_json in db.execute("select issuer, keys from keycache").fetchall():
            entry = json.loads(keys_json)
            entry["next_update"] = int(time.time()) - 1
            db.execute("update keycache set keys = ? where issuer = ?", (json.dumps(entry), issuer))


def _read(site: xs.Site, token: bytes, transport: str, tmp_path: Path) -> None:
    dest = tmp_path / f"read-{secrets.token_hex(4)}"
    out = Endpoint(site, site.origin, transport).read(token, dest)
    assert out.ok, f"{transport}: {out.detail}"
    assert dest.read_bytes() == xs.TEST_BYTES


@pytest.fixture
def jwks(site):
    """Set the JWKS the issuer endpoint publishes; the original is published again afterwards."""
    path = next(p for p in site.issuer.documents if p.endswith("/jwks.json"))
    original = site.issuer.documents[path]

    def publish(keys_) -> None:
        site.issuer.documents[path] = jwks_document(keys_)

    yield publish
    site.issuer.documents[path] = original


@pytest.mark.consumer("xrootd")
def test_issuer_rotation_at_xrootd_overlap_switch_and_retire(site, jwks, tmp_path):
    old = site.minter.issuer_keys[0]
    new = load_issuer_key(generate_issuer_key_pem())
    for transport in TRANSPORTS:  # XRootD has fetched and cached the JWKS with the old key only
        _read(site, site.token(key=old), transport, tmp_path)
    assert _cached_kids(site) == {old.kid}
    refresh = _refresh_interval(site)
    print(f"\nscitokens-cpp refreshes the cached JWKS {refresh} s after fetching it")
    assert 0 < refresh <= int(keys.XROOTD_KEY_REFRESH.total_seconds())

    # step 1, publish: the JWKS holds both keys; the old one signs
    jwks([old, new])
    # not at once over roots:// (ztn): the login validates with the cached JWKS and does not fetch again for an
    # unknown kid. (Over https the same token was accepted at once in our runs: not pinned here.)
    assert_refused(
        Endpoint(site, site.origin, "roots"), site.token(key=new), tmp_path, "Key ID is not published by the issuer"
    )
    _let_the_key_cache_age(site)
    # step 2, switch (after the refresh): tokens of the new key and of the old one are accepted
    for transport in TRANSPORTS:
        _read(site, site.token(key=new), transport, tmp_path)
        _read(site, site.token(key=old), transport, tmp_path)
    assert _cached_kids(site) == {old.kid, new.kid}

    # step 3, retire: the old key leaves the JWKS; XRootD accepts its tokens until its next refresh ...
    presented = site.token(key=old)
    _read(site, presented, "roots", tmp_path)
    jwks([new])
    _read(site, site.token(key=old), "roots", tmp_path)
    _let_the_key_cache_age(site)
    # ... and refuses them after it
    for transport in TRANSPORTS:
        endpoint = Endpoint(site, site.origin, transport)
        reason = "Key ID is not published by the issuer" if transport == "roots" else r"acc_Audit: \S+ deny "
        assert_refused(endpoint, site.token(key=old), tmp_path, reason)
        _read(site, site.token(key=new), transport, tmp_path)
    # a token it had already accepted: a roots:// login validates it again and is refused; over https the
    # authorization plugin answers from its cache of recently validated tokens and still grants (observed,
    # pinned): retire a key only once its tokens have expired, as the steps say
    assert_refused(Endpoint(site, site.origin, "roots"), presented, tmp_path, "Key ID is not published by the issuer")
    _read(site, presented, "https", tmp_path)
    assert _cached_kids(site) == {new.kid}


# ================================================================ HTCondor signing key
def _condor_q(pool, token: bytes) -> tuple[bool, str]:
    """A fresh condor_q process as alice (what dask-jobqueue runs) with ``token`` as its only credential."""
    d = pool.user_dir("alice") / f"tokens-{secrets.token_hex(4)}"
    pool.give("alice", d / "casa", token, 0o600)
    r = pool.run("alice", ["/usr/bin/condor_q", "-totals"], env={"_CONDOR_SEC_TOKEN_DIRECTORY": str(d)}, cwd=d.parent)
    return r.returncode == 0, r.stderr.decode()


@pytest.fixture
def pool_key_restored(pool):
    """The pool has POOL (and only POOL) again after the test."""
    yield
    pool.install_key("POOL", pool.hub_key_file.read_bytes())
    pool.admin(["rm", "-f", str(pool.work / "passwords.d" / "POOL2")])


@pytest.mark.consumer("htcondor")
def test_condor_named_key_rotation_pool_then_pool2(pool, pool_minter, pool_key_restored, tmp_path):
    pool2_file = tmp_path / "POOL2"
    pool2_file.write_bytes(keys.generate("condor"))
    # the hub after step 2 of `casa-hub-keys rotate condor`
    minter2 = make_minter(
        tmp_path / "keys",
        HTCondorToken={"signing_key_file": str(pool2_file), "key_id": "POOL2", "trust_domain": TD},
    )
    old_token = pool_minter.mint("alice").files[TOKEN_FILE].content
    new_token = minter2.mint("alice").files[TOKEN_FILE].content
    assert json.loads(_jwt_header(new_token))["kid"] == "POOL2"
    assert _condor_q(pool, old_token)[0]
    # (no "POOL2 unknown" control here: it would only show the cache described below)

    # step 1: POOL2 next to POOL. A running daemon keeps the list of key names it built: condor_reconfig does
    # not refresh it (a POOL2 token was refused for 90 s after it), a daemon restart does
    pool.install_key("POOL2", pool2_file.read_bytes())
    r = pool.admin(["/usr/sbin/condor_restart", "-daemon", "schedd"])
    assert r.returncode == 0, r.stderr.decode()
    t0 = time.monotonic()
    while not _condor_q(pool, new_token)[0]:
        assert time.monotonic() - t0 < 60, "POOL2 token still refused 60 s after the schedd restart"
        time.sleep(0.5)
    print(f"\nPOOL2 accepted {time.monotonic() - t0:.1f} s after condor_restart -daemon schedd")
    for token in (old_token, new_token):
        ok, err = _condor_q(pool, token)
        assert ok, err
    # step 3: POOL removed (after HTCondorToken.lifetime): POOL tokens refused at once, POOL2 ones accepted
    schedd0 = len(pool.log("SchedLog"))
    pool.remove_key("POOL")
    ok, err = _condor_q(pool, old_token)
    assert not ok and "AUTHENTICATE" in err
    assert "getTokenSigningKey(): for id=POOL," in pool.log("SchedLog")[schedd0:]
    ok, err = _condor_q(pool, new_token)
    assert ok, err


def _jwt_header(token: bytes) -> str:
    import base64

    head = token.decode().strip().split(".")[0]
    return base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)).decode()


# ================================================================ ServiceX secret
def _servicex_status(url: str, token: bytes) -> tuple[int, str]:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", "/servicex", headers={"Authorization": f"Bearer {token.decode().strip()}"})
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


@pytest.mark.consumer("servicex")
def test_servicex_secret_rotation_refuses_old_tokens_and_accepts_new(tmp_path):
    old_file, new_file = tmp_path / "servicex.secret", tmp_path / "servicex-2.secret"
    old_file.write_bytes(keys.generate("servicex"))
    new_file.write_bytes(keys.generate("servicex"))
    users = {"alice": User("alice")}
    with ContractServer(secret=old_file.read_bytes().strip(), users=users) as server:
        old_minter = make_minter(tmp_path / "k1", ServiceXToken={"secret_file": str(old_file), "endpoint": server.url})
        old_token = old_minter.mint("alice").files["servicex.token"].content
        assert _servicex_status(server.url, old_token)[0] == 200
    # ServiceX and the hub restarted with the new secret, at the same time
    with ContractServer(secret=new_file.read_bytes().strip(), users=users) as server:
        new_minter = make_minter(tmp_path / "k2", ServiceXToken={"secret_file": str(new_file), "endpoint": server.url})
        status, body = _servicex_status(server.url, old_token)
        assert status in (401, 422) and "Signature verification failed" in body, (status, body)
        assert _servicex_status(server.url, new_minter.mint("alice").files["servicex.token"].content)[0] == 200


# ================================================================ Dask CA generation
def _inc(x):
    return x + 1


@pytest.mark.consumer("dask")
async def test_dask_ca_generation_bump_as_running_clusters_see_it(tmp_path):
    from distributed import Client, Scheduler, Worker

    from tests.consumers.dask_security import security_from

    secret = tmp_path / "dask-ca.secret"
    secret.write_bytes(keys.generate("dask-ca"))
    before = make_minter(tmp_path / "k0", DaskTLS={"ca_secret_file": str(secret), "ca_generation": 0})
    after = make_minter(tmp_path / "k1", DaskTLS={"ca_secret_file": str(secret), "ca_generation": 1})
    old = security_from(write_bundle(before.mint("alice"), tmp_path / "old"))
    new = security_from(write_bundle(after.mint("alice"), tmp_path / "new"))
    assert Path(old.tls_ca_file).read_bytes() != Path(new.tls_ca_file).read_bytes()

    async with Scheduler(host="tls://127.0.0.1", port=0, security=old, dashboard_address=":0") as s:
        async with Worker(s.address, security=old, host="127.0.0.1"):
            async with Client(s.address, security=old, asynchronous=True, timeout=20) as connected:
                assert await connected.submit(_inc, 1) == 2
                # the server's files are renewed now (new CA); the cluster started before keeps running:
                # a client of the new bundle is refused, as is a worker added with it
                with pytest.raises((OSError, asyncio.TimeoutError)):
                    async with Client(s.address, security=new, asynchronous=True, timeout=3):
                        pass
                with pytest.raises((OSError, asyncio.TimeoutError)):
                    async with Worker(s.address, security=new, host="127.0.0.1", death_timeout=3):
                        pass
                assert len(s.workers) == 1
                # the connection opened before goes on, and a client holding the old files still connects
                assert await connected.submit(_inc, 2) == 3
                async with Client(s.address, security=old, asynchronous=True, timeout=20) as late:
                    assert await late.submit(_inc, 3) == 4
    # a cluster started after the renewal, all with the new files, works
    async with Scheduler(host="tls://127.0.0.1", port=0, security=new, dashboard_address=":0") as s:
        async with Worker(s.address, security=new, host="127.0.0.1"):
            async with Client(s.address, security=new, asynchronous=True, timeout=20) as c:
                assert await c.submit(_inc, 41) == 42
