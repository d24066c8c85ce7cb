"""Keep what a big hub loads at start-up out of Python's full garbage collections (opt-in:
``CasaAuthenticator.freeze_startup_heap``).

A hub with 1000 running servers holds about half a million objects that live as long as it runs (its users,
their spawners, database rows). CPython's full (generation-2) collection walks all of them, 100-300 ms each on a
2-core machine, and every request and credential refresh waits for it; a herd of refreshes triggers several.
This follows the pattern the ``gc`` documentation gives for pre-fork servers: automatic collection is paused
while the hub loads its users, then one collection frees the start-up garbage and ``gc.freeze()`` moves the
survivors to the permanent generation, which later collections skip.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time

SERVING_POLL = 0.05  # seconds between looks at whether the hub serves yet


def pause_collection() -> bool:
    """Pause automatic collection until :func:`freeze_when_serving` ends; False if it was already paused (then
    the caller must not resume it: someone else owns it)."""
    if not gc.isenabled():
        return False
    gc.disable()
    return True


async def freeze_when_serving(app, log: logging.Logger, timeout: float, resume: bool = True) -> int | None:
    """Once JupyterHub ``app`` serves (its HTTP server exists: its users and their spawners are loaded), collect
    once and freeze what survives. Returns how many objects were frozen, None if the hub did not serve within
    ``timeout`` seconds. Automatic collection is resumed in every case when ``resume``."""
    deadline = time.monotonic() + timeout
    try:
        while getattr(app, "http_server", None) is None:
            if time.monotonic() > deadline:
                log.warning("The hub did not start within %.0f s: its start-up heap is not frozen", timeout)
                return None
            await asyncio.sleep(SERVING_POLL)
        started = time.perf_counter()
        freed = gc.collect()
        gc.freeze()
        frozen = gc.get_freeze_count()
        log.info(
            "Froze the hub's %d start-up objects out of full garbage collections (%d freed first, %.0f ms)",
            frozen,
            freed,
            (time.perf_counter() - started) * 1000,
        )
        return frozen
    finally:
        if resume:
            gc.enable()
