"""The htcondor backend against a real HTCondor 23.9 personal pool (tests/consumers/condor_pool.py): a GPU worker
job submitted with the user's IDTOKEN, TLS files transferred (encrypted), a per-user accounting group."""

from __future__ import annotations

import asyncio
import os

import pytest
from distributed import Client

from casa_hub_ext.bundle import MountedBundle
from casa_hub_ext.factory import make_cluster
from casa_hub_ext.gpu import Inventory
from casa_hub_ext.options import CasaClusterSettings
from tests.consumers import condor_pool
from tests.support import make_minter, need

pytestmark = pytest.mark.consumer("htcondor")
TIMEOUT = 120


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    need(condor_pool.available(), f"HTCondor root at {condor_pool.CONDOR_ROOT} (condor_master, unshare, nsenter)")
    p = condor_pool.start_pool(tmp_path_factory.mktemp("hub-keys") / "condor-pool.key")
    try:
        yield p
    finally:
        condor_pool.stop_pool(p)


async def test_gpu_worker_job_with_the_users_credentials(pool, tmp_path, monkeypatch):
    minter = make_minter(
        tmp_path / "keys",
        HTCondorToken={"signing_key_file": str(pool.hub_key_file), "trust_domain": pool.trust_domain},
    )
    home = pool.user_dir("alice")
    mount = home / "casa"
    for rel, f in minter.mint("alice").files.items():
        pool.give("alice", mount / rel, f.content, f.mode)
    bundle = MountedBundle.from_directory(mount)
    # condor_submit/q/rm live in the pool's root: wrappers that run them as alice (the token dir is passed on)
    tools = pool.tools(
        home / "bin", "alice", env={"_CONDOR_SEC_TOKEN_DIRECTORY": str(bundle.condor_token_dir)}, cwd=home
    )
    monkeypatch.setenv("PATH", f"{tools}:{os.environ['PATH']}")
    logs = home / "logs"
    logs.mkdir(exist_ok=True)
    os.chown(logs, pool.users["alice"].uid, pool.users["alice"].gid)
    settings = CasaClusterSettings(
        backends=["htcondor"],
        max_gpus_per_worker=1,
        htcondor_python=str(condor_pool.VENV / "bin" / "python"),
        htcondor_disk="200MiB",
        htcondor_scheduler_options={"host": "127.0.0.1"},
        htcondor_worker_extra_args=["--host", "127.0.0.1"],
        htcondor_log_directory=str(logs),
    )

    def job_view():  # runs inside the HTCondor job (defined here: pickled by value, tests/ is not on the node)
        import os

        return {
            "gpus": os.environ.get("_CONDOR_AssignedGPUs"),
            "files": sorted(os.listdir(".")),
            "ad": open(os.environ["_CONDOR_JOB_AD"]).read(),
        }

    cluster = await asyncio.wait_for(
        make_cluster(
            {"backend": "htcondor", "workers": 1, "cores": 1, "memory": "512 MiB", "gpus_per_worker": 1},
            bundle,
            settings=settings,
            inventory=Inventory((), "none"),
            asynchronous=True,
        ),
        TIMEOUT,
    )
    try:
        async with Client(cluster, security=bundle.security(), asynchronous=True) as client:
            try:
                await asyncio.wait_for(client.wait_for_workers(1), timeout=TIMEOUT)
            except (asyncio.TimeoutError, TimeoutError):
                pytest.fail(
                    "no worker\n"
                    + "\n".join(p.read_text()[-1500:] for p in logs.glob("*"))
                    + pool.log("SchedLog")[-1500:]
                    + pool.log("ShadowLog")[-1500:]
                )
            view = await asyncio.wait_for(client.submit(job_view, resources={"GPU": 1}, pure=False), TIMEOUT)
    finally:
        await cluster.close()
    ad = dict(line.split(" = ", 1) for line in view["ad"].splitlines() if " = " in line)
    assert view["gpus"] == condor_pool.GPU_NAME
    assert ad["Owner"] == '"alice"' and ad["RequestGPUs"] == "1"
    assert ad["AcctGroup"] == '"group_casa.alice"' and ad["AcctGroupUser"] == '"alice"'
    assert {"ca.pem", "worker.crt", "worker.key"} <= set(view["files"])
    assert not {"scheduler.key", "client.key"} & set(view["files"])
    assert "ca.pem" in ad["EncryptInputFiles"]
