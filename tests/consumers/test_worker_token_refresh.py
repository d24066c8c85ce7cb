"""Tokens stay fresh inside running HTCondor workers, and stopping the user's server leaves no HTCondor job.

Real consumers only: Casa HTCondor clusters on the real personal pool (condor_pool.py), whose worker jobs read
from the real XRootD origin (SciTokens plugin, ztn over ``roots://``) with the XRootD client of the worker node
(``xrdcp`` in the pool's root). Storage tokens live TOKEN_LIFETIME seconds, so expiry is reached within the
test: a worker kept fresh by :class:`~casa_hub_ext.worker_credentials.WorkerCredentials` reads after the
first token expired; a worker detached before the renewal (it kept the first token) is refused by XRootD
("token expired" in its log), which proves the expiry is real.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import os
import shutil
import time

import pytest
from distributed import Client

from casa_hub.credentials.bundle_dir import write_bundle_dir
from casa_hub_ext.bundle import MountedBundle
from casa_hub_ext.factory import make_cluster
from casa_hub_ext.gpu import Inventory
from casa_hub_ext.labmanager import CASA_FACTORY, LabManager
from casa_hub_ext.manager import ClusterManager
from casa_hub_ext.options import CasaClusterSettings
from casa_hub_ext.worker_credentials import WorkerCredentials
from tests.consumers import condor_pool
from tests.consumers import xrootd_server as xs
from tests.consumers.xrootd_site import NOT_AUTHORIZED, XRDCP_NOT_AUTHORIZED
from tests.support import make_minter

pytestmark = [pytest.mark.consumer("htcondor"), pytest.mark.consumer("xrootd")]

TIMEOUT = 90  # one worker job from submit to connected (measured: ~10 s on an idle 2-core machine)
TOKEN_LIFETIME = 30  # seconds: short enough to wait past, long enough for a read and a renewal
RENEW_LEFT = 15  # renew when the first token has this many seconds left, as the hub does (its refresh margin)
EXPIRY_MARGIN = 3  # read this long after the first token's exp (whole seconds in JWTs, two clocks of one host)
POLL = 1.0
JOB = {"backend": "htcondor", "workers": 1, "cores": 1, "memory": "512 MiB"}


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


class Facility:
    """alice's side of the test: her mounted bundle (written as the spawner does, owned by her pool account),
    the condor tools running as her, and the cluster settings for the pool."""

    def __init__(self, pool, site, tmp_path, monkeypatch):
        self.pool = pool
        self.user = pool.users["alice"]
        self.home = pool.user_dir("alice")
        self.mount = self.home / "casa"
        # the site's issuer key and audience, the pool's IDTOKEN key: a hub both consumers trust
        self.minter = make_minter(
            tmp_path / "keys",
            CasaMinter={"issuer_url": site.issuer_url, "issuer_key_file": site.minter.issuer_key_file},
            XCacheToken={"audience": [xs.AUDIENCE], "scopes": ["storage.read:/"], "lifetime": TOKEN_LIFETIME},
            XCacheMacaroon={"location": xs.SITE_NAME, "secret_file": site.minter.kind("macaroon").secret_file},
            HTCondorToken={"signing_key_file": str(pool.hub_key_file), "trust_domain": pool.trust_domain},
        )
        self.renew()
        self.bundle = MountedBundle.from_directory(self.mount)
        self.token_env = {"_CONDOR_SEC_TOKEN_DIRECTORY": str(self.bundle.condor_token_dir)}
        tools = pool.tools(self.home / "bin", "alice", env=self.token_env, cwd=self.home)
        monkeypatch.setenv("PATH", f"{tools}:{os.environ['PATH']}")
        self.logs = self.home / "logs"
        self.logs.mkdir(exist_ok=True)
        os.chown(self.logs, self.user.uid, self.user.gid)
        # the site's CA for the worker node's XRootD client (the pool's /tmp is private: copy it where jobs see)
        self.cert_dir = self.home / "xrd-certs"
        shutil.rmtree(self.cert_dir, ignore_errors=True)
        shutil.copytree(site.work / "certs", self.cert_dir)
        for p in (self.cert_dir, *self.cert_dir.iterdir()):
            os.chown(p, self.user.uid, self.user.gid)
        self.settings = CasaClusterSettings(
            backends=["htcondor"],
            htcondor_python=str(condor_pool.VENV / "bin" / "python"),
            htcondor_disk="200MiB",
            htcondor_scheduler_options={"host": "127.0.0.1"},
            htcondor_worker_extra_args=["--host", "127.0.0.1"],
            htcondor_log_directory=str(self.logs),
        )

    def renew(self) -> bytes:
        """What the hub does on renewal: a new mint replaces the mounted files atomically. The new storage token."""
        write_bundle_dir(self.mount, self.minter.mint("alice"), self.user.uid, self.user.gid)
        return MountedBundle.from_directory(self.mount).credentials["xcache"].path.read_bytes()

    def token_exp(self) -> datetime.datetime:
        return MountedBundle.from_directory(self.mount).credentials["xcache"].expires_at

    def condor_q(self) -> list[dict]:
        """alice's jobs in the schedd's queue, asked as alice with her token (an error is not an empty queue)."""
        r = self.pool.run(
            "alice",
            ["/usr/bin/condor_q", "alice", "-json", "-attributes", "ClusterId,ProcId,JobStatus"],
            env=self.token_env,
            cwd=self.home,
        )
        assert r.returncode == 0, r.stderr.decode()
        out = r.stdout.decode().strip()
        return json.loads(out) if out else []

    async def wait_for_empty_queue(self, when: str, bound: float = 60) -> None:
        t0 = time.monotonic()
        while left := self.condor_q():
            assert time.monotonic() - t0 < bound, f"alice's jobs still queued {when}: {left}"
            await asyncio.sleep(0.5)

    def diagnostics(self) -> str:
        return (
            "\n".join(p.read_text(errors="replace")[-1500:] for p in self.logs.glob("*"))
            + self.pool.log("SchedLog")[-1500:]
            + self.pool.log("ShadowLog")[-1500:]
        )

    async def cluster(self):
        return await asyncio.wait_for(
            make_cluster(JOB, self.bundle, settings=self.settings, inventory=Inventory((), "none"), asynchronous=True),
            TIMEOUT,
        )

    async def wait_for_worker(self, client: Client) -> float:
        t0 = time.monotonic()
        try:
            await asyncio.wait_for(client.wait_for_workers(1), timeout=TIMEOUT)
        except (asyncio.TimeoutError, TimeoutError):
            pytest.fail("no worker joined\n" + self.diagnostics())
        return time.monotonic() - t0


@pytest.fixture
def facility(pool, site, tmp_path, monkeypatch) -> Facility:
    return Facility(pool, site, tmp_path, monkeypatch)


async def test_running_htcondor_worker_reads_storage_after_its_first_token_expired(facility, site, caplog):
    # defined here: pickled by value (tests/ is not on the worker node)
    def read_storage(url: str, cert_dir: str, token_file: str | None = None) -> dict:
        """Read ``url`` with the worker node's XRootD client; the token from $BEARER_TOKEN_FILE, as set in this
        worker (or ``token_file``)."""
        import os
        import subprocess

        scratch = os.getcwd()  # the job's scratch directory
        env = dict(
            os.environ,
            X509_CERT_DIR=cert_dir,
            XRD_CONNECTIONRETRY="1",
            XRD_REQUESTTIMEOUT="20",
            XRD_STREAMERRORWINDOW="0",
            XDG_RUNTIME_DIR=scratch,  # ztn's fallback location: nothing there
        )
        if token_file:
            env["BEARER_TOKEN_FILE"] = token_file
        dest = os.path.join(scratch, "read.out")
        if os.path.exists(dest):
            os.unlink(dest)
        r = subprocess.run(
            ["/usr/bin/xrdcp", "-f", "-s", url, dest], env=env, capture_output=True, text=True, timeout=60
        )
        data = open(dest, "rb").read() if r.returncode == 0 else None
        token = env.get("BEARER_TOKEN_FILE")
        return {"rc": r.returncode, "stderr": r.stderr.strip(), "data": data, "token_file": token}

    def token_in_worker() -> bytes | None:
        import os

        path = os.environ.get("BEARER_TOKEN_FILE")
        return open(path, "rb").read() if path and os.path.exists(path) else None

    caplog.set_level(logging.DEBUG)
    url = site.origin.root_url + xs.TEST_FILE
    cert_dir = str(facility.cert_dir)
    creds = WorkerCredentials(bundle=lambda: MountedBundle.from_directory(facility.mount), poll_interval=POLL)
    t0 = time.monotonic()
    # one kept fresh, one detached before the renewal (the control)
    started = await asyncio.gather(facility.cluster(), facility.cluster(), return_exceptions=True)
    failed = [c for c in started if isinstance(c, BaseException)]
    if failed:
        await asyncio.gather(*(c.close() for c in started if not isinstance(c, BaseException)))
        raise failed[0]
    fresh, stale = started
    try:
        async with (
            Client(fresh, security=facility.bundle.security(), asynchronous=True, timeout=TIMEOUT) as fresh_client,
            Client(stale, security=facility.bundle.security(), asynchronous=True, timeout=TIMEOUT) as stale_client,
        ):
            await asyncio.gather(facility.wait_for_worker(fresh_client), facility.wait_for_worker(stale_client))
            print(f"\ntwo Casa HTCondor clusters, one worker job each, up in {time.monotonic() - t0:.1f} s")

            async def read(client: Client, token_file: str | None = None) -> dict:
                return await asyncio.wait_for(
                    client.submit(read_storage, url, cert_dir, token_file, pure=False), TIMEOUT
                )

            # without a pushed token the worker has none: XRootD refuses (the control's baseline)
            assert await fresh_client.submit(token_in_worker, pure=False) is None
            out = await read(fresh_client)
            assert out["rc"] == XRDCP_NOT_AUTHORIZED and NOT_AUTHORIZED in out["stderr"], out

            first = facility.renew()  # a short-lived token, minted now
            first_exp = facility.token_exp()
            assert await creds.attach(fresh) and await creds.attach(stale)
            for client in (fresh_client, stale_client):
                assert await client.submit(token_in_worker, pure=False) == first
                out = await read(client)
                assert out["rc"] == 0 and out["data"] == xs.TEST_BYTES, out
                assert out["token_file"].endswith("/casa-credentials/xcache.token")

            # the control cluster is detached: renewals no longer reach its worker
            await creds.detach(stale)
            await asyncio.sleep(max(0.0, (first_exp - _now()).total_seconds() - RENEW_LEFT))
            renewed_at = time.monotonic()
            renewed = facility.renew()
            assert renewed != first and facility.token_exp() > first_exp
            while (have := await fresh_client.submit(token_in_worker, pure=False)) != renewed:
                assert time.monotonic() - renewed_at < 3 * POLL + 10, "the renewal did not reach the worker"
                await asyncio.sleep(0.1)
            print(f"renewal -> HTCondor worker updated in {time.monotonic() - renewed_at:.2f} s (poll {POLL} s)")
            assert have == renewed

            # past the first token's expiry
            await asyncio.sleep(max(0.0, (first_exp - _now()).total_seconds() + EXPIRY_MARGIN))
            assert _now() > first_exp
            since = site.origin.log_size()
            refused = await read(stale_client)
            log = site.origin.wait_for_log("token expired", since)
            fresh_out = await read(fresh_client)
            read_at = (_now() - first_exp).total_seconds()
            assert fresh_out["rc"] == 0 and fresh_out["data"] == xs.TEST_BYTES, fresh_out
            assert await stale_client.submit(token_in_worker, pure=False) == first  # it kept the first token
            assert refused["rc"] == XRDCP_NOT_AUTHORIZED and NOT_AUTHORIZED in refused["stderr"], refused
            assert "permission denied" in refused["stderr"], refused
            assert "token verification failed: token expired" in log, log
            print(
                f"{read_at:.1f} s after the first token's expiry: fresh worker read OK, "
                "control worker refused (token expired)"
            )
    finally:
        await creds.close()
        await asyncio.gather(fresh.close(), stale.close(), return_exceptions=True)
    assert time.monotonic() - t0 < 120
    assert "casa: workers of" in caplog.text  # the pushes were logged, without token bytes (ours, distributed's,
    worker_logs = "".join(p.read_text(errors="replace") for p in facility.logs.glob("*"))  # the jobs' own)
    for token in (first, renewed):
        assert token.strip().decode() not in caplog.text + worker_logs


async def test_stopping_the_server_leaves_no_htcondor_job(facility):
    """Issue 15: the server extension's stop path (``ClusterManager.close_all``, through dask-labextension's own
    cluster manager) removes every worker job; the worker-credential hooks run on start and on close."""
    import dask

    creds = WorkerCredentials(bundle=lambda: MountedBundle.from_directory(facility.mount), poll_interval=POLL)
    manager = ClusterManager(
        facility.settings,
        lab=LabManager(),  # dask-labextension 7.0.0's module-level manager
        bundle=lambda: MountedBundle.from_directory(facility.mount),
        inventory=lambda: Inventory((), "none"),
        start_timeout=TIMEOUT,
    )
    manager.on_started.append(creds.attach)  # the wiring the server extension uses
    manager.on_closing.append(creds.detach)
    await facility.wait_for_empty_queue("before the test")  # also: the previous test's clusters left no job
    with dask.config.set({"labextension.factory": dict(CASA_FACTORY)}):
        model = await manager.create({**JOB, "workers": 2})
        try:
            assert [a.scheduler_address for a in creds.clusters] == [model["scheduler_address"]]
            async with Client(
                model["scheduler_address"], security=facility.bundle.security(), asynchronous=True, timeout=TIMEOUT
            ) as client:
                await facility.wait_for_worker(client)  # at least one job is running, not only queued
            jobs = facility.condor_q()
            assert len(jobs) == 2 and any(j["JobStatus"] == 2 for j in jobs), jobs  # 2 = running
        finally:
            t0 = time.monotonic()
            await manager.close_all()
    await facility.wait_for_empty_queue("after the server stopped")
    print(f"\nclose_all -> no job of alice in condor_q after {time.monotonic() - t0:.1f} s")
    assert await manager.list() == [] and creds.clusters == []
    await creds.close()
