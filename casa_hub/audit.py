"""The audit log: one JSON line per mint, refresh, delivery, renewal and revocation, on the ``casa.audit`` logger.

Every line is one JSON object (schema version 1)::

    {"casa_audit": 1, "time": "2026-11-03T10:00:00.123456+00:00", "event": "mint", "user": "alice",
     "outcome": "success", "kinds": ["xcache", "htcondor", ...],
     "credentials": {"xcache": {"id": "<jti>", "expires_at": "2026-11-03T16:00:00+00:00"}, ...}, ...}

- ``event``: ``mint`` (a bundle was minted, at login or refresh), ``refresh`` (a running server's credentials
  were renewed, or refused, or failed), ``delivery`` (a bundle written to a server, or not), ``renew`` (an admin
  asked for a renewal), ``revoke`` (an admin revoked a user);
- ``user``: the hub user; ``outcome``: ``success`` or what went wrong (``refused``, ``error``, a cause);
- ``kinds`` and ``credentials``: the credential kinds of the bundle, each with its ``id`` (a token's ``jti``,
  a certificate's serial number in hex, a macaroon's identifier; ``null`` for files without one) and
  ``expires_at`` (ISO 8601, ``null``: does not expire);
- optional: ``server`` (server name, ``""`` the default one), ``actor`` (the admin or service that acted),
  ``reason`` (a sentence, no secrets), ``trigger`` (``login``, ``refresh``, ``admin``), ``seconds``.

Never a token, key, certificate body or OAuth code: only identifiers that name a credential (what a consumer
logs when it accepts one). Where the lines go is ordinary Python logging: by default the hub's standard error
(beside JupyterHub's own log); route them elsewhere with ``c.Application.logging_config``, e.g. to a file::

    c.Application.logging_config = {"handlers": {"casa_audit": {"class": "logging.FileHandler",
        "filename": "/srv/jupyterhub/casa-audit.jsonl"}}, "loggers": {"casa.audit": {"handlers": ["casa_audit"]}}}
"""

from __future__ import annotations

import base64
import datetime
import json
import logging
import sys
from dataclasses import dataclass
from typing import Any, Mapping

from .credentials.bundle import CredentialBundle

LOGGER_NAME = "casa.audit"
SCHEMA_VERSION = 1
EVENTS = ("mint", "refresh", "delivery", "renew", "revoke")
MANIFEST = "casa.json"

log = logging.getLogger(LOGGER_NAME)


def _ensure_handler() -> None:
    # the hub configures only its own logger: without a handler of its own, Python's last-resort handler would
    # drop these INFO lines. An admin's logging_config (which adds handlers) takes precedence.
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


@dataclass(frozen=True)
class CredentialInfo:
    """What may be said about one credential of a bundle: never its bytes."""

    name: str
    label: str
    id: str | None
    expires_at: datetime.datetime | None


def _jwt_id(content: bytes) -> str | None:
    parts = content.strip().split(b".")
    if len(parts) != 3:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + b"=" * (-len(parts[1]) % 4)))
    except (ValueError, TypeError):
        return None
    jti = payload.get("jti") if isinstance(payload, dict) else None
    return str(jti)[:128] if jti is not None else None


def _cert_serial(content: bytes) -> str | None:
    from cryptography import x509

    try:
        return format(x509.load_pem_x509_certificate(content).serial_number, "x")
    except ValueError:
        return None


def _macaroon_id(content: bytes) -> str | None:
    from pymacaroons import Macaroon

    try:
        identifier = Macaroon.deserialize(content.strip().decode()).identifier
    except Exception:  # pymacaroons raises assorted types on bytes that are not a macaroon
        return None
    return identifier if isinstance(identifier, str) and len(identifier) <= 128 else None


def credential_id(content: bytes) -> str | None:
    """The public identifier of a credential file: a JWT's ``jti``, a PEM certificate's serial (hex), a
    macaroon's identifier; None when the file has none."""
    if content.lstrip().startswith(b"-----BEGIN CERTIFICATE-----"):
        return _cert_serial(content)
    return _jwt_id(content) or _macaroon_id(content)


def describe(bundle: CredentialBundle | None) -> list[CredentialInfo]:
    """The credentials a bundle holds, from its manifest (``casa.json``): name, label, id, expiry."""
    if bundle is None or MANIFEST not in bundle.files:
        return []
    # a bundle never changes: it is described once (the mint does it in its worker thread), and its delivery, the
    # admin page and a revoke, on the hub's event loop, reuse that instead of parsing its certificates again
    described = bundle.__dict__.get(_DESCRIBED)
    if described is None:
        described = bundle.__dict__[_DESCRIBED] = tuple(_describe(bundle))
    return list(described)


_DESCRIBED = "_casa_audit_described"


def _describe(bundle: CredentialBundle) -> list[CredentialInfo]:
    try:
        manifest = json.loads(bundle.files[MANIFEST].content)
        entries: Mapping[str, Any] = manifest.get("credentials") or {}
    except (ValueError, AttributeError):
        return []
    found = []
    for name, entry in sorted(entries.items()):
        if not isinstance(entry, dict):
            continue
        f = bundle.files.get(entry.get("file") or "")
        expires = entry.get("expires_at")
        try:
            expires_at = datetime.datetime.fromisoformat(expires) if isinstance(expires, str) else None
        except ValueError:
            expires_at = None
        label = entry.get("label") if isinstance(entry.get("label"), str) else name
        found.append(CredentialInfo(name, label, credential_id(f.content) if f else None, expires_at))
    return found


def _iso(t: datetime.datetime | None) -> str | None:
    return t.isoformat() if t is not None else None


def record(
    event: str,
    user: str,
    *,
    outcome: str = "success",
    bundle: CredentialBundle | None = None,
    credentials: list[CredentialInfo] | None = None,
    now: datetime.datetime | None = None,
    **extra: Any,
) -> dict:
    """Write one audit line (and return it as a dict). ``extra``: ``server``, ``actor``, ``reason``,
    ``trigger``, ``seconds``, ... (JSON values; never secrets). Never raises: an audit failure is logged."""
    if event not in EVENTS:
        raise ValueError(f"unknown audit event {event!r}; expected one of {', '.join(EVENTS)}")
    creds = credentials if credentials is not None else describe(bundle)
    line: dict[str, Any] = {
        "casa_audit": SCHEMA_VERSION,
        "time": _iso(now or datetime.datetime.now(datetime.timezone.utc)),
        "event": event,
        "user": user,
        "outcome": outcome,
        "kinds": [c.name for c in creds],
        "credentials": {c.name: {"id": c.id, "expires_at": _iso(c.expires_at)} for c in creds},
    }
    line.update({k: v for k, v in extra.items() if v is not None})
    _ensure_handler()
    try:
        log.info(json.dumps(line, ensure_ascii=False, default=str, sort_keys=False))
    except Exception:  # never let the audit trail break a login or a stop
        logging.getLogger(__name__).exception("could not write an audit line for %s %s", event, user)
    return line
