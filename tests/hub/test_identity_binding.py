"""Credentials belong to exactly one hub user, bound to one provider identity, for as long as JupyterHub's
own admission rules admit that user: CasaAuthenticator in-process against the real demo provider, driven the
way JupyterHub drives it (``get_authenticated_user`` at login, ``refresh_user`` and the hub's refresher later,
``pre_spawn_start`` before a server starts). The same flows through a real hub are in test_identity_hub.py."""

from __future__ import annotations

import datetime
import logging

import jwt
import pytest
from tornado import web

from casa_demo.oidc_provider import DEMO_USERS
from casa_hub.authenticator import CredentialsRefused
from casa_hub.credentials.bundle import CredentialBundle
from casa_hub.local import CasaLocalSpawner
from tests.hub.auth_support import CLIENT, HubUser, LoginHandler, admitted, make_authenticator
from tests.hub.oidc import code_flow_tokens, start_provider, stop_provider

USERS = DEMO_USERS + [
    # another person at the provider who set their (user-editable) preferred_username to alice's
    {
        "sub": "mallory",
        "preferred_username": "alice",
        "email": "mallory@casa.test",
        "email_verified": True,
        "groups": ["cms"],
    },
    {
        "sub": "carol",
        "preferred_username": "carol",
        "email": "carol@casa.test",
        "email_verified": False,
        "groups": ["cms"],
    },
]


@pytest.fixture
def provider(tmp_path):
    p = start_provider(tmp_path, users=USERS)
    try:
        yield p
    finally:
        stop_provider(p)


@pytest.fixture
def mints(monkeypatch):
    """Every user name the hub's minter is asked to mint for, in order."""
    from casa_hub.minter import CasaMinter

    calls = []
    real = CasaMinter.mint

    def spy(self, user, **kwargs):
        calls.append(user)
        return real(self, user, **kwargs)

    monkeypatch.setattr(CasaMinter, "mint", spy)
    return calls


async def login(auth, provider, sub, handler=None):
    return await admitted(auth, code_flow_tokens(provider, sub, client_id=CLIENT), handler)


async def logged_in(auth, provider, sub="alice") -> HubUser:
    model = await login(auth, provider, sub)
    return HubUser(model["name"], model["auth_state"])


def near_expiry(auth, user):
    bundle = CredentialBundle.from_dict(user._state["casa"])
    auth.clock = lambda: bundle.expires_at - datetime.timedelta(minutes=10)  # inside the 30 min margin


# ------------------------------------------------------------------ mint only after admission
async def test_refused_users_make_the_hub_mint_nothing(tmp_path, provider, mints):
    auth = make_authenticator(tmp_path, provider.url, blocked_users={"bob"}, allowed_groups={"cms", "atlas"})
    assert await login(auth, provider, "eve") is None  # outside the allowed groups
    assert await login(auth, provider, "bob") is None  # in an allowed group, but blocked
    assert mints == []
    model = await login(auth, provider, "alice")
    assert mints == ["alice"] and CredentialBundle.from_dict(model["auth_state"]["casa"]).user == "alice"


async def test_the_admins_post_auth_hook_runs_before_casa_mints(tmp_path, provider, mints):
    seen = []

    def hook(authenticator, handler, model):
        seen.append((model["name"], "casa" in model["auth_state"], list(mints)))
        return model

    auth = make_authenticator(tmp_path, provider.url, post_auth_hook=hook)
    model = await login(auth, provider, "alice")
    assert seen == [("alice", False, [])] and "casa" in model["auth_state"]


# ------------------------------------------------------------------ identity bound at first login
async def test_first_login_binds_the_hub_user_to_the_providers_identity(tmp_path, provider):
    auth = make_authenticator(tmp_path, provider.url)
    user = await logged_in(auth, provider)
    assert user._state["casa_identity"] == {"iss": provider.url, "sub": "alice"}


async def test_another_identity_claiming_a_bound_user_name_is_refused(tmp_path, provider, mints, caplog):
    auth = make_authenticator(tmp_path, provider.url)
    alice = await logged_in(auth, provider)
    mints.clear()
    with caplog.at_level(logging.WARNING), pytest.raises(web.HTTPError) as refused:
        await login(auth, provider, "mallory", handler=LoginHandler(alice))
    assert refused.value.status_code == 403
    assert "belongs to another identity" in refused.value.jupyterhub_message
    assert mints == []
    assert "bound to another identity" in caplog.text
    # alice herself still logs in, and so does a user JupyterHub does not know yet
    assert (await login(auth, provider, "alice", handler=LoginHandler(alice)))["name"] == "alice"


# ------------------------------------------------------------------ the session keeps its identity
async def test_a_rename_at_the_provider_mints_nothing_for_the_new_name(tmp_path, provider, mints, caplog):
    auth = make_authenticator(tmp_path, provider.url)
    user = await logged_in(auth, provider)
    before = user._state["casa"]
    provider.set_user(
        "alice", {"preferred_username": "bob", "email": "alice@casa.test", "email_verified": True, "groups": ["cms"]}
    )
    near_expiry(auth, user)
    mints.clear()
    with caplog.at_level(logging.WARNING):
        assert await auth.refresh_user(user) is False
        with pytest.raises(CredentialsRefused, match="another user name"):
            await auth.renew(user)
    assert mints == []
    assert user._state["casa"] == before  # nothing stored for anyone else
    assert "No fresh credentials for alice: the provider now gives this identity another user name" in caplog.text


async def test_a_session_whose_provider_names_another_identity_gets_nothing(tmp_path, provider, mints):
    auth = make_authenticator(tmp_path, provider.url)
    user = await logged_in(auth, provider)
    user._state["casa_identity"] = {"iss": provider.url, "sub": "someone-else"}  # bound to another person
    near_expiry(auth, user)
    mints.clear()
    with pytest.raises(CredentialsRefused, match="another identity"):
        await auth.renew(user)
    assert mints == []


async def test_a_refresh_keeps_the_binding_and_mints_for_the_hub_user(tmp_path, provider, mints):
    auth = make_authenticator(tmp_path, provider.url)
    user = await logged_in(auth, provider)
    near_expiry(auth, user)
    _, bundle = await auth.renew(user)
    assert bundle.user == "alice" and mints == ["alice", "alice"]
    assert user._state["casa_identity"] == {"iss": provider.url, "sub": "alice"}


# ------------------------------------------------------------------ admission on refresh = admission on login
@pytest.mark.parametrize("change", ["blocked", "removed from allowed_users", "allowed group dropped"])
async def test_a_user_the_hub_no_longer_admits_gets_no_fresh_credentials(tmp_path, provider, mints, change, caplog):
    auth = make_authenticator(tmp_path, provider.url, allowed_users={"alice"}, allowed_groups={"cms"})
    user = await logged_in(auth, provider)
    # the admin changes the configuration and restarts the hub: a new authenticator, the same stored state
    traits = {
        "blocked": dict(blocked_users={"alice"}, allowed_users={"alice"}, allowed_groups={"cms"}),
        "removed from allowed_users": dict(allowed_users={"bob"}, allowed_groups={"atlas"}),
        "allowed group dropped": dict(allowed_groups={"atlas"}),
    }[change]
    restarted = make_authenticator(tmp_path / "restarted", provider.url, **traits)
    mints.clear()
    with caplog.at_level(logging.WARNING):
        assert await restarted.refresh_user(user) is False  # even while the credentials are fresh
        near_expiry(restarted, user)
        with pytest.raises(CredentialsRefused):
            await restarted.renew(user)
        with pytest.raises(web.HTTPError) as refused:
            await restarted.pre_spawn_start(user, None)
    assert refused.value.status_code == 403
    assert mints == []
    assert await login(restarted, provider, "alice") is None  # and the next login is refused as well
    assert mints == []


# ------------------------------------------------------------------ verified identities only
async def test_an_unverified_email_never_becomes_the_servicex_identity(tmp_path, provider, mints):
    traits = {
        "CasaMinter__kinds": ["xcache", "servicex", "dask-tls"],
        "ServiceXToken__identity": "email",
        "ServiceXToken__secret_file": str(tmp_path / "keys" / "servicex"),
        "ServiceXToken__endpoint": "http://127.0.0.1:1",
    }
    auth = make_authenticator(tmp_path, provider.url, **traits)
    with pytest.raises(web.HTTPError) as refused:
        await login(auth, provider, "carol")  # the provider says carol's e-mail is not verified
    assert refused.value.status_code == 403 and "verified" in refused.value.jupyterhub_message
    model = await login(auth, provider, "alice")
    token = CredentialBundle.from_dict(model["auth_state"]["casa"]).files["servicex.token"].content.decode().strip()
    assert jwt.decode(token, options={"verify_signature": False})["sub"] == "alice@casa.test"


async def test_stored_credentials_of_another_user_are_never_mounted(tmp_path, provider):
    auth = make_authenticator(tmp_path, provider.url, allowed_groups={"cms", "atlas"})
    bob = await logged_in(auth, provider, "bob")
    alice = HubUser("alice", dict(bob._state, casa_groups=["cms"]))  # alice's auth_state holds bob's bundle
    spawner = CasaLocalSpawner(user=alice, log=logging.getLogger("test"))
    with pytest.raises(web.HTTPError) as refused:
        await auth.pre_spawn_start(alice, spawner)
    assert refused.value.status_code == 403 and spawner.casa_bundle is None
