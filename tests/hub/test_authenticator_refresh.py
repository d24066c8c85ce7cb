"""CasaAuthenticator's refresh policy against a real provider that is up, revokes, or goes down."""

from __future__ import annotations

import datetime
import logging

import httpx
import pytest
from tornado import web

from casa_hub.authenticator import CasaAuthenticator, CredentialsRefused
from casa_hub.credentials.bundle import CredentialBundle
from tests.hub.auth_support import CLIENT, HubUser, admitted, make_authenticator
from tests.hub.oidc import code_flow_tokens, stop_provider


async def _logged_in(auth, provider, sub="alice") -> HubUser:
    model = await admitted(auth, code_flow_tokens(provider, sub, client_id=CLIENT))
    return HubUser(model["name"], model["auth_state"])


def _authenticator(tmp_path, provider) -> CasaAuthenticator:
    return make_authenticator(tmp_path, provider.url)


def _bundle(user) -> CredentialBundle:
    return CredentialBundle.from_dict(user._state["casa"])


def _at(auth, when):
    auth.clock = lambda: when


async def test_fresh_credentials_need_no_refresh(tmp_path, provider):
    auth = _authenticator(tmp_path, provider)
    await auth.discover()
    user = await _logged_in(auth, provider)
    stop_provider(provider)  # proves the provider is not even asked
    assert await auth.refresh_user(user) is True


async def test_near_expiry_refreshes_and_remints(tmp_path, provider):
    auth = _authenticator(tmp_path, provider)
    await auth.discover()
    user = await _logged_in(auth, provider)
    old = _bundle(user)
    _at(auth, old.expires_at - datetime.timedelta(minutes=10))  # inside the 30 min margin
    model = await auth.refresh_user(user)
    assert isinstance(model, dict)
    new = CredentialBundle.from_dict(model["auth_state"]["casa"])
    assert new.expires_at > old.expires_at
    assert new.files["xcache.token"].content != old.files["xcache.token"].content
    assert model["groups"] == ["cms", "gpu-users"]


async def test_provider_outage_keeps_valid_credentials(tmp_path, provider, caplog):
    auth = _authenticator(tmp_path, provider)
    await auth.discover()
    user = await _logged_in(auth, provider)
    bundle = _bundle(user)
    stop_provider(provider)
    _at(auth, bundle.expires_at - datetime.timedelta(minutes=10))
    with caplog.at_level(logging.WARNING):
        assert await auth.refresh_user(user) is True
    assert "keeping credentials valid" in caplog.text
    _at(auth, bundle.expires_at + datetime.timedelta(seconds=1))
    with caplog.at_level(logging.WARNING):
        assert await auth.refresh_user(user) is False
    assert "a new login is required" in caplog.text


async def test_revoked_user_must_log_in_again(tmp_path, provider):
    auth = _authenticator(tmp_path, provider)
    await auth.discover()
    user = await _logged_in(auth, provider)
    httpx.post(f"{provider.url}/users/alice/revoke-tokens", timeout=10).raise_for_status()
    _at(auth, _bundle(user).expires_at - datetime.timedelta(minutes=10))
    assert await auth.refresh_user(user) is False


async def test_a_renewal_persists_only_what_the_hub_cannot_re_create(tmp_path, provider):
    """renew() asks the provider and mints; save_session() writes auth_state only when the provider's session
    (a rotated refresh token), the identity, the groups or the verified e-mail changed, never for the bundle
    alone (the hub re-mints it; the running server holds its copy)."""
    auth = _authenticator(tmp_path, provider)
    await auth.discover()
    user = await _logged_in(auth, provider)
    stored = dict(user._state)
    model, bundle = await auth.renew(user)
    assert bundle.user == "alice" and bundle != _bundle(user)
    assert await auth.save_session(user, stored, model, bundle) is False
    assert user._state == stored  # nothing written

    rotated = {**model, "auth_state": {**model["auth_state"], "refresh_token": "rotated-by-the-provider"}}
    assert await auth.save_session(user, stored, rotated, bundle) is True
    assert user._state["refresh_token"] == "rotated-by-the-provider"
    assert _bundle(user) == bundle  # written anyway, so the fresh bundle rides along

    regrouped = {**model, "auth_state": {**model["auth_state"], "casa_groups": ["cms"]}}
    assert await auth.save_session(user, dict(user._state), regrouped, bundle) is True
    assert user._state["casa_groups"] == ["cms"]


async def test_minting_for_another_user_is_refused_by_the_server():
    from casa_hub.mixin import CasaCredentialsMixin

    class Server(CasaCredentialsMixin):
        def __init__(self):
            super().__init__()
            self.user = HubUser("alice", {})

    bundle = CredentialBundle(user="mallory", issued_at=datetime.datetime.now(datetime.timezone.utc), files={})
    with pytest.raises(ValueError, match="refusing to deliver"):
        await Server().casa_apply_bundle(bundle)


async def test_user_moved_out_of_allowed_groups_gets_no_new_credentials(tmp_path, provider, caplog):
    auth = _authenticator(tmp_path, provider)
    await auth.discover()
    user = await _logged_in(auth, provider)
    provider.set_user("alice", {"preferred_username": "alice", "groups": ["visitors"]})
    _at(auth, _bundle(user).expires_at - datetime.timedelta(minutes=10))
    with caplog.at_level(logging.WARNING):
        assert await auth.refresh_user(user) is False
    assert "No fresh credentials for alice: it is no longer allowed" in caplog.text
    with pytest.raises(CredentialsRefused):
        await auth.renew(user)


async def test_no_token_or_secret_is_logged_during_login_refresh_and_outage(tmp_path, provider, caplog):
    """Everything the authenticator, oauthenticator, JupyterHub and tornado log at DEBUG, scanned for every
    token the provider issued, every credential minted and every secret the hub holds."""
    keys_dir = tmp_path / "keys"
    caplog.set_level(logging.DEBUG)
    auth = _authenticator(tmp_path, provider)
    await auth.discover()
    user = await _logged_in(auth, provider)
    seen = [user._state]
    _at(auth, _bundle(user).expires_at - datetime.timedelta(minutes=10))
    seen.append((await auth.refresh_user(user))["auth_state"])  # refresh with the provider up
    httpx.post(f"{provider.url}/users/alice/revoke-tokens", timeout=10).raise_for_status()
    assert await auth.refresh_user(user) is False  # refresh grant refused
    provider.set_user("alice", {"preferred_username": "alice", "groups": ["visitors"]})
    auth.blocked_users = {"alice"}
    assert await auth.refresh_user(user) is False  # refused: blocked
    auth.blocked_users = set()
    stop_provider(provider)
    assert await auth.refresh_user(user) is True  # outage, credentials still valid

    secrets = {auth.client_secret}
    for state in seen:
        secrets |= {state["access_token"], state["refresh_token"], state["id_token"]}
        for path, f in CredentialBundle.from_dict(state["casa"]).files.items():
            if not path.endswith((".pem", ".crt", ".json")):
                secrets.add(f.content.decode(errors="ignore").strip())
    secrets |= {p.read_bytes().decode(errors="ignore").strip() for p in keys_dir.iterdir()}
    text = "\n".join(r.getMessage() for r in caplog.records) + caplog.text
    assert len(caplog.records) > 5
    leaked = [s[:12] + "..." for s in secrets if s and s in text]
    assert not leaked, f"secrets in the log: {leaked}"


async def test_refresh_after_a_hub_restart_discovers_the_provider_first(tmp_path, provider):
    """A restarted hub has not discovered the provider yet when a user's first request triggers a refresh."""
    user = await _logged_in(await _discovered(_authenticator(tmp_path, provider)), provider)
    restarted = _authenticator(tmp_path, provider)
    assert restarted.userdata_url == ""
    _at(restarted, _bundle(user).expires_at - datetime.timedelta(minutes=10))
    model = await restarted.refresh_user(user)
    assert isinstance(model, dict) and model["name"] == "alice"


async def test_provider_down_when_a_restarted_hub_refreshes(tmp_path, provider):
    user = await _logged_in(await _discovered(_authenticator(tmp_path, provider)), provider)
    stop_provider(provider)
    restarted = _authenticator(tmp_path, provider)
    _at(restarted, _bundle(user).expires_at - datetime.timedelta(minutes=10))
    assert await restarted.refresh_user(user) is True
    _at(restarted, _bundle(user).expires_at + datetime.timedelta(seconds=1))
    assert await restarted.refresh_user(user) is False


async def _discovered(auth):
    await auth.discover()
    return auth


async def test_minting_runs_off_the_event_loop_a_bounded_number_at_a_time(tmp_path, provider):
    import asyncio
    import threading
    import time

    auth = _authenticator(tmp_path, provider)
    auth.mint_concurrency = 2
    running, peak, lock = [0], [0], threading.Lock()
    real_mint = auth.minter.mint

    def slow_mint(*args, **kwargs):  # a mint that takes 0.2 s of a worker thread
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        try:
            time.sleep(0.2)
            return real_mint(*args, **kwargs)
        finally:
            with lock:
                running[0] -= 1

    auth.minter.mint = slow_mint
    ticks = 0

    async def heartbeat():
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    beat = asyncio.ensure_future(heartbeat())
    started = time.monotonic()
    bundles = await asyncio.gather(*(auth.mint(f"user{i}") for i in range(6)))
    elapsed = time.monotonic() - started
    beat.cancel()
    assert [b.user for b in bundles] == [f"user{i}" for i in range(6)]
    assert peak[0] == 2 and elapsed >= 0.55  # 6 mints, 2 at a time, 0.2 s each
    assert ticks >= 20  # the loop kept serving while the mints ran


async def test_a_server_start_mounts_the_stored_credentials_unless_they_are_near_expiry(tmp_path, provider):
    """What happens before a server (re)starts, as JupyterHub drives it: ``refresh_pre_spawn`` (oauthenticator turns
    it on with auth state) calls ``refresh_user`` without ``force``, JupyterHub stores what it returns, then
    ``pre_spawn_start`` mounts the bundle auth_state holds. A restart re-mints only near (or past) expiry."""
    from casa_hub.local import CasaLocalSpawner

    auth = _authenticator(tmp_path, provider)
    assert auth.refresh_pre_spawn
    await auth.discover()
    user = await _logged_in(auth, provider)
    stored = _bundle(user)

    async def start():
        model = await auth.refresh_user(user)
        assert model is not False
        if isinstance(model, dict):
            await user.save_auth_state(model["auth_state"])  # JupyterHub's refresh_auth does this
        spawner = CasaLocalSpawner(user=user, log=logging.getLogger("test"))
        await auth.pre_spawn_start(user, spawner)
        return spawner.casa_bundle

    # fresh (the timer keeps it so): the very same credentials, not re-minted
    assert await start() == stored
    assert _bundle(user) == stored

    # within credential_refresh_margin of expiry: renewed with the provider first, the new bundle is mounted
    _at(auth, stored.expires_at - datetime.timedelta(minutes=10))
    mounted = await start()
    assert mounted.expires_at > stored.expires_at
    assert mounted.files["xcache.token"].content != stored.files["xcache.token"].content
    assert mounted == _bundle(user)  # what was mounted is what is stored


async def test_a_server_start_without_refresh_pre_spawn_renews_near_expiry_credentials_itself(tmp_path, provider):
    """``refresh_pre_spawn`` off: pre_spawn_start asks the provider itself before minting (admitted, same
    identity), and keeps valid stored credentials while the provider is down."""
    from casa_hub.local import CasaLocalSpawner

    auth = _authenticator(tmp_path, provider)
    await auth.discover()
    user = await _logged_in(auth, provider)
    stored = _bundle(user)
    _at(auth, stored.expires_at - datetime.timedelta(minutes=10))
    spawner = CasaLocalSpawner(user=user, log=logging.getLogger("test"))
    await auth.pre_spawn_start(user, spawner)
    assert spawner.casa_bundle.expires_at > stored.expires_at and spawner.casa_bundle.user == "alice"

    stop_provider(provider)
    spawner = CasaLocalSpawner(user=user, log=logging.getLogger("test"))
    await auth.pre_spawn_start(user, spawner)
    assert spawner.casa_bundle == stored  # valid for 10 more minutes: started with what is stored
    _at(auth, stored.expires_at + datetime.timedelta(seconds=1))
    with pytest.raises(web.HTTPError) as refused:
        await auth.pre_spawn_start(user, CasaLocalSpawner(user=user, log=logging.getLogger("test")))
    assert refused.value.status_code == 503
