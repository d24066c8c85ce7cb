"""Revoking a user's credentials: the hub-side state, the revocation list, and the revocation itself.

Two records, for two purposes:

- **in the user's auth_state** (the hub database, encrypted; survives hub restarts): ``casa_revoked`` =
  ``{"at": ISO time, "by": admin}``, and the stored bundle removed. While it is there no refresh re-mints and no
  server starts (:func:`revocation_refusal`, checked by ``CasaAuthenticator.admission_refusal``). A new login
  replaces the whole auth_state, so it clears the mark: "refused until the user logs in again".
- **in the revocation list** (:class:`CasaRevocations.list_file`, the format of ``casa_hub/revocation.py``):
  every revocation, kept after a new login, because tokens issued *before* it must stay refused by the
  consumers that can refuse them. ``casa-hub-keys condor-revocations`` turns it into the HTCondor pool's
  ``SEC_TOKEN_REVOCATION_EXPR``; the hub also serves it (``GET /hub/api/casa/revocations``).

What a revocation cannot reach is said in its answer (:data:`AT_CONSUMER`): XRootD/XCache has no revocation
for bearer tokens or macaroons, so those lapse at their expiry (hours, ``CasaMinter`` lifetimes).
"""

from __future__ import annotations

import asyncio
import datetime
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Awaitable, Callable

from traitlets import Unicode
from traitlets.config import LoggingConfigurable

from . import revocation
from .audit import CredentialInfo, describe

REVOKED_KEY = "casa_revoked"

# what each consumer does with credentials a revocation could not take back (by credential name)
AT_CONSUMER = {
    "htcondor": "refused by the pool once the revocation list is installed there "
    "(casa-hub-keys condor-revocations, then condor_reconfig)",
}
NOT_REVOCABLE = "cannot be revoked at its consumer: it stays valid until it expires"
CONSUMER_NOTES = {
    "xcache": "XRootD/XCache bearer tokens cannot be revoked: valid until they expire",
    "macaroon": "XRootD macaroons cannot be revoked: valid until they expire",
}


def revoked_at(auth_state: dict | None) -> datetime.datetime | None:
    """When the user's credentials were revoked (None: not revoked since the last login)."""
    mark = (auth_state or {}).get(REVOKED_KEY)
    if not isinstance(mark, dict) or not isinstance(mark.get("at"), str):
        return None
    try:
        return datetime.datetime.fromisoformat(mark["at"])
    except ValueError:  # a damaged mark still means revoked: fail closed
        return datetime.datetime.min.replace(tzinfo=datetime.timezone.utc)


def revocation_refusal(auth_state: dict | None) -> str | None:
    """Why no credentials may be minted for a user with this auth_state (None: nothing revoked)."""
    at = revoked_at(auth_state)
    if at is None:
        return None
    return f"its credentials were revoked by an administrator at {at.isoformat()}"


def mark_revoked(auth_state: dict | None, at: datetime.datetime, by: str) -> dict:
    """The auth_state after a revocation: marked, and without the bundle (nothing left to mount or refresh)."""
    state = dict(auth_state or {})
    state.pop("casa", None)
    state[REVOKED_KEY] = {"at": at.isoformat(), "by": by}
    return state


class CasaRevocations(LoggingConfigurable):
    """The hub's revocation list file (read and written here only, one writer: the hub)."""

    list_file = Unicode(
        "casa-revocations.json",
        help="""Where the hub keeps the list of revoked users (JSON in the format of ``casa_hub.revocation``,
        which the ``condor-revocations`` command of casa-hub-keys turns into the HTCondor pool's configuration).
        Relative to the hub's working directory, which in Z2JH is the hub's
        persistent volume (``/srv/jupyterhub``, beside ``jupyterhub.sqlite``): it must survive hub restarts.
        Default ``casa-revocations.json``. Example:
        ``c.CasaRevocations.list_file = "/srv/jupyterhub/casa-revocations.json"``""",
    ).tag(config=True)

    @property
    def path(self) -> Path:
        return Path(self.list_file).expanduser()

    def _lock(self) -> asyncio.Lock:
        return self.__dict__.setdefault("_casa_lock", asyncio.Lock())

    def _read(self) -> list[revocation.Revocation]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        try:
            return revocation.loads(text)
        except ValueError as e:  # never silently drop revocations: the admin must look at the file
            raise RuntimeError(f"the revocation list {self.path} is damaged ({e}); fix or move it") from None

    def _write(self, revocations: list[revocation.Revocation]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".casa-revocations.")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(revocation.dumps(revocations))
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)  # user names and times only: the pool's admins may read it
            os.replace(tmp, self.path)  # readers see the old list or the new one, never half
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    async def load(self) -> list[revocation.Revocation]:
        return await asyncio.to_thread(self._read)

    async def add(self, user: str, at: datetime.datetime) -> list[revocation.Revocation]:
        """Record a revocation (file I/O off the event loop, one writer at a time); returns the new list."""
        async with self._lock():

            def update():
                revocations = revocation.merge([*self._read(), revocation.Revocation(user, at)])
                self._write(revocations)
                return revocations

            return await asyncio.to_thread(update)

    async def text(self) -> str:
        return revocation.dumps(await self.load())


@dataclass
class RevokeResult:
    user: str
    revoked_at: datetime.datetime
    servers_stopped: list[str] = field(default_factory=list)
    credentials: list[CredentialInfo] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def at_consumers(self) -> dict[str, str]:
        """Per credential that was issued: what the consumer does with it now."""
        notes = {}
        for c in self.credentials:
            note = AT_CONSUMER.get(c.name) or CONSUMER_NOTES.get(c.name) or NOT_REVOCABLE
            if c.name not in AT_CONSUMER and c.expires_at is not None:
                note += f" ({c.expires_at.isoformat()})"
            notes[c.name] = note
        return notes

    def to_dict(self) -> dict:
        return {
            "user": self.user,
            "revoked_at": self.revoked_at.isoformat(),
            "servers_stopped": self.servers_stopped,
            "credentials": {
                c.name: {"id": c.id, "expires_at": c.expires_at.isoformat() if c.expires_at else None}
                for c in self.credentials
            },
            "at_consumers": self.at_consumers(),
            "errors": self.errors,
        }


async def revoke_user(
    user,
    *,
    actor: str,
    now: datetime.datetime,
    store: CasaRevocations,
    stop_server: Callable[[object, str], Awaitable[None]],
    stop_refreshing: Callable[[object], None] | None = None,
) -> RevokeResult:
    """Revoke ``user`` (a JupyterHub User): first mark the auth_state (nothing is minted from here on, even if a
    later step fails), record the revocation list, stop refreshing, then stop every server (their stop deletes
    the credentials Secret / files). A server that fails to stop is reported, the rest goes on."""
    state = await user.get_auth_state() or {}
    from .credentials.bundle import CredentialBundle

    bundle = CredentialBundle.from_dict(state["casa"]) if state.get("casa") else None
    result = RevokeResult(user.name, now, credentials=describe(bundle))
    await user.save_auth_state(mark_revoked(state, now, actor))
    await store.add(user.name, now)
    if stop_refreshing is not None:
        stop_refreshing(user)
    for name, spawner in list(getattr(user, "spawners", {}).items()):
        if not (spawner.active or spawner.pending):
            continue
        try:
            await stop_server(user, name)
            result.servers_stopped.append(name)
        except Exception as e:  # reported in the answer and the log; the mark above already refuses re-minting
            result.errors.append(f"server {name or '(default)'!r} did not stop: {e}")
    return result
