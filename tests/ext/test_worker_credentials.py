"""WorkerCredentials against a real local TLS Casa cluster: the storage token reaches the workers, follows the
hub's renewals within the poll bound, reaches workers added later, and never shows up in a log."""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
from distributed import Client
from distributed.protocol.pickle import dumps

from casa_hub_ext.bundle import MountedBundle
from casa_hub_ext.factory import make_cluster
from casa_hub_ext.gpu import Inventory
from casa_hub_ext.worker_credentials import (
    PLUGIN_NAME,
    WORKER_DIR,
    CredentialFiles,
    WorkerCredentials,
    ship_by_value,
)
from tests.ext.workers import POLL, RENEWAL_BOUND, mounted_bytes, wait_for_token, worker_view
from tests.support import free_port, write_bundle

TIMEOUT = 60


@pytest.fixture
async def local_cluster(mounted, settings):
    cluster = await asyncio.wait_for(
        make_cluster(
            {"backend": "local", "workers": 1, "cores": 1, "memory": "512 MiB"},
            mounted,
            settings=settings,
            inventory=Inventory((), "none"),
            asynchronous=True,
        ),
        TIMEOUT,
    )
    try:
        yield cluster
    finally:
        await cluster.close()


# ---------------------------------------------------------------------------------------------- the plugin
def test_plugin_writes_private_files_and_points_the_variables_at_them(tmp_path, monkeypatch):
    monkeypatch.setenv("BEARER_TOKEN", "stale-inline-token")
    monkeypatch.delenv("BEARER_TOKEN_FILE", raising=False)
    monkeypatch.delenv("CASA_MACAROON_FILE", raising=False)
    worker = SimpleNamespace(local_directory=str(tmp_path))
    plugin = CredentialFiles(
        (("xcache.token", "BEARER_TOKEN_FILE", b"token-one\n"), ("xcache.macaroon", "CASA_MACAROON_FILE", b"mac\n")),
        "2030-01-01T00:00:00+00:00",
    )
    plugin.setup(worker)
    token = tmp_path / WORKER_DIR / "xcache.token"
    assert os.environ["BEARER_TOKEN_FILE"] == str(token) and token.read_bytes() == b"token-one\n"
    assert os.environ["CASA_MACAROON_FILE"] == str(tmp_path / WORKER_DIR / "xcache.macaroon")
    assert "BEARER_TOKEN" not in os.environ  # it would win over the file in WLCG token discovery
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    assert stat.S_IMODE(token.parent.stat().st_mode) == 0o700

    inode = token.stat().st_ino
    plugin.teardown(worker)
    assert token.read_bytes() == b"token-one\n"  # a replacement follows: readers must never find no file
    CredentialFiles((("xcache.token", "BEARER_TOKEN_FILE", b"token-two\n"),)).setup(worker)
    assert token.read_bytes() == b"token-two\n" and token.stat().st_ino != inode  # renamed over, not rewritten
    assert sorted(p.name for p in token.parent.iterdir()) == ["xcache.macaroon", "xcache.token"]  # no temp left

    assert "token-one" not in repr(plugin) and "mac" not in repr(plugin).replace("macaroon", "")
    with pytest.raises(ValueError, match="plain file name"):
        CredentialFiles((("../escape", None, b"x"),))


def test_plugin_loads_where_casa_hub_ext_is_not_installed(tmp_path):
    """HTCondor and gateway worker nodes have distributed but not this package: the plugin travels by value."""
    ship_by_value()
    payload = dumps(CredentialFiles((("xcache.token", "BEARER_TOKEN_FILE", b"by-value\n"),)))
    script = (
        "import sys, pickle, os, types\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('casa_hub_ext', 'casa_hub', 'tests'):\n"
        "            raise ImportError('not on this worker node: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "plugin = pickle.loads(sys.stdin.buffer.read())\n"
        "plugin.setup(types.SimpleNamespace(local_directory=sys.argv[1]))\n"
        "print(open(os.environ['BEARER_TOKEN_FILE']).read().strip(), type(plugin).__module__)\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], input=payload, capture_output=True, timeout=60, cwd=tmp_path
    )
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    assert r.stdout.decode().split()[0] == "by-value"


# ---------------------------------------------------------------------------------------------- a real cluster
async def test_workers_follow_renewals_and_late_workers_get_the_current_token(
    local_cluster, bundle_dir, minter, caplog
):
    caplog.set_level(logging.DEBUG)
    creds = WorkerCredentials(bundle=lambda: MountedBundle.from_directory(bundle_dir), poll_interval=POLL)
    bundle = MountedBundle.from_directory(bundle_dir)
    seen_tokens = []
    async with Client(local_cluster, security=bundle.security(), asynchronous=True, timeout=TIMEOUT) as client:
        await client.wait_for_workers(1, timeout=TIMEOUT)
        try:
            assert await creds.attach(local_cluster)
            first, macaroon = mounted_bytes(bundle_dir)
            seen_tokens += [first, macaroon]
            (view,) = (await client.run(worker_view)).values()
            assert view["BEARER_TOKEN_FILE"]["content"] == first
            assert view["CASA_MACAROON_FILE"]["content"] == macaroon
            assert view["BEARER_TOKEN_FILE"]["path"].startswith(os.path.join(view["local_directory"], WORKER_DIR))
            assert view["BEARER_TOKEN_FILE"]["path"] != str(bundle.credentials["xcache"].path)  # the worker's copy
            assert (view["BEARER_TOKEN_FILE"]["mode"], view["BEARER_TOKEN_FILE"]["dir_mode"]) == (0o600, 0o700)
            assert PLUGIN_NAME in await client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.worker_plugins)

            # the hub renews: the mounted files are replaced with a new mint
            renewed_at = time.monotonic()
            write_bundle(minter.mint("alice"), bundle_dir)
            renewed, renewed_macaroon = mounted_bytes(bundle_dir)
            seen_tokens += [renewed, renewed_macaroon]
            assert renewed != first
            took = await wait_for_token(client, renewed, 1, RENEWAL_BOUND, since=renewed_at)
            print(f"\nrenewal -> local worker updated in {took:.2f} s (poll {POLL} s)")
            (view,) = (await client.run(worker_view)).values()
            assert view["CASA_MACAROON_FILE"]["content"] == renewed_macaroon

            # a worker that joins now gets the current token from the scheduler
            t0 = time.monotonic()
            await local_cluster.scale(2)
            await client.wait_for_workers(2, timeout=TIMEOUT)
            await wait_for_token(client, renewed, 2, RENEWAL_BOUND)
            print(f"late worker up with the current token in {time.monotonic() - t0:.2f} s")

            # after detach, renewals are no longer pushed (the workers keep their copy)
            await creds.detach(local_cluster)
            assert creds.clusters == []
            write_bundle(minter.mint("alice"), bundle_dir)
            seen_tokens += list(mounted_bytes(bundle_dir))
            await asyncio.sleep(5 * POLL)
            views = await client.run(worker_view)
            assert {v["BEARER_TOKEN_FILE"]["content"] for v in views.values()} == {renewed}
        finally:
            await creds.close()
    assert "casa: workers of" in caplog.text  # the pushes were logged ...
    for token in seen_tokens:  # ... without token bytes
        assert token.strip().decode() not in caplog.text


async def test_failed_pushes_are_retried_and_logged_without_the_token(local_cluster, bundle_dir, caplog):
    """A scheduler that cannot be reached: bounded attempts, logged without bytes; once it answers, the next
    poll delivers."""
    caplog.set_level(logging.DEBUG)
    real_address = local_cluster.scheduler_address
    cluster = SimpleNamespace(scheduler_address=f"tls://127.0.0.1:{free_port()}", name="unreachable")
    creds = WorkerCredentials(
        bundle=lambda: MountedBundle.from_directory(bundle_dir),
        poll_interval=POLL,
        push_attempts=2,
        retry_delay=0.05,
        push_timeout=1.0,
    )
    token, macaroon = mounted_bytes(bundle_dir)
    bundle = MountedBundle.from_directory(bundle_dir)
    try:
        t0 = time.monotonic()
        assert not await creds.attach(cluster)
        assert time.monotonic() - t0 < 3 * 1.0 + 2, "the failed attach was not bounded"
        failures = [r for r in caplog.records if "failed (attempt" in r.getMessage()]
        assert [r.getMessage().split("(attempt ")[1][:3] for r in failures[:2]] == ["1/2", "2/2"]
        assert "did not get" in caplog.text

        cluster.scheduler_address = real_address  # the scheduler answers again
        async with Client(local_cluster, security=bundle.security(), asynchronous=True, timeout=TIMEOUT) as client:
            await client.wait_for_workers(1, timeout=TIMEOUT)
            took = await wait_for_token(client, token, 1, RENEWAL_BOUND)
            print(f"\nretry after an unreachable scheduler delivered in {took:.2f} s")
    finally:
        await creds.close()
    for secret in (token, macaroon):
        assert secret.strip().decode() not in caplog.text
