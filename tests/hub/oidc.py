"""Run the demo OIDC provider (a real OAuth2/OIDC server: authlib under oidc-provider-mock) for tests."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from casa_demo.oidc_provider import DEMO_USERS
from tests.support import REPO, free_port, stop_process, wait_for_port


@dataclass
class Provider:
    url: str
    port: int
    proc: subprocess.Popen

    def get_json(self, path: str) -> dict:
        with urllib.request.urlopen(self.url + path, timeout=10) as r:
            return json.load(r)

    def set_user(self, sub: str, claims: dict) -> None:
        req = urllib.request.Request(
            f"{self.url}/users/{sub}",
            data=json.dumps(claims).encode(),
            method="PUT",
            headers={"Content-Type": "application/json"},
        )
        urllib.request.urlopen(req, timeout=10).close()


def start_provider(
    tmp: Path, users=DEMO_USERS, port: int | None = None, module: str = "casa_demo.oidc_provider"
) -> Provider:
    """The demo provider (or ``module``, run as ``python -m module PORT USERS.json``, e.g.
    ``tests.hub.rotating_oidc``) on 127.0.0.1."""
    port = port or free_port()
    users_file = tmp / "oidc-users.json"
    users_file.write_text(json.dumps(users))
    proc = subprocess.Popen(
        [sys.executable, "-m", module, str(port), str(users_file)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=open(tmp / "oidc.log", "ab"),
        start_new_session=True,
    )
    wait_for_port(port, proc=proc, timeout=30)
    return Provider(f"http://127.0.0.1:{port}", port, proc)


def stop_provider(provider: Provider) -> None:
    stop_process(provider.proc)


def code_flow_tokens(
    provider: Provider,
    sub: str,
    client_id: str = "casa-test",
    redirect_uri: str = "http://127.0.0.1:1/callback",
    nonce: str | None = None,
) -> dict:
    """A genuine token response from the provider for ``sub`` (authorization code + PKCE, no browser)."""
    import base64
    import hashlib
    import secrets
    from urllib.parse import parse_qs, urlencode, urlsplit

    import httpx

    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    query = urlencode(
        {
            "response_type": "code",
            "client_id": client_id,
            "redirect_uri": redirect_uri,
            "scope": "openid profile email",
            "state": "s",
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            **({"nonce": nonce} if nonce else {}),
        }
    )
    with httpx.Client(timeout=10) as http:
        r = http.post(f"{provider.url}/oauth2/authorize?{query}", data={"sub": sub})
        code = parse_qs(urlsplit(r.headers["location"]).query)["code"][0]
        r = http.post(
            f"{provider.url}/oauth2/token",
            data={
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": redirect_uri,
                "client_id": client_id,
                "client_secret": "x",
                "code_verifier": verifier,
            },
        )
        r.raise_for_status()
        return r.json()
