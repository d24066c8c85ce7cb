"""CasaAuthenticator configuration and startup: what fails early and clearly, how groups claims are read, and
the login page when the provider is down (a real hub, a real provider that comes back)."""

from __future__ import annotations

import dataclasses

import httpx
import pytest
from traitlets import TraitError
from traitlets.config import Config

from casa_hub.authenticator import CasaAuthenticator, groups_from_claim
from tests.hub import hub as H
from tests.hub.oidc import start_provider, stop_provider
from tests.support import free_port, need, write_keys


def _config(tmp_path, **auth) -> Config:
    keys = write_keys(tmp_path / "keys")
    c = Config()
    c.CasaAuthenticator.oidc_issuer = "http://127.0.0.1:1"
    c.CasaAuthenticator.client_id = "casa-test"
    c.CasaAuthenticator.client_secret = "x"
    for name, value in auth.items():
        setattr(c.CasaAuthenticator, name, value)
    c.CasaMinter.issuer_url = "https://hub.test/hub/casa-issuer"
    c.CasaMinter.issuer_key_file = str(keys["issuer"])
    c.DaskTLS.ca_secret_file = str(keys["dask-ca"])
    return c


# ---------------------------------------------------------------- configuration fails early and says why
@pytest.mark.parametrize("algorithms", [["HS256"], ["RS256", "none"], ["none"], []])
def test_symmetric_or_none_id_token_algorithms_are_a_config_error(tmp_path, algorithms):
    with pytest.raises(TraitError, match=r"CasaAuthenticator.id_token_algorithms=.*asymmetric"):
        CasaAuthenticator(config=_config(tmp_path, id_token_algorithms=algorithms))


def test_auth_state_cannot_be_disabled(tmp_path):
    with pytest.raises(ValueError, match="enable_auth_state = True.*JUPYTERHUB_CRYPT_KEY"):
        CasaAuthenticator(config=_config(tmp_path, enable_auth_state=False))


def test_missing_signing_key_fails_at_construction_not_at_login(tmp_path, caplog):
    c = _config(tmp_path)
    c.CasaMinter.issuer_key_file = str(tmp_path / "no-such-key.pem")
    with pytest.raises(SystemExit) as e:  # the hub exits with one line, not a traceback
        CasaAuthenticator(config=c)
    assert e.value.code == 1
    assert "Casa cannot start: cannot read the issuer signing key" in caplog.text


def test_minter_is_configured_through_its_own_section_and_parented(tmp_path):
    c = _config(tmp_path)
    c.XCacheToken.lifetime = 1234
    auth = CasaAuthenticator(config=c)
    assert auth.minter.parent is auth and auth.minter.kind("xcache").lifetime == 1234


def test_defaults_suit_a_facility(tmp_path):
    auth = CasaAuthenticator(config=_config(tmp_path))
    assert auth.enable_auth_state and auth.manage_groups and auth.enable_pkce
    assert auth.username_claim == "preferred_username" and "openid" in auth.scope


# ---------------------------------------------------------------- groups: oauthenticator's auth_state_groups_key
WLCG = groups_from_claim("wlcg.groups", strip="/")


@pytest.mark.parametrize(
    "key,claim,value,expected",
    [
        (None, "groups", ["cms", " gpu-users ", "", 7], {"cms", "gpu-users"}),  # the default: oauth_user.groups
        (None, "groups", "cms, atlas", {"cms", "atlas"}),
        (WLCG, "wlcg.groups", ["/cms", "/cms/uscms", "/atlas"], {"cms", "cms/uscms", "atlas"}),
        (
            "oauth_user.eduperson_entitlement",
            "eduperson_entitlement",
            ["urn:mace:casa:cms", "urn:mace:casa:gpu"],
            {"urn:mace:casa:cms", "urn:mace:casa:gpu"},
        ),
        (lambda state: {"from-a-callable"}, "groups", ["cms"], {"from-a-callable"}),
        (None, "groups", None, set()),
    ],
)
async def test_groups_key_forms(tmp_path, key, claim, value, expected):
    auth = CasaAuthenticator(config=_config(tmp_path, **({} if key is None else {"auth_state_groups_key": key})))
    user_info = {"sub": "u"} if value is None else {"sub": "u", claim: value}
    assert await auth.get_user_groups({auth.user_auth_state_key: user_info}) == expected


@pytest.mark.parametrize("key", [None, WLCG])
async def test_groups_fall_back_to_the_verified_id_token(tmp_path, key):
    auth = CasaAuthenticator(config=_config(tmp_path, **({} if key is None else {"auth_state_groups_key": key})))
    claim = "groups" if key is None else "wlcg.groups"
    state = {
        auth.user_auth_state_key: {"sub": "u"},
        "token_response": {"id_token_claims": {"sub": "u", claim: ["/cms"] if key else ["cms"]}},
    }
    assert await auth.get_user_groups(state) == {"cms"}


def test_a_dotted_wlcg_groups_key_is_a_config_error_that_says_what_to_write(tmp_path):
    with pytest.raises(TraitError, match=r"auth_state_groups_key='oauth_user.wlcg.groups'.*groups_from_claim"):
        CasaAuthenticator(config=_config(tmp_path, auth_state_groups_key="oauth_user.wlcg.groups"))


async def test_the_deprecated_groups_claim_still_works_and_warns(tmp_path, caplog):
    auth = CasaAuthenticator(config=_config(tmp_path, groups_claim="wlcg.groups"))
    assert "groups_claim is deprecated" in caplog.text
    state = {auth.user_auth_state_key: {"sub": "u", "wlcg.groups": ["/cms"]}}
    assert await auth.get_user_groups(state) == {"cms"}


# ---------------------------------------------------------------- the real hub
@dataclasses.dataclass
class _Address:
    """Where the provider will be (nothing listens there yet)."""

    url: str
    port: int


def test_hub_without_crypt_key_refuses_to_start_with_a_clear_message(tmp_path):
    need(H.CHP.exists(), "configurable-http-proxy (npm ci)")
    port = free_port()
    with pytest.raises(RuntimeError, match="did not start") as failed:
        # as if JUPYTERHUB_CRYPT_KEY were unset (the helper always sets it)
        H.start_hub(
            tmp_path / "hub",
            _Address(f"http://127.0.0.1:{port}", port),
            extra_config="c.CryptKeeper.keys = []",
            timeout=30,
        )
    assert "auth_state is enabled, but encryption is not available" in str(failed.value)


def test_provider_down_at_login_is_a_clear_503_then_login_works_once_it_is_back(tmp_path):
    need(H.CHP.exists(), "configurable-http-proxy (npm ci)")
    port = free_port()
    hub = H.start_hub(tmp_path / "hub", _Address(f"http://127.0.0.1:{port}", port))
    provider = None
    try:
        with httpx.Client(timeout=30) as client:
            r = client.get(hub.url + "/hub/oauth_login")
        assert r.status_code == 503
        page = H.page_message(r.text)
        assert "The identity provider (http://127.0.0.1:" in page and "Please try again in a few minutes" in page
        assert "Traceback" not in r.text
        log = hub.log()
        assert "OIDC provider unreachable" in log and "Traceback" not in log

        provider = start_provider(tmp_path, port=port)
        hub.provider = provider
        client = H.oauth_login(hub, "alice")
        assert client.last_callback.status_code == 302, H.page_message(client.last_callback.text)[:400]
    finally:
        H.stop_hub(hub)
        if provider is not None:
            stop_provider(provider)
