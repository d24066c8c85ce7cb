"""What code in a Dask worker sees of the credentials WorkerCredentials pushes, for the tests of every backend."""

from __future__ import annotations

import asyncio
import os
import stat
import time
from pathlib import Path

import pytest
from distributed import Client

from casa_hub_ext.bundle import MountedBundle

POLL = 0.2
# a renewal must reach the workers within one poll, the read and one push; the bound leaves room for a busy CI
RENEWAL_BOUND = 10.0


def worker_view(dask_worker):
    """What code in the worker sees: the files the variables name, their modes, where they are."""
    view = {"local_directory": dask_worker.local_directory}
    for env in ("BEARER_TOKEN_FILE", "CASA_MACAROON_FILE"):
        path = os.environ.get(env)
        if path and os.path.exists(path):
            view[env] = {
                "path": path,
                "content": open(path, "rb").read(),
                "mode": stat.S_IMODE(os.stat(path).st_mode),
                "dir_mode": stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode),
            }
    return view


def mounted_bytes(bundle_dir: Path) -> tuple[bytes, bytes]:
    bundle = MountedBundle.from_directory(bundle_dir)
    return bundle.credentials["xcache"].path.read_bytes(), bundle.credentials["macaroon"].path.read_bytes()


async def wait_for_token(client: Client, token: bytes, n_workers: int, bound: float, since: float | None = None):
    """Seconds from ``since`` (default: now) until ``n_workers`` workers read ``token`` through
    BEARER_TOKEN_FILE; fails after ``bound``."""
    t0 = time.monotonic() if since is None else since
    while True:
        views = await client.run(worker_view)
        have = [v.get("BEARER_TOKEN_FILE", {}).get("content") for v in views.values()]
        if len(have) == n_workers and all(h == token for h in have):
            return time.monotonic() - t0
        if time.monotonic() - t0 > bound:
            pytest.fail(f"workers still without the current token after {bound} s ({len(have)} workers)")
        await asyncio.sleep(0.05)
