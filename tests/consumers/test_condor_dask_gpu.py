"""A real dask-jobqueue HTCondorCluster job: submitted with the user's minted IDTOKEN, running as that
user with request_gpus = 1 against the pool's declared GPU, its worker joining the user's scheduler over
tls:// with the minted Dask certificates."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import pytest

from tests.consumers import condor
from tests.support import make_minter, need

pytestmark = pytest.mark.consumer("htcondor")

USER = "alice"


@pytest.fixture
def pool():
    need(condor.available(), f"the HTCondor root at {condor.CONDOR_ROOT}")
    p = condor.start_pool()
    try:
        yield p
    finally:
        condor.stop_pool(p)


def _write_user_files(pool, bundle, uid: int):
    """What the pod would have mounted: token dir + Dask TLS files, owned by the user."""
    home = pool.work / f"{USER}-casa"
    home.mkdir(mode=0o700)
    paths = {}
    for rel, f in bundle.files.items():
        if not (rel.startswith("dask/") or rel.startswith("condor-tokens/")):
            continue
        dest = home / rel
        dest.parent.mkdir(mode=0o700, exist_ok=True)
        dest.write_bytes(f.content)
        dest.chmod(0o400)
        paths[rel] = dest
    for p in [home, *home.rglob("*")]:
        os.chown(p, uid, uid)
    return home, paths


def _on_gpu_worker():
    import getpass
    import os

    return {"user": getpass.getuser(), "gpus": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "assigned": os.environ.get("_CONDOR_AssignedGPUs"), "in_job": "_CONDOR_JOB_AD" in os.environ}


async def test_gpu_job_runs_as_user_with_tls_worker(pool, tmp_path, monkeypatch):
    from dask_jobqueue import HTCondorCluster
    from distributed import Client
    from distributed.security import Security

    minter = make_minter(tmp_path / "keys", condor_signing_key_file=str(pool.key_file),
                         condor_trust_domain=condor.TRUST_DOMAIN, dask_hostnames=["127.0.0.1"])
    bundle = minter.mint(USER)
    condor.ensure_user(pool.root, USER)
    uid = int(subprocess.run(["chroot", str(pool.root), "id", "-u", USER], capture_output=True, text=True,
                             check=True).stdout)
    home, files = _write_user_files(pool, bundle, uid)
    tools = condor.user_tools(pool, USER, home / "condor-tokens", tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{tools}:{os.environ['PATH']}")

    security = Security(
        tls_ca_file=str(files["dask/ca.pem"]), require_encryption=True,
        tls_scheduler_cert=str(files["dask/scheduler.crt"]), tls_scheduler_key=str(files["dask/scheduler.key"]),
        tls_worker_cert=str(files["dask/worker.crt"]), tls_worker_key=str(files["dask/worker.key"]),
        tls_client_cert=str(files["dask/client.crt"]), tls_client_key=str(files["dask/client.key"]))
    started = time.monotonic()
    async with HTCondorCluster(
        cores=1, memory="512MB", disk="100MB", processes=1, protocol="tls://", security=security,
        python=sys.executable, scheduler_options={"host": "127.0.0.1", "dashboard_address": ":0"},
        job_extra_directives={"request_gpus": "1", "accounting_group_user": USER},
        worker_extra_args=["--resources", "GPU=1", "--host", "127.0.0.1"],
        asynchronous=True,
    ) as cluster:
        assert cluster.scheduler_address.startswith("tls://")
        cluster.scale(1)
        async with Client(cluster, security=security, asynchronous=True) as client:
            await asyncio.wait_for(client.wait_for_workers(1), timeout=90)
            first_worker = time.monotonic() - started
            info = await asyncio.wait_for(client.submit(_on_gpu_worker, resources={"GPU": 1}), timeout=60)
            workers = (await client.scheduler.identity())["workers"]
    assert info == {"user": USER, "gpus": "CUDA0", "assigned": "CUDA0", "in_job": True}, info
    (address, worker), = workers.items()
    assert address.startswith("tls://127.0.0.1:")
    assert worker["resources"] == {"GPU": 1}
    print(f"time to first TLS worker from an HTCondor job: {first_worker:.1f} s")
