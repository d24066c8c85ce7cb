"""HTCondor IDTOKENs, bit-compatible with ``condor_token_create``.

HTCondor signs IDTOKENs with HS256 using a key derived from a pool signing key file:
the file is cut at its first NUL byte, de-scrambled (XOR with DE AD BE EF repeating), doubled for the
``POOL`` key id (HTCondor's historical pool-password convention), and run through HKDF-SHA256 with salt
``htcondor`` and info ``master jwt``. The collector re-derives the key and re-signs header.payload, so
the token must match exactly what HTCondor itself would produce.

The token's identity is ``<account>@<trust domain>`` where ``<account>`` is :func:`condor_user` of the hub user
name: HTCondor splits ``sub`` at its *first* ``@`` and uses the left part as the job's ``Owner`` (the local
account the job runs as), so a hub name such as ``bob@x`` must never reach it verbatim.

Run ``python -m casa_hub.credentials.htcondor NAME...`` to print the account names of hub users.
"""

from __future__ import annotations

import datetime
import hashlib
import re
import sys
import uuid
from itertools import cycle
from typing import Sequence

import jwt
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_SCRAMBLE = bytes.fromhex("deadbeef")
DEFAULT_SCOPES = ("condor:/READ", "condor:/WRITE")

# POSIX portable user names (useradd's default NAME_REGEX, lower case), at most 32 characters
CONDOR_USER_PATTERN = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
_HASH_HEX = 16  # 64 bits of sha256: finding a chosen name that maps onto a given account is impractical
_PREFIX_MAX = 32 - 2 - _HASH_HEX
_UNSAFE_RUN = re.compile(r"[^a-z0-9_]+")


# system accounts a hub user must never become (HTCondor's QUEUE_SUPER_USERS are root and condor by default)
RESERVED_ACCOUNTS = frozenset({"root", "condor", "daemon", "bin", "sys", "nobody", "nogroup", "adm", "operator"})


def condor_user(name: str) -> str:
    """The HTCondor / POSIX account name of hub user ``name`` (the ``Owner`` of the user's jobs).

    * A name that already is a portable account name (``^[a-z_][a-z0-9_-]{0,31}$``), does not contain ``--``
      and is not one of the system accounts in :data:`RESERVED_ACCOUNTS` (``root``, ``condor``: the pool's
      super users) is kept as it is: ``alice`` -> ``alice``.
    * Every other name becomes a readable prefix + ``--`` + the first 16 hex digits of sha256(name, UTF-8):
      ``bob@cern.ch`` -> ``bob-cern-ch--<16 hex>``. The prefix is the name lower-cased with every run of
      other characters than ``[a-z0-9_]`` folded into one ``-``, trimmed of ``-``, cut to 14 characters,
      and given a leading ``_`` if it would be empty or start with a digit.

    The result matches ``^[a-z_][a-z0-9_-]{0,31}$``, never contains ``@``, and is injective: kept names never
    contain ``--`` and mapped ones always do, so no hub user can take another user's account by choosing that
    account's name (mapped names differ by 64 bits of a cryptographic hash).
    """
    if not isinstance(name, str) or not name:
        raise ValueError("an HTCondor account needs a non-empty user name")
    if CONDOR_USER_PATTERN.fullmatch(name) and "--" not in name and name not in RESERVED_ACCOUNTS:
        return name
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:_HASH_HEX]
    prefix = _UNSAFE_RUN.sub("-", name.lower()).strip("-")
    if not prefix or not ("a" <= prefix[0] <= "z" or prefix[0] == "_"):
        prefix = "_" + prefix
    prefix = prefix[:_PREFIX_MAX].rstrip("-")
    return f"{prefix}--{digest}"


def signing_key_from_file(key_file: bytes, key_id: str = "POOL") -> bytes:
    """The 32-byte HS256 key HTCondor derives from the contents of a signing key file."""
    raw = key_file.split(b"\0", 1)[0]
    if not raw:
        raise ValueError("HTCondor signing key file is empty")
    password = bytes(b ^ s for b, s in zip(raw, cycle(_SCRAMBLE)))
    if key_id == "POOL":
        password = password + password
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=b"htcondor", info=b"master jwt").derive(password)


def scramble_key_file(password: bytes) -> bytes:
    """Inverse of the de-scrambling: the bytes of a signing key file holding ``password`` (for tests/setup)."""
    if b"\0" in password:
        raise ValueError("an HTCondor signing key cannot contain NUL bytes")
    scrambled = bytes(b ^ s for b, s in zip(password, cycle(_SCRAMBLE)))
    if b"\0" in scrambled:  # HTCondor cuts the file at its first NUL: this key would be silently truncated
        raise ValueError(
            "this HTCondor signing key scrambles to a NUL byte (a byte equals DE AD BE EF at its "
            "position); choose another key"
        )
    return scrambled


def idtoken_claims(
    *,
    trust_domain: str,
    user: str,
    now: datetime.datetime,
    lifetime: datetime.timedelta,
    scopes: Sequence[str] = DEFAULT_SCOPES,
    jti: str | None = None,
) -> dict:
    """The claims of ``user``'s IDTOKEN; ``user`` is the hub user name, the identity is
    ``<condor_user(user)>@<trust_domain>``."""
    if lifetime <= datetime.timedelta(0):
        raise ValueError("token lifetime must be positive")
    if "@" in trust_domain or any(c.isspace() for c in trust_domain):
        raise ValueError(f"an HTCondor trust domain cannot contain '@' or white space: {trust_domain!r}")
    iat = int(now.timestamp())
    claims = {
        "iat": iat,
        "exp": iat + int(lifetime.total_seconds()),
        "iss": trust_domain,
        "jti": jti or uuid.uuid4().hex,
        "sub": f"{condor_user(user)}@{trust_domain}",
    }
    if scopes:
        claims["scope"] = " ".join(scopes)
    return claims


def mint_idtoken(*, signing_key: bytes, key_id: str, **claims_kwargs) -> tuple[bytes, datetime.datetime]:
    """An IDTOKEN as written into a token directory, and its expiry."""
    claims = idtoken_claims(**claims_kwargs)
    token = jwt.encode(claims, signing_key, algorithm="HS256", headers={"kid": key_id})
    return token.encode() + b"\n", datetime.datetime.fromtimestamp(claims["exp"], datetime.timezone.utc)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m casa_hub.credentials.htcondor NAME...``: each hub user's HTCondor account name, one a line."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m casa_hub.credentials.htcondor",
        description="Print the HTCondor/POSIX account name Casa maps each hub user "
        "name to (the Owner of the user's jobs).",
    )
    parser.add_argument("names", nargs="+", metavar="NAME", help="hub user name(s), as JupyterHub shows them")
    args = parser.parse_args(argv)
    for name in args.names:
        print(condor_user(name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
