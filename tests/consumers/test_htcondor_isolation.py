"""HTCondor identities that name exactly one user (issue 10, class 5), on a real HTCondor 23.9 pool.

HTCondor splits an IDTOKEN's ``sub`` at its first ``@`` and runs the job as the local account of that name
(``Owner``); a job whose Owner has no local account is never run. Casa therefore puts
``condor_user(hub name)`` in ``sub``: hostile pairs of hub names (tests/user_names.py) must authenticate as two
different accounts, the e-mail-like user's jobs run as its own account, and neither user can remove, hold or
edit the other's jobs. The last test shows the old mapping (``sub = <hub name>@<domain>``) on the same pool:
``bob@x`` becomes ``bob``.

One pool for the module (tests/consumers/conftest.py), with a local account for every mapped name; jobs are
``/usr/bin/id -un`` or never match a slot; every wait is bounded.
"""

from __future__ import annotations

import datetime
import json
import time
from dataclasses import dataclass
from pathlib import Path

import jwt
import pytest

from casa_hub.credentials import htcondor as idtokens
from casa_hub.credentials.htcondor import condor_user
from casa_hub.credentials.kinds.htcondor import TOKEN_FILE as CONDOR_TOKEN
from tests.consumers import condor_pool
from tests.support import make_minter
from tests.user_names import HOSTILE_PAIRS, pair_id

pytestmark = pytest.mark.consumer("htcondor")

TD = condor_pool.TRUST_DOMAIN
NAMES = sorted({n for a, b, _ in HOSTILE_PAIRS for n in (a, b)})
# the pool's local accounts: what an admin creates (or maps) for the hub's users
CONDOR_POOL_USERS = sorted({condor_user(n) for n in NAMES})

# the pairs whose jobs are also checked for cross-user actions (pings cover every pair)
ACTION_PAIRS = [
    p
    for p in HOSTILE_PAIRS
    if (p[0], p[1])
    in {
        ("bob", "bob@x"),
        ("bob", "bob@cern.ch"),
        ("alice.smith", "alice-smith"),
        ("ali", "alice"),
        ("x" * 70 + "1", "x" * 70 + "2"),
        ("用户", "用户二"),
        ("dörte", "dorte"),
    }
]
assert len(ACTION_PAIRS) == 7
# users whose jobs must run to completion as their own account (the e-mail-like, unicode and long ones + bob)
RUN_USERS = ["bob", "bob@x", "bob@cern.ch", "用户", "x" * 70 + "1"]

IDLE_FOREVER = b"executable = /bin/true\nrequirements = False\nqueue\n"  # queued, never matched
JOB_WAIT = 120  # seconds, for all RUN_USERS jobs together


@pytest.fixture(scope="module")
def minter(pool, tmp_path_factory):
    return make_minter(
        tmp_path_factory.mktemp("keys"),
        kinds=("xcache", "htcondor"),
        HTCondorToken={"signing_key_file": str(pool.hub_key_file), "trust_domain": TD},
    )


@dataclass
class Session:
    """A hub user as their server would be: the Casa bundle's token in a directory the account owns."""

    name: str
    account: str
    home: Path
    token: bytes
    env: dict[str, str]


@pytest.fixture(scope="module")
def users(pool, minter):
    cache: dict[str, Session] = {}

    def get(name: str) -> Session:
        if name not in cache:
            bundle = minter.mint(name)
            account = bundle.env["CASA_CONDOR_USER"]
            assert account == condor_user(name) and account in pool.users
            home = pool.user_dir(account)
            token = bundle.files[CONDOR_TOKEN].content
            pool.give(account, home / "casa" / CONDOR_TOKEN, token, 0o400)
            env = {"_CONDOR_SEC_TOKEN_DIRECTORY": str(home / "casa" / CONDOR_TOKEN.rsplit("/", 1)[0])}
            cache[name] = Session(name, account, home, token, env)
        return cache[name]

    return get


def _run(pool, s: Session, *args: str, input: bytes | None = None):
    return pool.run(s.account, list(args), env=s.env, cwd=s.home, input=input)


def _submit(pool, s: Session, description: bytes) -> int:
    sub = _run(pool, s, "/usr/bin/condor_submit", "-terse", input=description)
    assert sub.returncode == 0, sub.stderr.decode()
    return int(sub.stdout.decode().split(".")[0])


def _job(pool, s: Session, cluster: int, attrs: str = "ClusterId,Owner,User,JobStatus,CasaMark") -> dict | None:
    q = _run(pool, s, "/usr/bin/condor_q", "-allusers", "-json", "-attributes", attrs, str(cluster))
    assert q.returncode == 0, q.stderr.decode()
    jobs = json.loads(q.stdout or b"[]")
    return jobs[0] if jobs else None


# ---------------------------------------------------------------- identities
@pytest.mark.parametrize("pair", HOSTILE_PAIRS, ids=[pair_id(p) for p in HOSTILE_PAIRS])
def test_each_token_authenticates_as_exactly_its_own_account(htc, pool, users, pair):
    first, second, _ = pair
    seen = []
    for name in (first, second):
        s = users(name)
        ad = htc.ping(pool.address("schedd"), "WRITE", htc.SecurityContext(token=s.token.decode().strip()))
        assert ad["AuthorizationSucceeded"] is True and ad["AuthMethods"] == "IDTOKENS"
        assert ad["MyRemoteUserName"] == f"{s.account}@{TD}"
        seen.append(ad["MyRemoteUserName"])
    assert seen[0] != seen[1]


# ---------------------------------------------------------------- jobs run as the user's own account
def test_jobs_of_email_like_unicode_and_long_names_run_as_their_own_account(pool, users):
    description = (
        b"executable = /usr/bin/id\narguments = -un\noutput = id.out\nerror = id.err\n"
        b"request_cpus = 1\nrequest_memory = 16\nrequest_disk = 1024\n"
        b"leave_in_queue = JobStatus == 4\nqueue\n"
    )
    sessions = [users(n) for n in RUN_USERS]
    schedd0 = len(pool.log("SchedLog"))
    clusters = {s.name: _submit(pool, s, description) for s in sessions}
    t0 = time.monotonic()
    try:
        done: dict[str, dict] = {}
        while len(done) < len(sessions):
            for s in sessions:
                if s.name not in done:
                    job = _job(pool, s, clusters[s.name])
                    assert job is not None, f"job of {s.name!r} left the queue"
                    assert job["JobStatus"] in (1, 2, 4), (s.name, job, pool.log("SchedLog")[-2000:])
                    if job["JobStatus"] == 4:
                        done[s.name] = job
            if time.monotonic() - t0 > JOB_WAIT:
                pytest.fail(
                    f"jobs not completed after {JOB_WAIT} s: {sorted(set(clusters) - set(done))}\n"
                    + pool.log("SchedLog")[-3000:]
                )
            time.sleep(0.5)
        print(f"\n{len(sessions)} jobs completed in {time.monotonic() - t0:.1f} s")
        for s in sessions:
            job = done[s.name]
            assert job["Owner"] == s.account and job["User"] == f"{s.account}@{TD}"
            # the job really ran as that local account
            assert (s.home / "id.out").read_text().strip() == s.account
        assert done["bob@x"]["Owner"] != "bob" and done["bob@cern.ch"]["Owner"] != "bob"
        assert "Can't find owner" not in pool.log("SchedLog")[schedd0:]
    finally:
        for s in sessions:
            _run(pool, s, "/usr/bin/condor_rm", str(clusters[s.name]))


# ---------------------------------------------------------------- no action on another user's job
def _refused(r, what: str, other: Session, owner: Session) -> None:
    """The schedd limits a non-super user's job actions to their own jobs: condor_rm/hold/release find no job
    (exit 0, "There are no jobs in the queue"), condor_qedit fails the transaction. Either way nothing changed;
    the caller checks the job itself."""
    out = (r.stdout + r.stderr).decode(errors="replace")
    assert r.returncode != 0 or "There are no jobs in the queue" in out, (
        f"{other.name!r} ran condor_{what} on {owner.name!r}'s job: {out}"
    )


@pytest.mark.parametrize("pair", ACTION_PAIRS, ids=[pair_id(p) for p in ACTION_PAIRS])
def test_a_user_cannot_remove_hold_or_edit_the_other_users_job(pool, users, pair):
    first, second, _ = pair
    for owner, other in ((users(first), users(second)), (users(second), users(first))):
        cluster = _submit(pool, owner, IDLE_FOREVER)
        try:
            job = _job(pool, owner, cluster)
            assert job["Owner"] == owner.account and job["JobStatus"] == 1

            for what, args in (("rm", []), ("hold", []), ("qedit", ["CasaMark", '"other"'])):
                _refused(_run(pool, other, f"/usr/bin/condor_{what}", str(cluster), *args), what, other, owner)
            job = _job(pool, owner, cluster)
            assert job is not None and job["JobStatus"] == 1 and "CasaMark" not in job, job

            # control: the owner can do it with the same commands (and the other can then not undo it)
            edit = _run(pool, owner, "/usr/bin/condor_qedit", str(cluster), "CasaMark", '"owner"')
            assert edit.returncode == 0, edit.stderr.decode()
            hold = _run(pool, owner, "/usr/bin/condor_hold", str(cluster))
            assert hold.returncode == 0 and b"no jobs" not in hold.stderr, hold.stderr.decode()
            for what in ("release", "rm"):
                _refused(_run(pool, other, f"/usr/bin/condor_{what}", str(cluster)), what, other, owner)
            job = _job(pool, owner, cluster)
            assert job["CasaMark"] == "owner" and job["JobStatus"] == 5, job
        finally:
            rm = _run(pool, owner, "/usr/bin/condor_rm", str(cluster))
            assert rm.returncode == 0 and b"no jobs" not in rm.stderr, rm.stderr.decode()
        job = _job(pool, owner, cluster)
        assert job is None or job["JobStatus"] == 3  # removed


# ---------------------------------------------------------------- the old mapping, on the same pool
def test_old_mapping_made_bob_at_x_into_bob(htc, pool, users):
    """``sub = <hub name>@<trust domain>`` as Casa minted it before: HTCondor cuts ``bob@x@DOMAIN`` at the first
    ``@``, so the job of hub user ``bob@x`` gets ``Owner = bob``, another user's account, and never runs: with no
    job of bob's in the queue the schedd cannot find that owner ("Can't find owner bob in Owners array!"); with
    one it matches the job *for bob* and the shadow fails to become ``bob@x`` ("bob@x not in passwd file").
    The tests above catch both if ``condor_user`` is dropped from the token."""
    bob, bob_x = users("bob"), users("bob@x")
    now = int(datetime.datetime.now(datetime.timezone.utc).timestamp())
    claims = {
        "iat": now,
        "exp": now + 600,
        "iss": TD,
        "jti": "casa-old-mapping",
        "sub": f"bob@x@{TD}",
        "scope": " ".join(idtokens.DEFAULT_SCOPES),
    }
    key = idtokens.signing_key_from_file(pool.hub_key_file.read_bytes())
    old_token = jwt.encode(claims, key, algorithm="HS256", headers={"kid": "POOL"}).encode() + b"\n"
    old_dir = bob_x.home / "old-tokens"
    pool.give(bob_x.account, old_dir / "casa", old_token, 0o400)
    old = Session(
        "bob@x (old mapping)", bob_x.account, bob_x.home, old_token, {"_CONDOR_SEC_TOKEN_DIRECTORY": str(old_dir)}
    )
    ad = htc.ping(pool.address("schedd"), "WRITE", htc.SecurityContext(token=old_token.decode().strip()))
    assert ad["AuthorizationSucceeded"] is True

    bobs_job = _submit(pool, bob, IDLE_FOREVER)  # the real bob is active (the deterministic one of two cases)
    schedd0, shadow0 = len(pool.log("SchedLog")), len(pool.log("ShadowLog"))
    cluster = _submit(
        pool,
        old,
        b"executable = /usr/bin/id\narguments = -un\noutput = old-id.out\n"
        b"request_cpus = 1\nrequest_memory = 16\nrequest_disk = 1024\nqueue\n",
    )
    try:
        job = _job(pool, old, cluster)
        assert job["Owner"] == "bob", job  # another hub user's account
        assert job["User"] == f"bob@x@{TD}"
        deadline = time.monotonic() + 30
        while not (
            "bob@x not in passwd file" in pool.log("ShadowLog")[shadow0:]
            or "Can't find owner bob in Owners array" in pool.log("SchedLog")[schedd0:]
        ):
            assert time.monotonic() < deadline, (
                _job(pool, old, cluster),
                [line for line in pool.log("SchedLog")[schedd0:].splitlines() if "bob" in line][-40:],
            )
            time.sleep(0.5)
        assert _job(pool, old, cluster)["JobStatus"] in (1, 2)  # never completes
        assert not (old.home / "old-id.out").exists()
    finally:
        for s, c in ((old, cluster), (bob, bobs_job)):
            rm = _run(pool, s, "/usr/bin/condor_rm", str(c))
            assert rm.returncode == 0, rm.stderr.decode()
    # with the new mapping the same hub user is its own account (whose jobs run: test above)
    assert bob_x.account == condor_user("bob@x") != "bob"
