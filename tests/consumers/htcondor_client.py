"""A client's view of the real HTCondor pool (condor_pool.py): IDTOKENs built with the pure functions, pings, and
the daemons' verdicts on refused tokens. Used by test_htcondor.py and test_consumer_restart.py."""

from __future__ import annotations

import datetime
import secrets
import time

import pytest

from casa_hub.credentials import htcondor as idtokens
from tests.consumers import condor_pool

TD = condor_pool.TRUST_DOMAIN
HOUR = datetime.timedelta(hours=1)
AUTH_FAILED = "Failed to authenticate using IDTOKENS"


def _ping(htc, pool, token: bytes | str, authz: str = "WRITE"):
    token = token.decode() if isinstance(token, bytes) else token
    return htc.ping(pool.address("schedd"), authz, htc.SecurityContext(token=token.strip()))


def _token(pool, **overrides) -> bytes:
    """An IDTOKEN built with the pure functions, valid unless ``overrides`` break it."""
    kw = dict(
        signing_key=idtokens.signing_key_from_file(pool.hub_key_file.read_bytes()),
        key_id="POOL",
        trust_domain=TD,
        user="alice",
        now=datetime.datetime.now(datetime.timezone.utc),
        lifetime=HOUR,
        jti="casa-test-" + secrets.token_hex(8),
    )
    kw.update(overrides)
    return idtokens.mint_idtoken(**kw)[0]


def _refused(htc, pool, token: bytes, authz: str = "WRITE") -> tuple[str, str]:
    """Ping must fail; returns (new schedd log, new client log) once the schedd has logged the outcome."""
    schedd0, client0 = len(pool.log("SchedLog")), len(pool.log("ClientLog"))
    with pytest.raises(htc.HTCondorException, match="Failed to start command"):
        _ping(htc, pool, token, authz)
    # the client may give up before the schedd has written its side: wait (bounded) for the verdict
    deadline = time.monotonic() + 10
    while True:
        schedd_log = pool.log("SchedLog")[schedd0:]
        if "DC_AUTHENTICATE: required authentication of" in schedd_log or "so aborting" in schedd_log:
            break
        if time.monotonic() > deadline:
            pytest.fail(f"the schedd logged no verdict:\n{schedd_log[-3000:]}")
        time.sleep(0.05)
    return schedd_log, pool.log("ClientLog")[client0:]
