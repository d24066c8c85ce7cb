"""MLflow's client gets the Casa MLflow token from the mounted bundle (casa_hub_ext.mlflow_auth): only for the
tracking server the hub configured, read afresh on each request, never when the user set a token of their own."""

from __future__ import annotations

import sys
import types

import pytest

from casa_hub_ext.mlflow_auth import CasaMLflowTokenHeaderProvider
from tests.support import make_minter, write_bundle

URI = "https://mlflow.casa.test"


@pytest.fixture
def mounted(tmp_path, monkeypatch):
    minter = make_minter(tmp_path / "keys", kinds=("xcache", "mlflow"), MLflowToken={"tracking_uri": URI})
    directory = write_bundle(minter.mint("alice"), tmp_path / "casa")
    monkeypatch.setenv("CASA_CREDENTIALS_DIR", str(directory))
    monkeypatch.delenv("MLFLOW_TRACKING_TOKEN", raising=False)
    return directory


@pytest.fixture
def tracking_uri(monkeypatch):
    """A stand-in for ``mlflow`` (the provider asks it where the client is pointed)."""
    fake = types.SimpleNamespace(uri=URI)
    monkeypatch.setitem(sys.modules, "mlflow", types.SimpleNamespace(get_tracking_uri=lambda: fake.uri))
    return fake


def test_the_token_goes_to_the_configured_server(mounted, tracking_uri):
    provider = CasaMLflowTokenHeaderProvider()
    token = (mounted / "mlflow.token").read_text().strip()
    assert provider.in_context() and provider.request_headers() == {"Authorization": f"Bearer {token}"}
    tracking_uri.uri = URI + "/"  # the same server, written differently
    assert provider.request_headers() == {"Authorization": f"Bearer {token}"}


def test_a_renewed_token_is_sent_at_once(mounted, tracking_uri):
    provider = CasaMLflowTokenHeaderProvider()
    path = mounted / "mlflow.token"
    path.chmod(0o600)
    path.write_text("renewed\n")  # the hub replaced the Secret's file
    assert provider.request_headers() == {"Authorization": "Bearer renewed"}


@pytest.mark.parametrize("uri", ["https://mlflow.elsewhere.org", "https://mlflow.casa.test.evil.org", "file:///tmp/m"])
def test_no_token_for_another_server(mounted, tracking_uri, uri):
    tracking_uri.uri = uri
    provider = CasaMLflowTokenHeaderProvider()
    assert not provider.in_context() and provider.request_headers() == {}


def test_the_users_own_token_wins(mounted, tracking_uri, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "mine")
    assert not CasaMLflowTokenHeaderProvider().in_context()


def test_nothing_without_the_kind_or_credentials(tmp_path, tracking_uri, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_TOKEN", raising=False)
    monkeypatch.delenv("CASA_CREDENTIALS_DIR", raising=False)
    assert not CasaMLflowTokenHeaderProvider().in_context()
    directory = write_bundle(make_minter(tmp_path / "keys").mint("alice"), tmp_path / "casa")  # no mlflow kind
    monkeypatch.setenv("CASA_CREDENTIALS_DIR", str(directory))
    assert CasaMLflowTokenHeaderProvider().request_headers() == {}


def test_the_entry_point_is_registered_for_mlflow():
    from importlib.metadata import entry_points

    (ep,) = [e for e in entry_points(group="mlflow.request_header_provider") if e.name == "casa"]
    assert ep.load() is CasaMLflowTokenHeaderProvider
