"""Fixtures for the user-side extension: a minted bundle laid out as the spawner mounts it, declared GPUs."""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import pytest

from casa_hub_ext.bundle import MountedBundle
from casa_hub_ext.gpu import GPU, Inventory, discover
from casa_hub_ext.options import CasaClusterSettings
from tests.support import write_bundle


def declared_gpus(n: int) -> Inventory:
    return Inventory(tuple(GPU(i, str(i)) for i in range(n)), "CASA_GPU_COUNT")


@pytest.fixture
def bundle_dir(tmp_path, minter) -> Path:
    return write_bundle(minter.mint("alice"), tmp_path / "casa")


@pytest.fixture
def mounted(bundle_dir) -> MountedBundle:
    return MountedBundle.from_directory(bundle_dir)


@pytest.fixture
def expired_bundle_dir(tmp_path, minter) -> Path:
    """A bundle minted two days ago: every token and leaf certificate has expired."""
    then = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=2)
    return write_bundle(minter.mint("alice", now=then), tmp_path / "expired")


@pytest.fixture
def settings(monkeypatch) -> CasaClusterSettings:
    for var in ("CASA_DASK_BACKENDS", "CASA_GPU_MAX_PER_WORKER", "DASK_GATEWAY__ADDRESS"):
        monkeypatch.delenv(var, raising=False)
    return CasaClusterSettings(
        backends=["local", "htcondor", "gateway"],
        max_gpus_per_worker=1,
        max_workers=4,
        gateway_address="http://127.0.0.1:1",
    )


@pytest.fixture
def nvml_gpus(monkeypatch) -> Inventory:
    """The real GPUs NVML reports (the ``gpu`` tier): skipped where there are none (CI has no GPU), failed there
    with ``CASA_TEST_GPU=1``. The environment's GPU declarations are cleared: the driver alone answers."""
    for var in ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "CASA_GPU_COUNT"):
        monkeypatch.delenv(var, raising=False)
    inventory = discover({})
    if inventory.source != "nvml" or not inventory.count:
        message = "no GPU visible to NVML (pynvml and an NVIDIA driver)"
        if os.environ.get("CASA_TEST_GPU") == "1":
            pytest.fail(f"CASA_TEST_GPU=1 and {message}", pytrace=False)
        pytest.skip(f"{message}: the gpu tier runs on a GPU machine (CASA_TEST_GPU=1 makes this a failure)")
    return inventory
