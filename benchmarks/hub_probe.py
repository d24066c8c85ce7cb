"""Measures the hub's own event loop from inside the hub process (started from jupyterhub_config.py).

Every ``interval`` the probe sleeps and records how late it woke up: that lateness is the time every other
request waited for the loop. Samples go to a file (``<wall time> <lag ms>`` per line) in batches, so that the
probe costs the hub almost nothing. With each batch goes one line of the hub's garbage-collection totals so far
(``<wall time> gc <seconds> <collections of generation 0> <1> <2>``), timed through ``gc.callbacks``.
Benchmark-only: the hub config of a benchmark run calls :func:`start`.
"""

from __future__ import annotations

import asyncio
import gc
import os
import time

_task: asyncio.Task | None = None  # a strong reference: the loop keeps only weak ones
_gc_seconds = 0.0
_gc_collections = [0, 0, 0]
_gc_began = 0.0


def _time_gc(phase: str, info: dict) -> None:
    global _gc_seconds, _gc_began
    if phase == "start":
        _gc_began = time.perf_counter()
    else:
        _gc_seconds += time.perf_counter() - _gc_began
        _gc_collections[info["generation"]] += 1


async def _probe(path: str, interval: float) -> None:
    batch: list[str] = []
    with open(path, "a") as out:
        while True:
            before = time.monotonic()
            await asyncio.sleep(interval)
            lag = time.monotonic() - before - interval
            batch.append(f"{time.time():.4f} {lag * 1000:.3f}\n")
            if len(batch) >= 50:
                n0, n1, n2 = _gc_collections
                batch.append(f"{time.time():.4f} gc {_gc_seconds:.6f} {n0} {n1} {n2}\n")
                out.writelines(batch)
                out.flush()
                batch.clear()


def start(path: str, interval: float = 0.005) -> None:
    """Start probing on the running loop (JupyterHub loads its config file inside the loop)."""
    global _task
    loop = asyncio.get_running_loop()
    if os.environ.get("CASA_BENCH_SLOW_CALLBACKS"):  # diagnosis: log every callback that blocks longer
        loop.set_debug(True)
        loop.slow_callback_duration = float(os.environ["CASA_BENCH_SLOW_CALLBACKS"])
    gc.callbacks.append(_time_gc)
    _task = loop.create_task(_probe(path, interval))


def read(path: str, since: float, until: float) -> list[float]:
    """Lag samples (ms) recorded between two wall-clock times."""
    samples = []
    with open(path) as f:
        for line in f:
            fields = line.split()
            if len(fields) == 2 and since <= float(fields[0]) <= until:
                samples.append(float(fields[1]))
    return samples


def read_gc(path: str, since: float, until: float) -> tuple[float, int]:
    """Seconds the hub spent in garbage collection between two wall-clock times (to the probe's batches, about
    a quarter of a second apart), and how many full (generation-2) collections it ran. Totals that go down
    come from a restarted hub, which counts from zero."""
    seconds, full = 0.0, 0
    previous = (0.0, 0)
    with open(path) as f:
        for line in f:
            fields = line.split()
            if len(fields) != 6 or fields[1] != "gc":
                continue
            totals = (float(fields[2]), int(fields[5]))
            if since < float(fields[0]) <= until:
                restarted = totals[0] < previous[0] or totals[1] < previous[1]
                base = (0.0, 0) if restarted else previous
                seconds, full = seconds + totals[0] - base[0], full + totals[1] - base[1]
            previous = totals
    return seconds, full
