"""A big hub's start-up: its running servers' users loaded in one query, and what it loads kept out of Python's
full garbage collections (opt-in: ``CasaAuthenticator.freeze_startup_heap``).

JupyterHub's ``init_spawners`` reads the running servers with ``selectinload`` and ``populate_existing()``. With
SQLAlchemy 2 that combination loads each server's user row by row (and then that user's servers) unless the users
are in the session already, whose identity map holds objects only weakly: about 5000 queries and 1 s for 1000
running servers. :func:`hold_running_users` loads those users in one query just before, and the hub keeps them
until it has loaded its spawners (:func:`release_when_loaded`); its own query then takes a handful.

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


def hold_running_users(db) -> list:
    """The users with a running server, loaded into JupyterHub's database session ``db`` in one query: keep the
    list until the hub has loaded its spawners."""
    from jupyterhub import orm  # noqa: PLC0415 - the hub's own models, only where a hub runs

    running = db.query(orm.Spawner.user_id).filter(orm.Spawner.server_id.isnot(None))
    return db.query(orm.User).filter(orm.User.id.in_(running)).all()


async def release_when_loaded(app, held: list, timeout: float) -> None:
    """Drop ``held`` once JupyterHub ``app`` has loaded its users' spawners, or after ``timeout`` seconds."""
    try:
        await _until_loaded(app, timeout)
    finally:
        held.clear()


def _loaded(app) -> bool:
    # JupyterHub's start() sets io_loop first thing, after initialize() (users and spawners loaded) returned, and
    # before it starts listening (one awaited request to the proxy later); http_server: it already serves
    return getattr(app, "io_loop", None) is not None or getattr(app, "http_server", None) is not None


async def _until_loaded(app, timeout: float) -> bool:
    """Wait until JupyterHub ``app`` has loaded its users and their spawners; False after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not _loaded(app):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(LOADED_POLL)
    return True


async def freeze_when_loaded(app, log: logging.Logger, timeout: float, resume: bool = True) -> int | None:
    """Once JupyterHub ``app`` has loaded its users and their spawners (its ``start()`` began), collect once and
    freeze what survives. Returns how many objects were frozen, None if the hub did not get there within
    ``timeout`` seconds. Automatic collection is resumed in every case when ``resume``."""
    try:
        if not await _until_loaded(app, timeout):
            log.warning("The hub did not start within %.0f s: its start-up heap is not frozen", timeout)
            return None
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
