"""Dask isolation for every hostile pair of users: A's certificates get nothing from B's scheduler.

Dask authorizes by CA, not by common name: a scheduler accepts any peer whose certificate chains to the CA
file it was started with, and each user's bundle carries that user's own CA. So for every pair in
``tests.user_names.HOSTILE_PAIRS`` and in both directions, with one real ``distributed`` scheduler (and
one worker) per user started in this process from the minted bundle files over tls://:

* the user's own client connects and runs a task on the user's own worker;
* the other user's client is refused: with its own bundle as is, and with the victim's CA file (a CA
  certificate is not secret), where the victim's scheduler itself must refuse its certificate;
* the other user's worker cannot join, in the same two ways, while a worker of the user's own joins in
  the same time.

Clusters are started once per user for the whole module (on one module-wide event loop) and reused.
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest
import pytest_asyncio
from distributed import Client, Scheduler, Worker, get_worker
from distributed.comm import connect
from distributed.security import Security

from tests.consumers.dask_security import security_from
from tests.support import make_minter, write_bundle
from tests.user_names import HOSTILE_PAIRS, pair_id

pytestmark = pytest.mark.asyncio(loop_scope="module")

TIMEOUT = 20
# how long an intruding worker keeps trying to join; a worker of the user's own joins well within it
JOIN_WINDOW = 3


def _inc_where(x):
    return x + 1, get_worker().address


@dataclasses.dataclass
class UserCluster:
    user: str
    directory: Path
    security: Security
    scheduler: Scheduler
    worker: Worker


class Clusters:
    """One scheduler and one worker per user, started on first use and kept for the module."""

    def __init__(self, root: Path):
        self.root = root
        self.minter = make_minter(root / "keys")
        self.started: dict[str, UserCluster] = {}
        self._lock = asyncio.Lock()

    async def __call__(self, user: str) -> UserCluster:
        async with self._lock:
            if user not in self.started:
                # directories by position: user names are not all safe as file names
                directory = write_bundle(self.minter.mint(user), self.root / f"user{len(self.started)}")
                security = security_from(directory)
                scheduler = await Scheduler(host="tls://127.0.0.1", port=0, security=security, dashboard_address=":0")
                worker = await Worker(
                    scheduler.address,
                    security=security,
                    host="127.0.0.1",
                    nthreads=1,
                    dashboard=False,
                    death_timeout=TIMEOUT,
                )
                self.started[user] = UserCluster(user, directory, security, scheduler, worker)
            return self.started[user]

    async def close(self):
        for c in self.started.values():
            await c.worker.close()
            await c.scheduler.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def clusters(tmp_path_factory):
    c = Clusters(tmp_path_factory.mktemp("dask-isolation"))
    try:
        yield c
    finally:
        await c.close()


def _with_ca_of(attacker: UserCluster, victim: UserCluster) -> Security:
    """The attacker's own certificates and keys, trusting the victim's CA certificate (which is public)."""
    security = security_from(attacker.directory)
    security.tls_ca_file = victim.security.tls_ca_file
    return security


def _directions(pair):
    first, second, _why = pair
    return ((first, second), (second, first))


def _chain(exc: BaseException) -> str:
    parts = []
    while exc is not None:
        parts.append(f"{type(exc).__name__}: {exc}")
        exc = exc.__cause__ or exc.__context__
    return " <- ".join(parts)


async def _refused_by_the_scheduler(address: str, security: Security, role: str) -> None:
    """The TLS connection a ``role`` opens with ``security`` is refused by the server, for its certificate."""
    with pytest.raises(OSError) as info:
        comm = await connect(address, timeout=TIMEOUT, **security.get_connection_args(role))
        await comm.close()
    assert "UNKNOWN_CA" in _chain(info.value).upper(), _chain(info.value)


async def _until(predicate, timeout: float = TIMEOUT) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def _client_refused(address: str, security: Security) -> None:
    with pytest.raises((OSError, asyncio.TimeoutError)):
        async with Client(address, security=security, asynchronous=True, timeout=3):
            pass


@pytest.mark.parametrize("pair", HOSTILE_PAIRS, ids=pair_id)
async def test_own_client_runs_a_task(clusters, pair):
    for user, _other in _directions(pair):
        own = await clusters(user)
        async with Client(own.scheduler.address, security=own.security, asynchronous=True, timeout=TIMEOUT) as client:
            assert await client.submit(_inc_where, 41, pure=False) == (42, own.worker.address)
            assert set((await client.scheduler.identity())["workers"]) == {own.worker.address}


@pytest.mark.parametrize("pair", HOSTILE_PAIRS, ids=pair_id)
async def test_other_users_client_is_refused(clusters, pair):
    for victim_user, attacker_user in _directions(pair):
        victim, attacker = await clusters(victim_user), await clusters(attacker_user)
        address, clients_before = victim.scheduler.address, set(victim.scheduler.clients)
        stolen_ca = _with_ca_of(attacker, victim)
        await _client_refused(address, attacker.security)
        await _client_refused(address, stolen_ca)
        await _refused_by_the_scheduler(address, stolen_ca, "client")
        assert set(victim.scheduler.clients) == clients_before


@dataclasses.dataclass
class JoinAttempts:
    """What happened when, at the same time, other users' workers and one of the victim's own tried to join."""

    intruders: dict[str, BaseException | Worker]  # how the intruder was configured -> what its start gave
    control: BaseException | Worker  # a second worker of the victim's own, started alongside
    workers_seen: set[str]  # the victim's scheduler's workers once every attempt had ended
    allowed: set[str]  # the victim's own worker and the control


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def join_attempts(clusters) -> dict[tuple[str, str], JoinAttempts]:
    """For every pair, both directions, (victim, attacker) -> JoinAttempts. All workers start at once, so
    the module waits out one join window rather than one per pair; each intruder gets the whole window."""
    plans = {}
    for pair in HOSTILE_PAIRS:
        for victim_user, attacker_user in _directions(pair):
            victim, attacker = await clusters(victim_user), await clusters(attacker_user)
            plans[victim_user, attacker_user] = (
                victim,
                {
                    "its own bundle": _worker(victim, attacker.security),
                    "the victim's CA file": _worker(victim, _with_ca_of(attacker, victim)),
                },
                _worker(victim, victim.security),
            )
    workers = [w for _victim, intruders, control in plans.values() for w in (*intruders.values(), control)]
    outcomes = dict(zip(map(id, workers), await asyncio.gather(*(w.start() for w in workers), return_exceptions=True)))
    seen = {user: set(c.scheduler.workers) for user, c in clusters.started.items()}
    controls = {}
    for (victim_user, _attacker), (victim, _intruders, control) in plans.items():
        if outcomes[id(control)] is control:
            controls.setdefault(victim_user, set()).add(control.address)
    attempts = {
        key: JoinAttempts(
            intruders={how: outcomes[id(w)] for how, w in intruders.items()},
            control=outcomes[id(control)],
            workers_seen=seen[key[0]],
            allowed={victim.worker.address} | controls.get(key[0], set()),
        )
        for key, (victim, intruders, control) in plans.items()
    }
    await asyncio.gather(*(w.close() for w in workers))
    for c in clusters.started.values():  # back to one worker per scheduler, as the other tests expect
        await _until(lambda c=c: set(c.scheduler.workers) == {c.worker.address})
    return attempts


def _worker(victim: UserCluster, security: Security) -> Worker:
    return Worker(
        victim.scheduler.address,
        security=security,
        host="127.0.0.1",
        nthreads=1,
        dashboard=False,
        death_timeout=JOIN_WINDOW,
    )


@pytest.mark.parametrize("pair", HOSTILE_PAIRS, ids=pair_id)
async def test_other_users_worker_cannot_join(clusters, join_attempts, pair):
    for victim_user, attacker_user in _directions(pair):
        victim, attacker = await clusters(victim_user), await clusters(attacker_user)
        # the refusal is the victim scheduler's own, for the certificate (not a timeout, not the worker's side)
        await _refused_by_the_scheduler(victim.scheduler.address, _with_ca_of(attacker, victim), "worker")
        attempt = join_attempts[victim_user, attacker_user]
        assert isinstance(attempt.control, Worker), f"the victim's own worker could not join: {attempt.control!r}"
        assert attempt.control.address in attempt.workers_seen
        for how, outcome in attempt.intruders.items():
            assert isinstance(outcome, (OSError, asyncio.TimeoutError)), (how, outcome)
        assert attempt.workers_seen <= attempt.allowed
        assert set(victim.scheduler.workers) == {victim.worker.address}
