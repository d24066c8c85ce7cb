"""The unit tier: pure functions and single classes in-process, no servers and no network (keys and minters come
from tests/support.py; the function-scoped ``minter`` fixture from tests/conftest.py). No fixtures of its own."""
