"""ServiceX credentials in ServiceX's own dialect (flask-jwt-extended, HS256 with the deployment's
``JWT_SECRET_KEY``), plus the client's ``servicex.yaml``.

ServiceX honours a *refresh* token only when its ``jti`` is the one it has stored for that user, so Casa
supports two delivery modes (see docs/admin-guide.md, "ServiceX"):

* ``refresh``: a refresh token goes into ``servicex.yaml`` exactly as ServiceX's own web UI would hand it
  out; the hub must register its ``jti`` with the ServiceX deployment (a pluggable registrar) before the
  token is usable. The client then obtains access tokens itself.
* ``access`` (no registrar needed): a short-lived *access* token is written to ``servicex.token`` and
  refreshed by the hub like every other credential; ``servicex.yaml`` carries the endpoint only. The
  ServiceX client reads access tokens from ``BEARER_TOKEN_FILE``, which in a Casa pod belongs to the
  storage token, so ``casa_hub_ext.servicex`` points the client at this file for the ServiceX call only.
"""

from __future__ import annotations

import datetime
import json
import re
import uuid

import jwt

TOKEN_TYPES = ("access", "refresh")
# a JSON surrogate-pair escape (not preceded by an escaped backslash), rewritten as one YAML \U escape
_SURROGATE_PAIR = re.compile(r"(?<!\\)((?:\\\\)*)\\u(d[89ab][0-9a-f]{2})\\u(d[c-f][0-9a-f]{2})")


def servicex_token_claims(*, identity: str, token_type: str, now: datetime.datetime,
                          lifetime: datetime.timedelta, identity_claim: str = "sub",
                          jti: str | None = None) -> dict:
    """Claims as flask-jwt-extended 4.x creates them (``create_access_token`` / ``create_refresh_token``)."""
    if token_type not in TOKEN_TYPES:
        raise ValueError(f"token_type must be one of {TOKEN_TYPES}, got {token_type!r}")
    if lifetime <= datetime.timedelta(0):
        raise ValueError("token lifetime must be positive")
    if not identity:
        raise ValueError("a ServiceX token needs an identity (user name or e-mail)")
    iat = int(now.timestamp())
    claims = {
        "fresh": False,
        "iat": iat,
        "jti": jti or str(uuid.uuid4()),
        "type": token_type,
        identity_claim: identity,
        "nbf": iat,
        "exp": iat + int(lifetime.total_seconds()),
    }
    return claims


def mint_servicex_token(*, secret: bytes, **claims_kwargs) -> tuple[str, dict]:
    """A signed ServiceX token and its claims (the caller needs ``jti`` to register refresh tokens)."""
    claims = servicex_token_claims(**claims_kwargs)
    return jwt.encode(claims, secret, algorithm="HS256"), claims


def servicex_yaml(*, endpoint: str, name: str, refresh_token: str = "") -> bytes:
    """The client configuration file (``servicex.yaml``) read by the ``servicex`` package.

    Written in YAML's JSON flow style: the client parses it with ``yaml.safe_load`` all the same, and
    emitting it costs 20x less than PyYAML's emitter on the login path.
    """
    doc = {
        "api_endpoints": [{"endpoint": endpoint, "name": name, "token": refresh_token}],
        "default-endpoint": name,
    }
    text = json.dumps(doc)
    if "\\ud" in text:  # JSON writes astral characters as surrogate pairs, which YAML would not re-join
        text = _SURROGATE_PAIR.sub(lambda m: m[1] + "\\U%08x" % (
            0x10000 + ((int(m[2], 16) - 0xD800) << 10) + int(m[3], 16) - 0xDC00), text)
    return text.encode() + b"\n"
