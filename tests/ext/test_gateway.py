"""A real dask-gateway-server (local backend) behind the real hub's authentication: the user's JupyterHub
token opens the gateway, the GPU option reaches the workers' resources, and the workers follow the hub's renewals
of the storage token (they do not see the server's mounted files)."""

from __future__ import annotations

import asyncio
import importlib.util
import secrets

import pytest

from casa_hub_ext.bundle import MountedBundle
from casa_hub_ext.errors import OptionError
from casa_hub_ext.factory import make_cluster
from casa_hub_ext.gpu import Inventory
from casa_hub_ext.options import CasaClusterSettings
from casa_hub_ext.worker_credentials import WorkerCredentials
from tests.ext.gateway_server import start_gateway, stop_gateway
from tests.ext.workers import POLL, RENEWAL_BOUND, mounted_bytes, wait_for_token, worker_view
from tests.hub import hub as H
from tests.support import need, write_bundle

TIMEOUT = 90


def worker_resources(dask_scheduler):
    return {a: dict(ws.resources) for a, ws in dask_scheduler.workers.items()}


GATEWAY_SERVICE = """
c.JupyterHub.services.append({{"name": "dask-gateway", "api_token": "{token}"}})
c.JupyterHub.load_roles.append({{"name": "dask-gateway", "scopes": ["read:users:name", "read:users:groups"],
                                 "services": ["dask-gateway"]}})
"""


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    token = secrets.token_hex(16)
    with H.running_hub(tmp_path_factory.mktemp("gateway-hub"), GATEWAY_SERVICE.format(token=token)) as hub:
        hub.gateway_token = token
        yield hub


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, hub):
    need(importlib.util.find_spec("dask_gateway_server") is not None, "dask-gateway-server")
    server = start_gateway(tmp_path_factory.mktemp("gateway"), hub.url + "/hub/api", hub.gateway_token)
    yield server
    stop_gateway(server)


@pytest.fixture(scope="module")
def alice_token(hub):
    """What a user's server has: a JupyterHub API token of that user."""
    H.oauth_login(hub, "alice")
    with hub.api() as api:
        r = api.post("/users/alice/tokens", json={"note": "gateway test", "expires_in": 3600})
        assert r.status_code == 201, r.text
        return r.json()["token"]


@pytest.fixture
def gateway_settings(gateway, alice_token, monkeypatch):
    monkeypatch.delenv("CASA_GPU_MAX_PER_WORKER", raising=False)
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", alice_token)
    return CasaClusterSettings(
        backends=["gateway"],
        max_gpus_per_worker=1,
        gateway_address=gateway.address,
        gateway_proxy_address=gateway.proxy_address,
        gateway_auth="jupyterhub",
    )


async def test_gpu_option_reaches_worker_resources(gateway_settings, mounted):
    # this server has no GPU: the GPUs are the gateway's, bounded by the facility's max_gpus_per_worker
    cluster = await asyncio.wait_for(
        make_cluster(
            {"backend": "gateway", "workers": 2, "gpus_per_worker": 1, "memory": "1 GiB"},
            mounted,
            settings=gateway_settings,
            inventory=Inventory((), "none"),
            asynchronous=True,
        ),
        TIMEOUT,
    )
    try:
        async with cluster.get_client(set_as_default=False) as client:
            await client.wait_for_workers(2, timeout=TIMEOUT)
            resources = await client.run_on_scheduler(worker_resources)
            assert list(resources.values()) == [{"GPU": 1}, {"GPU": 1}]
            assert await client.submit(lambda: 42, resources={"GPU": 1}) == 42
    finally:
        await cluster.shutdown()


async def test_gateway_workers_follow_the_hubs_renewals(gateway_settings, bundle_dir, minter, caplog):
    """Gateway workers run where the server's mounted files are not: WorkerCredentials pushes the storage token
    to them over the gateway's own per-cluster TLS, and again after the hub renews it."""
    cluster = await asyncio.wait_for(
        make_cluster(
            {"backend": "gateway", "workers": 1, "memory": "1 GiB"},
            MountedBundle.from_directory(bundle_dir),
            settings=gateway_settings,
            inventory=Inventory((), "none"),
            asynchronous=True,
        ),
        TIMEOUT,
    )
    creds = WorkerCredentials(bundle=lambda: MountedBundle.from_directory(bundle_dir), poll_interval=POLL)
    tokens = []
    try:
        async with cluster.get_client(set_as_default=False) as client:
            await client.wait_for_workers(1, timeout=TIMEOUT)
            assert await creds.attach(cluster)
            first, _ = mounted_bytes(bundle_dir)
            await wait_for_token(client, first, 1, RENEWAL_BOUND)
            (view,) = (await client.run(worker_view)).values()
            assert view["BEARER_TOKEN_FILE"]["path"] != str(bundle_dir / "xcache.token")  # the worker's own copy
            assert (view["BEARER_TOKEN_FILE"]["mode"], view["BEARER_TOKEN_FILE"]["dir_mode"]) == (0o600, 0o700)

            write_bundle(minter.mint("alice"), bundle_dir)  # the hub renews; the kubelet swaps the files
            renewed, _ = mounted_bytes(bundle_dir)
            tokens += [first, renewed]
            assert renewed != first
            await wait_for_token(client, renewed, 1, RENEWAL_BOUND)
            await creds.detach(cluster)
    finally:
        await creds.close()
        await cluster.shutdown()
    for token in tokens:
        assert token.strip().decode() not in caplog.text


def test_over_limit_refused_before_contacting_gateway(gateway_settings, mounted):
    with pytest.raises(OptionError, match="gpus_per_worker=2"):
        make_cluster(
            {"backend": "gateway", "gpus_per_worker": 2},
            mounted,
            settings=gateway_settings,
            inventory=Inventory((), "none"),
        )


async def test_token_of_no_user_is_refused(gateway, gateway_settings, monkeypatch):
    from dask_gateway import Gateway

    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "not-a-token")
    async with Gateway(
        gateway.address, proxy_address=gateway.proxy_address, auth="jupyterhub", asynchronous=True
    ) as gw:
        with pytest.raises(Exception, match="Permission failure verifying user.s JupyterHub API token|401|403"):
            await gw.list_clusters()
