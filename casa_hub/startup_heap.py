"""Keep what a big hub loads at start-up out of Python's full garbage collections (opt-in:
``CasaAuthenticator.freeze_startup_heap``).

A hub with 1000 running servers holds about half a million objects that live as long as it runs (its users,
their spawners, database rows). CPython's full (generation-2) collection walks all of them, 100-300 ms each on a
2-core machine, and every request and credential refresh waits for it; a herd of refreshes triggers several.
This follows the pattern the ``gc`` documentation gives for pre-fork servers: automatic collection is paused
while the hub loads its users, then one collection frees the start-up garbage and ``gc.freeze()`` moves the
survivors to the permanent generation, which later collections skip. That one collection (about 350 ms with
1000 users) runs as JupyterHub's ``start()`` begins, once its users and spawners are loaded and before it
listens, so no request waits for it.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time

LOADED_POLL = 0.005  # seconds between looks at whether the hub has loaded its users (a look is one attribute read)


def pause_collection() -> bool:
    """Pause automatic collection until :func:`freeze_when_loaded` ends; False if it was already paused (then
    the caller must not resume it: someone else owns it)."""
    if not gc.isenabled():
        return False
    gc.disable()
    return True


def _loaded(app) -> bool:
    # JupyterHub's start() sets io_loop first thing, after initialize() (users and spawners loaded) returned, and
    # before it starts listening (one awaited request to the proxy later); http_server: it already serves
    return getattr(app, "io_loop", None) is not None or getattr(app, "http_server", None) is not None


async def freeze_when_loaded(app, log: logging.Logger, timeout: float, resume: bool = True) -> int | None:
    """Once JupyterHub ``app`` has loaded its users and their spawners (its ``start()`` began), collect once and
    freeze what survives. Returns how many objects were frozen, None if the hub did not get there within
    ``timeout`` seconds. Automatic collection is resumed in every case when ``resume``."""
    deadline = time.monotonic() + timeout
    try:
        while not _loaded(app):
            if time.monotonic() > deadline:
                log.warning("The hub did not start within %.0f s: its start-up heap is not frozen", timeout)
                return None
            await asyncio.sleep(LOADED_POLL)
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
