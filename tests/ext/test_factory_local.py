"""A real LocalCluster over tls:// built by the factory from a minted bundle, with declared GPUs."""

from __future__ import annotations

import asyncio
import os
import time

import pytest
from distributed import Client, Worker, get_worker

from casa_hub_ext.bundle import MountedBundle
from casa_hub_ext.errors import CredentialError, OptionError
from casa_hub_ext.factory import labextension_cluster, make_cluster
from casa_hub_ext.gpu import discover
from casa_hub_ext.options import CasaClusterSettings

TIMEOUT = 60


def where():
    return get_worker().address, os.environ.get("CUDA_VISIBLE_DEVICES")


def worker_resources(dask_scheduler):
    return {a: dict(ws.resources) for a, ws in dask_scheduler.workers.items()}


@pytest.fixture
def local_settings(monkeypatch):
    monkeypatch.delenv("CASA_GPU_MAX_PER_WORKER", raising=False)
    return CasaClusterSettings(backends=["local"], max_gpus_per_worker=1)


@pytest.fixture
def two_gpus(monkeypatch):
    """Declare two GPUs the way a hub GPU profile without NVML would."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("NVIDIA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("CASA_GPU_COUNT", "2")
    return discover(nvml=None)


async def test_gpu_tasks_land_only_on_gpu_workers(mounted, local_settings, two_gpus):
    security = mounted.security()
    cluster = await asyncio.wait_for(
        make_cluster(
            {"workers": 2, "gpus_per_worker": 1},
            mounted,
            settings=local_settings,
            inventory=two_gpus,
            asynchronous=True,
        ),
        TIMEOUT,
    )
    try:
        assert cluster.scheduler_address.startswith("tls://")
        async with (
            Worker(cluster.scheduler_address, security=security, host="127.0.0.1") as cpu_worker,
            Client(cluster, security=security, asynchronous=True, timeout=TIMEOUT) as client,
        ):
            await client.wait_for_workers(3, timeout=TIMEOUT)
            resources = await client.run_on_scheduler(worker_resources)
            gpu_workers = {a for a, r in resources.items() if r == {"GPU": 1}}
            assert len(gpu_workers) == 2 and cpu_worker.address not in gpu_workers
            devices = await client.run(lambda: os.environ.get("CUDA_VISIBLE_DEVICES"), workers=list(gpu_workers))
            assert sorted(devices.values()) == ["0", "1"]  # one GPU per worker, pinned

            results = await client.gather(client.map(lambda i: where(), range(8), pure=False, resources={"GPU": 1}))
            assert {addr for addr, _ in results} <= gpu_workers
            assert {dev for _, dev in results} <= {"0", "1"}
            anywhere = await client.gather(client.map(lambda i: where()[0], range(4), pure=False))
            assert len(anywhere) == 4
    finally:
        await cluster.close()


def test_sync_cluster_and_labextension_factory(bundle_dir, monkeypatch, local_settings):
    """The dask-labextension entry point (synchronous here): bundle from $CASA_CREDENTIALS_DIR, GPUs from env."""
    monkeypatch.setenv("CASA_CREDENTIALS_DIR", str(bundle_dir))
    monkeypatch.setenv("CASA_DASK_BACKENDS", "local")
    monkeypatch.setenv("CASA_GPU_COUNT", "1")
    monkeypatch.setenv("CASA_GPU_MAX_PER_WORKER", "1")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    cluster = labextension_cluster(workers=1, gpus_per_worker=1)
    try:
        with Client(cluster, security=MountedBundle.from_env().security(), timeout=TIMEOUT) as client:
            client.wait_for_workers(1, timeout=TIMEOUT)
            assert client.submit(where, resources={"GPU": 1}).result(timeout=TIMEOUT)[1] == "0"
            with pytest.raises(OptionError, match="need 2 GPUs; this server has 1"):
                cluster.scale(2)
    finally:
        cluster.close()


@pytest.mark.parametrize(
    "request_, message",
    [
        ({"workers": 1, "gpus_per_worker": 2}, "gpus_per_worker=2 is outside the allowed range 0..1"),
        ({"workers": 3, "gpus_per_worker": 1}, "need 3 GPUs; this server has 2"),
    ],
)
def test_too_many_gpus_refused_before_start(mounted, local_settings, two_gpus, request_, message):
    started = time.monotonic()
    with pytest.raises(OptionError, match=message.replace("(", r"\(").replace(")", r"\)")):
        make_cluster(request_, mounted, settings=local_settings, inventory=two_gpus)
    assert time.monotonic() - started < 1  # nothing was started


def test_expired_certificate_refused(expired_bundle_dir, local_settings, two_gpus):
    with pytest.raises(CredentialError) as e:
        make_cluster(
            {"workers": 1},
            MountedBundle.from_directory(expired_bundle_dir),
            settings=local_settings,
            inventory=two_gpus,
        )
    assert e.value.credential == "dask-scheduler"
    assert "Dask scheduler certificate (dask-scheduler) expired" in str(e.value)


def test_missing_key_refused(bundle_dir, local_settings, two_gpus):
    (bundle_dir / "dask/client.key").unlink()
    with pytest.raises(CredentialError, match="key of the Dask client certificate is missing"):
        make_cluster(
            {"workers": 1}, MountedBundle.from_directory(bundle_dir), settings=local_settings, inventory=two_gpus
        )


async def test_dask_labextension_factory_config(bundle_dir, monkeypatch):
    """dask-labextension's own make_cluster, pointed at labextension_cluster by dask config."""
    import dask
    from dask_labextension.manager import make_cluster as labextension_make_cluster

    monkeypatch.setenv("CASA_CREDENTIALS_DIR", str(bundle_dir))
    monkeypatch.setenv("CASA_DASK_BACKENDS", "local")
    monkeypatch.setenv("CASA_GPU_COUNT", "1")
    monkeypatch.delenv("CASA_GPU_MAX_PER_WORKER", raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    factory = {
        "module": "casa_hub_ext.factory",
        "class": "labextension_cluster",
        "args": [],
        "kwargs": {"workers": 1, "gpus-per-worker": 1},
    }
    with dask.config.set({"labextension.factory": factory, "labextension.default": {"workers": None}}):
        cluster, adaptive = await asyncio.wait_for(labextension_make_cluster({}), TIMEOUT)
    try:
        assert adaptive is None and cluster.scheduler_address.startswith("tls://")
        async with Client(cluster, security=MountedBundle.from_env().security(), asynchronous=True) as client:
            await client.wait_for_workers(1, timeout=TIMEOUT)
            assert list((await client.run_on_scheduler(worker_resources)).values()) == [{"GPU": 1}]
    finally:
        await cluster.close()
