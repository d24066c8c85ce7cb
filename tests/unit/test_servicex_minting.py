"""ServiceX minting: access tokens only, and an e-mail identity only when the provider verified it."""

from __future__ import annotations

import json
import logging

import jwt
import pytest
from traitlets.config import Config

from casa_hub.credentials.kinds.servicex import CONFIG_FILE as SERVICEX_CONFIG
from casa_hub.credentials.kinds.servicex import TOKEN_FILE as SERVICEX_TOKEN
from casa_hub.credentials.kinds.servicex import ServiceXToken
from casa_hub.minter import CasaMinter
from tests.support import make_minter


def test_email_identity_without_a_verified_email_is_refused_clearly(tmp_path):
    m = make_minter(tmp_path, ServiceXToken={"identity": "email"})
    with pytest.raises(ValueError) as e:
        m.mint("alice", email=None)  # CasaAuthenticator passes None unless email_verified is true
    message = str(e.value)
    assert "'alice'" in message and "present and verified" in message and "ServiceXToken.identity='email'" in message
    with pytest.raises(ValueError, match="present and verified"):
        m.mint("alice", email="")


def test_email_identity_uses_the_given_address(tmp_path):
    bundle = make_minter(tmp_path, ServiceXToken={"identity": "email"}).mint("alice", email="alice@example.org")
    claims = jwt.decode(bundle.files[SERVICEX_TOKEN].content.strip(), options={"verify_signature": False})
    assert claims["sub"] == "alice@example.org" and claims["type"] == "access"


def test_only_an_access_token_is_minted(tmp_path):
    bundle = make_minter(tmp_path).mint("alice")
    assert {p for p in bundle.files if p.startswith("servicex")} == {SERVICEX_TOKEN, SERVICEX_CONFIG}
    claims = jwt.decode(bundle.files[SERVICEX_TOKEN].content.strip(), options={"verify_signature": False})
    assert claims["type"] == "access"
    doc = json.loads(bundle.files[SERVICEX_CONFIG].content)  # YAML in JSON flow style
    assert doc["api_endpoints"][0]["token"] == ""  # no refresh token anywhere
    assert bundle.env["CASA_SERVICEX_TOKEN_FILE"] == "{mount}/" + SERVICEX_TOKEN
    assert not hasattr(ServiceXToken, "token_mode")


def test_removed_token_mode_setting_is_reported(caplog):
    c = Config()
    c.CasaMinter.kinds = ["servicex"]
    c.ServiceXToken.token_mode = "refresh"
    with caplog.at_level(logging.WARNING):
        kind = CasaMinter(config=c).kind("servicex")
    assert "`token_mode` not recognized by `ServiceXToken`" in caplog.text
    assert not hasattr(kind, "token_mode")
