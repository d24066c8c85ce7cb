"""What one user server has booked: Casa clusters running or starting, and the GPUs they hold.

Every Casa cluster of the server, however it was started (the Casa form, dask-labextension's "+NEW", the login
cluster), holds a :class:`Booking` in the server's one :class:`Ledger`. The ledger is checked *synchronously*
before anything is awaited, so three quick clicks cannot get past ``max_clusters`` or the GPU caps, and the
cluster objects check it again in their own ``scale``/``adapt`` (dask-labextension's sidebar calls those
directly). Local GPU devices are handed out here, so two workers of any two clusters never share a device.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Awaitable, Callable

from .errors import LimitError, OptionError
from .gpu import Inventory
from .options import CasaClusterSettings, ClusterOptions, OptionsSpec


@dataclass(eq=False)
class Booking:
    """One Casa cluster's place in the ledger: its current options (``workers``/``adapt`` follow scaling) and
    the cluster object once it exists."""

    ledger: Ledger
    options: ClusterOptions
    name: str | None = None
    key: int = 0
    cluster: object = None
    lab_id: str | None = None  # dask-labextension's id, once known
    released: bool = False
    on_closing: list[Callable[[object], Awaitable]] = field(default_factory=list)

    @property
    def gpus(self) -> int:
        return 0 if self.released else self.options.workers_booked * self.options.gpus_per_worker

    def rebook(self, workers: int | None = None, adapt: tuple[int, int] | None = None) -> None:
        """Scale to ``workers`` (or adaptive ``adapt``): refused with an OptionError when it is out of bounds or
        the backend's GPUs booked by all clusters would exceed its cap. Shrinking is always allowed."""
        self.ledger.rebook(self, workers, adapt)

    def release(self) -> None:
        self.ledger.release(self)


class Ledger:
    def __init__(self, settings: CasaClusterSettings, inventory: Callable[[], Inventory] | Inventory):
        self.settings = settings
        self._inventory = inventory if callable(inventory) else (lambda: inventory)
        self.bookings: list[Booking] = []
        self._keys = itertools.count(1)

    @property
    def inventory(self) -> Inventory:
        return self._inventory()

    def spec(self) -> OptionsSpec:
        return OptionsSpec(self.settings, self.inventory)

    # ------------------------------------------------------------------ reading
    def booked(self, backend: str, *, besides: Booking | None = None) -> int:
        return sum(b.gpus for b in self.bookings if b.options.backend == backend and b is not besides)

    def limits(self) -> dict:
        spec = self.spec()
        return {
            "max_clusters": self.settings.max_clusters,
            "clusters": len(self.bookings),
            "gpus": {
                b: {"max": spec.gpu_caps[b], "booked": self.booked(b), "per_worker": spec.gpu_limits[b]}
                for b in self.settings.backends
            },
        }

    # ------------------------------------------------------------------ booking (synchronous: no await inside)
    def reserve(self, options: ClusterOptions, name: str | None = None) -> Booking:
        if len(self.bookings) >= self.settings.max_clusters:
            raise LimitError(
                f"you already run {len(self.bookings)} Dask cluster(s), the most allowed "
                f"(CasaClusterSettings.max_clusters = {self.settings.max_clusters}); shut one down first"
            )
        booking = Booking(self, options, name, next(self._keys))
        self._check_gpus(booking, options)
        self.bookings.append(booking)
        return booking

    def rebook(self, booking: Booking, workers: int | None, adapt: tuple[int, int] | None) -> None:
        if booking.released:
            raise OptionError("this cluster has been shut down")
        options = booking.options.scaled(workers, adapt)
        grows = options.workers_booked * options.gpus_per_worker > booking.gpus
        if options.workers_booked > booking.options.workers_booked or grows:
            spec = self.spec()
            spec.check_gpus(options, options.workers_booked)
            self._check_gpus(booking, options, spec)
        booking.options = options

    def _check_gpus(self, booking: Booking, options: ClusterOptions, spec: OptionsSpec | None = None) -> None:
        need = options.workers_booked * options.gpus_per_worker
        if not need:
            return
        spec = spec or self.spec()
        cap, others = spec.gpu_caps.get(options.backend, 0), self.booked(options.backend, besides=booking)
        if others + need > cap:
            raise LimitError(
                f"{options.workers_booked} worker(s) x {options.gpus_per_worker} GPU(s) need {need} GPUs on the "
                f"{options.backend} backend; your other clusters hold {others} of the {cap} allowed",
                field="workers",
            )

    def release(self, booking: Booking) -> None:
        booking.released = True
        if booking in self.bookings:
            self.bookings.remove(booking)

    # ------------------------------------------------------------------ local devices
    def devices_in_use(self) -> set[str]:
        used = set()
        for b in self.bookings:
            for spec in getattr(b.cluster, "worker_spec", {}).values():
                visible = spec.get("options", {}).get("env", {}).get("CUDA_VISIBLE_DEVICES")
                if visible:
                    used.update(visible.split(","))
        return used

    def take_devices(self, per_worker: int) -> str:
        """``CUDA_VISIBLE_DEVICES`` for one new local GPU worker: ``per_worker`` devices no worker of any of
        this server's clusters holds."""
        used = self.devices_in_use()
        free = [g.id for g in self.inventory.gpus if g.id not in used]
        if len(free) < per_worker:
            raise LimitError(
                f"no free GPUs for another worker: it needs {per_worker}, and {len(used)} of this server's "
                f"{self.inventory.count} GPU(s) are held by workers of your clusters",
                field="workers",
            )
        return ",".join(free[:per_worker])
