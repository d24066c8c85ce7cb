"""The GPU tier (marker ``gpu``): real NVIDIA GPUs, read through NVML, and Dask GPU workers computing on them.

These need a GPU machine: elsewhere (CI has no GPU) they are skipped, and with ``CASA_TEST_GPU=1`` a missing GPU
fails them. Run them with ``CASA_TEST_GPU=1 pytest -m gpu``. The fakes in ``test_units.py`` and
``test_factory_local.py`` cover the same code without hardware; these check it against the driver.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess

import pytest
from distributed import Client, get_worker

from casa_hub_ext.errors import OptionError
from casa_hub_ext.factory import make_cluster
from casa_hub_ext.gpu import discover
from casa_hub_ext.options import CasaClusterSettings

pytestmark = pytest.mark.gpu

TIMEOUT = 120


def nvidia_smi_gpus() -> list[dict]:
    """The driver's own account of its GPUs, independent of NVML's Python bindings."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        pytest.fail("NVML sees a GPU but nvidia-smi is not on PATH", pytrace=False)
    out = subprocess.run(
        [smi, "--query-gpu=index,uuid,name,memory.total", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    rows = [[field.strip() for field in line.split(",")] for line in out.splitlines() if line.strip()]
    return [{"index": int(i), "uuid": u, "name": n, "mib": int(m)} for i, u, n, m in rows]


def test_nvml_inventory_is_what_the_driver_reports(nvml_gpus):
    smi = nvidia_smi_gpus()
    assert [(g.index, g.id, g.name) for g in nvml_gpus.gpus] == [(s["index"], s["uuid"], s["name"]) for s in smi]
    assert [g.memory_bytes // 2**20 for g in nvml_gpus.gpus] == [s["mib"] for s in smi]


def test_cuda_visible_devices_restricts_the_real_inventory(nvml_gpus):
    last = nvml_gpus.gpus[-1]
    by_uuid = discover({"CUDA_VISIBLE_DEVICES": last.id})
    assert (by_uuid.source, [(g.index, g.id) for g in by_uuid.gpus]) == ("nvml", [(0, last.id)])  # renumbered
    by_index = discover({"CUDA_VISIBLE_DEVICES": str(last.index)})
    assert [g.id for g in by_index.gpus] == [last.id]
    assert discover({"CUDA_VISIBLE_DEVICES": ""}).count == 0
    assert discover({"CUDA_VISIBLE_DEVICES": "-1"}).count == 0


def test_the_hubs_grant_caps_the_driver(nvml_gpus):
    """CASA_GPU_COUNT is what the hub's profile granted: it caps what NVML sees, and cannot add devices."""
    assert discover({"CASA_GPU_COUNT": "0"}).count == 0  # a CPU profile on a GPU node
    first = discover({"CASA_GPU_COUNT": "1"})
    assert (first.source, [g.id for g in first.gpus]) == ("nvml", [nvml_gpus.gpus[0].id])
    more = discover({"CASA_GPU_COUNT": str(nvml_gpus.count + 3)})
    assert (more.source, more.count) == ("nvml", nvml_gpus.count)


def matmul_on_my_gpu(seed: int) -> dict:
    """On a worker: a float64 matrix product on the one GPU CUDA shows it, checked against the CPU's."""
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None:
        a = torch.randn(256, 256, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
        on_gpu = a.to("cuda")
        ok = torch.allclose((on_gpu @ on_gpu).cpu(), a @ a)
        count, uuid = torch.cuda.device_count(), str(torch.cuda.get_device_properties(0).uuid)
    else:
        import cupy  # the other GPU array library the tier accepts; neither: the test fails here, saying so
        import numpy

        a = numpy.random.default_rng(seed).standard_normal((256, 256))
        on_gpu = cupy.asarray(a)
        ok = bool(numpy.allclose(cupy.asnumpy(on_gpu @ on_gpu), a @ a))
        raw = cupy.cuda.runtime.getDeviceProperties(0)["uuid"]
        count, uuid = cupy.cuda.runtime.getDeviceCount(), bytes(raw).hex()
    return {
        "worker": get_worker().address,
        "visible": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "count": count,
        "uuid": uuid.replace("-", "").lower(),
        "ok": ok,
    }


def bare_uuid(nvml_uuid: str) -> str:
    return nvml_uuid.removeprefix("GPU-").replace("-", "").lower()


async def test_each_gpu_worker_computes_on_its_own_device(mounted, monkeypatch, nvml_gpus):
    """A local Casa cluster over tls:// with the minted certificates, one worker per real GPU, GPUs found the way
    the user's server finds them (no inventory passed: NVML). Each GPU task runs on the device its worker was
    pinned to, which CUDA inside the worker confirms by UUID, and computes correctly there."""
    monkeypatch.setenv("CASA_GPU_MAX_PER_WORKER", "1")
    monkeypatch.setenv("CASA_DASK_BACKENDS", "local")
    settings = CasaClusterSettings(backends=["local"], max_gpus_per_worker=1, max_workers=max(4, nvml_gpus.count))
    n = nvml_gpus.count
    with pytest.raises(OptionError, match=f"need {n + 1} GPUs; this server has {n}"):
        make_cluster({"workers": n + 1, "gpus_per_worker": 1}, mounted, settings=settings)

    cluster = await asyncio.wait_for(
        make_cluster({"workers": n, "gpus_per_worker": 1}, mounted, settings=settings, asynchronous=True), TIMEOUT
    )
    try:
        assert cluster.scheduler_address.startswith("tls://")
        async with Client(cluster, security=mounted.security(), asynchronous=True, timeout=TIMEOUT) as client:
            await client.wait_for_workers(n, timeout=TIMEOUT)
            results = await asyncio.wait_for(
                client.gather(client.map(matmul_on_my_gpu, range(4 * n), pure=False, resources={"GPU": 1})), TIMEOUT
            )
    finally:
        await cluster.close()

    assert all(r["ok"] for r in results), results
    assert all(r["count"] == 1 for r in results), "a GPU worker must see exactly its own device"
    pinned = {r["worker"]: r["visible"] for r in results}
    assert set(pinned.values()) <= {g.id for g in nvml_gpus.gpus}
    assert len(set(pinned.values())) == len(pinned), "two workers share a device"
    by_id = {g.id: bare_uuid(g.id) for g in nvml_gpus.gpus}
    assert all(r["uuid"] == by_id[r["visible"]] for r in results), "CUDA ran on another device than the pinned one"
