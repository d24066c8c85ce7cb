"""The real ``servicex`` client, configured only by the files Casa mints, against a server applying
ServiceX's own token rules (tests/consumers/sx_contract.py)."""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path

import pytest
from servicex.servicex_client import ServiceXClient
from servicex.servicex_adapter import AuthorizationError

from casa_hub.credentials import servicex as sx
from casa_hub_ext.servicex import MissingServiceXCredentials, servicex_client
from tests.consumers.sx_contract import ContractServer, User
from tests.support import make_minter, write_bundle

HOUR = datetime.timedelta(hours=1)


@pytest.fixture
def server(tmp_path):
    secret = (tmp_path / "sx-secret")
    secret.write_bytes(b"contract-" + b"s" * 40)
    with ContractServer(secret=secret.read_bytes().strip()) as s:
        s.secret_file = secret
        yield s


def _minter(tmp_path, server, mode):
    return make_minter(tmp_path / "keys", servicex_endpoint=server.url, servicex_secret_file=str(server.secret_file),
                       servicex_token_mode=mode)


async def _info(client: ServiceXClient):
    return await client.servicex.get_servicex_info()


def _client(config: Path, tmp_path) -> ServiceXClient:
    return ServiceXClient(config_path=str(config), cache_dir=str(tmp_path / "sx-cache"))


# ---------------------------------------------------------------- refresh mode

def _register(server, bundle):
    reg = json.loads(bundle.files["servicex.jti"].content)
    server.users[reg["identity"]] = User(reg["identity"], refresh_jti=reg["jti"])
    return reg


async def test_refresh_mode_client_authenticates_after_registration(tmp_path, server, monkeypatch):
    monkeypatch.delenv("BEARER_TOKEN_FILE", raising=False)
    bundle = _minter(tmp_path, server, "refresh").mint("alice")
    reg = _register(server, bundle)
    assert reg["identity"] == "alice"
    pod = write_bundle(bundle, tmp_path / "pod")
    info = await _info(_client(pod / "servicex.yaml", tmp_path))
    assert info.app_version == "contract"
    assert ("/token/refresh", 200) in server.requests
    assert ("/servicex", 200) in server.requests


async def test_unregistered_refresh_token_is_refused(tmp_path, server, monkeypatch):
    monkeypatch.delenv("BEARER_TOKEN_FILE", raising=False)
    minter = _minter(tmp_path, server, "refresh")
    _register(server, minter.mint("alice"))  # the registered jti belongs to an older login
    pod = write_bundle(minter.mint("alice"), tmp_path / "pod")
    with pytest.raises(AuthorizationError):
        await _info(_client(pod / "servicex.yaml", tmp_path))
    assert ("/token/refresh", 401) in server.requests


async def test_refresh_token_of_unknown_user_is_refused(tmp_path, server, monkeypatch):
    monkeypatch.delenv("BEARER_TOKEN_FILE", raising=False)
    pod = write_bundle(_minter(tmp_path, server, "refresh").mint("nobody"), tmp_path / "pod")
    with pytest.raises(AuthorizationError):
        await _info(_client(pod / "servicex.yaml", tmp_path))


# ---------------------------------------------------------------- access mode

def _pod_env(monkeypatch, bundle, pod: Path):
    for k, v in bundle.env_for(str(pod)).items():
        monkeypatch.setenv(k, v)


async def test_access_mode_client_authenticates_without_registration(tmp_path, server, monkeypatch):
    bundle = _minter(tmp_path, server, "access").mint("alice")
    server.users["alice"] = User("alice")
    pod = write_bundle(bundle, tmp_path / "pod")
    _pod_env(monkeypatch, bundle, pod)  # BEARER_TOKEN_FILE is the XCache token, as in a real pod
    info = await _info(servicex_client(cache_dir=str(tmp_path / "sx-cache")))
    assert info.app_version == "contract"
    assert ("/servicex", 200) in server.requests
    assert not [r for r in server.requests if r[0] == "/token/refresh"]


async def test_plain_client_in_pod_would_send_the_storage_token(tmp_path, server, monkeypatch):
    """Why casa_hub_ext.servicex exists: the unpatched client picks BEARER_TOKEN_FILE (the XCache token)."""
    bundle = _minter(tmp_path, server, "access").mint("alice")
    server.users["alice"] = User("alice")
    pod = write_bundle(bundle, tmp_path / "pod")
    _pod_env(monkeypatch, bundle, pod)
    with pytest.raises(Exception):
        await _info(_client(pod / "servicex.yaml", tmp_path))
    assert ("/servicex", 200) not in server.requests


async def test_pending_user_is_refused(tmp_path, server, monkeypatch):
    bundle = _minter(tmp_path, server, "access").mint("alice")
    server.users["alice"] = User("alice", pending=True)
    pod = write_bundle(bundle, tmp_path / "pod")
    _pod_env(monkeypatch, bundle, pod)
    with pytest.raises(AuthorizationError):
        await _info(servicex_client(cache_dir=str(tmp_path / "sx-cache")))
    assert ("/servicex", 401) in server.requests


async def test_unknown_user_access_token_is_refused(tmp_path, server, monkeypatch):
    bundle = _minter(tmp_path, server, "access").mint("mallory")
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
    token, _ = sx.mint_servicex_token(secret=b"x" * 48, identity="alice", token_type="access",
                                      now=datetime.datetime.now(datetime.timezone.utc), lifetime=HOUR)
    _write_access_token(tmp_path, monkeypatch, server, token)
    with pytest.raises(Exception):
        await _info(servicex_client(cache_dir=str(tmp_path / "sx-cache")))
    assert not [r for r in server.requests if r[1] == 200]


async def test_expired_access_token_is_not_accepted(tmp_path, server, monkeypatch):
    server.users["alice"] = User("alice")
    token, _ = sx.mint_servicex_token(secret=server.secret, identity="alice", token_type="access",
                                      now=datetime.datetime.now(datetime.timezone.utc) - 3 * HOUR, lifetime=HOUR)
    _write_access_token(tmp_path, monkeypatch, server, token)
    with pytest.raises(Exception):
        await _info(servicex_client(cache_dir=str(tmp_path / "sx-cache")))
    assert ("/servicex", 200) not in server.requests


async def test_access_token_is_refused_at_refresh(tmp_path, server):
    import httpx

    server.users["alice"] = User("alice", refresh_jti="whatever")
    token, _ = sx.mint_servicex_token(secret=server.secret, identity="alice", token_type="access",
                                      now=datetime.datetime.now(datetime.timezone.utc), lifetime=HOUR)
    async with httpx.AsyncClient() as http:
        r = await http.post(f"{server.url}/token/refresh", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code in (401, 422)
    assert "access_token" not in r.text


def test_helper_names_missing_configuration(monkeypatch):
    monkeypatch.delenv("CASA_SERVICEX_CONFIG", raising=False)
    with pytest.raises(MissingServiceXCredentials, match="CASA_SERVICEX_CONFIG"):
        servicex_client()


async def test_refresh_mode_helper_ignores_the_storage_token(tmp_path, server, monkeypatch):
    """In a pod BEARER_TOKEN_FILE is the XCache token: the helper must refresh, not send that."""
    bundle = _minter(tmp_path, server, "refresh").mint("alice")
    _register(server, bundle)
    pod = write_bundle(bundle, tmp_path / "pod")
    _pod_env(monkeypatch, bundle, pod)
    assert os.environ["BEARER_TOKEN_FILE"].endswith("xcache.token")
    info = await _info(servicex_client(cache_dir=str(tmp_path / "sx-cache")))
    assert info.app_version == "contract"
    assert ("/token/refresh", 200) in server.requests
