"""Tampered id_tokens through the real login: JupyterHub + CasaAuthenticator behind configurable-http-proxy, and
a provider (tests/hub/rotating_oidc.py) that alters the id_token of its token response as each case says.
Every case must end in a 4xx page with a message (never a 500, never a login), and a clean login still works.
The claim cases are re-signed with the provider's real key, so only the claim itself can be what refuses them."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.hub import hub as H
from tests.hub.oidc import start_provider, stop_provider
from tests.support import need

HOUR = 3600


def cases(now: int) -> dict[str, dict]:
    return {
        "audience of another client": {"claims": {"aud": "another-client"}},
        "audience list without us": {"claims": {"aud": ["a", "b"]}},
        "another issuer": {"claims": {"iss": "https://evil.example.org"}},
        "expired": {"claims": {"exp": now - HOUR}},
        "issued in the future": {"claims": {"iat": now + HOUR}},
        "not valid before next hour": {"claims": {"nbf": now + HOUR}},
        "exp as a string": {"claims": {"exp": "tomorrow"}},
        "exp absurdly large": {"claims": {"exp": 10**400}},
        "no exp": {"claims": {"exp": None}},
        "no sub": {"claims": {"sub": None}},
        "sub of another user": {"claims": {"sub": "bob"}},
        "nonce of another login": {"claims": {"nonce": "replayed-from-elsewhere"}},
        "no nonce": {"claims": {"nonce": None}},
        "unknown kid": {"header": {"kid": "not-published"}},
        "alg none": {"alg": "none"},
        "HS256 keyed with the public key": {"alg": "HS256-public-key"},
        "signature byte changed": {"flip": [2, 10]},
        "payload byte changed": {"flip": [1, 7]},
        "header byte changed": {"flip": [0, 3]},
        "signature cut off": {"segments": 2},
        "an extra segment": {"segments": 4},
    }


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tamper")
    need(H.CHP.exists(), "configurable-http-proxy (npm ci)")
    provider = start_provider(tmp, module="tests.hub.rotating_oidc")
    try:
        hub = H.start_hub(tmp / "hub", provider)
        try:
            yield hub, provider
        finally:
            H.stop_hub(hub)
    finally:
        stop_provider(provider)


def _tamper(provider, spec: dict) -> None:
    httpx.post(f"{provider.url}/casa-test/tamper", json=spec, timeout=10).raise_for_status()


def test_every_tampered_id_token_is_refused_with_a_4xx_never_a_500(site):
    hub, provider = site
    now = int(time.time())
    outcomes = {}
    try:
        for name, spec in cases(now).items():
            _tamper(provider, spec)
            with httpx.Client(timeout=30) as client:
                callback = H.oauth_login(hub, "alice", client).last_callback
                logged_in = client.get(hub.url + "/hub/api/user").status_code == 200
            outcomes[name] = (callback.status_code, logged_in, H.page_message(callback.text))
    finally:
        _tamper(provider, {})
    wrong = {name: o[:2] for name, o in outcomes.items() if not 400 <= o[0] < 500 or o[1]}
    assert not wrong, f"accepted or not a 4xx: {wrong}"
    assert all("403" in o[2] or "Forbidden" in o[2] or "Invalid" in o[2] for o in outcomes.values()), outcomes
    log = H.Hub.log(hub)
    assert "Uncaught exception" not in log and " 500 " not in log


def test_after_the_tampering_a_genuine_login_works(site):
    hub, provider = site
    _tamper(provider, {})
    with httpx.Client(timeout=30) as client:
        callback = H.oauth_login(hub, "alice", client).last_callback
        assert callback.status_code == 302, H.page_message(callback.text)[:300]
        assert client.get(hub.url + "/hub/api/user").json()["name"] == "alice"
