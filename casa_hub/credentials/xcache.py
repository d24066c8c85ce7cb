"""XCache / XRootD credentials: a WLCG-profile (SciTokens-compatible) JWT and a legacy macaroon."""

from __future__ import annotations

import datetime
import uuid
from typing import Sequence

from pymacaroons import Macaroon

from .issuer import IssuerKey

WLCG_VERSION = "1.0"
MACAROON_MAX_LIFETIME = datetime.timedelta(hours=24)  # XRootD refuses macaroons valid for longer
MACAROON_READ_ACTIVITIES = ("DOWNLOAD", "READ_METADATA", "LIST")


def wlcg_token_claims(
    *,
    issuer: str,
    subject: str,
    scopes: Sequence[str],
    audience: str | Sequence[str],
    now: datetime.datetime,
    lifetime: datetime.timedelta,
    jti: str | None = None,
) -> dict:
    """Claims of a WLCG profile 1.0 access token (https://doi.org/10.5281/zenodo.3460258)."""
    if lifetime <= datetime.timedelta(0):
        raise ValueError("token lifetime must be positive")
    if not scopes:
        raise ValueError("a storage token needs at least one scope")
    iat = int(now.timestamp())
    return {
        "wlcg.ver": WLCG_VERSION,
        "iss": issuer,
        "sub": subject,
        "aud": audience if isinstance(audience, str) else list(audience),
        "scope": " ".join(scopes),
        "iat": iat,
        "nbf": iat,
        "exp": iat + int(lifetime.total_seconds()),
        "jti": jti or str(uuid.uuid4()),
    }


def mint_wlcg_token(key: IssuerKey, **claims_kwargs) -> tuple[bytes, datetime.datetime]:
    """Sign a WLCG token; returns the token bytes (as written to ``BEARER_TOKEN_FILE``) and its expiry."""
    claims = wlcg_token_claims(**claims_kwargs)
    token = key.sign(claims)
    return token.encode() + b"\n", datetime.datetime.fromtimestamp(claims["exp"], datetime.timezone.utc)


def mint_macaroon(
    *,
    secret: bytes,
    location: str,
    user: str,
    path: str,
    now: datetime.datetime,
    lifetime: datetime.timedelta,
    activities: Sequence[str] = MACAROON_READ_ACTIVITIES,
) -> tuple[bytes, datetime.datetime]:
    """A macaroon in XRootD's (libXrdMacaroons) dialect.

    ``secret`` is the raw key (XRootD base64-decodes its ``macaroons.secretkey`` file to get it),
    ``location`` must equal the server's ``all.sitename``. Lifetimes over 24 h are refused because XRootD
    rejects them anyway.
    """
    if not datetime.timedelta(0) < lifetime <= MACAROON_MAX_LIFETIME:
        raise ValueError(f"macaroon lifetime must be in (0, 24h], got {lifetime}")
    if not path.startswith("/"):
        raise ValueError(f"macaroon path must be absolute, got {path!r}")
    before = (now + lifetime).astimezone(datetime.timezone.utc).replace(microsecond=0)
    m = Macaroon(location=location, identifier=str(uuid.uuid4()), key=secret)
    m.add_first_party_caveat(f"name:{user}")
    m.add_first_party_caveat(f"activity:{','.join(activities)}")
    m.add_first_party_caveat(f"path:{path}")
    m.add_first_party_caveat(f"before:{before.strftime('%Y-%m-%dT%H:%M:%SZ')}")
    return m.serialize().encode() + b"\n", before
