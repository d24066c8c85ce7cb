"""Casa's HTCondor IDTOKENs against real HTCondor 23.9 daemons (a personal pool in a Debian trixie root)."""

from __future__ import annotations

import datetime
import os
import secrets

import pytest

from casa_hub.credentials import htcondor
from tests.consumers import condor
from tests.support import make_minter, need

pytestmark = pytest.mark.consumer("htcondor")

HOUR = datetime.timedelta(hours=1)


@pytest.fixture(scope="module")
def pool():
    need(condor.available(), f"the HTCondor root at {condor.CONDOR_ROOT}")
    p = condor.start_pool()
    try:
        yield p
    finally:
        condor.stop_pool(p)


@pytest.fixture(scope="module")
def htc(pool):
    """The Python bindings as a token-only client: no FS/password fallback, as on a user's pod."""
    os.environ["_CONDOR_SEC_CLIENT_AUTHENTICATION_METHODS"] = "IDTOKENS"
    import htcondor2

    htcondor2.reload_config()
    return htcondor2


@pytest.fixture(scope="module")
def minter(pool, tmp_path_factory):
    return make_minter(tmp_path_factory.mktemp("keys"), condor_signing_key_file=str(pool.key_file),
                       condor_trust_domain=condor.TRUST_DOMAIN)


def _ping(htc, pool, token: bytes, authz: str = "WRITE"):
    return htc.ping(pool.address("schedd"), authz, htc.SecurityContext(token=token.decode().strip()))


def _token(pool, **overrides) -> bytes:
    kw = dict(signing_key=htcondor.signing_key_from_file(pool.key_file.read_bytes(), "POOL"), key_id="POOL",
              trust_domain=condor.TRUST_DOMAIN, user="alice", now=datetime.datetime.now(datetime.timezone.utc),
              lifetime=HOUR)
    kw.update(overrides)
    token, _ = htcondor.mint_idtoken(**kw)
    return token


def _assert_refused(htc, pool, token: bytes, reason: str, authz: str = "WRITE"):
    """The daemon refuses the command, and its own log names the reason."""
    log_before = len(pool.log("SchedLog"))
    with pytest.raises(htc.HTCondorException, match="Failed to start command"):
        _ping(htc, pool, token, authz)
    new_log = pool.log("SchedLog")[log_before:]
    assert reason in new_log, f"expected {reason!r} in the schedd log, got:\n{new_log[-2000:]}"


def test_minted_token_authenticates_as_the_user(htc, pool, minter):
    token = minter.mint("alice").files["condor-tokens/casa"].content
    ad = _ping(htc, pool, token)
    assert ad["AuthorizationSucceeded"] is True
    assert ad["MyRemoteUserName"] == f"alice@{condor.TRUST_DOMAIN}"
    assert ad["AuthMethods"] == "IDTOKENS"


def test_each_user_gets_their_own_identity(htc, pool, minter):
    token = minter.mint("bob").files["condor-tokens/casa"].content
    assert _ping(htc, pool, token)["MyRemoteUserName"] == f"bob@{condor.TRUST_DOMAIN}"


def test_expired_token_is_refused(htc, pool):
    past = datetime.datetime.now(datetime.timezone.utc) - 3 * HOUR
    _assert_refused(htc, pool, _token(pool, now=past), "User token has been expired")


def test_token_signed_with_wrong_key_is_refused(htc, pool):
    _assert_refused(htc, pool, _token(pool, signing_key=secrets.token_bytes(32)),
                    "Failed to authenticate using IDTOKENS")


def test_token_with_wrong_issuer_is_refused(htc, pool):
    _assert_refused(htc, pool, _token(pool, trust_domain="other.example.org"),
                    "Failed to authenticate using IDTOKENS")


def test_read_only_scope_is_refused_at_write(htc, pool):
    token = _token(pool, scopes=["condor:/READ"])
    assert _ping(htc, pool, token, "READ")["AuthorizationSucceeded"] is True  # control: READ works
    _assert_refused(htc, pool, token, "limited authorization which did not include this command", "WRITE")
