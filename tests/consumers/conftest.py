"""Fixtures shared by the consumer tests (real servers)."""

from __future__ import annotations

import pytest


# ---------------------------------------------------------------- HTCondor (a real pool, condor_pool.py)
@pytest.fixture(scope="module")
def pool(request, tmp_path_factory):
    """One real HTCondor pool per test module, with local accounts ``CONDOR_POOL_USERS`` (a module attribute;
    default ``("alice",)``) created in the pool's private ``/etc/passwd``."""
    from tests.consumers import condor_pool
    from tests.support import need

    need(condor_pool.available(), f"HTCondor root at {condor_pool.CONDOR_ROOT} (condor_master, unshare, nsenter)")
    users = tuple(getattr(request.module, "CONDOR_POOL_USERS", ("alice",)))
    p = condor_pool.start_pool(tmp_path_factory.mktemp("hub-keys") / "condor-pool.key", users=users)
    print(f"\nHTCondor pool with {len(users)} accounts up (schedd answering) in {p.startup_seconds:.2f} s")
    try:
        yield p
    finally:
        condor_pool.stop_pool(p)
        assert not p.pids(), "pool processes survived teardown"


@pytest.fixture(scope="module")
def htc(pool):
    """The htcondor2 bindings configured as a token-only client of ``pool``, with a client log."""
    import os

    import htcondor2

    client_env = {
        "CONDOR_CONFIG": str(pool.client_config),
        "_CONDOR_TOOL_LOG": str(pool.work / "log" / "ClientLog"),
        "_CONDOR_TOOL_DEBUG": "D_SECURITY:2",
    }
    saved = {k: os.environ.get(k) for k in client_env}
    os.environ.update(client_env)
    htcondor2.reload_config()
    htcondor2.enable_log()
    try:
        yield htcondor2
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        htcondor2.reload_config()


@pytest.fixture(scope="module")
def pool_minter(pool, tmp_path_factory):
    """A minter whose IDTOKENs ``pool`` accepts (it signs with the pool's key, for the pool's trust domain)."""
    from tests.consumers import condor_pool
    from tests.support import make_minter

    return make_minter(
        tmp_path_factory.mktemp("keys"),
        HTCondorToken={"signing_key_file": str(pool.hub_key_file), "trust_domain": condor_pool.TRUST_DOMAIN},
    )


# ---------------------------------------------------------------- XRootD (origin + XCache, xrootd_server.py)
@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """One XRootD site (an origin and an XCache in front of it) per test module."""
    import os
    import shutil

    from tests.consumers import xrootd_server as xs
    from tests.support import need

    need(shutil.which("xrootd") is not None, "xrootd")
    need(
        xs.have_xrootd(),
        "xrdcp, unshare, the xrootd user and the XRootD SciTokens, macaroons, Pss, Pfc, ztn and http plugins",
    )
    need(os.geteuid() == 0, "root (unshare -m and a bind mount over the system CA bundle)")
    with xs.xrootd_site(tmp_path_factory.mktemp("xrootd")) as s:
        yield s
