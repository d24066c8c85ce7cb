"""The real ``servicex`` client, configured only by the files Casa mints, against a server applying
ServiceX's own token rules (tests/consumers/sx_contract.py).

Casa delivers access tokens only: ServiceX accepts a refresh token only when it stored that token's jti itself
(its own web UI issued it), and has no API through which the hub could register one."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from servicex.servicex_adapter import AuthorizationError
from servicex.servicex_client import ServiceXClient

from casa_hub.credentials import servicex as sx
from casa_hub_ext.servicex import MissingServiceXCredentials, servicex_client
from tests.consumers.sx_contract import ContractServer, User
from tests.support import make_minter, write_bundle

HOUR = datetime.timedelta(hours=1)


@pytest.fixture
def server(tmp_path):
    secret = tmp_path / "sx-secret"
    secret.write_bytes(b"contract-" + b"s" * 40)
    with ContractServer(secret=secret.read_bytes().strip()) as s:
        s.secret_file = secret
        yield s


def _minter(tmp_path, server, **overrides):
    return make_minter(
        tmp_path / "keys",
        ServiceXToken={"endpoint": server.url, "secret_file": str(server.secret_file), **overrides},
    )


async def _info(client: ServiceXClient):
    return await client.servicex.get_servicex_info()


def _client(config: Path, tmp_path) -> ServiceXClient:
    return ServiceXClient(config_path=str(config), cache_dir=str(tmp_path / "sx-cache"))


# ---------------------------------------------------------------- the access token


def _pod_env(monkeypatch, bundle, pod: Path):
    for k, v in bundle.env_for(str(pod)).items():
        monkeypatch.setenv(k, v)


async def test_access_mode_client_authenticates_without_registration(tmp_path, server, monkeypatch):
    bundle = _minter(tmp_path, server).mint("alice")
    server.users["alice"] = User("alice")
    pod = write_bundle(bundle, tmp_path / "pod")
    _pod_env(monkeypatch, bundle, pod)  # BEARER_TOKEN_FILE is the XCache token, as in a real pod
    info = await _info(servicex_client(cache_dir=str(tmp_path / "sx-cache")))
    assert info.app_version == "contract"
    assert ("/servicex", 200) in server.requests
    assert not [r for r in server.requests if r[0] == "/token/refresh"]


async def test_plain_client_in_pod_would_send_the_storage_token(tmp_path, server, monkeypatch):
    """Why casa_hub_ext.servicex exists: the unpatched client picks BEARER_TOKEN_FILE (the XCache token)."""
    bundle = _minter(tmp_path, server).mint("alice")
    server.users["alice"] = User("alice")
    pod = write_bundle(bundle, tmp_path / "pod")
    _pod_env(monkeypatch, bundle, pod)
    with pytest.raises(Exception):
        await _info(_client(pod / "servicex.yaml", tmp_path))
    assert ("/servicex", 200) not in server.requests


async def test_pending_user_is_refused(tmp_path, server, monkeypatch):
    bundle = _minter(tmp_path, server).mint("alice")
    server.users["alice"] = User("alice", pending=True)
    pod = write_bundle(bundle, tmp_path / "pod")
    _pod_env(monkeypatch, bundle, pod)
    with pytest.raises(AuthorizationError):
        await _info(servicex_client(cache_dir=str(tmp_path / "sx-cache")))
    assert ("/servicex", 401) in server.requests


async def test_unknown_user_access_token_is_refused(tmp_path, server, monkeypatch):
    bundle = _minter(tmp_path, server).mint("mallory")
    pod = write_bundle(bundle, tmp_path / "pod")
    _pod_env(monkeypatch, bundle, pod)
    with pytest.raises(AuthorizationError):
        await _info(servicex_client(cache_dir=str(tmp_path / "sx-cache")))


def _write_access_token(tmp_path, monkeypatch, server, token: str):
    pod = tmp_path / "pod"
    pod.mkdir()
    (pod / "servicex.yaml").write_bytes(sx.servicex_yaml(endpoint=server.url, name="casa"))
    (pod / "servicex.token").write_text(token + "\n")
    monkeypatch.setenv("CASA_SERVICEX_CONFIG", str(pod / "servicex.yaml"))
    monkeypatch.setenv("CASA_SERVICEX_TOKEN_FILE", str(pod / "servicex.token"))


async def test_token_signed_with_another_secret_is_refused(tmp_path, server, monkeypatch):
    server.users["alice"] = User("alice")
    token, _ = sx.mint_servicex_token(
        secret=b"x" * 48, identity="alice", now=datetime.datetime.now(datetime.timezone.utc), lifetime=HOUR
    )
    _write_access_token(tmp_path, monkeypatch, server, token)
    with pytest.raises(Exception):
        await _info(servicex_client(cache_dir=str(tmp_path / "sx-cache")))
    assert not [r for r in server.requests if r[1] == 200]


async def test_expired_access_token_is_not_accepted(tmp_path, server, monkeypatch):
    server.users["alice"] = User("alice")
    token, _ = sx.mint_servicex_token(
        secret=server.secret,
        identity="alice",
        now=datetime.datetime.now(datetime.timezone.utc) - 3 * HOUR,
        lifetime=HOUR,
    )
    _write_access_token(tmp_path, monkeypatch, server, token)
    with pytest.raises(AuthorizationError, match="Casa ServiceX access token .* expired"):
        await _info(servicex_client(cache_dir=str(tmp_path / "sx-cache")))
    assert ("/servicex", 200) not in server.requests
    # there is no refresh token: the helper never asks ServiceX to refresh (the hub renews the file)
    assert not [r for r in server.requests if r[0] == "/token/refresh"]


async def test_token_renewed_by_the_hub_is_picked_up(tmp_path, server, monkeypatch):
    server.users["alice"] = User("alice")
    now = datetime.datetime.now(datetime.timezone.utc)
    stale, _ = sx.mint_servicex_token(secret=server.secret, identity="alice", now=now - 3 * HOUR, lifetime=HOUR)
    _write_access_token(tmp_path, monkeypatch, server, stale)
    client = servicex_client(cache_dir=str(tmp_path / "sx-cache"))
    with pytest.raises(AuthorizationError):
        await _info(client)
    fresh, _ = sx.mint_servicex_token(secret=server.secret, identity="alice", now=now, lifetime=HOUR)
    (tmp_path / "pod" / "servicex.token").write_text(fresh + "\n")  # what the hub's refresh does
    assert (await _info(client)).app_version == "contract"
    assert not [r for r in server.requests if r[0] == "/token/refresh"]


async def test_email_identity_authenticates_as_the_verified_address(tmp_path, server, monkeypatch):
    minter = _minter(tmp_path, server, identity="email")
    server.users["alice@example.org"] = User("alice@example.org")
    bundle = minter.mint("alice", email="alice@example.org")
    pod = write_bundle(bundle, tmp_path / "pod")
    _pod_env(monkeypatch, bundle, pod)
    assert (await _info(servicex_client(cache_dir=str(tmp_path / "sx-cache")))).app_version == "contract"
    # no verified e-mail (the authenticator passes None): no token at all, rather than one for another identity
    with pytest.raises(ValueError, match="present and verified"):
        minter.mint("alice", email=None)


async def test_access_token_is_refused_at_refresh(tmp_path, server):
    import httpx

    server.users["alice"] = User("alice", refresh_jti="whatever")
    token, _ = sx.mint_servicex_token(
        secret=server.secret, identity="alice", now=datetime.datetime.now(datetime.timezone.utc), lifetime=HOUR
    )
    async with httpx.AsyncClient() as http:
        r = await http.post(f"{server.url}/token/refresh", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code in (401, 422)
    assert "access_token" not in r.text


def test_helper_names_missing_configuration(monkeypatch):
    monkeypatch.delenv("CASA_SERVICEX_CONFIG", raising=False)
    with pytest.raises(MissingServiceXCredentials, match="CASA_SERVICEX_CONFIG"):
        servicex_client()


def test_helper_needs_the_access_token_file(tmp_path, server, monkeypatch):
    """A bundle without the access token (e.g. from the removed refresh mode) is named, not silently used with
    whatever ``BEARER_TOKEN_FILE`` holds."""
    _write_access_token(tmp_path, monkeypatch, server, "unused")
    monkeypatch.delenv("CASA_SERVICEX_TOKEN_FILE")
    monkeypatch.setenv("BEARER_TOKEN_FILE", str(tmp_path / "pod" / "servicex.token"))
    with pytest.raises(MissingServiceXCredentials, match="CASA_SERVICEX_TOKEN_FILE"):
        servicex_client()
