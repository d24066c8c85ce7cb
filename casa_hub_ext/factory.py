"""Backends -> a Dask cluster secured with the user's Casa credentials. Nothing here starts by itself.

``make_cluster(options, bundle)`` validates ``options`` (see :mod:`casa_hub_ext.options`) and builds one of

* ``local``: a :class:`CasaLocalCluster` over ``tls://`` with the user's certificates; GPU workers are laid out
  like dask-cuda's ``LocalCUDACluster`` (one worker per GPU group, ``CUDA_VISIBLE_DEVICES`` pinned) and
  advertise ``resources={"GPU": n}``;
* ``htcondor``: a dask-jobqueue ``HTCondorCluster`` whose jobs authenticate with the user's IDTOKEN
  (``_CONDOR_SEC_TOKEN_DIRECTORY``), carry the worker's TLS material (``transfer_input_files``, encrypted),
  ``request_gpus``, a per-user accounting group and ``--resources GPU=n``;
* ``gateway``: a dask-gateway cluster whose cluster options carry cores, memory and GPUs.

For dask-labextension, point its factory at :func:`CasaCluster`::

    labextension:
      factory: {module: casa_hub_ext.factory, class: CasaCluster, args: [], kwargs: {gpus_per_worker: 1}}
"""

from __future__ import annotations

import asyncio
import copy
import os
from inspect import isawaitable
from pathlib import Path
from typing import Mapping

from distributed import LocalCluster
from distributed.security import Security

from .bundle import CredentialError, MountedBundle
from .errors import OptionError
from .gpu import Inventory, discover
from .options import CasaClusterSettings, ClusterOptions, OptionsSpec


def worker_tls_files(bundle: MountedBundle) -> tuple[Path, Path, Path]:
    """The CA certificate, worker certificate and worker key an HTCondor worker job gets, as the bundle's
    manifest names them; in the job's scratch directory they keep their base names."""
    cert, key = bundle.dask_paths("worker")
    files = (bundle.dask_ca, cert, key)
    if len({f.name for f in files}) != len(files):
        raise CredentialError("dask-worker", f"the worker's TLS files need distinct names: {[str(f) for f in files]}")
    return files


# ---------------------------------------------------------------------------------------------- local
def gpu_groups(inventory: Inventory, per_worker: int) -> list[str]:
    """``CUDA_VISIBLE_DEVICES`` values for the local GPU workers: consecutive, disjoint groups of devices."""
    if per_worker <= 0:
        return []
    ids = [g.id for g in inventory.gpus]
    return [",".join(ids[i : i + per_worker]) for i in range(0, len(ids) - per_worker + 1, per_worker)]


class CasaLocalCluster(LocalCluster):
    """A ``LocalCluster`` whose GPU workers each own disjoint devices (``CUDA_VISIBLE_DEVICES`` in their env).

    Workers are always added through :meth:`new_worker_spec`, at start-up too, so every worker gets a free
    device group; asking for more GPU workers than groups is an :class:`OptionError`.
    """

    def __init__(self, *, n_workers: int = 0, gpu_devices: list[str] = (), gpus_per_worker: int = 0, **kwargs):
        self._gpu_devices = list(gpu_devices)
        if gpus_per_worker:
            kwargs["resources"] = {**kwargs.get("resources", {}), "GPU": gpus_per_worker}
        super().__init__(n_workers=0, **kwargs)
        for _ in range(n_workers):
            self.worker_spec.update(self.new_worker_spec())
        if not self.asynchronous and n_workers:
            self.sync(self._correct_state)

    def new_worker_spec(self):
        spec = super().new_worker_spec()
        if not self._gpu_devices:
            return spec
        used = {s["options"].get("env", {}).get("CUDA_VISIBLE_DEVICES") for s in self.worker_spec.values()}
        free = [g for g in self._gpu_devices if g not in used]
        if not free:
            raise OptionError(f"no free GPUs for another worker: all {len(self._gpu_devices)} GPU group(s) in use")
        ((name, worker),) = spec.items()
        worker = copy.deepcopy(worker)
        worker["options"]["env"] = {**worker["options"].get("env", {}), "CUDA_VISIBLE_DEVICES": free[0]}
        return {name: worker}


def local_kwargs(options: ClusterOptions, bundle: MountedBundle, inventory: Inventory) -> dict:
    return dict(
        n_workers=options.workers,
        threads_per_worker=options.cores,
        memory_limit=options.memory,
        processes=True,
        host="127.0.0.1",
        protocol="tls://",
        dashboard_address="127.0.0.1:0",
        security=bundle.security(),
        gpus_per_worker=options.gpus_per_worker,
        gpu_devices=gpu_groups(inventory, options.gpus_per_worker),
    )


# ---------------------------------------------------------------------------------------------- htcondor
def htcondor_job_directives(options: ClusterOptions, bundle: MountedBundle, settings: CasaClusterSettings) -> dict:
    """Submit-file lines for one worker job (pure: tested as a dict). The accounting user is the pool account
    the IDTOKEN names, never the hub name (``bob@cern.ch`` is no account: such jobs would never run)."""
    user = bundle.condor_user
    if not user:
        raise CredentialError(
            "htcondor",
            "your HTCondor token names no pool account (credentials minted before "
            "the account mapping); restart your server to get fresh credentials",
        )
    tls_files = worker_tls_files(bundle)
    directives = {
        "should_transfer_files": "YES",
        "when_to_transfer_output": "ON_EXIT_OR_EVICT",
        "transfer_input_files": ",".join(str(f) for f in tls_files),
        "encrypt_input_files": ",".join(f.name for f in tls_files),
        "accounting_group": f"{settings.htcondor_accounting_group}.{user}",
        "accounting_group_user": user,
    }
    if options.gpus_per_worker:
        directives["request_gpus"] = str(options.gpus_per_worker)
    directives.update(settings.htcondor_job_extra_directives)
    return directives


def htcondor_job_class(token_dir: str, tls_names: tuple[str, ...]):
    """An HTCondorJob that submits with the user's IDTOKEN directory and points its worker at the TLS files
    transferred into the job's scratch directory (``tls_names``: CA, certificate, key, by base name)."""
    from dask_jobqueue.htcondor import HTCondorJob

    worker_security = Security(
        require_encryption=True,
        tls_ca_file=tls_names[0],
        tls_worker_cert=tls_names[1],
        tls_worker_key=tls_names[2],
    )

    class CasaHTCondorJob(HTCondorJob):
        casa_env = {"_CONDOR_SEC_TOKEN_DIRECTORY": token_dir}

        def __init__(self, *args, security=None, **kwargs):
            super().__init__(*args, security=worker_security if security else None, **kwargs)

        @classmethod
        async def _call(cls, cmd, **kwargs):
            env = {**os.environ, **cls.casa_env, **kwargs.pop("env", {})}
            return await HTCondorJob._call(cmd, env=env, **kwargs)

    return CasaHTCondorJob


def htcondor_kwargs(options: ClusterOptions, bundle: MountedBundle, settings: CasaClusterSettings) -> dict:
    bundle.require("htcondor")
    extra = ["--resources", f"GPU={options.gpus_per_worker}"] if options.gpus_per_worker else []
    return dict(
        cores=options.cores,
        memory=options.memory,
        disk=settings.htcondor_disk,
        processes=1,
        python=settings.htcondor_python,
        protocol="tls://",
        security=bundle.security(),
        scheduler_options={"dashboard_address": "127.0.0.1:0", **settings.htcondor_scheduler_options},
        job_extra_directives=htcondor_job_directives(options, bundle, settings),
        worker_extra_args=extra + list(settings.htcondor_worker_extra_args),
        log_directory=settings.htcondor_log_directory or None,
        submit_command_extra=list(settings.htcondor_submit_command_extra),
        job_cls=htcondor_job_class(str(bundle.condor_token_dir), tuple(f.name for f in worker_tls_files(bundle))),
    )


# ---------------------------------------------------------------------------------------------- gateway
def gateway_options(options: ClusterOptions) -> dict:
    """dask-gateway cluster options (the facility's gateway declares ``worker_cores``, ``worker_memory`` in GiB
    and ``worker_gpus``; see :func:`casa_hub_ext.gateway.cluster_options`)."""
    values = {"worker_cores": options.cores, "worker_memory": options.memory / 2**30}
    if options.gpus_per_worker:
        values["worker_gpus"] = options.gpus_per_worker
    return values


def gateway_kwargs(options: ClusterOptions, settings: CasaClusterSettings) -> dict:
    if not settings.gateway_address:
        raise OptionError("the gateway backend is not configured (CasaClusterSettings.gateway_address)")
    return dict(
        address=settings.gateway_address,
        proxy_address=settings.gateway_proxy_address or None,
        auth=settings.gateway_auth,
        shutdown_on_close=True,
        **gateway_options(options),
    )


# ---------------------------------------------------------------------------------------------- entry points
def _validated(options, settings, inventory) -> ClusterOptions:
    spec = OptionsSpec(settings, inventory)
    raw = options.to_dict() if isinstance(options, ClusterOptions) else dict(options or {})
    return spec.validate(raw)


def make_cluster(
    options: ClusterOptions | Mapping | None = None,
    bundle: MountedBundle | None = None,
    *,
    settings: CasaClusterSettings | None = None,
    inventory: Inventory | None = None,
    asynchronous: bool = False,
):
    """Validate ``options`` and build the cluster. Synchronous: returns a running cluster with ``workers``
    requested. ``asynchronous=True``: returns an awaitable giving the same. Raises :class:`OptionError` /
    :class:`CredentialError` before anything starts or is submitted."""
    settings = settings or CasaClusterSettings()
    inventory = inventory or discover()
    opts = _validated(options, settings, inventory)
    bundle = bundle or MountedBundle.from_env()

    if opts.backend == "local":
        kwargs = local_kwargs(opts, bundle, inventory)
        if asynchronous:
            return _started(CasaLocalCluster(asynchronous=True, **kwargs), None)
        return CasaLocalCluster(**kwargs)
    if opts.backend == "htcondor":
        from dask_jobqueue import HTCondorCluster

        kwargs = htcondor_kwargs(opts, bundle, settings)
        cluster = HTCondorCluster(asynchronous=asynchronous, **kwargs)
    else:
        from dask_gateway import GatewayCluster

        cluster = GatewayCluster(asynchronous=asynchronous, **gateway_kwargs(opts, settings))
    if asynchronous:
        return _started(cluster, opts.workers)
    cluster.scale(opts.workers)
    return cluster


async def _started(cluster, workers: int | None):
    try:
        await cluster
        if workers:
            result = cluster.scale(workers)
            if isawaitable(result):
                await result
    except BaseException:  # failed or cancelled (start timeout): leave no scheduler, process or job behind
        closing = cluster.close()
        if isawaitable(closing):
            await asyncio.shield(asyncio.ensure_future(closing))
        raise
    return cluster


def CasaCluster(*args, asynchronous: bool = False, **options):  # noqa: N802 - dask-labextension calls it a class
    """dask-labextension factory: ``await CasaCluster(asynchronous=True, backend=..., gpus_per_worker=...)``.
    Options are bounded like every other request; credentials come from ``$CASA_CREDENTIALS_DIR``."""
    if args:
        raise TypeError("CasaCluster takes keyword options only")
    options = {k.replace("-", "_"): v for k, v in options.items()}
    return make_cluster(options, asynchronous=asynchronous)
