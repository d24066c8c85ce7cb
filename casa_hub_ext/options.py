"""Bounded, declarative cluster options (in the style of dask-gateway's ``options.py``).

Every request (REST, code, dask-labextension) goes through :meth:`OptionsSpec.validate` before anything starts
or is submitted; a value outside the facility's bounds is an :class:`~casa_hub_ext.errors.OptionError` whose
message names the option, the value and the allowed range. The limits are traitlets config
(``c.CasaClusterSettings.max_workers = 8``); defaults come from the environment the hub's profile sets.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from dataclasses import asdict, dataclass, replace
from typing import Any, Mapping

from dask.utils import format_bytes, parse_bytes
from traitlets import Dict, Float, Integer, List, TraitError, Unicode, default, validate
from traitlets.config import LoggingConfigurable

from .errors import OptionError
from .gpu import Inventory

BACKENDS = ("local", "htcondor", "gateway")


class CasaClusterSettings(LoggingConfigurable):
    """Which Dask backends a user may start and within which bounds."""

    backends = List(
        Unicode(),
        help="""Backends offered to the user, a subset of ``local``, ``htcondor``, ``gateway``.
        Default: ``$CASA_DASK_BACKENDS`` (comma separated), else ``local`` plus ``gateway`` when
        ``gateway_address`` is set and ``htcondor`` when ``condor_submit`` is on the PATH.
        Example: ``c.CasaClusterSettings.backends = ["local", "htcondor"]``""",
    ).tag(config=True)

    @default("backends")
    def _default_backends(self):
        env = os.environ.get("CASA_DASK_BACKENDS")
        if env:
            return [b.strip() for b in env.split(",") if b.strip()]
        found = ["local"]
        if shutil.which("condor_submit"):
            found.append("htcondor")
        if self.gateway_address:
            found.append("gateway")
        return found

    @validate("backends")
    def _check_backends(self, proposal):
        bad = [b for b in proposal.value if b not in BACKENDS]
        if bad or not proposal.value:
            raise TraitError(
                f"CasaClusterSettings.backends={proposal.value!r}: expected a non-empty subset of {list(BACKENDS)}"
            )
        return proposal.value

    default_workers = Integer(2, min=0, help="Workers a new cluster starts with.").tag(config=True)
    max_workers = Integer(16, min=1, help="Most workers one cluster may have.").tag(config=True)
    default_cores = Integer(1, min=1, help="Cores (threads) per worker by default.").tag(config=True)
    max_cores = Integer(8, min=1, help="Most cores per worker.").tag(config=True)
    default_memory = Unicode("2 GiB", help="Memory per worker by default.").tag(config=True)
    max_memory = Unicode("16 GiB", help='Most memory per worker, e.g. ``"32 GiB"``.').tag(config=True)

    max_gpus_per_worker = Integer(
        None,
        allow_none=True,
        min=0,
        help="""Most GPUs one worker may request. Default: ``$CASA_GPU_MAX_PER_WORKER`` (set by the hub's GPU
        profile), else (None) the number of GPUs discovered in this server, and 0 for remote backends.
        The local backend is also bounded by the GPUs this server has.""",
    ).tag(config=True)

    @default("max_gpus_per_worker")
    def _default_max_gpus(self):
        value = os.environ.get("CASA_GPU_MAX_PER_WORKER", "").strip()
        return int(value) if value else None

    max_clusters = Integer(
        3,
        min=1,
        help="""Most Casa clusters one user server runs at the same time, however they were started (the Casa
        form, dask-labextension's "+NEW" button, the login cluster).""",
    ).tag(config=True)

    max_gpus_per_backend = Dict(
        value_trait=Integer(min=0),
        help="""Most GPUs all of one user's clusters on a backend may book together, e.g.
        ``{"local": 2, "htcondor": 8}``. A backend not listed gets: ``local``, the GPUs discovered in this server;
        a remote backend, ``max_gpus_per_worker * max_workers`` (0 when the server has no GPU right). An
        adaptive cluster books for its maximum.""",
    ).tag(config=True)

    @validate("max_gpus_per_backend")
    def _check_gpu_caps(self, proposal):
        bad = sorted(set(proposal.value) - set(BACKENDS))
        if bad:
            raise TraitError(f"CasaClusterSettings.max_gpus_per_backend: unknown backend(s) {bad}; use {BACKENDS}")
        return proposal.value

    login_cluster = Dict(
        default_value=None,
        allow_none=True,
        help="""Options of a cluster started with the server, named "Casa (login)", whose scheduler listens on
        ``scheduler_host:scheduler_port`` so that ``Client()`` in a kernel (``DASK_SCHEDULER_ADDRESS``) and
        ``Client("tls://localhost:8786")`` connect to it; e.g. ``{"backend": "htcondor", "adapt": {"minimum": 0,
        "maximum": 10}}``. Bounded like every other request; not possible with ``gateway``. None: no login
        cluster.""",
    ).tag(config=True)

    scheduler_port = Integer(
        8786, min=1, max=65535, help="Port of the login cluster's scheduler (see ``login_cluster``)."
    ).tag(config=True)

    scheduler_host = Unicode(
        "0.0.0.0",
        help="""Interface the login cluster's scheduler listens on: ``0.0.0.0`` lets the pod's Service and
        HTCondor workers reach it; ``127.0.0.1`` keeps it inside the server.""",
    ).tag(config=True)

    start_timeout = Float(
        600.0,
        min=1.0,
        help="""Seconds a cluster may take to start (its scheduler up, its first workers asked for) before the
        request fails and everything it started is closed. HTCondor jobs can wait in the queue for minutes; the
        options dialog and ``CasaCluster()`` in a notebook wait this long. Default 600.""",
    ).tag(config=True)

    @validate("default_memory", "max_memory")
    def _check_memory(self, proposal):
        try:
            parse_bytes(proposal.value)
        except ValueError:
            raise TraitError(
                f"CasaClusterSettings.{proposal.trait.name}={proposal.value!r}: expected a size like '4 GiB'"
            ) from None
        return proposal.value

    # ---- HTCondor (dask-jobqueue)
    htcondor_accounting_group = Unicode(
        "group_casa",
        help="""Accounting group prefix; jobs get ``accounting_group = <prefix>.<user>`` and
        ``accounting_group_user = <user>``.""",
    ).tag(config=True)
    htcondor_disk = Unicode("1 GiB", help="Scratch disk requested per worker job.").tag(config=True)
    htcondor_python = Unicode(
        help="Python on the execute nodes (default: this server's own interpreter, for shared software areas)."
    ).tag(config=True)

    @default("htcondor_python")
    def _default_htcondor_python(self):
        return sys.executable

    htcondor_scheduler_options = Dict(
        help="""``scheduler_options`` for the scheduler in this server, e.g. the address execute nodes reach it
        at: ``{"host": "0.0.0.0", "contact_address": "tls://jupyter-alice.casa:8786"}``.""",
    ).tag(config=True)
    htcondor_job_extra_directives = Dict(help="Extra submit-file lines for every worker job.").tag(config=True)
    htcondor_submit_command_extra = List(Unicode(), help="Extra ``condor_submit`` arguments.").tag(config=True)
    htcondor_worker_extra_args = List(
        Unicode(), help='Extra ``dask worker`` arguments, e.g. ``["--host", "0.0.0.0"]``.'
    ).tag(config=True)
    htcondor_log_directory = Unicode(help="Where worker jobs write stdout/stderr/log (default: none).").tag(config=True)

    # ---- dask-gateway
    gateway_address = Unicode(help="dask-gateway address. Default: ``$DASK_GATEWAY__ADDRESS``.").tag(config=True)
    gateway_proxy_address = Unicode(help="dask-gateway proxy address (default: the gateway's).").tag(config=True)
    gateway_auth = Unicode(
        "jupyterhub", help="dask-gateway client auth: ``jupyterhub`` (the server's API token), ``basic``, ..."
    ).tag(config=True)

    @default("gateway_address")
    def _default_gateway_address(self):
        return os.environ.get("DASK_GATEWAY__ADDRESS", "")

    @default("gateway_proxy_address")
    def _default_gateway_proxy(self):
        return os.environ.get("DASK_GATEWAY__PROXY_ADDRESS", "")


# ---------------------------------------------------------------------------------------------- fields
_WHOLE_NUMBER = re.compile(r"[+-]?[0-9]+")


class Field:
    type = "field"

    def __init__(self, name: str, default: Any, label: str):
        self.name, self.default, self.label = name, default, label

    def validate(self, value):
        raise NotImplementedError

    def error(self, message: str) -> OptionError:
        return OptionError(message, field=self.name)

    def form(self) -> dict:
        """What the JupyterLab form renders (``GET casa/options``)."""
        return {"name": self.name, "label": self.label, "type": self.type, "default": self.default}

    def spec(self) -> dict:  # the older shape of ``GET casa/gpus``
        return {"name": self.name, "kind": self.type, "label": self.label, "default": self.default}


class IntegerField(Field):
    type = "integer"

    def __init__(self, name, default, label, *, min: int = 0, max: int | None = None):
        super().__init__(name, default, label)
        self.min, self.max = min, max

    def validate(self, value):
        # ASCII digits only: "", "1.5", "two", 1.5 and True are errors, never silently 0 or 1
        if isinstance(value, str) and _WHOLE_NUMBER.fullmatch(value.strip()):
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(f"{self.name}={value!r}: expected a whole number")
        if value < self.min or (self.max is not None and value > self.max):
            raise self.error(f"{self.name}={value} is outside the allowed range {self.min}..{self.max}")
        return value

    def form(self):
        return {**super().form(), "min": self.min, "max": self.max, "step": 1}

    def spec(self):
        return {**super().spec(), "min": self.min, "max": self.max}


class SelectField(Field):
    type = "select"

    def __init__(self, name, default, label, *, options):
        super().__init__(name, default, label)
        self.options = list(options)

    def validate(self, value):
        if value not in self.options:
            raise self.error(f"{self.name}={value!r}: expected one of {self.options}")
        return value

    def form(self):
        return {**super().form(), "min": None, "max": None, "choices": self.options}

    def spec(self):
        return {**super().spec(), "options": self.options}


class MemoryField(Field):
    type = "memory"

    def __init__(self, name, default, label, *, min: int, max: int):
        super().__init__(name, default, label)
        self.min, self.max = min, max

    def validate(self, value):
        try:
            if isinstance(value, bool) or not isinstance(value, (str, int)) or not str(value).strip():
                raise ValueError
            number = parse_bytes(value) if isinstance(value, str) else value
        except (TypeError, ValueError, OverflowError):  # OverflowError: JSON's Infinity
            raise self.error(f"{self.name}={value!r}: expected a size like '4 GiB'") from None
        if not self.min <= number <= self.max:
            raise self.error(
                f"{self.name}={format_bytes(number)} is outside the allowed range "
                f"{format_bytes(self.min)}..{format_bytes(self.max)}"
            )
        return int(number)

    def form(self):
        return {**super().form(), "min": self.min, "max": self.max, "step": 2**28}

    def spec(self):
        return {**super().spec(), "min": self.min, "max": self.max}


class AdaptField(Field):
    """``{"minimum": a, "maximum": b}``: adaptive scaling between a and b workers, instead of ``workers``."""

    type = "range"

    def __init__(self, name, label, *, max: int):
        super().__init__(name, None, label)
        self.bound = IntegerField(name, 0, label, min=0, max=max)

    def validate(self, value):
        if value is None:
            return None
        if not isinstance(value, Mapping) or set(value) != {"minimum", "maximum"}:
            raise self.error(f"{self.name}={value!r}: expected {{'minimum': n, 'maximum': m}}")
        bounds = []
        for key in ("minimum", "maximum"):
            field = IntegerField(f"{self.name}.{key}", 0, self.label, min=0, max=self.bound.max)
            bounds.append(field.validate(value[key]))
        if bounds[0] > bounds[1]:
            raise self.error(f"{self.name}: minimum={bounds[0]} is more than maximum={bounds[1]}")
        return tuple(bounds)

    def form(self):
        return {**super().form(), "min": 0, "max": self.bound.max, "step": 1}

    def spec(self):
        return {**super().spec(), "min": 0, "max": self.bound.max}


# ---------------------------------------------------------------------------------------------- options
@dataclass(frozen=True)
class ClusterOptions:
    """A validated request: what the factory builds from. With ``adapt`` the cluster starts with ``workers`` =
    its minimum and scales between ``adapt = (minimum, maximum)``."""

    backend: str = "local"
    workers: int = 2
    cores: int = 1
    memory: int = 2 * 2**30  # bytes per worker
    gpus_per_worker: int = 0
    adapt: tuple[int, int] | None = None

    @property
    def workers_booked(self) -> int:
        """Workers the GPU accounting reserves: an adaptive cluster may grow to its maximum."""
        return self.adapt[1] if self.adapt else self.workers

    def scaled(self, workers: int | None = None, adapt: tuple[int, int] | None = None) -> ClusterOptions:
        return replace(self, workers=adapt[0] if adapt else workers, adapt=adapt)

    def to_dict(self) -> dict:
        values = asdict(self)
        values["adapt"] = {"minimum": self.adapt[0], "maximum": self.adapt[1]} if self.adapt else None
        return values


class OptionsSpec:
    """The bounded options one user may choose from, built from settings + this server's GPU inventory."""

    def __init__(self, settings: CasaClusterSettings, inventory: Inventory):
        self.settings, self.inventory = settings, inventory
        s = settings
        self.gpu_limits = {b: self._gpu_limit(b) for b in s.backends}
        self.gpu_caps = {b: self._gpu_cap(b) for b in s.backends}
        self.fields = [
            SelectField("backend", s.backends[0], "Backend", options=s.backends),
            IntegerField("workers", min(s.default_workers, s.max_workers), "Workers", min=0, max=s.max_workers),
            AdaptField("adapt", "Adaptive workers", max=s.max_workers),
            IntegerField("cores", min(s.default_cores, s.max_cores), "Cores per worker", min=1, max=s.max_cores),
            MemoryField("memory", s.default_memory, "Memory per worker", min=2**28, max=parse_bytes(s.max_memory)),
            IntegerField("gpus_per_worker", 0, "GPUs per worker", min=0, max=max(self.gpu_limits.values())),
        ]

    def _gpu_limit(self, backend: str) -> int:
        configured = self.settings.max_gpus_per_worker
        if backend == "local":
            here = self.inventory.count
            return here if configured is None else min(configured, here)
        return configured or 0

    def _gpu_cap(self, backend: str) -> int:
        configured = self.settings.max_gpus_per_backend.get(backend)
        if configured is not None:
            return configured
        if backend == "local":
            return self.inventory.count
        return self._gpu_limit(backend) * self.settings.max_workers

    def field(self, name: str) -> Field:
        return next(f for f in self.fields if f.name == name)

    def spec(self) -> dict:
        return {"fields": [f.spec() for f in self.fields], "gpus_per_worker_max": self.gpu_limits}

    def gpu_availability(self) -> tuple[bool, str | None]:
        """Whether this user may start GPU workers at all and, when not, why (shown next to the GPU field)."""
        usable = [b for b in self.settings.backends if self.gpu_limits[b] > 0 and self.gpu_caps[b] > 0]
        if usable:
            return True, None
        if self.settings.max_gpus_per_worker == 0:
            return False, "GPUs are switched off for this server (CasaClusterSettings.max_gpus_per_worker = 0)"
        if self.inventory.count == 0 and not self.settings.max_gpus_per_worker:
            return False, (
                "no GPU in this server's profile (none found: "
                f"{self.inventory.source}); start your server with a GPU profile to get GPU workers"
            )
        return False, (
            f"the facility's GPU cap is 0 for {', '.join(self.settings.backends)} "
            "(CasaClusterSettings.max_gpus_per_backend)"
        )

    def validate(self, request: Mapping | None = None) -> ClusterOptions:
        request = dict(request or {})
        unknown = sorted(set(request) - {f.name for f in self.fields})
        if unknown:
            raise OptionError(
                f"unknown cluster option(s) {unknown}; allowed: {[f.name for f in self.fields]}", field=unknown[0]
            )
        if request.get("adapt") is not None and request.get("workers") is not None:
            raise OptionError("give either workers or adapt, not both", field="adapt")
        values = {f.name: f.validate(request.get(f.name, f.default)) for f in self.fields}
        if values["adapt"]:
            values["workers"] = values["adapt"][0]
        options = ClusterOptions(**values)
        self.check_gpus(options, options.workers_booked)
        return options

    def check_gpus(self, options: ClusterOptions, workers: int) -> None:
        """Per-backend GPU bounds of one cluster of ``workers``; also used when scaling an existing cluster."""
        limit = self.gpu_limits[options.backend]
        if options.gpus_per_worker > limit:
            where = "in this server" if options.backend == "local" else f"on the {options.backend} backend"
            raise OptionError(
                f"gpus_per_worker={options.gpus_per_worker} is more than the {limit} GPU(s) per worker allowed {where}",
                field="gpus_per_worker",
            )
        if workers > self.settings.max_workers:
            raise OptionError(
                f"workers={workers} is outside the allowed range 0..{self.settings.max_workers}", field="workers"
            )
        need = workers * options.gpus_per_worker
        if options.backend == "local" and need > self.inventory.count:
            raise OptionError(
                f"{workers} worker(s) x {options.gpus_per_worker} GPU(s) need {need} GPUs; "
                f"this server has {self.inventory.count}",
                field="workers",
            )
        cap = self.gpu_caps[options.backend]
        if need > cap:
            raise OptionError(
                f"{workers} worker(s) x {options.gpus_per_worker} GPU(s) need {need} GPUs; "
                f"the {options.backend} backend allows {cap} (CasaClusterSettings.max_gpus_per_backend)",
                field="workers",
            )
