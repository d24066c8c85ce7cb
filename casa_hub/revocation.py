"""Revoked users, and the HTCondor pool configuration that makes the pool refuse their IDTOKENs (pure).

The hub keeps a revocation list: one entry per revoked hub user, with the time of the revocation. This module
is the only place that knows its file format (:func:`dumps` / :func:`loads`)::

    {"casa_revocations": 1,
     "revoked": [{"user": "alice", "revoked_at": "2026-11-03T10:00:00+00:00"}]}

``revoked_at`` is ISO 8601 with a UTC offset. A user revoked twice keeps the later time.

HTCondor evaluates ``SEC_TOKEN_REVOCATION_EXPR`` as a ClassAd expression against the claims of every IDTOKEN it
authenticates (each claim an attribute: ``sub``, ``iat``, ``jti``, ...) and refuses the token when it is true,
or when it does not evaluate to a boolean. :func:`condor_revocation_config` refuses every token of a revoked
user's subject (``<condor_user(name)>@<trust domain>``, compared case-sensitively with ``=?=``) that was issued
at or before the revocation's whole second; a token minted after a new login (a later ``iat``) passes. Tokens
are matched by subject and ``iat`` rather than ``jti``, so the list stays one line per user however many tokens
were minted, and nothing per token has to be recorded.
"""

from __future__ import annotations

import datetime
import json
import math
import re
from dataclasses import dataclass
from typing import Iterable

from .credentials.htcondor import condor_user

FORMAT_KEY = "casa_revocations"
FORMAT_VERSION = 1
# the pool's own TRUST_DOMAIN, expanded by HTCondor's configuration reader: the default needs no typing
POOL_TRUST_DOMAIN = "$(TRUST_DOMAIN)"
# what a TRUST_DOMAIN written into the expression may hold: nothing ClassAd quoting or the config reader
# (``$(...)`` macros, ``#``, line continuation) would interpret
_SAFE_TRUST_DOMAIN = re.compile(r"[A-Za-z0-9._:-]+")
_SAFE_ACCOUNT = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
CONFIG_MACRO = "CASA_REVOKED_IDTOKENS"


@dataclass(frozen=True)
class Revocation:
    user: str  # the hub user name
    revoked_at: datetime.datetime  # timezone-aware

    def __post_init__(self):
        if not isinstance(self.user, str) or not self.user:
            raise ValueError(f"a revoked user needs a non-empty hub user name, got {self.user!r}")
        if not isinstance(self.revoked_at, datetime.datetime) or self.revoked_at.utcoffset() is None:
            raise ValueError(f"revoked_at of {self.user!r} must be a timezone-aware time, got {self.revoked_at!r}")


def merge(revocations: Iterable[Revocation]) -> list[Revocation]:
    """One entry per user (the latest revocation: it covers every token the earlier one did), sorted by user."""
    latest: dict[str, Revocation] = {}
    for r in revocations:
        if r.user not in latest or r.revoked_at > latest[r.user].revoked_at:
            latest[r.user] = r
    return [latest[u] for u in sorted(latest)]


def still_needed(
    revocations: Iterable[Revocation], *, now: datetime.datetime, max_token_lifetime: datetime.timedelta
) -> list[Revocation]:
    """The entries that can still refuse something: a token issued before ``revoked_at`` has expired once
    ``max_token_lifetime`` (the longest IDTOKEN lifetime Casa mints) has passed since."""
    return [r for r in merge(revocations) if r.revoked_at + max_token_lifetime > now]


def dumps(revocations: Iterable[Revocation]) -> str:
    """The revocation list file (see the module docstring)."""
    entries = [
        {"user": r.user, "revoked_at": r.revoked_at.astimezone(datetime.timezone.utc).isoformat()}
        for r in merge(revocations)
    ]
    return json.dumps({FORMAT_KEY: FORMAT_VERSION, "revoked": entries}, indent=1, ensure_ascii=False) + "\n"


def loads(text: str | bytes) -> list[Revocation]:
    """Parse a revocation list file; a ValueError names what is wrong and where."""
    try:
        doc = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"not a JSON document: {e}") from None
    if not isinstance(doc, dict) or doc.get(FORMAT_KEY) != FORMAT_VERSION:
        raise ValueError(f'expected a JSON object with "{FORMAT_KEY}": {FORMAT_VERSION}')
    entries = doc.get("revoked")
    if not isinstance(entries, list):
        raise ValueError('"revoked" must be a list of {"user": ..., "revoked_at": ...}')
    found = []
    for i, entry in enumerate(entries):
        where = f"revoked[{i}]"
        if not isinstance(entry, dict):
            raise ValueError(f'{where}: expected {{"user": ..., "revoked_at": ...}}, got {entry!r}')
        user, when = entry.get("user"), entry.get("revoked_at")
        if not isinstance(user, str) or not user:
            raise ValueError(f'{where}: "user" must be a non-empty hub user name, got {user!r}')
        if not isinstance(when, str):
            raise ValueError(f'{where}: "revoked_at" must be an ISO 8601 time with a UTC offset, got {when!r}')
        try:
            at = datetime.datetime.fromisoformat(when)
        except ValueError:
            raise ValueError(f'{where}: "revoked_at" {when!r} is not an ISO 8601 time') from None
        if at.utcoffset() is None:
            raise ValueError(f'{where}: "revoked_at" {when!r} has no UTC offset (write e.g. {when}+00:00)')
        found.append(Revocation(user, at))
    return merge(found)


def _classad_string(value: str) -> str:
    """A ClassAd string literal (only ``\\`` and ``"`` need escaping; callers pass a safe alphabet anyway)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def condor_subject(user: str, trust_domain: str = POOL_TRUST_DOMAIN) -> str:
    """The ``sub`` of the IDTOKENs Casa mints for hub user ``user`` (credentials/htcondor.py)."""
    account = condor_user(user)
    if not _SAFE_ACCOUNT.fullmatch(account):  # condor_user guarantees it; the expression relies on it
        raise ValueError(f"unexpected HTCondor account {account!r} for {user!r}")
    if trust_domain != POOL_TRUST_DOMAIN and not _SAFE_TRUST_DOMAIN.fullmatch(trust_domain):
        raise ValueError(
            f"trust domain {trust_domain!r}: expected the pool's TRUST_DOMAIN, letters, digits and . _ : - only"
        )
    return f"{account}@{trust_domain}"


def condor_revocation_expr(revocations: Iterable[Revocation], trust_domain: str = POOL_TRUST_DOMAIN) -> list[str]:
    """The clauses of the ClassAd expression, one per user, to be joined with ``||`` (empty: nothing revoked).

    ``iat`` is whole seconds: a token minted in the same second as the revocation is refused too (fails closed).
    """
    clauses = []
    for r in merge(revocations):
        before = math.floor(r.revoked_at.timestamp())
        clauses.append(f"(sub =?= {_classad_string(condor_subject(r.user, trust_domain))} && iat <= {before})")
    return clauses


def condor_revocation_config(
    revocations: Iterable[Revocation],
    *,
    trust_domain: str = POOL_TRUST_DOMAIN,
    source: str = "",
) -> str:
    """An HTCondor configuration file (for ``config.d/``) that refuses the revoked users' IDTOKENs.

    The expression is a macro of its own, ``CASA_REVOKED_IDTOKENS``, so that a pool with its own revocation
    rules can combine them: ``SEC_TOKEN_REVOCATION_EXPR = ($(CASA_REVOKED_IDTOKENS)) || (<its own>)``.
    """
    clauses = condor_revocation_expr(revocations, trust_domain)
    source = "".join(c if c.isprintable() else "?" for c in source)  # a comment line must stay one line
    head = [
        "# Generated by casa-hub-keys condor-revocations" + (f" from {source}" if source else "") + ": do not edit.",
        "# IDTOKENs of revoked Casa users issued at or before their revocation (sub, iat) are refused.",
        "# Put this file on every host whose daemons accept users' tokens and run condor_reconfig there.",
    ]
    if not clauses:
        body = [f"{CONFIG_MACRO} = false"]
    else:
        body = [f"{CONFIG_MACRO} = \\"]
        body += [f"  {c} || \\" for c in clauses[:-1]] + [f"  {clauses[-1]}"]
    return "\n".join([*head, *body, f"SEC_TOKEN_REVOCATION_EXPR = $({CONFIG_MACRO})", ""])
