"""Faults of the OIDC provider: slow or down while a user logs in (a real hub, the provider behind
tests/hub/slow_proxy.py), slow while credentials refresh, and signing keys rotated mid-session (CasaAuthenticator
in-process against real provider processes). Provider down at the first login and during refresh are in
tests/hub/test_authenticator.py and test_authenticator_refresh.py."""

from __future__ import annotations

import base64
import hashlib
import logging
import secrets
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import jwt
import pytest
from tornado import web

from casa_hub.authenticator import CasaAuthenticator
from casa_hub.credentials.bundle import CredentialBundle
from casa_hub.oidc import JWKSCache
from tests.hub import hub as H
from tests.hub.auth_support import CLIENT, CLIENT_SECRET, HubUser, make_authenticator
from tests.hub.oidc import start_provider, stop_provider
from tests.hub.slow_proxy import SlowProxy
from tests.support import free_port, need

REDIRECT = "http://127.0.0.1:1/callback"


class Clock:
    """A monotonic clock the test moves: JWKS re-fetches are bounded to one a minute."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _authenticator(tmp_path, issuer: str, **traits) -> tuple[CasaAuthenticator, Clock, list]:
    """CasaAuthenticator for ``issuer``, its JWKS cache on a test clock, and the list of its JWKS fetches."""
    # credentials within the default 30 min refresh margin: every refresh re-mints
    auth = make_authenticator(tmp_path, issuer, allowed_groups={"cms", "atlas"}, XCacheToken__lifetime=600, **traits)
    clock, fetches = Clock(), []

    async def fetch():
        fetches.append(clock.now)
        return await auth._fetch_jwks()

    auth.__dict__["_jwks"] = JWKSCache(fetch, clock=clock)  # the production interval (60 s), on the test clock
    return auth, clock, fetches


async def _login(auth: CasaAuthenticator, issuer: str, sub: str) -> HubUser:
    """The code flow as the hub's callback runs it: the token request through ``get_token_info`` (id_token
    verified against the provider's JWKS), then userinfo and the mint."""
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    query = urlencode(
        {
            "response_type": "code",
            "client_id": CLIENT,
            "redirect_uri": REDIRECT,
            "state": "s",
            "scope": "openid profile email",
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
    )
    async with httpx.AsyncClient(timeout=10) as http:
        r = await http.post(f"{issuer}/oauth2/authorize?{query}", data={"sub": sub})
    code = parse_qs(urlsplit(r.headers["location"]).query)["code"][0]
    token_info = await auth.get_token_info(
        None,
        {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT,
            "code_verifier": verifier,
            "client_id": CLIENT,
            "client_secret": CLIENT_SECRET,
        },
    )
    model = await auth.run_post_auth_hook(None, await auth._token_to_auth_model(token_info))
    return HubUser(model["name"], model["auth_state"])


def _bundle(state: dict) -> CredentialBundle:
    return CredentialBundle.from_dict(state["casa"])


# ------------------------------------------------------------------ login: a real hub, provider slow or down
def test_provider_slow_or_down_at_the_login_callback_is_a_clear_503_then_login_works(tmp_path):
    need(H.CHP.exists(), "configurable-http-proxy (npm ci)")
    provider = start_provider(tmp_path)
    try:
        with SlowProxy(provider.port) as proxy:  # the hub knows the provider by the proxy's address
            hub = H.start_hub(tmp_path / "hub", proxy, extra_config="c.CasaAuthenticator.discovery_timeout = 2")
            try:
                # a first login: the hub has discovered the provider and cached its keys, so what follows
                # exercises the token request of the callback
                assert H.oauth_login(hub, "bob").last_callback.status_code == 302
                for fault in ("latency", "drop"):
                    with httpx.Client(timeout=30) as client:
                        authorize = client.get(hub.url + "/hub/oauth_login").headers["location"]
                        callback = client.post(authorize, data={"sub": "alice"}).headers["location"]
                        # the token request of this callback: 5 s late (discovery_timeout is 2), or refused
                        setattr(proxy, fault, 5 if fault == "latency" else True)
                        try:
                            r = client.get(callback)
                        finally:
                            proxy.latency, proxy.drop = 0, False
                    assert r.status_code == 503, (fault, r.status_code, H.page_message(r.text)[:300])
                    page = H.page_message(r.text)
                    assert f"The identity provider ({proxy.url}) cannot be reached right now" in page, page[:500]
                    assert "Please try again in a few minutes" in page and "Traceback" not in r.text
                    with hub.api() as api:
                        assert api.get("/users/alice").status_code == 404  # nobody was logged in
                client = H.oauth_login(hub, "alice")  # the provider answers again
                assert client.last_callback.status_code == 302, H.page_message(client.last_callback.text)[:400]
                log = hub.log()
                assert log.count(f"OIDC provider {proxy.url} unreachable") >= 2 and "Traceback" not in log
            finally:
                H.stop_hub(hub)
    finally:
        stop_provider(provider)


# ------------------------------------------------------------------ refresh: provider slow
async def test_refresh_with_a_slow_provider_completes_or_keeps_the_session(tmp_path, caplog):
    provider = start_provider(tmp_path)
    try:
        with SlowProxy(provider.port) as proxy:
            auth, _, _ = _authenticator(tmp_path, proxy.url, discovery_timeout=1)
            user = await _login(auth, proxy.url, "alice")
            first = _bundle(user._state)
            proxy.latency = 0.2  # slow, but within discovery_timeout: the refresh completes
            model = await auth.refresh_user(user)
            assert isinstance(model, dict), model
            refreshed = _bundle(model["auth_state"])
            assert refreshed.files["xcache.token"].content != first.files["xcache.token"].content
            proxy.latency = 4  # slower than discovery_timeout: an outage; the credentials are still valid
            with caplog.at_level(logging.WARNING):
                assert await auth.refresh_user(user) is True
            assert "OIDC provider unavailable while refreshing alice; keeping credentials valid" in caplog.text
            assert _bundle(user._state) == first  # kept, not replaced
    finally:
        stop_provider(provider)


# ------------------------------------------------------------------ signing keys rotated mid-session
async def test_rotated_signing_key_is_fetched_for_the_next_refresh_and_an_unpublished_key_refused(tmp_path, caplog):
    provider = start_provider(tmp_path, module="tests.hub.rotating_oidc")
    try:
        auth, clock, fetches = _authenticator(tmp_path, provider.url)
        user = await _login(auth, provider.url, "alice")
        assert jwt.get_unverified_header(user._state["id_token"])["kid"] == "casa-test-1" and len(fetches) == 1

        # a minute later the provider signs with a new key (publishing both); the access token has expired, so
        # the refresh goes through the refresh grant, whose id_token names the new key
        assert httpx.post(provider.url + "/casa-test/rotate-key", timeout=10).json()["kid"] == "casa-test-2"
        httpx.post(provider.url + "/casa-test/expire-access-tokens", timeout=10).raise_for_status()
        clock.now += 61
        model = await auth.refresh_user(user)
        assert isinstance(model, dict), model
        state = model["auth_state"]
        assert jwt.get_unverified_header(state["id_token"])["kid"] == "casa-test-2"
        assert state["token_response"]["id_token_claims"]["sub"] == "alice"  # verified with the new key
        assert len(fetches) == 2  # one re-fetch for the unknown kid
        assert _bundle(state).files["xcache.token"].content != _bundle(user._state).files["xcache.token"].content
        user._state = state

        # an id_token signed by a key the provider never published is refused, the JWKS fetched once for it
        httpx.post(provider.url + "/casa-test/rogue-key", timeout=10).raise_for_status()
        httpx.post(provider.url + "/casa-test/expire-access-tokens", timeout=10).raise_for_status()
        clock.now += 61
        for _ in range(3):
            with caplog.at_level(logging.WARNING):
                assert await auth.refresh_user(user) is False  # a new login is required
        assert "Refusing login: the id_token was signed with a key the provider does not publish" in caplog.text
        assert len(fetches) == 3  # forged kids cannot make the hub hammer the provider
    finally:
        stop_provider(provider)


async def test_provider_restarted_with_a_new_key_and_no_kid_is_fetched_again(tmp_path, caplog):
    """The demo provider names no kid and has one key, new at each start: after a restart the cached key no
    longer verifies. Re-fetched once the minute since the last fetch has passed (not sooner)."""
    port = free_port()
    provider = start_provider(tmp_path, port=port)
    try:
        auth, clock, fetches = _authenticator(tmp_path, provider.url)
        assert "kid" not in jwt.get_unverified_header((await _login(auth, provider.url, "alice"))._state["id_token"])
        stop_provider(provider)
        provider = start_provider(tmp_path, port=port)  # same address, new signing key
        with caplog.at_level(logging.WARNING), pytest.raises(web.HTTPError) as refused:
            await _login(auth, provider.url, "bob")  # not yet: the last fetch was less than a minute ago
        assert refused.value.status_code == 403
        assert "the id_token signature is invalid" in caplog.text and len(fetches) == 1
        clock.now += 61
        user = await _login(auth, provider.url, "bob")
        assert user.name == "bob" and len(fetches) == 2
        assert await _login(auth, provider.url, "alice") and len(fetches) == 2  # the new key is cached
    finally:
        stop_provider(provider)
