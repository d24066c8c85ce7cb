"""A real Dask scheduler, worker and client over tls:// configured only from the minted bundle files."""

from __future__ import annotations

import asyncio
import datetime
import ssl
from pathlib import Path

import pytest
from distributed import Client, Scheduler, Worker
from distributed.security import Security

from tests.consumers.dask_security import security_from
from tests.support import write_bundle

TIMEOUT = 20


def _inc(x):
    return x + 1


@pytest.fixture
def alice(tmp_path, minter):
    return security_from(write_bundle(minter.mint("alice"), tmp_path / "alice"))


async def test_env_names_point_at_the_files(minter, tmp_path):
    bundle = minter.mint("alice")
    env = bundle.env_for(str(tmp_path))
    write_bundle(bundle, tmp_path)
    assert env["DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION"] == "True"
    for role in ("scheduler", "worker", "client"):
        assert Path(env[f"DASK_DISTRIBUTED__COMM__TLS__{role.upper()}__CERT"]).is_file()
        assert Path(env[f"DASK_DISTRIBUTED__COMM__TLS__{role.upper()}__KEY"]).is_file()
    assert Path(env["DASK_DISTRIBUTED__COMM__TLS__CA_FILE"]).read_bytes() == bundle.files["dask/ca.pem"].content


async def test_scheduler_worker_client_over_tls(alice):
    async with Scheduler(host="tls://127.0.0.1", port=0, security=alice, dashboard_address=":0") as s:
        async with Worker(s.address, security=alice, host="127.0.0.1") as w:
            async with Client(s.address, security=alice, asynchronous=True, timeout=TIMEOUT) as c:
                assert s.address.startswith("tls://")
                assert await c.submit(_inc, 41) == 42
                assert w.address.startswith("tls://")


async def _client_is_refused(scheduler_address: str, security: Security):
    with pytest.raises((OSError, asyncio.TimeoutError)):
        async with Client(scheduler_address, security=security, asynchronous=True, timeout=3):
            pass


async def test_other_users_client_is_refused(alice, minter, tmp_path):
    mallory = security_from(write_bundle(minter.mint("mallory"), tmp_path / "mallory"))
    async with Scheduler(host="tls://127.0.0.1", port=0, security=alice, dashboard_address=":0") as s:
        await _client_is_refused(s.address, mallory)


async def test_client_without_certificate_is_refused(alice, tmp_path):
    # Dask itself will not build a TLS client without a certificate, so speak TLS directly: the
    # scheduler's handshake demands a client certificate from the user's CA.
    ctx = ssl.create_default_context(cafile=alice.tls_ca_file)
    ctx.check_hostname = False
    async with Scheduler(host="tls://127.0.0.1", port=0, security=alice, dashboard_address=":0") as s:
        host, port = s.address.removeprefix("tls://").rsplit(":", 1)
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port), ssl=ctx), TIMEOUT)
        try:
            writer.write(b"\0" * 16)
            with pytest.raises(ssl.SSLError, match="CERTIFICATE_REQUIRED|certificate required"):
                await asyncio.wait_for(reader.read(1), TIMEOUT)
        finally:
            writer.close()


async def test_expired_leaf_is_refused(alice, minter, tmp_path):
    long_ago = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=3)
    stale = security_from(write_bundle(minter.mint("alice", now=long_ago), tmp_path / "stale"))
    async with Scheduler(host="tls://127.0.0.1", port=0, security=alice, dashboard_address=":0") as s:
        await _client_is_refused(s.address, stale)


async def test_other_users_worker_cannot_join(alice, minter, tmp_path):
    mallory = security_from(write_bundle(minter.mint("mallory"), tmp_path / "mallory"))
    async with Scheduler(host="tls://127.0.0.1", port=0, security=alice, dashboard_address=":0") as s:
        with pytest.raises((OSError, asyncio.TimeoutError)):
            async with Worker(s.address, security=mallory, host="127.0.0.1", death_timeout=3):
                pass
        assert not s.workers


async def test_rotated_leaves_keep_the_trusted_ca(minter, tmp_path):
    """A client holding the first login's CA file trusts a scheduler started with re-minted certs."""
    first = write_bundle(minter.mint("alice"), tmp_path / "first")
    second = write_bundle(minter.mint("alice"), tmp_path / "second")
    assert (first / "dask/scheduler.crt").read_bytes() != (second / "dask/scheduler.crt").read_bytes()
    assert (first / "dask/ca.pem").read_bytes() == (second / "dask/ca.pem").read_bytes()
    old_client = security_from(first)
    async with Scheduler(host="tls://127.0.0.1", port=0, security=security_from(second), dashboard_address=":0") as s:
        async with Worker(s.address, security=security_from(second), host="127.0.0.1"):
            async with Client(s.address, security=old_client, asynchronous=True, timeout=TIMEOUT) as c:
                assert await c.submit(_inc, 1) == 2
