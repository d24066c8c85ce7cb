"""GPU discovery for the user's server: NVML when it is there, otherwise what the environment declares.

Order: NVML (``pynvml``, optional) -> ``CUDA_VISIBLE_DEVICES`` -> ``NVIDIA_VISIBLE_DEVICES`` (set by the NVIDIA
container runtime) -> ``CASA_GPU_COUNT`` (set by the hub's profile). The first source that knows answers;
``CUDA_VISIBLE_DEVICES`` also restricts what NVML reports, as CUDA itself would. ``CASA_GPU_COUNT``, what the
hub's profile granted, caps every source: a CPU-profile server on a GPU node whose image sets
``NVIDIA_VISIBLE_DEVICES=all`` sees the node's GPUs through NVML, and its Dask clusters must not hand them out.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Mapping

_NONE_VALUES = {"", "none", "void", "-1", "nodevfiles"}


@dataclass(frozen=True)
class GPU:
    index: int
    id: str  # what to put in CUDA_VISIBLE_DEVICES for this device (index or UUID)
    name: str = "GPU"
    memory_bytes: int | None = None


@dataclass(frozen=True)
class Inventory:
    gpus: tuple[GPU, ...]
    source: str  # nvml | CUDA_VISIBLE_DEVICES | NVIDIA_VISIBLE_DEVICES | CASA_GPU_COUNT | none

    @property
    def count(self) -> int:
        return len(self.gpus)

    def to_dict(self) -> dict:
        return {"count": self.count, "source": self.source, "gpus": [asdict(g) for g in self.gpus]}


def _split(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _from_nvml(nvml) -> list[GPU] | None:
    """Physical devices via NVML, or None when NVML is unusable (no library, no driver, no device)."""
    if nvml is None:
        try:
            import pynvml as nvml  # noqa: PLC0415 - optional dependency
        except ImportError:
            return None
    try:
        nvml.nvmlInit()
    except Exception:  # NVMLError_LibraryNotFound / DriverNotLoaded ...: no usable GPU stack here
        return None
    try:
        gpus = []
        for i in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(i)
            name = nvml.nvmlDeviceGetName(handle)
            uuid = nvml.nvmlDeviceGetUUID(handle)
            memory = nvml.nvmlDeviceGetMemoryInfo(handle).total
            gpus.append(
                GPU(
                    i,
                    uuid.decode() if isinstance(uuid, bytes) else uuid,
                    name.decode() if isinstance(name, bytes) else name,
                    int(memory),
                )
            )
        return gpus
    except Exception:
        return None
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:
            pass


def _visible(devices: list[GPU], visible: list[str]) -> list[GPU]:
    """Restrict NVML's devices to CUDA_VISIBLE_DEVICES (indices or UUID prefixes), renumbered as CUDA does."""
    chosen = []
    for v in visible:
        for d in devices:
            if v == str(d.index) or (len(v) > 3 and d.id.startswith(v)):
                chosen.append(d)
                break
    return [GPU(i, d.id, d.name, d.memory_bytes) for i, d in enumerate(chosen)]


def discover(environ: Mapping[str, str] | None = None, nvml=None) -> Inventory:
    """The GPUs this server may use. ``nvml`` is an injectable pynvml-like module (tests)."""
    env = os.environ if environ is None else environ
    granted = _granted(env)
    inventory = _visible_inventory(env, nvml)
    if granted is None:
        return inventory
    if inventory.source == "none":
        return Inventory(tuple(GPU(i, str(i)) for i in range(granted)), "CASA_GPU_COUNT")
    return Inventory(inventory.gpus[:granted], inventory.source)


def _visible_inventory(env: Mapping[str, str], nvml) -> Inventory:
    cuda = env.get("CUDA_VISIBLE_DEVICES")
    devices = _from_nvml(nvml)
    if devices:
        if cuda is not None:
            devices = [] if cuda.strip().lower() in _NONE_VALUES else _visible(devices, _split(cuda))
        return Inventory(tuple(devices), "nvml")
    if cuda is not None:
        ids = [] if cuda.strip().lower() in _NONE_VALUES else _split(cuda)
        return Inventory(tuple(GPU(i, v) for i, v in enumerate(ids)), "CUDA_VISIBLE_DEVICES")
    nvidia = env.get("NVIDIA_VISIBLE_DEVICES")
    if nvidia is not None and nvidia.strip().lower() not in ("all",):
        ids = [] if nvidia.strip().lower() in _NONE_VALUES else _split(nvidia)
        return Inventory(tuple(GPU(i, v) for i, v in enumerate(ids)), "NVIDIA_VISIBLE_DEVICES")
    return Inventory((), "none")


def _granted(env: Mapping[str, str]) -> int | None:
    """``CASA_GPU_COUNT``, the GPUs the hub's profile granted, or None when it is not set."""
    count = env.get("CASA_GPU_COUNT", "").strip()
    if not count:
        return None
    try:
        return max(0, int(count))
    except ValueError:
        raise ValueError(f"CASA_GPU_COUNT={count!r}: expected a whole number of GPUs") from None
