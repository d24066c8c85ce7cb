"""Backends -> a Dask cluster secured with the user's Casa credentials. Nothing here starts by itself.

``make_cluster(options, bundle)`` validates ``options`` (see :mod:`casa_hub_ext.options`) and builds one of

* ``local``: a :class:`CasaLocalCluster` over ``tls://`` with the user's certificates; GPU workers are laid out
  like dask-cuda's ``LocalCUDACluster`` (one worker per GPU group, ``CUDA_VISIBLE_DEVICES`` pinned) and
  advertise ``resources={"GPU": n}``;
* ``htcondor``: a dask-jobqueue ``HTCondorCluster`` whose jobs authenticate with the user's IDTOKEN
  (``_CONDOR_SEC_TOKEN_DIRECTORY``), carry the worker's TLS material (``transfer_input_files``, encrypted),
  ``request_gpus``, a per-user accounting group and ``--resources GPU=n``;
* ``gateway``: a dask-gateway cluster whose cluster options carry cores, memory and GPUs.

Every cluster holds a :class:`~casa_hub_ext.ledger.Booking` and checks it in its own ``scale`` and ``adapt``,
so dask-labextension's sidebar, which calls those directly, cannot go past the facility's bounds either.

dask-labextension builds Casa clusters through :func:`labextension_cluster` (the Casa server extension configures it
when the admin left dask-labextension's default ``LocalCluster``)::

    labextension:
      factory: {module: casa_hub_ext.factory, class: labextension_cluster, args: [], kwargs: {}}

(Notebook code uses :class:`casa_hub_ext.CasaCluster`, which asks the server to start the cluster.)
"""

from __future__ import annotations

import asyncio
import copy
import functools
import logging
import math
import os
from inspect import isawaitable
from pathlib import Path
from typing import Mapping

from dask.utils import parse_bytes
from distributed import LocalCluster
from distributed.core import Status
from distributed.deploy.adaptive import Adaptive
from distributed.security import Security

from .bundle import CredentialError, MountedBundle
from .errors import OptionError
from .gpu import Inventory, discover
from .ledger import Booking, Ledger
from .options import CasaClusterSettings, ClusterOptions, OptionsSpec

log = logging.getLogger(__name__)
HOOK_TIMEOUT = 30


async def run_hooks(hooks, cluster, what: str) -> None:
    """``await hook(cluster)`` for each of ``hooks``, each within HOOK_TIMEOUT; a failing hook is logged and
    never stops the others or what the caller does next."""
    for hook in list(hooks):
        try:
            async with asyncio.timeout(HOOK_TIMEOUT):
                await hook(cluster)
        except Exception:
            log.exception("casa: a hook on cluster %s (%s) failed", getattr(cluster, "name", "?"), what)


async def close_cluster(cluster) -> None:
    """Close ``cluster``, whether its ``close()`` is synchronous or returns an awaitable."""
    result = cluster.close()
    if isawaitable(result):
        await result


def worker_tls_files(bundle: MountedBundle) -> tuple[Path, Path, Path]:
    """The CA certificate, worker certificate and worker key an HTCondor worker job gets, as the bundle's
    manifest names them; in the job's scratch directory they keep their base names."""
    cert, key = bundle.dask_paths("worker")
    files = (bundle.dask_ca, cert, key)
    if len({f.name for f in files}) != len(files):
        raise CredentialError("dask-worker", f"the worker's TLS files need distinct names: {[str(f) for f in files]}")
    return files


# ---------------------------------------------------------------------------------------------- bounds
class CasaAdaptive(Adaptive):
    """Adaptive scaling inside the booked maximum: it scales without the user-facing checks of ``scale``."""

    async def scale_up(self, n):
        result = self.cluster._scale_within_booking(n)
        if isawaitable(result):
            await result


class BookedCluster:
    """Mixin for Casa's cluster classes: ``scale``/``adapt`` within the :class:`Booking`, which is released and
    announced (``on_closing`` hooks) when the cluster closes."""

    casa_booking: Booking | None = None
    _casa_closing_done = False

    def __init__(self, *args, booking: Booking | None = None, **kwargs):
        # attached before the library's cluster starts: its first scale already goes through the booking
        self.casa_booking = booking
        if booking is not None:
            booking.cluster = self
        super().__init__(*args, **kwargs)

    def _casa_rebook(self, workers: int | None = None, adapt: tuple[int, int] | None = None) -> None:
        if self.casa_booking is not None:
            self.casa_booking.rebook(workers, adapt)

    def _casa_adapt_bounds(self, minimum, maximum) -> tuple[int, int]:
        if maximum is None or maximum == math.inf:
            limit = self.casa_booking.ledger.settings.max_workers if self.casa_booking else "max_workers"
            raise OptionError(f"adaptive scaling needs a maximum of at most {limit} workers", field="adapt.maximum")
        spec_field = self.casa_booking.ledger.spec().field("adapt") if self.casa_booking else None
        if spec_field is None:
            return int(minimum or 0), int(maximum)
        return spec_field.validate({"minimum": 0 if minimum is None else minimum, "maximum": maximum})

    async def _casa_closing(self) -> None:
        """Run the ``on_closing`` hooks once, before the workers go; a failing hook never stops the close."""
        if self._casa_closing_done or self.casa_booking is None:
            return
        self._casa_closing_done = True
        await run_hooks(self.casa_booking.on_closing, self, "closing")

    def _casa_release(self) -> None:
        if self.casa_booking is not None:
            self.casa_booking.release()


class BookedSpecCluster(BookedCluster):
    """``scale``/``adapt`` of a SpecCluster (LocalCluster, dask-jobqueue) checked against the booking."""

    def scale(self, n=None, memory=None, cores=None, **kwargs):
        if n is not None:  # SpecCluster's n defaults to 0, dask-jobqueue's to None (then ``jobs`` counts)
            kwargs["n"] = n
        if self.status in (Status.closing, Status.closed):  # closing scales to 0: always allowed
            return super().scale(memory=memory, cores=cores, **kwargs)
        target = max(n or 0, kwargs.get("jobs") or 0)  # one worker per job: processes=1
        if memory is not None:
            target = max(target, math.ceil(parse_bytes(memory) / self._memory_per_worker()))
        if cores is not None:
            target = max(target, math.ceil(cores / self._threads_per_worker()))
        self._casa_rebook(workers=target)
        if self._adaptive is not None:  # a user's scale ends adaptive scaling (dask-labextension forgets to)
            self._adaptive.stop()
            self._adaptive = None
        return super().scale(memory=memory, cores=cores, **kwargs)

    def _scale_within_booking(self, n):
        return super().scale(n)

    def adapt(self, *args, minimum=0, maximum=math.inf, **kwargs):
        if args or "Adaptive" in kwargs:
            raise TypeError("Casa clusters adapt with their own Adaptive; give minimum and maximum only")
        for key in ("minimum_cores", "maximum_cores", "minimum_memory", "maximum_memory"):
            if kwargs.get(key) is not None:
                raise OptionError(f"adapt with {key} is not supported: give minimum and maximum workers", field="adapt")
            kwargs.pop(key, None)
        bounds = self._casa_adapt_bounds(minimum, maximum)
        self._casa_rebook(adapt=bounds)
        return super().adapt(CasaAdaptive, minimum=bounds[0], maximum=bounds[1], **kwargs)

    async def _close(self):
        if self.status in (Status.running, Status.failed):
            await self._casa_closing()
        try:
            return await super()._close()
        finally:
            self._casa_release()


# ---------------------------------------------------------------------------------------------- local
def gpu_groups(inventory: Inventory, per_worker: int) -> list[str]:
    """``CUDA_VISIBLE_DEVICES`` values for the local GPU workers: consecutive, disjoint groups of devices."""
    if per_worker <= 0:
        return []
    ids = [g.id for g in inventory.gpus]
    return [",".join(ids[i : i + per_worker]) for i in range(0, len(ids) - per_worker + 1, per_worker)]


class CasaLocalCluster(BookedSpecCluster, LocalCluster):
    """A ``LocalCluster`` whose GPU workers each own devices no other worker of any of the user's clusters holds
    (``CUDA_VISIBLE_DEVICES`` in their env, handed out by the server's :class:`~casa_hub_ext.ledger.Ledger`).

    Workers are always added through :meth:`new_worker_spec`, at start-up too, so every worker gets free
    devices; asking for more GPU workers than are free is an :class:`OptionError`.
    """

    def __init__(self, *, n_workers: int = 0, gpus_per_worker: int = 0, booking: Booking | None = None, **kwargs):
        self._gpus_per_worker = gpus_per_worker
        if gpus_per_worker:
            kwargs["resources"] = {**kwargs.get("resources", {}), "GPU": gpus_per_worker}
        super().__init__(n_workers=0, booking=booking, **kwargs)
        try:
            for _ in range(n_workers):
                self.worker_spec.update(self.new_worker_spec())
            if not self.asynchronous and n_workers:
                self.sync(self._correct_state)
        except BaseException:
            if not self.asynchronous:
                self.close()
            else:
                self._casa_release()
            raise

    def new_worker_spec(self):
        spec = super().new_worker_spec()
        if not self._gpus_per_worker or self.casa_booking is None:
            return spec
        devices = self.casa_booking.ledger.take_devices(self._gpus_per_worker)
        ((name, worker),) = spec.items()
        worker = copy.deepcopy(worker)
        worker["options"]["env"] = {**worker["options"].get("env", {}), "CUDA_VISIBLE_DEVICES": devices}
        return {name: worker}


def local_kwargs(options: ClusterOptions, bundle: MountedBundle, scheduler_address=None) -> dict:
    kwargs = dict(
        n_workers=options.workers,
        threads_per_worker=options.cores,
        memory_limit=options.memory,
        processes=True,
        host="127.0.0.1",
        protocol="tls://",
        dashboard_address="127.0.0.1:0",
        security=bundle.security(),
        gpus_per_worker=options.gpus_per_worker,
    )
    if scheduler_address:  # the login cluster: a fixed scheduler address, workers stay on 127.0.0.1
        kwargs["scheduler_kwargs"] = {"host": scheduler_address[0], "port": scheduler_address[1]}
    return kwargs


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


def htcondor_kwargs(
    options: ClusterOptions, bundle: MountedBundle, settings: CasaClusterSettings, scheduler_address=None
) -> dict:
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
        scheduler_options=htcondor_scheduler_options(settings, scheduler_address),
        job_extra_directives=htcondor_job_directives(options, bundle, settings),
        worker_extra_args=extra + list(settings.htcondor_worker_extra_args),
        log_directory=settings.htcondor_log_directory or None,
        submit_command_extra=list(settings.htcondor_submit_command_extra),
        job_cls=htcondor_job_class(str(bundle.condor_token_dir), tuple(f.name for f in worker_tls_files(bundle))),
    )


def htcondor_scheduler_options(settings: CasaClusterSettings, scheduler_address=None) -> dict:
    options = {"dashboard_address": "127.0.0.1:0", **settings.htcondor_scheduler_options}
    if scheduler_address:  # the login cluster
        options.update(host=scheduler_address[0], port=scheduler_address[1])
    return options


@functools.cache
def htcondor_cluster_class():
    from dask_jobqueue import HTCondorCluster

    class CasaHTCondorCluster(BookedSpecCluster, HTCondorCluster):
        pass

    return CasaHTCondorCluster


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


class _GatewayAdapt:
    """What ``adapt`` gives on an asynchronous gateway cluster: dask-labextension reads ``minimum``/``maximum``
    from it without awaiting, so the request is sent in the background (and can still be awaited)."""

    def __init__(self, request, minimum: int, maximum: int):
        self.minimum, self.maximum = minimum, maximum
        self._task = asyncio.ensure_future(request)
        self._task.add_done_callback(self._log_failure)

    @staticmethod
    def _log_failure(task):
        if not task.cancelled() and task.exception() is not None:
            log.error("casa: adaptive scaling of a gateway cluster failed: %s", task.exception())

    def stop(self):
        pass

    def __await__(self):
        return self._task.__await__()


@functools.cache
def gateway_cluster_class():
    from dask_gateway import GatewayCluster

    class CasaGatewayCluster(BookedCluster, GatewayCluster):
        def scale(self, n, **kwargs):
            if self.status not in ("closing", "closed"):
                self._casa_rebook(workers=n)
            return super().scale(n, **kwargs)

        def adapt(self, minimum=None, maximum=None, active=True, **kwargs):
            if not active:
                return super().adapt(minimum=minimum, maximum=maximum, active=False, **kwargs)
            bounds = self._casa_adapt_bounds(minimum, maximum)
            self._casa_rebook(adapt=bounds)
            result = super().adapt(minimum=bounds[0], maximum=bounds[1], active=True, **kwargs)
            return _GatewayAdapt(result, *bounds) if self.asynchronous else result

        async def _stop_internal(self, shutdown=None):
            if self.status == "running":
                await self._casa_closing()
            try:
                return await super()._stop_internal(shutdown)
            finally:
                self._casa_release()

    return CasaGatewayCluster


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
    booking: Booking | None = None,
    scheduler_address: tuple[str, int] | None = None,
):
    """Validate ``options`` and build the cluster. Synchronous: returns a running cluster with ``workers``
    requested. ``asynchronous=True``: returns an awaitable giving the same. Raises :class:`OptionError` /
    :class:`CredentialError` before anything starts or is submitted.

    ``booking``: the place reserved in the server's ledger (its options are the validated ones); without it
    the cluster gets a ledger of its own. ``scheduler_address``: ``(host, port)`` for the scheduler (the login
    cluster)."""
    settings = settings or CasaClusterSettings()
    inventory = inventory or discover()
    if booking is None:
        booking = Ledger(settings, inventory).reserve(_validated(options, settings, inventory))
    opts = booking.options
    try:
        bundle = bundle or MountedBundle.from_env()
        if scheduler_address and opts.backend == "gateway":
            raise OptionError(
                "a gateway cluster cannot have a fixed scheduler address (CasaClusterSettings.login_cluster): "
                "use the local or htcondor backend",
                field="backend",
            )
        if opts.backend == "local":
            kwargs = local_kwargs(opts, bundle, scheduler_address)
            if asynchronous:
                return _started(CasaLocalCluster(asynchronous=True, booking=booking, **kwargs), None, opts)
            cluster = CasaLocalCluster(booking=booking, **kwargs)
            _adapt_sync(cluster, opts)
            return cluster
        if opts.backend == "htcondor":
            kwargs = htcondor_kwargs(opts, bundle, settings, scheduler_address)
            cluster = htcondor_cluster_class()(asynchronous=asynchronous, booking=booking, **kwargs)
        else:
            cluster = gateway_cluster_class()(
                asynchronous=asynchronous, booking=booking, **gateway_kwargs(opts, settings)
            )
    except BaseException:
        booking.release()
        raise
    if asynchronous:
        return _started(cluster, opts.workers, opts)
    cluster.scale(opts.workers)
    _adapt_sync(cluster, opts)
    return cluster


def _adapt_sync(cluster, opts: ClusterOptions) -> None:
    if opts.adapt:
        cluster.adapt(minimum=opts.adapt[0], maximum=opts.adapt[1])


async def _started(cluster, workers: int | None, opts: ClusterOptions | None = None):
    try:
        await cluster
        if workers:
            result = cluster.scale(workers)
            if isawaitable(result):
                await result
        if opts is not None and opts.adapt:
            result = cluster.adapt(minimum=opts.adapt[0], maximum=opts.adapt[1])
            if isawaitable(result):
                await result
    except BaseException:  # failed or cancelled (start timeout): leave no scheduler, process or job behind
        await asyncio.shield(asyncio.ensure_future(close_cluster(cluster)))
        raise
    return cluster


def labextension_cluster(*args, asynchronous: bool = False, **options):
    """dask-labextension's factory: ``await labextension_cluster(asynchronous=True, backend=..., ...)``.

    Inside the Jupyter server, the cluster takes a place in the server's ledger like every Casa cluster: the
    options Casa's REST API validated (passed along by :mod:`casa_hub_ext.labmanager`), or, for the sidebar's
    "+NEW" and ``labextension.initial``, the facility's defaults (over ``labextension.factory.kwargs``).
    Elsewhere the options are bounded the same way and the cluster books only for itself (notebook code
    uses :class:`casa_hub_ext.CasaCluster` instead, so that the sidebar lists the cluster).
    Credentials come from ``$CASA_CREDENTIALS_DIR``."""
    from .labmanager import active_manager, pending_cluster

    if args:
        raise TypeError("labextension_cluster takes keyword options only")
    options = {k.replace("-", "_"): v for k, v in options.items()}
    pending = pending_cluster()
    if pending is not None and asynchronous:
        return pending.build()
    manager = active_manager()
    if manager is not None and asynchronous:
        return manager.prepare(options, from_labextension=True).build()
    return make_cluster(options, asynchronous=asynchronous)
