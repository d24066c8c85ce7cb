"""The hub's credential refresher (casa_hub/refresher.py): one test per behaviour, each run with both Casa
spawners (CasaSpawner against the Kubernetes emulator, CasaLocalSpawner), a real CasaAuthenticator and the
demo provider. Refresh flows hub -> spawner only: the servers' user has no ``authenticator`` at all, so a
spawner that called back would fail."""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from types import SimpleNamespace

import pytest
from jupyterhub.objects import Server

from casa_hub.credentials.bundle import BundleFile, CredentialBundle
from casa_hub.mixin import CasaCredentialsMixin
from casa_hub.refresher import CasaRefresher
from tests.hub import auth_support
from tests.hub.auth_support import CLIENT, HubUser, admitted
from tests.hub.oidc import code_flow_tokens, stop_provider


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


class ServerUser(HubUser):
    """JupyterHub's User as a spawner and the refresher see it, without ``authenticator``."""

    def __init__(self, name, auth_state):
        super().__init__(name, auth_state)
        self.id, self.url, self.escaped_name, self.groups = 7, f"/user/{name}/", name, []
        self.server = Server(base_url=f"/user/{name}/")
        self.saves = 0

    async def save_auth_state(self, state):
        self.saves += 1
        await super().save_auth_state(state)


def short_bundle(user: str, seconds: float, token: bytes = b"token-0\n") -> CredentialBundle:
    """What a server started with: credentials that come due at once (they expire within the margin)."""
    exp = _now() + datetime.timedelta(seconds=seconds)
    files = {"xcache.token": BundleFile(token, 0o400, exp), "casa.json": BundleFile(b"{}", 0o444)}
    return CredentialBundle(user=user, issued_at=_now(), files=files, env={"BEARER_TOKEN_FILE": "{mount}/xcache.token"})


class Site:
    """One logged-in user, their servers (of the kit's kind), the authenticator, and the refresher over them."""

    def __init__(self, kit, tmp_path, provider):
        self.kit, self.kind, self.provider = kit, kit.kind, provider
        traits = {"CasaRefresher__jitter": 0, "CasaRefresher__retry_interval": 0.3, "CasaRefresher__scan_interval": 0.1}
        self.auth = auth_support.make_authenticator(tmp_path, provider.url, **traits)
        self.refresher: CasaRefresher = self.auth.refresher
        self.spawners = []

    async def login(self, name="alice") -> ServerUser:
        await self.auth.discover()
        model = await admitted(self.auth, code_flow_tokens(self.provider, name, client_id=CLIENT))
        self.user = ServerUser(model["name"], model["auth_state"])
        return self.user

    def new_spawner(self):
        spawner = self.kit.make(self.user.name)
        spawner.user = self.user  # JupyterHub's user, without an authenticator
        if self.kind == "local":
            spawner.server = self.user.server
        self.user.spawners[""] = spawner
        self.spawners.append(spawner)
        return spawner

    async def start(self, spawner, bundle: CredentialBundle):
        spawner.casa_bundle = bundle
        await self.kit.start(spawner)

    def token(self, spawner) -> bytes:
        return self.kit.mounted(spawner)["xcache.token"]

    def run(self):
        self.refresher.start(SimpleNamespace(users={self.user.name: self.user}, db=None))

    def renewed(self, user="alice") -> int:
        status = self.refresher.status(user)
        return 0 if status is None else status.counts["renewed"]

    def state(self, user="alice") -> str | None:
        status = self.refresher.status(user)
        return None if status is None else status.state

    async def until(self, condition, timeout=15.0, what="condition"):
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}: {self.refresher.statuses()}")
            await asyncio.sleep(0.05)


@pytest.fixture
async def site(casa_spawner, tmp_path, provider):
    s = Site(casa_spawner, tmp_path, provider)
    yield s
    await s.refresher.close()
    for spawner in s.spawners:
        await spawner.stop()


async def test_due_credentials_reach_the_server_from_the_hub_and_nothing_is_persisted(site):
    user = await site.login()
    assert not hasattr(user, "authenticator")  # a spawner that called the authenticator would raise
    spawner = site.new_spawner()
    await site.start(spawner, short_bundle("alice", 600))  # within the 30 min margin: due now
    assert spawner.casa_expires_at is not None and spawner.get_state()["casa_expires_at"]
    stored = dict(user._state)
    site.run()
    await site.until(lambda: site.renewed() == 1, what="fresh credentials in the server")

    delivered = spawner.casa_bundle
    assert delivered.user == "alice" and site.token(spawner) == delivered.files["xcache.token"].content
    status = site.refresher.status("alice")
    assert status.counts == {"renewed": 1} and status.state == "scheduled" and status.last_refresh is not None
    margin = datetime.timedelta(seconds=site.auth.credential_refresh_margin)
    assert status.expires_at == delivered.expires_at and status.due_at == delivered.expires_at - margin
    assert spawner.get_state()["casa_expires_at"] == delivered.expires_at.isoformat()  # for a restarted hub
    # the provider's session did not change: nothing written to auth_state (the hub re-mints when it must)
    assert user.saves == 0 and user._state == stored


async def test_a_refused_refresh_stops_for_good_until_the_server_starts_again(site, caplog):
    await site.login()
    spawner = site.new_spawner()
    await site.start(spawner, short_bundle("alice", 600))
    site.auth.blocked_users = {"alice"}
    with caplog.at_level(logging.WARNING):
        site.run()
        await site.until(lambda: site.state() == "refused", what="the refusal")
        await asyncio.sleep(1.0)  # > 3 retry intervals: a refusal is not retried
    status = site.refresher.status("alice")
    assert status.counts == {"refused": 1} and status.due_at is None
    assert "No fresh credentials for alice: it is blocked" in caplog.text
    assert "are no longer renewed" in caplog.text and "trying again" not in caplog.text
    assert site.token(spawner) == b"token-0\n"

    # the admin lifts the block and the server starts again: refreshed again
    site.auth.blocked_users = set()
    await spawner.stop()
    await site.start(spawner, short_bundle("alice", 600, token=b"token-1\n"))
    await site.until(lambda: site.renewed() == 1, what="renewal after the new start")
    assert site.refresher.status("alice").counts == {"renewed": 1}  # a new start: a new status
    assert site.token(spawner) not in (b"token-0\n", b"token-1\n")


async def test_a_provider_outage_keeps_the_server_retries_then_lapses_at_expiry(site, caplog):
    await site.login()
    spawner = site.new_spawner()
    await site.start(spawner, short_bundle("alice", 2.0))
    stop_provider(site.provider)
    with caplog.at_level(logging.WARNING):
        site.run()
        await site.until(lambda: site.state() == "lapsed", timeout=10, what="the lapse")
    status = site.refresher.status("alice")
    assert status.counts["outage"] >= 3 and set(status.counts) == {"outage"}, status.counts  # retried meanwhile
    assert status.last_error == "identity provider unavailable"
    assert "trying again in 0 s" in caplog.text and "could not be refreshed and lapse at" in caplog.text
    assert site.token(spawner) == b"token-0\n"  # the server kept what it had
    attempts = status.counts["outage"]
    await asyncio.sleep(1.0)
    assert site.refresher.status("alice").counts["outage"] == attempts  # nothing after the lapse


async def test_a_restarted_hub_renews_running_servers_from_their_spawner_state(site):
    await site.login()
    before = site.new_spawner()
    await site.start(before, short_bundle("alice", 600))
    state = before.get_state()
    # a restarted hub: a new spawner object from the saved state, never started by this process
    restored = site.new_spawner()
    restored.load_state(state)
    restored.server = before.server
    assert restored.casa_expires_at == before.casa_expires_at
    site.run()
    await site.until(lambda: site.renewed() == 1, what="the restored server's renewal")
    assert site.refresher.status("alice").counts == {"renewed": 1}
    assert restored.casa_bundle.files["xcache.token"].content == site.token(before)


async def test_a_hub_shutting_down_as_the_loop_wakes_still_stops_the_loop(site):
    # CI, 2026-11-30: a refresh ended (waking the loop) just as the test's teardown closed the refresher; Python
    # 3.11's wait_for swallowed the cancellation and the loop ran on, so close() never returned
    await site.login()
    site.run()
    await asyncio.sleep(0.3)  # the loop is parked, waiting for a wake-up or its next scan
    site.refresher.resume("alice")  # wakes the loop ...
    await asyncio.sleep(0)  # ... whose wait completes in this step, before the loop runs again
    try:
        async with asyncio.timeout(5):
            await site.refresher.close()
    except TimeoutError:
        raise AssertionError("the refresher's loop ignored the hub's shutdown") from None


async def test_renew_now_and_stop_refreshing_are_the_admins_levers(site):
    await site.login()
    spawner = site.new_spawner()
    fresh = short_bundle("alice", 7200)  # far from expiry: not due
    await site.start(spawner, fresh)
    site.run()
    await site.until(lambda: site.refresher.status("alice") is not None, what="the server tracked")
    assert site.refresher.status("alice").counts == {}
    status = await site.refresher.renew_now("alice")
    assert status.counts == {"renewed": 1} and site.token(spawner) != b"token-0\n"
    assert site.refresher.stop_refreshing("alice", "revoked by an admin") == 1
    status = site.refresher.status("alice")
    assert status.state == "stopped" and status.last_error == "revoked by an admin" and status.due_at is None
    site.refresher.resume("alice")  # what a new login does
    assert site.refresher.status("alice").state == "scheduled"
    with pytest.raises(KeyError, match="no running Casa server 'x'"):
        await site.refresher.renew_now("alice", "x")


# ------------------------------------------------------------------ the refresher alone (no spawner kind involved)
class MemoryServer(CasaCredentialsMixin):
    """A Casa server that keeps what it is given."""

    log = logging.getLogger("test_refresh")
    name = ""

    def __init__(self, user, expires_at):
        super().__init__()
        self.user, self.pending, self.written = user, None, []  # running: nothing pending (JupyterHub's Spawner)
        self._casa_expires_at, self._casa_generation = expires_at, 1

    async def casa_write_bundle(self, bundle):
        self.written.append(bundle)

    async def casa_remove_bundle(self):
        pass


class SlowAuthenticator:
    """Decides and mints after a delay, counting how many run at once."""

    credential_refresh_margin = 1800

    def __init__(self):
        self.running = self.peak = 0
        self.clock = _now

    async def renew(self, user, stored):
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            await asyncio.sleep(0.05)
            return {"auth_state": {}}, short_bundle(user.name, 7200)
        finally:
            self.running -= 1

    async def save_session(self, user, stored, model, bundle):
        return False


async def test_refreshes_due_together_run_a_bounded_number_at_a_time():
    auth = SlowAuthenticator()
    refresher = CasaRefresher(authenticator=auth, concurrency=4, jitter=0, scan_interval=0.05)
    users = {}
    for i in range(20):
        user = ServerUser(f"u{i}", {})
        user.spawners[""] = MemoryServer(user, _now())  # all due at once
        users[user.name] = user
    refresher.start(SimpleNamespace(users=users, db=None))
    try:
        deadline = time.monotonic() + 10
        while refresher.totals["renewed"] < 20 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    finally:
        await refresher.close()
    assert refresher.totals == {"renewed": 20}
    assert auth.peak == 4
    assert all(len(u.spawners[""].written) == 1 for u in users.values())


def _herd(n: int, expires_at: datetime.datetime) -> dict:
    users = {}
    for i in range(n):
        user = ServerUser(f"u{i}", {})
        user.spawners[""] = MemoryServer(user, expires_at)
        users[user.name] = user
    return users


async def _until(predicate, what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def test_a_herd_of_finished_refreshes_does_not_walk_every_server_once_per_refresh(monkeypatch):
    # 1000 servers due at once: a look at every server per finished refresh was 1000 x 1000 steps on the loop
    refresher = CasaRefresher(authenticator=SlowAuthenticator(), concurrency=4, jitter=0, scan_interval=30)
    looks = []
    dispatch = refresher._dispatch
    monkeypatch.setattr(refresher, "_dispatch", lambda: looks.append(1) or dispatch())
    refresher.start(SimpleNamespace(users=_herd(40, _now()), db=None))
    try:
        await _until(lambda: refresher.totals["renewed"] == 40, "the herd renewed")
    finally:
        await refresher.close()
    assert len(looks) <= 2  # the first look dispatches all 40; nothing is due again before the next look


class FlakyAuthenticator(SlowAuthenticator):
    """The provider is down for the first attempt of each user."""

    def __init__(self):
        super().__init__()
        self.attempts = {}

    async def renew(self, user, stored):
        from casa_hub.authenticator import ProviderUnavailable

        self.attempts[user.name] = self.attempts.get(user.name, 0) + 1
        if self.attempts[user.name] == 1:
            raise ProviderUnavailable("https://idp.example.org")
        return await super().renew(user, stored)


async def test_a_retry_due_before_the_next_look_wakes_the_loop():
    auth = FlakyAuthenticator()
    # the loop looks every 30 s; the retry is due 0.1 s after the failure, so the failure itself must wake it
    refresher = CasaRefresher(authenticator=auth, jitter=0, scan_interval=30, retry_interval=0.1)
    refresher.start(SimpleNamespace(users=_herd(1, _now() + datetime.timedelta(minutes=10)), db=None))  # due
    try:
        await _until(lambda: refresher.totals["renewed"] == 1, "the retry", timeout=10)
    finally:
        await refresher.close()
    assert refresher.totals == {"outage": 1, "renewed": 1} and auth.attempts == {"u0": 2}


def test_jitter_brings_refreshes_forward_by_up_to_its_share_of_the_margin():
    refresher = CasaRefresher(authenticator=SimpleNamespace(credential_refresh_margin=1000, clock=_now), jitter=0.2)
    exp = _now()
    dues = [(exp - refresher._due(exp)).total_seconds() for _ in range(200)]
    assert 1000 <= min(dues) < 1020 and 1180 < max(dues) <= 1200
