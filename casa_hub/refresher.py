"""CasaRefresher: keeps the credentials of every running Casa server fresh, from the hub, in one direction.

    refresher --(when due)--> CasaAuthenticator.renew: identity + admission (the provider's refresh grant when
              needed), then CasaMinter.mint in a worker thread
              --> CasaAuthenticator.save_session: persists only what the hub cannot re-create
              --> spawner.casa_apply_bundle: the spawner stores and delivers

Nothing calls back: spawners have no timer and never call the authenticator or the hub. The refresher learns
which servers run, and when their credentials expire, from the spawners (``casa_expires_at`` is kept in the
spawner state, so a restarted hub picks every running server up again). It is owned by the authenticator and
started from ``CasaAuthenticator.get_handlers(app)``, once the hub's loop and ``app`` exist.

Per-server status (:class:`RefreshStatus`) is public for an admin page or metrics; :meth:`CasaRefresher.renew_now`
and :meth:`CasaRefresher.stop_refreshing` are the admin's levers.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import datetime
import random

from traitlets import Any, Float, Integer
from traitlets.config import LoggingConfigurable

from . import audit, metrics

# the refresher's outcomes as casa_refreshes_total and the audit log name them
_OBSERVED_OUTCOME = {"renewed": "success", "outage": "provider_unavailable", "failed": "error", "refused": "refused"}
# a server found starting or stopping when due is looked at again this soon (its start sets a new expiry)
PENDING_RECHECK = 1.0
# spawner states changed by deliveries are committed together, at most this often (one commit, not one each)
STATE_COMMIT_DELAY = 1.0


@dataclasses.dataclass
class RefreshStatus:
    """Where one server's credential refresh stands. ``state``: ``scheduled`` (next at ``due_at``),
    ``refreshing``, ``refused`` (the user must log in again; nothing more until a new login or start),
    ``lapsed`` (could not be refreshed before ``expires_at``), ``stopped`` (by :meth:`CasaRefresher.stop_refreshing`).
    ``counts`` per outcome: ``renewed``, ``outage`` (provider unavailable), ``failed`` (anything else, e.g.
    Kubernetes), ``refused``."""

    user: str
    server: str
    expires_at: datetime.datetime | None
    due_at: datetime.datetime | None = None
    state: str = "scheduled"
    last_refresh: datetime.datetime | None = None
    last_outcome: str | None = None
    last_error: str | None = None
    counts: collections.Counter = dataclasses.field(default_factory=collections.Counter)

    def as_dict(self) -> dict:
        """JSON-ready (times as ISO strings)."""
        out = dataclasses.asdict(self)
        for key, value in out.items():
            if isinstance(value, datetime.datetime):
                out[key] = value.isoformat()
        out["counts"] = dict(self.counts)
        return out


class _Entry:
    """One tracked server: its public status, the spawner, the start it belongs to, the refresh in flight."""

    __slots__ = ("status", "spawner", "generation", "task")

    def __init__(self, spawner, status: RefreshStatus):
        self.spawner, self.status = spawner, status
        self.generation = spawner.casa_generation
        self.task: asyncio.Task | None = None


class CasaRefresher(LoggingConfigurable):
    """Renews the credentials of running Casa servers shortly before they expire (see the module docstring)."""

    concurrency = Integer(
        32,
        min=1,
        help="""How many servers' credential refreshes (identity check at the provider, mint, delivery) run at
        once. Servers started together come due together (a lecture, a hub restart): the rest wait their turn
        instead of flooding the provider and the Kubernetes API. Default 32; e.g.
        ``c.CasaRefresher.concurrency = 64``.""",
    ).tag(config=True)

    jitter = Float(
        0.1,
        min=0,
        max=0.5,
        help="""Fraction of ``CasaAuthenticator.credential_refresh_margin`` by which each server's refresh is
        brought forward at random, so that servers started together do not all come due at the same moment.
        Default 0.1; e.g. ``c.CasaRefresher.jitter = 0`` in tests.""",
    ).tag(config=True)

    retry_interval = Float(
        60,
        min=0.1,
        help="""Seconds between attempts when a refresh fails (identity provider or Kubernetes briefly
        unavailable); attempts stop once the credentials have expired (a new login or server start renews them).
        Default 60; e.g. ``c.CasaRefresher.retry_interval = 30``.""",
    ).tag(config=True)

    scan_interval = Float(
        1.0,
        min=0.05,
        help="""Seconds between looks at the hub's servers for ones that started, restarted or stopped. A look
        reads attributes of the in-memory spawners only. Default 1; e.g. ``c.CasaRefresher.scan_interval = 5``.""",
    ).tag(config=True)

    authenticator = Any(help="The CasaAuthenticator that owns this refresher (decides and mints).")

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._entries: dict[tuple[str, str], _Entry] = {}
        self._user_locks: dict[str, asyncio.Lock] = {}
        self._app = None
        self._task: asyncio.Task | None = None
        self._wake: asyncio.Event | None = None
        self._next_look: datetime.datetime | None = None  # when the loop looks at its servers next, unless woken
        self._slots: asyncio.Semaphore | None = None
        self._commit: asyncio.Handle | None = None
        self._unsaved: dict[int, object] = {}  # spawners whose new expiry is not in the database yet
        self.totals: collections.Counter = collections.Counter()  # outcomes of every refresh since the start

    # ------------------------------------------------------------------ life cycle
    def start(self, app) -> None:
        """Start on the running loop, reading servers from ``app.users`` (JupyterHub's) and committing spawner
        state through ``app.db`` (None: not committed). Idempotent."""
        if self._task is not None and not self._task.done():
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # handlers built outside a running hub (a docs build, a unit test): nothing to refresh
            self.log.debug("No running event loop: the credential refresher is not started")
            return
        self._app = app
        self._wake = asyncio.Event()
        self._slots = asyncio.Semaphore(self.concurrency)
        self._task = loop.create_task(self._run(), name="casa-refresher")

    async def close(self) -> None:
        """Stop the loop and the refreshes in flight (a hub shutting down, a test ending)."""
        tasks = [e.task for e in self._entries.values() if e.task is not None]
        if self._task is not None:
            tasks.append(self._task)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._task = None
        if self._commit is not None:
            self._commit.cancel()
            self._commit_state()

    # ------------------------------------------------------------------ public: status and levers
    @staticmethod
    def _copy(status: RefreshStatus) -> RefreshStatus:
        return dataclasses.replace(status, counts=collections.Counter(status.counts))

    def statuses(self) -> list[RefreshStatus]:
        """Copies of every tracked server's status."""
        return [self._copy(e.status) for e in self._entries.values()]

    def status(self, user: str, server: str = "") -> RefreshStatus | None:
        entry = self._entries.get((user, server))
        return None if entry is None else self._copy(entry.status)

    async def renew_now(self, user: str, server: str = "") -> RefreshStatus:
        """Refresh one running server now (an admin's "renew now"), through the same checks as a due refresh:
        a refused or stopped server is tried again, and refused again unless the user is admitted. Returns the
        status afterwards; KeyError if no such running Casa server is known."""
        self._scan()
        entry = self._entries.get((user, server))
        if entry is None:
            raise KeyError(f"no running Casa server {server!r} of user {user!r}")
        if entry.task is not None:
            await asyncio.shield(entry.task)
        entry.status.state = "scheduled"
        entry.status.due_at = self._now()
        entry.task = asyncio.ensure_future(self._refresh(entry))
        await asyncio.shield(entry.task)
        return self.status(user, server)

    def stop_refreshing(self, user: str, reason: str) -> int:
        """Renew nothing more for ``user``'s servers (an admin's "revoke"), until the user logs in again or
        starts a server. What the servers hold lapses at its expiry. Returns how many servers were affected."""
        stopped = 0
        for (name, _), entry in self._entries.items():
            if name == user:
                if entry.task is not None:
                    entry.task.cancel()
                entry.status.state, entry.status.due_at, entry.status.last_error = "stopped", None, reason
                stopped += 1
        self.log.warning("Credentials of %s's servers are no longer renewed: %s", user, reason)
        return stopped

    def resume(self, user: str) -> None:
        """A new login of ``user``: refused, lapsed or stopped servers are renewed again (now)."""
        for (name, _), entry in self._entries.items():
            if name == user and entry.status.state in ("refused", "lapsed", "stopped"):
                entry.status.state, entry.status.due_at = "scheduled", self._now()
        if self._wake is not None:
            self._wake.set()

    # ------------------------------------------------------------------ the loop
    def _now(self) -> datetime.datetime:
        return self.authenticator.clock()

    def _margin(self) -> float:
        return float(self.authenticator.credential_refresh_margin)

    def _due(self, expires_at: datetime.datetime | None) -> datetime.datetime | None:
        """``expires_at - margin``, brought forward by up to ``jitter * margin`` at random."""
        if expires_at is None:
            return None
        margin = self._margin()
        return expires_at - datetime.timedelta(seconds=margin * (1 + self.jitter * random.random()))

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        last_scan = None
        while True:
            try:
                # the hub's servers are looked at no more often than scan_interval (a herd of refreshes must not
                # mean a herd of scans); a wake-up (a resume, a quick retry) dispatches what is due at once
                if last_scan is None or loop.time() - last_scan >= self.scan_interval:
                    self._scan()
                    last_scan = loop.time()
                delay = self._dispatch()
            except Exception:  # never let one bad spawner stop every refresh
                self.log.exception("Credential refresher: unexpected error; continuing")
                delay = self.scan_interval
            self._wake.clear()
            wait = max(0.0, min(delay, self.scan_interval))
            self._next_look = self._now() + datetime.timedelta(seconds=wait)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()

    def _scan(self) -> None:
        """Track servers that run with Casa credentials; forget stopped ones. Attribute reads only."""
        from .mixin import CasaCredentialsMixin

        users = self._app.users.values() if self._app is not None else ()
        # servers already tracked are recognised by their spawner object: reading ``user.name`` goes through
        # JupyterHub's ORM objects, which every commit expires, so one read per user per scan is a database query
        # per user per scan (this loop took 40 % of the hub's event loop with 300 servers before)
        tracked = {id(e.spawner): key for key, e in self._entries.items()}
        seen = set()
        for user in list(users):
            for name, spawner in list(getattr(user, "spawners", {}).items()):
                if not isinstance(spawner, CasaCredentialsMixin) or spawner.casa_expires_at is None:
                    continue
                key = tracked.get(id(spawner))
                if key is not None and self._entries[key].generation == spawner.casa_generation:
                    seen.add(key)
                    continue
                key = (user.name, name)
                seen.add(key)
                entry = self._entries.get(key)
                if entry is None or entry.spawner is not spawner or entry.generation != spawner.casa_generation:
                    # a server new to us, or started again: a new start lifts a refusal
                    status = RefreshStatus(user.name, name, spawner.casa_expires_at)
                    status.due_at = self._due(status.expires_at)
                    self._entries[key] = _Entry(spawner, status)
        for key in [k for k, e in self._entries.items() if k not in seen and e.task is None]:
            del self._entries[key]
        tracked_users = {user for user, _ in self._entries}  # once per scan, not once per lock (1000 x 1000)
        for user in [u for u in self._user_locks if u not in tracked_users]:
            self._user_locks.pop(user)

    def _dispatch(self) -> float:
        """Start the refreshes that are due (they wait for a slot); seconds until the next one is due."""
        now = self._now()
        nearest = None
        for entry in self._entries.values():
            status = entry.status
            if status.state != "scheduled" or entry.task is not None or status.due_at is None:
                continue
            if status.due_at <= now:
                entry.task = asyncio.ensure_future(self._refresh(entry))
            elif nearest is None or status.due_at < nearest:
                nearest = status.due_at
        return self.scan_interval if nearest is None else (nearest - now).total_seconds()

    async def _refresh(self, entry: _Entry) -> None:
        try:
            async with self._slots:
                await self._refresh_one(entry)
        finally:
            entry.task = None
            # the loop wakes only when this server is due again before the loop's next look (a quick retry): in a
            # herd every due refresh is already dispatched, and a look per finished refresh walks every server
            due = entry.status.due_at
            if self._wake is not None and due is not None and (self._next_look is None or due < self._next_look):
                self._wake.set()

    async def _refresh_one(self, entry: _Entry) -> None:
        from .authenticator import CredentialsRefused, ProviderUnavailable

        spawner, status = entry.spawner, entry.status
        if spawner.casa_expires_at is None or spawner.casa_stopping:
            return  # stopped: forgotten at the next scan
        # starting, stopping or being checked: its start brings a new expiry. (``pending``, not ``ready``: ready
        # reads the server's database row, a query per refresh in a herd of them)
        if spawner.pending:
            status.due_at = self._now() + datetime.timedelta(seconds=PENDING_RECHECK)
            return
        user = spawner.user
        status.state = "refreshing"
        try:
            lock = self._user_locks.setdefault(status.user, asyncio.Lock())
            async with lock:  # one decision at a time per user: a refresh grant may rotate the refresh token
                stored = await user.get_auth_state() or {}
                model, bundle = await self.authenticator.renew(user, stored)
                await self.authenticator.save_session(user, stored, model, bundle)
            await spawner.casa_apply_bundle(bundle)
        except asyncio.CancelledError:
            if status.state == "refreshing":
                status.state = "scheduled"
            raise
        except CredentialsRefused as e:  # final: the authenticator logged why; a new login or start decides
            self._outcome(status, "refused", str(e))
            status.state, status.due_at = "refused", None
            name, lapse = self._name(status), status.expires_at
            self.log.warning("Credentials of %s are no longer renewed (%s); they lapse at %s", name, e, lapse)
            return
        except ProviderUnavailable:
            self._outcome(status, "outage", "identity provider unavailable")
            self._retry_or_lapse(status)
            return
        except Exception as e:
            message = getattr(e, "log_message", None)
            if message:  # a refusal that says what failed (e.g. Kubernetes' answer)
                self.log.warning("Refreshing the credentials of %s failed: %s", self._name(status), message)
            else:
                self.log.exception("Refreshing the credentials of %s failed", self._name(status))
            self._outcome(status, "failed", message or type(e).__name__)
            self._retry_or_lapse(status)
            return
        self._outcome(status, "renewed", None)
        status.last_refresh = self._now()
        status.expires_at = spawner.casa_expires_at or bundle.expires_at
        status.state, status.due_at = "scheduled", self._due(status.expires_at)
        self._stage_state(spawner)

    def _outcome(self, status: RefreshStatus, outcome: str, error: str | None) -> None:
        status.last_outcome, status.last_error = outcome, error
        status.counts[outcome] += 1
        self.totals[outcome] += 1
        observed = _OBSERVED_OUTCOME.get(outcome, "error")
        metrics.count_refresh(observed)
        audit.record("refresh", status.user, outcome=observed, server=status.server, reason=error)

    def _retry_or_lapse(self, status: RefreshStatus) -> None:
        now = self._now()
        retry = datetime.timedelta(seconds=self.retry_interval)
        if status.expires_at is not None and now + retry < status.expires_at:
            status.state, status.due_at = "scheduled", now + retry
            self.log.warning(
                "Credentials of %s not refreshed; trying again in %.0f s (they lapse at %s)",
                self._name(status),
                self.retry_interval,
                status.expires_at,
            )
        else:
            status.state, status.due_at = "lapsed", None
            self.log.warning(
                "Credentials of %s could not be refreshed and lapse at %s; a new login is needed",
                self._name(status),
                status.expires_at,
            )

    @staticmethod
    def _name(status: RefreshStatus) -> str:
        return f"{status.user}'s server {status.server!r}" if status.server else status.user

    # ------------------------------------------------------------------ spawner state
    def _stage_state(self, spawner) -> None:
        """Note that the spawner's database row needs its new expiry (a restarted hub reads it from there); the
        rows noted meanwhile are written and committed together once per STATE_COMMIT_DELAY, not one commit per
        refresh. Nothing is written to the session before that moment: JupyterHub's request handlers roll the
        session back when they find it dirty (which would drop the rows and expire every object the hub holds)."""
        if getattr(spawner, "orm_spawner", None) is None or getattr(self._app, "db", None) is None:
            return
        self._unsaved[id(spawner)] = spawner
        if self._commit is None:
            self._commit = asyncio.get_running_loop().call_later(STATE_COMMIT_DELAY, self._commit_state)

    def _commit_state(self) -> None:
        self._commit = None
        spawners, self._unsaved = list(self._unsaved.values()), {}
        try:
            for spawner in spawners:  # no await from here to the commit: nothing else sees the session dirty
                if spawner.orm_spawner is not None:
                    spawner.orm_spawner.state = spawner.get_state()
            self._app.db.commit()
        except Exception:  # a lost expiry only makes a restarted hub refresh earlier; never break the loop
            self.log.exception("Could not save the servers' credential expiry")
            self._app.db.rollback()
