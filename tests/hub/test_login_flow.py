"""The real thing, without a browser: JupyterHub + configurable-http-proxy + CasaAuthenticator +
CasaLocalSpawner + the demo OIDC provider, driven through the OAuth code flow with PKCE."""

from __future__ import annotations

import stat
import time
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import pytest

from casa_hub.authenticator import login_nonce
from casa_hub.credentials.bundle import CredentialBundle
from tests.hub import hub as H

# credentials live 70 s and are refreshed 60 s before expiry: the server's timer fires ~10 s after start
SHORT_LIVED = """
c.JupyterHub.log_level = "DEBUG"
c.XCacheToken.lifetime = 70
c.CasaAuthenticator.credential_refresh_margin = 60
c.CasaRefresher.jitter = 0
"""


@pytest.fixture(scope="module")
def facility(tmp_path_factory):
    with H.running_hub(tmp_path_factory.mktemp("facility"), SHORT_LIVED) as hub:
        yield hub


def _auth_state(hub, name):
    with hub.api() as api:
        r = api.get(f"/users/{name}")
        assert r.status_code == 200, r.text
        return r.json()


def test_login_mints_credentials_into_auth_state(facility):
    client = H.oauth_login(facility, "alice")
    assert client.last_callback.status_code == 302
    model = _auth_state(facility, "alice")
    assert model["admin"] is False
    assert sorted(model["groups"]) == ["cms", "gpu-users"]
    state = model["auth_state"]
    bundle = CredentialBundle.from_dict(state["casa"])
    assert bundle.user == "alice"
    assert {"xcache.token", "condor-tokens/casa", "dask/ca.pem", "dask/client.key"} <= set(bundle.files)
    claims = state["token_response"]["id_token_claims"]
    assert claims["sub"] == "alice"
    # the verified id_token carries the nonce of this very login (derived from its OAuth state)
    login_state = parse_qs(urlsplit(str(client.last_callback.request.url)).query)["state"][0]
    assert claims["nonce"] == login_nonce(login_state)


def test_issued_token_verifies_against_the_hubs_own_jwks(facility):
    H.oauth_login(facility, "alice")
    bundle = CredentialBundle.from_dict(_auth_state(facility, "alice")["auth_state"]["casa"])
    config = httpx.get(facility.url + "/hub/casa-issuer/.well-known/openid-configuration", timeout=10).json()
    assert config["issuer"] == facility.url + "/hub/casa-issuer"
    jwks = httpx.get(config["jwks_uri"], timeout=10).json()
    token = bundle.files["xcache.token"].content.decode().strip()
    key = jwt.PyJWKSet.from_dict(jwks)[jwt.get_unverified_header(token)["kid"]]
    claims = jwt.decode(
        token, key.key, algorithms=["ES256"], audience="https://wlcg.cern.ch/jwt/v1/any", issuer=config["issuer"]
    )
    assert claims["sub"] == "alice" and claims["scope"] == "storage.read:/store"


def test_admin_group_makes_admin(facility):
    H.oauth_login(facility, "admin")
    assert _auth_state(facility, "admin")["admin"] is True


def test_user_outside_allowed_groups_gets_a_clear_403(facility):
    client = H.oauth_login(facility, "eve")
    assert client.last_callback.status_code == 403
    assert "not in a group allowed to use this facility" in H.page_message(client.last_callback.text)
    with facility.api() as api:
        assert api.get("/users/eve").status_code == 404  # nothing was stored for her


@pytest.mark.parametrize("sub", ["eve", "alice"])
def test_no_part_of_the_callback_query_is_logged(facility, sub):
    """Refused (eve) or admitted (alice): the authorization code and the OAuth state of the callback appear in no
    log line, neither JupyterHub's access log nor tornado's warning about the refused request."""
    client = H.oauth_login(facility, sub)
    query = parse_qs(urlsplit(str(client.last_callback.request.url)).query)
    code, state = query["code"][0], query["state"][0]
    time.sleep(0.5)  # the access log line is written after the response
    log = facility.log()
    assert "/hub/oauth_callback" in log
    assert code not in log and state not in log
    assert code[:8] not in log and state[:16] not in log


def _wait_ready(hub, name, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        server = _auth_state(hub, name)["servers"].get("")
        if server and server["ready"]:
            return server
        time.sleep(0.2)
    raise TimeoutError(f"server of {name} not ready\n{hub.log()[-3000:]}")


def test_spawn_writes_private_credentials_refreshes_and_cleans_up(facility):
    H.oauth_login(facility, "bob")
    with facility.api() as api:
        assert api.post("/users/bob/server").status_code in (201, 202)
    _wait_ready(facility, "bob")
    creds = facility.work / "home" / "bob" / ".casa" / "credentials"
    assert stat.S_IMODE(creds.stat().st_mode) == 0o700
    token_file = creds / "xcache.token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o400
    first_token = token_file.read_bytes()
    first = jwt.decode(first_token.strip(), options={"verify_signature": False})
    assert first["sub"] == "bob"
    # the server is reachable through the proxy with the user's own cookie-less token via the hub API
    with facility.api() as api:
        assert _auth_state(facility, "bob")["servers"][""]["url"] == "/user/bob/"
    # the per-server timer refreshes the credentials in place before they expire
    deadline = time.monotonic() + 40
    refreshed = first
    while time.monotonic() < deadline and refreshed["jti"] == first["jti"]:
        time.sleep(0.5)
        refreshed = jwt.decode(token_file.read_bytes().strip(), options={"verify_signature": False})
    assert refreshed["jti"] != first["jti"], "credentials were not refreshed while the server ran"
    assert refreshed["exp"] > first["exp"]
    H.assert_renewed_for(facility, "bob", token_file.read_bytes(), first_token)
    with facility.api() as api:
        assert api.delete("/users/bob/server").status_code in (202, 204)
    deadline = time.monotonic() + 30
    while creds.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not creds.exists(), "credentials left behind after the server stopped"


def test_no_secret_in_hub_log(facility):
    """The hub's DEBUG log, after logins, a spawn and a credential refresh, holds none of the tokens the provider
    issued, none of the credentials minted and none of the hub's secrets."""
    H.oauth_login(facility, "alice")
    secrets_ = set()
    with facility.api() as api:
        users = [u["name"] for u in api.get("/users").json()]
    for name in users:
        state = _auth_state(facility, name)["auth_state"] or {}
        secrets_ |= {state.get("access_token"), state.get("refresh_token"), state.get("id_token")}
        if state.get("casa"):
            bundle = CredentialBundle.from_dict(state["casa"])
            secrets_ |= {
                f.content.decode(errors="ignore").strip()
                for p, f in bundle.files.items()
                if not p.endswith((".pem", ".crt", ".json"))
            }
    secrets_ |= {k.read_bytes().decode(errors="ignore").strip() for k in facility.key_files()}
    secrets_ |= {(facility.work / "crypt_key").read_text().strip(), facility.api_token}
    secrets_.discard(None)
    assert len(users) >= 3 and len(secrets_) > 20
    log = facility.log()
    assert "[D " in log  # the scan covers DEBUG output
    leaked = [s[:10] + "..." for s in secrets_ if s and s in log]
    assert not leaked, f"secrets in the hub log: {leaked}"


@pytest.mark.parametrize(
    "claimed,expected",
    [
        ("Carol.UPPER", "carol.upper"),
        ("dörte", "dörte"),
        ("Do\u0308rte", "dörte"),  # decomposed (NFD): the same user as the composed spelling
        ("frank@cern.ch", "frank@cern.ch"),
        ("g" * 120, "g" * 120),
    ],
)
def test_unusual_but_valid_usernames_log_in(facility, claimed, expected):
    sub = f"sub-{abs(hash(expected))}"  # one person per hub user: a second identity could not take the name
    facility.provider.set_user(sub, {"preferred_username": claimed, "groups": ["cms"]})
    client = H.oauth_login(facility, sub)
    assert client.last_callback.status_code == 302, H.page_message(client.last_callback.text)[:500]
    model = _auth_state(facility, expected)
    assert CredentialBundle.from_dict(model["auth_state"]["casa"]).user == expected


@pytest.mark.parametrize(
    "claimed,message",
    [
        ("ａｌｉｃｅ", "User name not allowed"),  # full-width: NFKC would fold it onto "alice"
        ("evil\u0000name", "User name not allowed"),
        ("tab\tname", "User name not allowed"),
        ("zero\u200bwidth", "User name not allowed"),
        ("a/b", "User name not allowed"),
        ("x" * 300, "User name not allowed"),
        ("", "Your identity provider sent no user name"),
    ],
)
def test_hostile_usernames_are_refused_with_a_clear_403(facility, claimed, message):
    with facility.api() as api:
        before = {u["name"] for u in api.get("/users").json()}
    sub = f"hostile-{abs(hash(claimed))}"
    facility.provider.set_user(sub, {"preferred_username": claimed, "groups": ["cms"]})
    client = H.oauth_login(facility, sub)
    assert client.last_callback.status_code == 403, client.last_callback.status_code
    assert message in H.page_message(client.last_callback.text)
    with facility.api() as api:
        after = {u["name"] for u in api.get("/users").json()}
    assert after <= before  # nobody created, nobody logged in as an existing user
    assert "\x00" not in facility.log() and "\u200b" not in facility.log()  # logged escaped (repr), never raw
