"""CasaAuthenticator's refresh policy against a real provider that is up, revokes, or goes down."""

from __future__ import annotations

import datetime
import logging

import pytest
from traitlets.config import Config

from casa_hub.authenticator import CasaAuthenticator
from casa_hub.credentials.bundle import CredentialBundle
from tests.hub.oidc import code_flow_tokens, start_provider, stop_provider
from tests.support import write_keys


class HubUser:
    """The slice of jupyterhub.user.User the authenticator uses (name, auth state, spawners)."""

    def __init__(self, name, auth_state):
        self.name, self._state, self.spawners = name, auth_state, {}

    async def get_auth_state(self):
        return self._state

    async def save_auth_state(self, state):
        self._state = state


@pytest.fixture
def provider(tmp_path):
    p = start_provider(tmp_path)
    try:
        yield p
    finally:
        stop_provider(p)


def _authenticator(tmp_path, provider) -> CasaAuthenticator:
    keys = write_keys(tmp_path / "keys")
    c = Config()
    c.CasaAuthenticator.oidc_issuer = provider.url
    c.CasaAuthenticator.client_id = "casa-test"
    c.CasaAuthenticator.client_secret = "x"
    c.CasaAuthenticator.allowed_groups = {"cms"}
    c.CasaAuthenticator.credential_refresh_margin = 1800
    c.CasaMinter.issuer_url = "https://hub.test/hub/casa-issuer"
    c.CasaMinter.issuer_key_file = str(keys["issuer"])
    c.CasaMinter.dask_ca_secret_file = str(keys["dask-ca"])
    return CasaAuthenticator(config=c)


async def _logged_in(auth, provider, sub="alice") -> HubUser:
    model = await auth._token_to_auth_model(code_flow_tokens(provider, sub, client_id="casa-test"))
    return HubUser(model["name"], model["auth_state"])


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
    import httpx

    auth = _authenticator(tmp_path, provider)
    await auth.discover()
    user = await _logged_in(auth, provider)
    httpx.post(f"{provider.url}/users/alice/revoke-tokens", timeout=10).raise_for_status()
    _at(auth, _bundle(user).expires_at - datetime.timedelta(minutes=10))
    assert await auth.refresh_user(user) is False


async def test_casa_refresh_persists_then_delivers(tmp_path, provider):
    from casa_hub.mixin import CasaCredentialsMixin

    delivered = []

    class Server(CasaCredentialsMixin):
        active = True
        log = logging.getLogger("test")
        _log_name = "alice"

        def __init__(self, user):
            super().__init__()
            self.user = user

        async def casa_write_bundle(self, bundle):
            delivered.append((bundle, dict(self.user._state)))

        def casa_schedule_refresh(self, expires_at):
            pass

    auth = _authenticator(tmp_path, provider)
    await auth.discover()
    user = await _logged_in(auth, provider)
    user.spawners[""] = Server(user)
    bundle = await auth.casa_refresh_credentials(user)
    assert bundle is not None and bundle.user == "alice"
    (written, state_when_written), = delivered
    assert written == bundle
    assert CredentialBundle.from_dict(state_when_written["casa"]) == bundle  # saved before delivery


async def test_minting_for_another_user_is_refused_by_the_server():
    from casa_hub.mixin import CasaCredentialsMixin

    class Server(CasaCredentialsMixin):
        def __init__(self):
            super().__init__()
            self.user = HubUser("alice", {})

    bundle = CredentialBundle(user="mallory", issued_at=datetime.datetime.now(datetime.timezone.utc), files={})
    with pytest.raises(ValueError, match="refusing to deliver"):
        await Server().casa_apply_bundle(bundle)
