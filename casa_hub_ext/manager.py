"""Casa's side of the user's clusters, without any Tornado code (the handlers are a thin layer over this).

The clusters themselves live in dask-labextension's manager (:mod:`casa_hub_ext.labmanager`): one list, one
sidebar, one dashboard proxy. Casa keeps only what dask-labextension does not know: each cluster's validated
options and what it books (:mod:`casa_hub_ext.ledger`), keyed by dask-labextension's cluster id. A cluster
shut down from the sidebar releases its booking when it closes; the next listing forgets it.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass
from typing import Awaitable, Callable

from .bundle import MountedBundle
from .errors import ClusterNotFound, OptionError
from .factory import close_cluster, make_cluster, run_hooks
from .gpu import Inventory, discover
from .labmanager import LabManager
from .ledger import Booking, Ledger
from .options import CasaClusterSettings, OptionsSpec

log = logging.getLogger(__name__)

LOGIN_CLUSTER_NAME = "Casa (login)"
Hook = Callable[[object], Awaitable]


@dataclass(eq=False)
class PendingCluster:
    """A validated request with its place in the ledger, about to be built by :func:`~.factory.labextension_cluster`."""

    manager: ClusterManager
    booking: Booking
    bundle: MountedBundle
    inventory: Inventory
    scheduler_address: tuple[str, int] | None = None
    built: bool = False

    def build(self):
        """The coroutine dask-labextension awaits: the started cluster, announced to the ``on_started`` hooks."""
        if self.built:
            raise RuntimeError("this Casa cluster request was already built")
        self.built = True
        return self.manager._build(self)


class ClusterManager:
    """Creates, lists, scales and closes the user's Casa clusters through dask-labextension's manager.

    ``bundle`` and ``inventory`` are callables so every request sees the current credentials (the hub
    replaces them on refresh) and GPUs; tests inject their own. ``on_started``/``on_closing`` are lists of
    ``async def hook(cluster)`` run after a Casa cluster started and before it closes, however it was started
    or closed (e.g. pushing renewed credentials to its workers).
    """

    def __init__(
        self,
        settings: CasaClusterSettings,
        *,
        lab: LabManager | None = None,
        bundle: Callable[[], MountedBundle] = MountedBundle.from_env,
        inventory: Callable[[], Inventory] = discover,
        start_timeout: float = 120,
        close_timeout: float = 60,
    ):
        self.settings = settings
        self.lab = lab or LabManager()
        self._bundle = bundle
        self.ledger = Ledger(settings, inventory)
        self.start_timeout, self.close_timeout = start_timeout, close_timeout
        self.on_started: list[Hook] = []
        self.on_closing: list[Hook] = []

    # ------------------------------------------------------------------ read-only
    def spec(self) -> OptionsSpec:
        return self.ledger.spec()

    def options(self) -> dict:
        """``GET casa/options``: the form's fields, what is in use, and whether GPUs are possible at all."""
        spec = self.spec()
        available, reason = spec.gpu_availability()
        return {
            "backends": list(self.settings.backends),
            "fields": [f.form() for f in spec.fields],
            "limits": self.ledger.limits(),
            "gpu": {"available": available, "reason": reason, "inventory": spec.inventory.to_dict()},
        }

    def gpus(self) -> dict:
        spec = self.spec()
        return {"inventory": spec.inventory.to_dict(), "options": spec.spec()}

    def credentials(self) -> dict:
        return self._bundle().status()

    async def list(self) -> list[dict]:
        models = await self.lab.list_clusters()
        return [self._model(m, b) for m in models if (b := self._claim(m)) is not None]

    async def get(self, cluster_id: str) -> dict:
        model = await self.lab.get_cluster(cluster_id)
        booking = self._claim(model) if model else None
        if booking is None:
            raise ClusterNotFound(f"no Casa cluster with id {cluster_id!r}")
        return self._model(model, booking)

    # ------------------------------------------------------------------ lifecycle
    def prepare(
        self, request: dict | None, *, name: str | None = None, scheduler_address=None, from_labextension=False
    ) -> PendingCluster:
        """Validate and reserve, synchronously (no await: concurrent requests cannot overbook)."""
        request = dict(request or {})
        default = _labextension_default() if from_labextension else {}
        if default:  # the sidebar's "+NEW": the facility's defaults, with dask-labextension's workers/adapt
            request = {**{k: v for k, v in request.items() if k not in ("workers", "adapt")}, **default}
        inventory = self.ledger.inventory
        options = OptionsSpec(self.settings, inventory).validate(request)  # bounded, before anything starts
        if scheduler_address and options.backend == "gateway":
            raise OptionError(
                "the login cluster cannot use the gateway backend: dask-gateway gives no fixed scheduler address "
                "(CasaClusterSettings.login_cluster)",
                field="backend",
            )
        bundle = self._bundle()
        bundle.security()  # a missing/expired certificate is a CredentialError naming it, before anything starts
        booking = self.ledger.reserve(options, name)
        booking.on_closing.append(self._run_closing_hooks)
        return PendingCluster(self, booking, bundle, inventory, scheduler_address)

    async def _build(self, pending: PendingCluster):
        cluster = await make_cluster(
            bundle=pending.bundle,
            settings=self.settings,
            inventory=pending.inventory,
            asynchronous=True,
            booking=pending.booking,
            scheduler_address=pending.scheduler_address,
        )
        log.info("casa: started a %s cluster at %s", pending.booking.options.backend, cluster.scheduler_address)
        await run_hooks(self.on_started, cluster, "started")
        return cluster

    async def create(self, request: dict | None = None, *, scheduler_address=None) -> dict:
        request = dict(request or {})
        name = request.pop("name", None)
        if name is not None and (not isinstance(name, str) or not name.strip() or len(name) > 100):
            raise OptionError(f"name={name!r}: expected a non-empty text of at most 100 characters", field="name")
        pending = self.prepare(request, name=name, scheduler_address=scheduler_address)
        options = pending.booking.options
        cluster_id = str(uuid.uuid4())  # dask-labextension's form: its URL patterns expect it
        pending.booking.lab_id = cluster_id
        configuration = {"name": name} if name else {}
        if options.adapt:
            configuration["adapt"] = {"minimum": options.adapt[0], "maximum": options.adapt[1]}
        else:
            configuration["workers"] = options.workers
        try:
            async with asyncio.timeout(self.start_timeout):
                model = await self.lab.start_cluster(cluster_id, configuration, pending)
        except BaseException:
            await self._discard(pending)
            raise
        if not pending.built:  # dask-labextension's factory is not Casa's: this is no Casa cluster
            await self.lab.close_cluster(cluster_id)
            pending.booking.release()
            raise OptionError(
                "dask-labextension's factory (dask config labextension.factory) is not casa_hub_ext.factory."
                "labextension_cluster: ask the facility's admins"
            )
        return self._model(model, pending.booking)

    async def scale(self, cluster_id: str, body: dict) -> dict:
        booking = await self._booking(cluster_id)
        spec = self.spec()
        if not isinstance(body, dict) or set(body) - {"workers", "adapt"} or len(body) != 1:
            raise OptionError('expected {"workers": n} or {"adapt": {"minimum": n, "maximum": m}}')
        if "adapt" in body:
            minimum, maximum = spec.field("adapt").validate(body["adapt"]) or (None, None)
            if minimum is None:
                raise OptionError("adapt: expected {'minimum': n, 'maximum': m}", field="adapt")
            spec.check_gpus(booking.options, maximum)
            model = await self.lab.adapt_cluster(cluster_id, minimum, maximum)
        else:
            workers = spec.field("workers").validate(body["workers"])
            spec.check_gpus(booking.options, workers)
            model = await self.lab.scale_cluster(cluster_id, workers)
        if model is None:
            raise ClusterNotFound(f"no Casa cluster with id {cluster_id!r}")
        return self._model(model, booking)

    async def close(self, cluster_id: str) -> dict:
        booking = await self._booking(cluster_id)
        async with asyncio.timeout(self.close_timeout):
            model = await self.lab.close_cluster(cluster_id)
        if model is None:
            raise ClusterNotFound(f"no Casa cluster with id {cluster_id!r}")
        return self._model(model, booking)

    async def close_all(self) -> None:
        """Close every Casa cluster (server stop): through dask-labextension when it lists them, else directly."""
        listed = {m["id"] for m in await self.lab.list_clusters()}
        closing = []
        for booking in list(self.ledger.bookings):
            if booking.lab_id in listed:
                closing.append(self.lab.close_cluster(booking.lab_id))
            elif booking.cluster is not None:
                closing.append(close_cluster(booking.cluster))
        if not closing:
            return
        log.info("casa: closing %d Casa cluster(s)", len(closing))

        async def bounded(closed):
            async with asyncio.timeout(self.close_timeout):
                return await closed

        results = await asyncio.gather(*(bounded(c) for c in closing), return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        for result in failed:
            log.error("casa: closing a cluster failed: %r", result)
        log.info("casa: closed %d Casa cluster(s)", len(results) - len(failed))

    async def start_login_cluster(self) -> dict | None:
        """Start ``CasaClusterSettings.login_cluster`` with its scheduler on ``scheduler_host:scheduler_port``.
        Failures are logged, never raised: the server runs on without it."""
        request = self.settings.login_cluster
        if request is None:
            return None
        address = (self.settings.scheduler_host, self.settings.scheduler_port)
        try:
            model = await self.create({**request, "name": LOGIN_CLUSTER_NAME}, scheduler_address=address)
        except Exception as e:
            log.error(
                "casa: the login cluster (CasaClusterSettings.login_cluster) did not start on port %s: %s: %s",
                address[1],
                type(e).__name__,
                e,
            )
            return None
        log.info("casa: login cluster %s at %s", model["id"], model["scheduler_address"])
        return model

    # ------------------------------------------------------------------ internals
    def _by_lab_id(self, cluster_id: str) -> Booking | None:
        return next((b for b in self.ledger.bookings if b.lab_id == cluster_id), None)

    async def _booking(self, cluster_id: str) -> Booking:
        booking = self._by_lab_id(cluster_id)
        if booking is not None:
            return booking
        model = await self.lab.get_cluster(cluster_id)  # one started from the sidebar, not yet claimed
        booking = self._claim(model) if model else None
        if booking is None:
            raise ClusterNotFound(f"no Casa cluster with id {cluster_id!r}")
        return booking

    def _claim(self, model: dict) -> Booking | None:
        """The booking behind a dask-labextension model: by id, or (a cluster from the sidebar's "+NEW", whose
        id the factory never saw) by scheduler address."""
        booking = self._by_lab_id(model["id"])
        if booking is not None:
            return booking
        for booking in self.ledger.bookings:
            address = getattr(booking.cluster, "scheduler_address", None)
            if booking.lab_id is None and address and address == model.get("scheduler_address"):
                booking.lab_id = model["id"]
                return booking
        return None

    async def _discard(self, pending: PendingCluster) -> None:
        """A start that failed or timed out: close what was built unless dask-labextension lists it."""
        booking = pending.booking
        listed = booking.lab_id and await self.lab.get_cluster(booking.lab_id)
        if booking.cluster is not None and not listed:
            try:
                async with asyncio.timeout(self.close_timeout):
                    await close_cluster(booking.cluster)
            except Exception:
                log.exception("casa: closing a cluster that failed to start failed")
        if not listed:
            booking.release()

    async def _run_closing_hooks(self, cluster) -> None:
        await run_hooks(self.on_closing, cluster, "closing")

    @staticmethod
    def _model(model: dict, booking: Booking) -> dict:
        return {
            **model,
            "adapt": model.get("adapt"),
            "casa": {**booking.options.to_dict(), "name": booking.name, "gpus_booked": booking.gpus},
        }


def _labextension_default() -> dict:
    """dask-labextension's ``labextension.default`` workers/adapt, so that they are bounded before the start."""
    import dask

    default = dask.config.get("labextension.default", default={}) or {}
    out = {}
    if default.get("adapt"):
        out["adapt"] = dict(default["adapt"])
    elif default.get("workers") is not None:
        out["workers"] = default["workers"]
    return out
