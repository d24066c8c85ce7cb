"""Revoking a user at the real HTCondor pool (condor_pool.py): the configuration ``casa-hub-keys
condor-revocations`` prints (casa_hub/revocation.py) is dropped into the pool's ``config.d`` and picked up by
``condor_reconfig``, without a restart.

Every verdict is the daemon's own: a fresh ``condor_q`` process as the user (what dask-jobqueue runs), a ping
of the collector, and the schedd's log line "has been revoked". Each test leaves the pool without revocations.
"""

from __future__ import annotations

import datetime
import secrets
import time

import pytest

from casa_hub import revocation
from casa_hub.credentials.htcondor import condor_user
from tests.consumers import condor_pool
from tests.consumers.htcondor_client import TD, _token

pytestmark = pytest.mark.consumer("htcondor")

PAIRS = [("ali", "alice"), ("alice", "ali"), ("bob", "bob@x"), ("bob@x", "bob")]  # tests/user_names.py
CONDOR_POOL_USERS = tuple(sorted({condor_user(name) for pair in PAIRS for name in pair}))
HONOUR_DEADLINE = 10.0  # seconds from condor_reconfig until the pool refuses: a bound, never a sleep
TOKEN_FILE = "condor-tokens/casa"  # the bundle's IDTOKEN (docs/dev/contracts.md)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def condor_q(pool: condor_pool.Pool, user: str, token: bytes) -> tuple[bool, str]:
    """A fresh ``condor_q`` process as ``user``'s account with ``token`` as its only credential."""
    account = condor_user(user)
    d = pool.user_dir(account) / f"tokens-{secrets.token_hex(4)}"
    pool.give(account, d / "casa", token, 0o600)
    r = pool.run(account, ["/usr/bin/condor_q", "-totals"], env={"_CONDOR_SEC_TOKEN_DIRECTORY": str(d)}, cwd=d.parent)
    return r.returncode == 0, r.stderr.decode()


def collector_ping(htc, pool: condor_pool.Pool, token: bytes) -> str | None:
    try:
        ad = htc.ping(pool.collector, "READ", htc.SecurityContext(token=token.decode().strip()))
    except htc.HTCondorException:
        return None
    return ad["MyRemoteUserName"]


@pytest.fixture
def revoke(pool):
    """``revoke(list)`` installs the configuration for ``list`` and runs condor_reconfig; the seconds the
    reconfig took. Afterwards the pool has no revocations again."""
    conf = pool.work / "config.d" / "99-casa-revocations.conf"

    def apply(revoked: list[revocation.Revocation]) -> float:
        conf.write_text(revocation.condor_revocation_config(revoked, source="test"))
        t0 = time.monotonic()
        r = pool.admin(["/usr/sbin/condor_reconfig"])
        assert r.returncode == 0, r.stderr.decode()
        return time.monotonic() - t0

    yield apply
    conf.unlink(missing_ok=True)
    assert pool.admin(["/usr/sbin/condor_reconfig"]).returncode == 0


def _until_refused(pool, user, token) -> float:
    """Seconds until a fresh condor_q with ``token`` is refused (bounded)."""
    t0 = time.monotonic()
    while condor_q(pool, user, token)[0]:
        assert time.monotonic() - t0 < HONOUR_DEADLINE, f"{user}'s token still accepted after {HONOUR_DEADLINE} s"
        time.sleep(0.05)
    return time.monotonic() - t0


@pytest.mark.parametrize("revoked, other", PAIRS, ids=[f"{a}-not-{b}" for a, b in PAIRS])
def test_revoking_a_user_refuses_exactly_their_earlier_tokens(htc, pool, pool_minter, revoke, revoked, other):
    tokens = {u: pool_minter.mint(u).files[TOKEN_FILE].content for u in (revoked, other)}
    for user, token in tokens.items():
        assert condor_q(pool, user, token)[0], f"{user} refused before any revocation"
    schedd0 = len(pool.log("SchedLog"))
    reconfig = revoke([revocation.Revocation(revoked, _now())])
    honoured = _until_refused(pool, revoked, tokens[revoked])
    print(f"\ncondor_reconfig {reconfig:.3f} s; {revoked!r} refused {honoured:.3f} s after it")

    ok, err = condor_q(pool, revoked, tokens[revoked])
    assert not ok and "AUTHENTICATE" in err
    assert collector_ping(htc, pool, tokens[revoked]) is None  # every daemon of the host, not the schedd only
    log = pool.log("SchedLog")[schedd0:]
    assert f'"sub":"{condor_user(revoked)}@{TD}"' in log and "has been revoked" in log
    # the other user of the pair is untouched
    assert condor_q(pool, other, tokens[other])[0]
    assert collector_ping(htc, pool, tokens[other]) == f"{condor_user(other)}@{TD}"
    assert f'"sub":"{condor_user(other)}@{TD}"' not in "".join(
        line for line in log.splitlines() if "has been revoked" in line
    )


def test_a_token_minted_after_the_revocation_works_again(htc, pool, pool_minter, revoke):
    """What a new login gets (a later ``iat``) is accepted; the revocation's own second is refused."""
    revoked_at = _now() - datetime.timedelta(seconds=30)
    before = _token(pool, user="alice", now=revoked_at - datetime.timedelta(minutes=5))
    same_second = _token(pool, user="alice", now=revoked_at.replace(microsecond=999999))
    revoke([revocation.Revocation("alice", revoked_at)])
    _until_refused(pool, "alice", before)
    assert not condor_q(pool, "alice", same_second)[0]
    after = pool_minter.mint("alice").files[TOKEN_FILE].content  # minted now: 30 s after the revocation
    ok, err = condor_q(pool, "alice", after)
    assert ok, err
    assert collector_ping(htc, pool, after) == f"alice@{TD}"


def test_without_condor_reconfig_the_pool_does_not_see_the_file(pool, pool_minter, revoke):
    """Why the admin step says condor_reconfig: the daemons read config.d only at start and at reconfig."""
    token = pool_minter.mint("alice").files[TOKEN_FILE].content
    # condor_reconfig returns before the daemons have re-read their files: let the previous test's finish, or
    # the schedd would read the file written below as part of it
    time.sleep(2)
    assert condor_q(pool, "alice", token)[0]
    conf = pool.work / "config.d" / "99-casa-revocations.conf"
    conf.write_text(revocation.condor_revocation_config([revocation.Revocation("alice", _now())]))
    time.sleep(2)  # a few of the pool's 2 s update cycles: long enough for anything periodic to show
    ok, err = condor_q(pool, "alice", token)
    assert ok, f"refused without condor_reconfig: {err}\n{pool.log('SchedLog')[-2000:]}"
    r = pool.admin(["/usr/sbin/condor_reconfig"])
    assert r.returncode == 0, r.stderr.decode()
    _until_refused(pool, "alice", token)
