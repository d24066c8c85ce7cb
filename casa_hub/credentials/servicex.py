"""ServiceX credentials in ServiceX's own dialect (flask-jwt-extended, HS256 with the deployment's
``JWT_SECRET_KEY``), plus the client's ``servicex.yaml``.

Casa delivers a short-lived *access* token (``servicex.token``), refreshed by the hub like every other
credential, and a ``servicex.yaml`` that names the endpoint only (see docs/admin-guide.md, "ServiceX").
Casa never mints *refresh* tokens: ServiceX honours one only when its ``jti`` is the one it stored for that
user when its own web UI issued it, and ServiceX has no API through which another service could register one.
The ServiceX client reads access tokens from ``BEARER_TOKEN_FILE``, which in a Casa pod belongs to the storage
token, so ``casa_hub_ext.servicex`` points the client at this file for the ServiceX call only.
"""

from __future__ import annotations

import datetime
import json
import re
import uuid

import jwt

# a JSON surrogate-pair escape (not preceded by an escaped backslash), rewritten as one YAML \U escape
_SURROGATE_PAIR = re.compile(r"(?<!\\)((?:\\\\)*)\\u(d[89ab][0-9a-f]{2})\\u(d[c-f][0-9a-f]{2})")


def servicex_token_claims(
    *,
    identity: str,
    now: datetime.datetime,
    lifetime: datetime.timedelta,
    identity_claim: str = "sub",
    jti: str | None = None,
) -> dict:
    """Access-token claims as flask-jwt-extended 4.x creates them (``create_access_token``)."""
    if lifetime <= datetime.timedelta(0):
        raise ValueError("token lifetime must be positive")
    if not identity:
        raise ValueError("a ServiceX token needs an identity (user name or e-mail)")
    iat = int(now.timestamp())
    claims = {
        "fresh": False,
        "iat": iat,
        "jti": jti or str(uuid.uuid4()),
        "type": "access",
        identity_claim: identity,
        "nbf": iat,
        "exp": iat + int(lifetime.total_seconds()),
    }
    return claims


def mint_servicex_token(*, secret: bytes, **claims_kwargs) -> tuple[str, dict]:
    """A signed ServiceX access token and its claims."""
    claims = servicex_token_claims(**claims_kwargs)
    return jwt.encode(claims, secret, algorithm="HS256"), claims


def servicex_yaml(*, endpoint: str, name: str) -> bytes:
    """The client configuration file (``servicex.yaml``) read by the ``servicex`` package: the endpoint and no
    token (the access token is in its own file, see the module docstring).

    Written in YAML's JSON flow style: the client parses it with ``yaml.safe_load`` all the same, and
    emitting it costs 20x less than PyYAML's emitter on the login path.
    """
    doc = {
        "api_endpoints": [{"endpoint": endpoint, "name": name, "token": ""}],
        "default-endpoint": name,
    }
    text = json.dumps(doc)
    if "\\ud" in text:  # JSON writes astral characters as surrogate pairs, which YAML would not re-join
        text = _SURROGATE_PAIR.sub(
            lambda m: m[1] + "\\U%08x" % (0x10000 + ((int(m[2], 16) - 0xD800) << 10) + int(m[3], 16) - 0xDC00), text
        )
    return text.encode() + b"\n"
