"""Reading id_tokens without verifying them, and the client id the tests' provider issues them to. Used by
test_oidc_verification.py and tests/fuzz/test_jwt_mutations.py."""

from __future__ import annotations

import jwt

CLIENT = "casa-test"


def _claims(token: str) -> dict:
    return jwt.decode(token, options={"verify_signature": False})


def _header(token: str) -> dict:
    return jwt.get_unverified_header(token)
