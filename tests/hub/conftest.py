"""Fixtures of the hub tier: a real OIDC provider per test (tests needing one shared per module define their own)."""

import pytest

from tests.hub.oidc import start_provider, stop_provider


@pytest.fixture
def provider(tmp_path):
    p = start_provider(tmp_path)
    try:
        yield p
    finally:
        stop_provider(p)
