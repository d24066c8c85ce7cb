"""Casa's ClusterManager over dask-labextension's own DaskClusterManager, in this process: one list of clusters,
Casa's bounds and GPU bookings kept whichever way a cluster is started, scaled or shut down. Real TLS
LocalClusters (mostly without workers, to stay quick).

dask-labextension 7.0.0 has synchronous getters; its main branch awaits every method: ``AsyncLab`` stands for
the latter, so both call styles are exercised.
"""

from __future__ import annotations

import asyncio
import logging
import os

import dask
import pytest
from dask_labextension.manager import DaskClusterManager
from distributed import Client

from casa_hub_ext.app import kernel_dask_env, set_absent
from casa_hub_ext.bundle import MountedBundle
from casa_hub_ext.errors import ClusterNotFound, LimitError, OptionError
from casa_hub_ext.labmanager import CASA_FACTORY, LabManager, ensure_casa_factory, set_active
from casa_hub_ext.manager import ClusterManager
from casa_hub_ext.options import CasaClusterSettings
from tests.ext.conftest import declared_gpus
from tests.support import free_port

TIMEOUT = 60


class AsyncLab:
    """dask-labextension main's API: every method a coroutine (same clusters underneath)."""

    def __init__(self, lab: DaskClusterManager):
        self.lab = lab

    def __getattr__(self, name):
        method = getattr(self.lab, name)

        async def call(*args, **kwargs):
            result = method(*args, **kwargs)
            return await result if asyncio.iscoroutine(result) else result

        return call


@pytest.fixture
def lab_config():
    with dask.config.set({"labextension.factory": dict(CASA_FACTORY), "labextension.default": {"workers": None}}):
        yield


def make_manager(bundle_dir, monkeypatch, *, gpus=0, api="sync", **traits):
    for var in ("CASA_DASK_BACKENDS", "CASA_GPU_MAX_PER_WORKER", "DASK_GATEWAY__ADDRESS"):
        monkeypatch.delenv(var, raising=False)
    values = dict(backends=["local"], max_gpus_per_worker=1, max_workers=4, default_workers=0, max_clusters=3)
    settings = CasaClusterSettings(**{**values, **traits})
    lab = DaskClusterManager()
    manager = ClusterManager(
        settings,
        lab=LabManager(manager=AsyncLab(lab) if api == "async" else lab),
        bundle=lambda: MountedBundle.from_directory(bundle_dir),
        inventory=lambda: declared_gpus(gpus),
    )
    manager.raw_lab = lab
    set_active(manager)
    return manager


@pytest.fixture
async def closing():
    managers = []
    yield managers.append
    for manager in managers:
        await manager.close_all()
    set_active(None)


def devices():
    return os.environ.get("CUDA_VISIBLE_DEVICES")


@pytest.mark.parametrize("api", ["sync", "async"])
async def test_casa_clusters_live_in_dask_labextensions_list(bundle_dir, monkeypatch, lab_config, closing, api):
    manager = make_manager(bundle_dir, monkeypatch, api=api)
    closing(manager)
    started, closed = [], []

    async def on_started(cluster):
        started.append(cluster)

    async def on_closing(cluster):
        closed.append((cluster, cluster.status.name))

    manager.on_started.append(on_started)
    manager.on_closing.append(on_closing)

    model = await manager.create({"name": "mine", "workers": 0})
    cid = model["id"]
    (listed,) = manager.raw_lab.list_clusters()
    assert (listed["id"], listed["name"], listed["scheduler_address"]) == (cid, "mine", model["scheduler_address"])
    assert [m["id"] for m in await manager.list()] == [cid] and model["casa"]["backend"] == "local"
    assert [c.scheduler_address for c in started] == [model["scheduler_address"]]

    model = await manager.scale(cid, {"adapt": {"minimum": 0, "maximum": 3}})
    assert model["adapt"] == {"minimum": 0, "maximum": 3} and model["casa"]["adapt"] == {"minimum": 0, "maximum": 3}
    cluster = started[0]
    assert type(cluster._adaptive).__name__ == "CasaAdaptive"
    model = await manager.scale(cid, {"workers": 0})  # a user's scale ends adaptive scaling
    assert cluster._adaptive is None and model["casa"]["adapt"] is None
    with pytest.raises(OptionError, match="workers=5 is outside the allowed range 0..4"):
        await manager.scale(cid, {"workers": 5})
    with pytest.raises(OptionError, match='expected {"workers": n}'):
        await manager.scale(cid, {"workers": 1, "adapt": None})

    await manager.close(cid)
    assert manager.raw_lab.list_clusters() == [] and manager.ledger.bookings == []
    assert closed == [(cluster, "running")]  # the hook ran before the cluster went
    with pytest.raises(ClusterNotFound):
        await manager.get(cid)


async def test_the_sidebars_new_cluster_is_casas_and_bounded(bundle_dir, monkeypatch, lab_config, closing):
    manager = make_manager(bundle_dir, monkeypatch, default_cores=2)
    closing(manager)
    lab = manager.raw_lab
    model = await lab.start_cluster()  # "+NEW": no Casa request in the context
    assert model["scheduler_address"].startswith("tls://") and model["name"] == "CasaLocalCluster 1"
    (casa,) = await manager.list()  # claimed by its scheduler address
    assert casa["id"] == model["id"] and (casa["casa"]["cores"], casa["casa"]["workers"]) == (2, 0)
    with pytest.raises(OptionError, match="workers=9 is outside the allowed range 0..4"):
        await lab.scale_cluster(model["id"], 9)
    with pytest.raises(OptionError, match="adaptive scaling needs a maximum"):
        lab.adapt_cluster(model["id"], 0, float("inf"))
    await lab.close_cluster(model["id"])  # the sidebar's shutdown releases the booking
    assert manager.ledger.bookings == [] and await manager.list() == []


async def test_labextension_defaults_are_bounded_before_anything_starts(bundle_dir, monkeypatch, lab_config, closing):
    manager = make_manager(bundle_dir, monkeypatch)
    closing(manager)
    with dask.config.set({"labextension.default": {"workers": 7}}):
        with pytest.raises(OptionError, match="workers=7 is outside"):
            await manager.raw_lab.start_cluster()
    assert manager.ledger.bookings == [] and manager.raw_lab.list_clusters() == []


async def test_concurrent_starts_never_exceed_max_clusters(bundle_dir, monkeypatch, lab_config, closing):
    manager = make_manager(bundle_dir, monkeypatch, max_clusters=2)
    closing(manager)
    results = await asyncio.gather(*(manager.create({"workers": 0}) for _ in range(3)), return_exceptions=True)
    assert sorted(type(r).__name__ for r in results) == ["LimitError", "dict", "dict"]
    assert len(manager.raw_lab.list_clusters()) == 2
    await manager.close_all()
    # the same through dask-labextension's own start (three "+NEW" clicks)
    results = await asyncio.gather(*(manager.raw_lab.start_cluster() for _ in range(3)), return_exceptions=True)
    assert sorted(type(r).__name__ for r in results) == ["LimitError", "dict", "dict"]
    assert len(manager.ledger.bookings) == 2


async def test_local_gpus_are_never_given_to_two_clusters(bundle_dir, monkeypatch, lab_config, closing):
    manager = make_manager(bundle_dir, monkeypatch, gpus=2)
    closing(manager)
    first = await manager.create({"workers": 1, "gpus_per_worker": 1})
    second = await manager.create({"workers": 1, "gpus_per_worker": 1})
    seen = []
    security = MountedBundle.from_directory(bundle_dir).security()
    for model in (first, second):
        async with Client(model["scheduler_address"], security=security, asynchronous=True) as client:
            await client.wait_for_workers(1, timeout=TIMEOUT)
            seen += list((await client.run(devices)).values())
    assert sorted(seen) == ["0", "1"]
    assert manager.options()["limits"]["gpus"]["local"] == {"max": 2, "booked": 2, "per_worker": 1}
    with pytest.raises(LimitError, match="your other clusters hold 2 of the 2 allowed"):
        await manager.create({"workers": 1, "gpus_per_worker": 1})
    with pytest.raises(LimitError, match="your other clusters hold 1 of the 2 allowed"):
        await manager.raw_lab.scale_cluster(first["id"], 2)
    with pytest.raises(LimitError):
        manager.raw_lab.adapt_cluster(second["id"], 0, 2)
    assert manager.ledger.limits()["gpus"]["local"]["booked"] == 2  # nothing changed by the refusals

    await manager.close(second["id"])
    model = await manager.scale(first["id"], {"adapt": {"minimum": 1, "maximum": 2}})
    assert model["casa"]["gpus_booked"] == 2


async def test_a_foreign_factory_is_left_alone_and_never_passed_off_as_casa(
    bundle_dir, monkeypatch, lab_config, closing
):
    custom = {"module": "dask.distributed", "class": "LocalCluster", "args": [], "kwargs": {"n_workers": 0}}
    with dask.config.set({"labextension.factory": custom}):
        assert ensure_casa_factory() is True  # dask-labextension's default: replaced by Casa's
        assert dask.config.get("labextension.factory.class") == "labextension_cluster"
    renamed = {"module": "casa_hub_ext.factory", "class": "CasaCluster", "args": [], "kwargs": {}}
    with dask.config.set({"labextension.factory": renamed}):
        assert ensure_casa_factory() is True  # Casa's factory under its former name: given its new one
        assert dask.config.get("labextension.factory.class") == "labextension_cluster"
    other = {"module": "dask_jobqueue", "class": "SLURMCluster", "args": [], "kwargs": {}}
    with dask.config.set({"labextension.factory": other}):
        assert ensure_casa_factory() is False  # the admin's choice stays
        assert dask.config.get("labextension.factory.class") == "SLURMCluster"

    manager = make_manager(bundle_dir, monkeypatch)
    closing(manager)
    plain = {**custom, "kwargs": {"n_workers": 0, "processes": False, "dashboard_address": None}}
    with dask.config.set({"labextension.factory": plain}):
        with pytest.raises(OptionError, match="factory .* is not casa_hub_ext.factory.labextension_cluster"):
            await manager.create({"workers": 0})
    assert manager.raw_lab.list_clusters() == [] and manager.ledger.bookings == []


async def test_login_cluster(bundle_dir, monkeypatch, lab_config, closing, caplog):
    port = free_port()
    manager = make_manager(
        bundle_dir,
        monkeypatch,
        login_cluster={"workers": 0, "name": "ignored"},
        scheduler_port=port,
        scheduler_host="127.0.0.1",
    )
    closing(manager)
    model = await manager.start_login_cluster()
    assert model["name"] == "Casa (login)" and model["scheduler_address"] == f"tls://127.0.0.1:{port}"
    assert [m["name"] for m in await manager.list()] == ["Casa (login)"]

    caplog.set_level(logging.ERROR, logger="casa_hub_ext")
    for request, message in (
        ({"backend": "gateway"}, "the login cluster cannot use the gateway backend"),
        ({"workers": "x"}, "workers='x': expected a whole number"),
    ):
        other = make_manager(
            bundle_dir, monkeypatch, backends=["local", "gateway"], login_cluster=request, gateway_address="http://x"
        )
        closing(other)
        assert await other.start_login_cluster() is None
        assert message in caplog.text and "did not start" in caplog.text
        assert other.ledger.bookings == []


def test_kernel_dask_env(mounted, bundle_dir, monkeypatch):
    monkeypatch.delenv("CASA_GPU_MAX_PER_WORKER", raising=False)
    env = kernel_dask_env(mounted, CasaClusterSettings(backends=["local"]))
    assert env == {
        "DASK_DISTRIBUTED__COMM__TLS__CA_FILE": str(bundle_dir / "dask/ca.pem"),
        "DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT": str(bundle_dir / "dask/client.crt"),
        "DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY": str(bundle_dir / "dask/client.key"),
        "DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION": "True",
    }
    assert all(os.path.isfile(v) for k, v in env.items() if "TLS" in k)
    login = CasaClusterSettings(backends=["local"], login_cluster={}, scheduler_port=8799)
    assert kernel_dask_env(None, login) == {"DASK_SCHEDULER_ADDRESS": "tls://localhost:8799"}

    pod = {"DASK_DISTRIBUTED__COMM__TLS__CA_FILE": "/pod/ca.pem"}  # what the hub's DaskTLS kind set wins
    added = set_absent(pod, env)
    assert pod["DASK_DISTRIBUTED__COMM__TLS__CA_FILE"] == "/pod/ca.pem" and len(added) == 3
