"""Bounded, declarative cluster options (in the style of dask-gateway's ``options.py``).

Every request (REST, code, dask-labextension) goes through :meth:`OptionsSpec.validate` before anything starts
or is submitted; a value outside the facility's bounds is an :class:`~casa_hub_ext.errors.OptionError` whose
message names the option, the value and the allowed range. The limits are traitlets config
(``c.CasaClusterSettings.max_workers = 8``); defaults come from the environment the hub's profile sets.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import asdict, dataclass
from typing import Any, Mapping

from dask.utils import format_bytes, parse_bytes
from traitlets import Dict, Integer, List, TraitError, Unicode, default, validate
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
class Field:
    kind = "field"

    def __init__(self, name: str, default: Any, label: str):
        self.name, self.default, self.label = name, default, label

    def validate(self, value):
        raise NotImplementedError

    def spec(self) -> dict:
        return {"name": self.name, "kind": self.kind, "label": self.label, "default": self.default}


class IntegerField(Field):
    kind = "integer"

    def __init__(self, name, default, label, *, min: int = 0, max: int | None = None):
        super().__init__(name, default, label)
        self.min, self.max = min, max

    def validate(self, value):
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise OptionError(f"{self.name}={value!r}: expected a whole number")
        try:
            number = int(value)
        except ValueError:
            raise OptionError(f"{self.name}={value!r}: expected a whole number") from None
        if number < self.min or (self.max is not None and number > self.max):
            raise OptionError(f"{self.name}={number} is outside the allowed range {self.min}..{self.max}")
        return number

    def spec(self):
        return {**super().spec(), "min": self.min, "max": self.max}


class SelectField(Field):
    kind = "select"

    def __init__(self, name, default, label, *, options):
        super().__init__(name, default, label)
        self.options = list(options)

    def validate(self, value):
        if value not in self.options:
            raise OptionError(f"{self.name}={value!r}: expected one of {self.options}")
        return value

    def spec(self):
        return {**super().spec(), "options": self.options}


class MemoryField(Field):
    kind = "memory"

    def __init__(self, name, default, label, *, min: int, max: int):
        super().__init__(name, default, label)
        self.min, self.max = min, max

    def validate(self, value):
        try:
            number = parse_bytes(value) if isinstance(value, str) else int(value)
        except (TypeError, ValueError, OverflowError):  # OverflowError: JSON's Infinity
            raise OptionError(f"{self.name}={value!r}: expected a size like '4 GiB'") from None
        if not self.min <= number <= self.max:
            raise OptionError(
                f"{self.name}={format_bytes(number)} is outside the allowed range "
                f"{format_bytes(self.min)}..{format_bytes(self.max)}"
            )
        return number

    def spec(self):
        return {**super().spec(), "min": self.min, "max": self.max}


# ---------------------------------------------------------------------------------------------- options
@dataclass(frozen=True)
class ClusterOptions:
    """A validated request: what the factory builds from."""

    backend: str = "local"
    workers: int = 2
    cores: int = 1
    memory: int = 2 * 2**30  # bytes per worker
    gpus_per_worker: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


class OptionsSpec:
    """The bounded options one user may choose from, built from settings + this server's GPU inventory."""

    def __init__(self, settings: CasaClusterSettings, inventory: Inventory):
        self.settings, self.inventory = settings, inventory
        s = settings
        self.gpu_limits = {b: self._gpu_limit(b) for b in s.backends}
        self.fields = [
            SelectField("backend", s.backends[0], "Backend", options=s.backends),
            IntegerField("workers", min(s.default_workers, s.max_workers), "Workers", min=0, max=s.max_workers),
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

    def spec(self) -> dict:
        return {"fields": [f.spec() for f in self.fields], "gpus_per_worker_max": self.gpu_limits}

    def validate(self, request: Mapping | None = None) -> ClusterOptions:
        request = dict(request or {})
        unknown = sorted(set(request) - {f.name for f in self.fields})
        if unknown:
            raise OptionError(f"unknown cluster option(s) {unknown}; allowed: {[f.name for f in self.fields]}")
        values = {f.name: f.validate(request.get(f.name, f.default)) for f in self.fields}
        options = ClusterOptions(**values)
        self.check_gpus(options, options.workers)
        return options

    def check_gpus(self, options: ClusterOptions, workers: int) -> None:
        """Per-backend GPU bounds; also used when scaling an existing cluster."""
        limit = self.gpu_limits[options.backend]
        if options.gpus_per_worker > limit:
            where = "in this server" if options.backend == "local" else f"on the {options.backend} backend"
            raise OptionError(
                f"gpus_per_worker={options.gpus_per_worker} is more than the {limit} GPU(s) per worker allowed {where}"
            )
        if (
            options.backend == "local"
            and options.gpus_per_worker
            and workers * options.gpus_per_worker > self.inventory.count
        ):
            raise OptionError(
                f"{workers} worker(s) x {options.gpus_per_worker} GPU(s) need "
                f"{workers * options.gpus_per_worker} GPUs; this server has {self.inventory.count}"
            )
        if workers > self.settings.max_workers:
            raise OptionError(f"workers={workers} is outside the allowed range 0..{self.settings.max_workers}")
