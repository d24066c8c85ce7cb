import pytest

from tests.support import make_minter


@pytest.fixture
def minter(tmp_path):
    """A CasaMinter with all credential kinds enabled and fresh keys."""
    return make_minter(tmp_path / "keys")
