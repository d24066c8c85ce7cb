"""Measures the hub's own event loop from inside the hub process (started from jupyterhub_config.py).

Every ``interval`` the probe sleeps and records how late it woke up: that lateness is the time every other
request waited for the loop. Samples go to a file (``<wall time> <lag ms>`` per line) in batches, so that the
probe costs the hub almost nothing. Benchmark-only: the hub config of a benchmark run calls :func:`start`.
"""

from __future__ import annotations

import asyncio
import os
import time

_task: asyncio.Task | None = None  # a strong reference: the loop keeps only weak ones


async def _probe(path: str, interval: float) -> None:
    batch: list[str] = []
    with open(path, "a") as out:
        while True:
            before = time.monotonic()
            await asyncio.sleep(interval)
            lag = time.monotonic() - before - interval
            batch.append(f"{time.time():.4f} {lag * 1000:.3f}\n")
            if len(batch) >= 50:
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
    _task = loop.create_task(_probe(path, interval))


def read(path: str, since: float, until: float) -> list[float]:
    """Lag samples (ms) recorded between two wall-clock times."""
    samples = []
    with open(path) as f:
        for line in f:
            t, lag = line.split()
            if since <= float(t) <= until:
                samples.append(float(lag))
    return samples
