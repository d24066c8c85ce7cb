"""Time from "create" to 2 workers connected, per backend: Casa's factory next to raw dask / dask-gateway /
dask-jobqueue in the same run (same machine, same TLS material), with ratios.

* local:    casa_hub_ext.factory.make_cluster (bundle checks, option validation, TLS, 1 GPU/worker pinned)
            vs distributed.LocalCluster(n_workers=2, tls://, the same Security)
* gateway:  make_cluster(backend="gateway", 1 GPU/worker) vs dask_gateway.GatewayCluster + scale(2), against a
            real dask-gateway-server (local backend) started here
* htcondor: make_cluster(backend="htcondor") vs dask_jobqueue.HTCondorCluster, against the personal pool of
            tests/consumers/condor_pool.py (skipped when it is not importable/available)

Rounds alternate which side starts first, with a pause between measurements.

Run: .venv/bin/python benchmarks/bench_clusters.py [--rounds N] [--backends local,gateway,htcondor]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distributed import Client, LocalCluster  # noqa: E402

from casa_hub_ext.bundle import MountedBundle  # noqa: E402
from casa_hub_ext.factory import make_cluster  # noqa: E402
from casa_hub_ext.gpu import GPU, Inventory  # noqa: E402
from casa_hub_ext.options import CasaClusterSettings  # noqa: E402
from tests.ext.conftest import write_bundle  # noqa: E402
from tests.support import make_minter  # noqa: E402

WORKERS = 2
TIMEOUT = 120
SETTLE = 2.0  # seconds between measurements


async def _until_workers(cluster, security) -> None:
    async with Client(cluster, security=security, asynchronous=True, timeout=TIMEOUT) as client:
        await asyncio.wait_for(client.wait_for_workers(WORKERS), TIMEOUT)


async def _timed(create, close, security) -> float:
    t0 = time.perf_counter()
    cluster = await create()
    try:
        await _until_workers(cluster, security)
        return time.perf_counter() - t0
    finally:
        await close(cluster)


async def _close(cluster):
    await cluster.close()


# ------------------------------------------------------------------------------------------ backends
def local_pair(bundle: MountedBundle):
    settings = CasaClusterSettings(backends=["local"], max_gpus_per_worker=1)
    inventory = Inventory((GPU(0, "0"), GPU(1, "1")), "CASA_GPU_COUNT")
    sec = bundle.security()

    async def casa():
        return await make_cluster(
            {"workers": WORKERS, "gpus_per_worker": 1},
            bundle,
            settings=settings,
            inventory=inventory,
            asynchronous=True,
        )

    async def raw():
        return await LocalCluster(
            n_workers=WORKERS,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            protocol="tls://",
            security=sec,
            dashboard_address="127.0.0.1:0",
            memory_limit="2 GiB",
            asynchronous=True,
        )

    return casa, raw, _close, sec, None


def gateway_pair(bundle: MountedBundle, work: Path):
    """Both sides authenticate with a user's JupyterHub token against a real hub, as in the facility."""
    import contextlib
    import secrets

    from dask_gateway import GatewayCluster

    from tests.ext.gateway_server import start_gateway, stop_gateway
    from tests.ext.test_gateway import GATEWAY_SERVICE
    from tests.hub import hub as H

    stack = contextlib.ExitStack()
    service_token = secrets.token_hex(16)
    (work / "hub").mkdir()
    hub = stack.enter_context(H.running_hub(work / "hub", GATEWAY_SERVICE.format(token=service_token)))
    H.oauth_login(hub, "alice")
    with hub.api() as api:
        r = api.post("/users/alice/tokens", json={"note": "bench", "expires_in": 3600})
        r.raise_for_status()
        os.environ["JUPYTERHUB_API_TOKEN"] = r.json()["token"]
    server = start_gateway(work / "gateway", hub.url + "/hub/api", service_token)
    stack.callback(stop_gateway, server)
    settings = CasaClusterSettings(
        backends=["gateway"],
        max_gpus_per_worker=1,
        gateway_address=server.address,
        gateway_proxy_address=server.proxy_address,
        gateway_auth="jupyterhub",
    )

    async def casa():
        return await make_cluster(
            {"backend": "gateway", "workers": WORKERS, "gpus_per_worker": 1, "memory": "1 GiB"},
            bundle,
            settings=settings,
            inventory=Inventory((), "none"),
            asynchronous=True,
        )

    async def raw():
        cluster = await GatewayCluster(
            address=server.address,
            proxy_address=server.proxy_address,
            auth="jupyterhub",
            asynchronous=True,
            worker_cores=1,
            worker_memory=1.0,
            worker_gpus=1,
        )
        await cluster.scale(WORKERS)
        return cluster

    async def close(cluster):
        await cluster.shutdown()

    return casa, raw, close, None, stack.close


def htcondor_pair(work: Path):
    from dask_jobqueue import HTCondorCluster

    from tests.consumers import condor_pool

    if not condor_pool.available():
        return None
    pool = condor_pool.start_pool(work / "hub-keys" / "pool.key")
    minter = make_minter(
        work / "keys", HTCondorToken={"signing_key_file": str(pool.hub_key_file), "trust_domain": pool.trust_domain}
    )
    home = pool.user_dir("alice")
    for rel, f in minter.mint("alice").files.items():
        pool.give("alice", home / "casa" / rel, f.content, f.mode)
    bundle = MountedBundle.from_directory(home / "casa")
    tools = pool.tools(
        home / "bin", "alice", env={"_CONDOR_SEC_TOKEN_DIRECTORY": str(bundle.condor_token_dir)}, cwd=home
    )
    os.environ["PATH"] = f"{tools}:{os.environ['PATH']}"
    python = str(condor_pool.VENV / "bin" / "python")
    settings = CasaClusterSettings(
        backends=["htcondor"],
        max_gpus_per_worker=1,
        htcondor_python=python,
        htcondor_disk="200MiB",
        htcondor_scheduler_options={"host": "127.0.0.1"},
        htcondor_worker_extra_args=["--host", "127.0.0.1"],
    )
    sec = bundle.security()

    async def casa():
        return await make_cluster(
            {"backend": "htcondor", "workers": WORKERS, "memory": "512 MiB", "gpus_per_worker": 0},
            bundle,
            settings=settings,
            inventory=Inventory((), "none"),
            asynchronous=True,
        )

    async def raw():  # the worker reads the TLS files in place (the pool sees the same paths): no transfer
        cluster = await HTCondorCluster(
            cores=1,
            memory="512 MiB",
            disk="200MiB",
            processes=1,
            python=python,
            protocol="tls://",
            security=sec,
            asynchronous=True,
            scheduler_options={"host": "127.0.0.1", "dashboard_address": "127.0.0.1:0"},
            worker_extra_args=["--host", "127.0.0.1"],
        )
        cluster.scale(WORKERS)
        return cluster

    return casa, raw, _close, sec, lambda: condor_pool.stop_pool(pool)


# ------------------------------------------------------------------------------------------ Casa's own work
def casa_own_ms(bundle: MountedBundle, backend: str, repeat: int = 200) -> float:
    """What Casa does in this process before the library starts anything (option validation, the ledger's
    booking, the bundle's certificate checks, the backend's kwargs and class), per cluster, in ms: the part of
    the end-to-end difference that is Casa's rather than noise of a shared machine."""
    from casa_hub_ext import factory
    from casa_hub_ext.ledger import Ledger

    settings = CasaClusterSettings(
        backends=[backend], max_gpus_per_worker=1, gateway_address="http://127.0.0.1:1", htcondor_python=sys.executable
    )
    inventory = Inventory((GPU(0, "0"), GPU(1, "1")), "CASA_GPU_COUNT")
    request = {"backend": backend, "workers": WORKERS, "gpus_per_worker": 1 if backend != "htcondor" else 0}

    def once():
        options = factory._validated(request, settings, inventory)
        Ledger(settings, inventory).reserve(options)
        if backend == "local":
            factory.local_kwargs(options, bundle)
        elif backend == "gateway":
            factory.gateway_kwargs(options, settings), factory.gateway_cluster_class()
        else:
            factory.htcondor_kwargs(options, bundle, settings), factory.htcondor_cluster_class()

    once()
    t0 = time.perf_counter()
    for _ in range(repeat):
        once()
    return (time.perf_counter() - t0) / repeat * 1000


# ------------------------------------------------------------------------------------------ main
async def bench(backend: str, pair, rounds: int) -> tuple[float, float] | None:
    casa, raw, close, sec, _ = pair
    times = {"casa": [], "raw": []}
    for i in range(rounds):
        # alternate who goes first and let the previous cluster's processes wind down: the second of a pair
        # otherwise starts while the first one's scheduler and workers still exit (a bias of ~0.3-0.7 s)
        pairs = [("raw", raw), ("casa", casa)]
        for name, create in pairs if i % 2 == 0 else pairs[::-1]:
            await asyncio.sleep(SETTLE)
            if sec is None:  # gateway: the client's TLS comes from the cluster object
                t0 = time.perf_counter()
                cluster = await create()
                try:
                    async with cluster.get_client(set_as_default=False) as client:
                        await asyncio.wait_for(client.wait_for_workers(WORKERS), TIMEOUT)
                    times[name].append(time.perf_counter() - t0)
                finally:
                    await close(cluster)
            else:
                times[name].append(await _timed(create, close, sec))
    print(f"{backend}: casa {[round(t, 2) for t in times['casa']]}  raw {[round(t, 2) for t in times['raw']]}")
    return statistics.median(times["casa"]), statistics.median(times["raw"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4, help="an even number: each side goes first as often")
    parser.add_argument("--backends", default="local,gateway,htcondor")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="casa-bench-"))
    bundle = MountedBundle.from_directory(write_bundle(make_minter(work / "keys0").mint("alice"), work / "casa"))
    rows = []
    for backend in args.backends.split(","):
        if backend == "local":
            pair = local_pair(bundle)
        elif backend == "gateway":
            pair = gateway_pair(bundle, work)
        elif backend == "htcondor":
            try:
                pair = htcondor_pair(work)
            except ImportError:
                pair = None
            if pair is None:
                print("htcondor: skipped (no pool: tests/consumers/condor_pool.py not importable or no HTCondor root)")
                continue
        else:
            raise SystemExit(f"unknown backend {backend!r}")
        try:
            casa_s, raw_s = asyncio.run(bench(backend, pair, args.rounds))
        finally:
            if pair[4]:
                pair[4]()
        rows.append((backend, casa_s, raw_s))
    print("\nCasa's own work before the library starts, per cluster:")
    for backend in args.backends.split(","):
        try:
            print(f"  {backend:<10}{casa_own_ms(bundle, backend):8.3f} ms")
        except Exception as e:  # htcondor without a token in the bundle, ...
            print(f"  {backend:<10} n/a ({e})")
    print(f"\ncreate -> {WORKERS} workers connected, median of {args.rounds} round(s)")
    print(f"{'backend':<10}{'casa (s)':>10}{'raw (s)':>10}{'casa/raw':>10}{'casa-raw (ms)':>15}")
    for backend, casa_s, raw_s in rows:
        print(f"{backend:<10}{casa_s:>10.2f}{raw_s:>10.2f}{casa_s / raw_s:>10.2f}{(casa_s - raw_s) * 1000:>15.0f}")


if __name__ == "__main__":
    main()
