"""A real dask-gateway-server (local backend): the GPU option reaches the workers' resources."""

from __future__ import annotations

import asyncio
import importlib.util

import pytest

from casa_hub_ext.errors import OptionError
from casa_hub_ext.factory import make_cluster
from casa_hub_ext.gpu import Inventory
from casa_hub_ext.options import CasaClusterSettings
from tests.ext.gateway_server import start_gateway, stop_gateway
from tests.support import need

TIMEOUT = 90


def worker_resources(dask_scheduler):
    return {a: dict(ws.resources) for a, ws in dask_scheduler.workers.items()}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    need(importlib.util.find_spec("dask_gateway_server") is not None, "dask-gateway-server")
    server = start_gateway(tmp_path_factory.mktemp("gateway"))
    yield server
    stop_gateway(server)


@pytest.fixture
def gateway_settings(gateway, monkeypatch):
    monkeypatch.delenv("CASA_GPU_MAX_PER_WORKER", raising=False)
    return CasaClusterSettings(backends=["gateway"], max_gpus_per_worker=1, gateway_address=gateway.address,
                               gateway_proxy_address=gateway.proxy_address, gateway_auth="basic")


async def test_gpu_option_reaches_worker_resources(gateway_settings, mounted):
    # this server has no GPU: the GPUs are the gateway's, bounded by the facility's max_gpus_per_worker
    cluster = await asyncio.wait_for(make_cluster(
        {"backend": "gateway", "workers": 2, "gpus_per_worker": 1, "memory": "1 GiB"}, mounted,
        settings=gateway_settings, inventory=Inventory((), "none"), asynchronous=True), TIMEOUT)
    try:
        async with cluster.get_client(set_as_default=False) as client:
            await client.wait_for_workers(2, timeout=TIMEOUT)
            resources = await client.run_on_scheduler(worker_resources)
            assert list(resources.values()) == [{"GPU": 1}, {"GPU": 1}]
            assert await client.submit(lambda: 42, resources={"GPU": 1}) == 42
    finally:
        await cluster.shutdown()


def test_over_limit_refused_before_contacting_gateway(gateway_settings, mounted):
    with pytest.raises(OptionError, match="gpus_per_worker=2"):
        make_cluster({"backend": "gateway", "gpus_per_worker": 2}, mounted, settings=gateway_settings,
                     inventory=Inventory((), "none"))
