"""What every Casa spawner shares (see docs/dev/contracts.md, "Authenticator -> spawner"):

- ``casa_bundle`` / ``casa_groups``, set by ``CasaAuthenticator.pre_spawn_start``;
- ``casa_apply_bundle(bundle)``: the hub's refresher (casa_hub/refresher.py) hands refreshed credentials to the
  running server; the spawner stores and delivers them. It has no timer and never calls the authenticator or
  the hub: refresh flows hub -> spawner only;
- ``casa_expires_at``: when the credentials of the running server expire, kept in the spawner state so that a
  restarted hub's refresher knows when they come due; ``casa_generation`` counts starts (a new start lifts a
  refusal);
- deliveries and removal serialised by one lock: once ``stop()`` has begun, no delivery writes credentials
  again, whatever was in flight;
- a bundle is only ever taken for the server's own user (``casa_bundle`` refuses another user's).
- Casa's own spawn-progress steps, merged into the spawner's ``progress()``.

Subclasses implement :meth:`casa_write_bundle` and :meth:`casa_remove_bundle`.
"""

from __future__ import annotations

import asyncio
import datetime
from typing import AsyncIterator

from traitlets import HasTraits, Instance, List, TraitError, Unicode, default, validate

from . import audit, metrics
from .credentials.bundle import CredentialBundle


class CasaCredentialsMixin(HasTraits):
    """Mixed into a JupyterHub Spawner, first in the bases: ``class S(CasaCredentialsMixin, KubeSpawner)``."""

    casa_bundle = Instance(
        CredentialBundle,
        allow_none=True,
        help="The CredentialBundle for this server (set by CasaAuthenticator.pre_spawn_start).",
    )

    @validate("casa_bundle")
    def _casa_own_bundle_only(self, proposal):
        bundle = proposal.value
        if bundle is not None and bundle.user != self.user.name:
            raise TraitError(f"refusing credentials of {bundle.user!r} for {self.user.name!r}'s server")
        return bundle

    casa_groups = List(Unicode(), help="The user's groups at login (set by CasaAuthenticator.pre_spawn_start).")

    @default("casa_groups")
    def _casa_groups_default(self):
        # before a spawn (e.g. while rendering the options form) the hub's groups are the ones managed from the
        # OIDC groups claim
        user = getattr(self, "user", None)
        return sorted(g.name for g in (getattr(user, "groups", None) or []))

    # ------------------------------------------------------------------ to implement
    async def casa_write_bundle(self, bundle: CredentialBundle) -> None:  # pragma: no cover - abstract
        """Put ``bundle`` where the running server reads it."""
        raise NotImplementedError

    async def casa_remove_bundle(self) -> None:  # pragma: no cover - abstract
        """Remove the credentials of this server (missing is fine)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ delivery
    # set when stop() begins, cleared when start() begins: a delivery that lost the race with a stop is dropped
    _casa_stopped = False

    @property
    def _casa_delivery_lock(self) -> asyncio.Lock:
        return self.__dict__.setdefault("_casa_lock", asyncio.Lock())

    async def casa_apply_bundle(self, bundle: CredentialBundle) -> None:
        """Store and deliver refreshed credentials to the running server (nothing once it is stopping)."""
        owner = self.user.name  # read once: each read of a hub user's name may be a database query
        if bundle.user != owner:
            raise ValueError(f"refusing to deliver credentials of {bundle.user!r} to {owner!r}'s server")
        async with self._casa_delivery_lock:
            if self._casa_stopped:
                self.log.info("Not delivering credentials to %s: the server is stopping", self.casa_log_name)
                return
            self.casa_bundle = bundle
            try:
                await self.casa_write_bundle(bundle)
            except Exception as e:
                cause = metrics.count_delivery_failure(e)
                audit.record("delivery", owner, outcome=cause, bundle=bundle, server=self.name,
                             reason=getattr(e, "log_message", None) or type(e).__name__)  # fmt: skip
                raise
            if not self._casa_stopped:  # a stop that began during the write: nothing left to refresh
                self._casa_expires_at = bundle.expires_at
        audit.record("delivery", owner, bundle=bundle, server=self.name)
        name = f"{owner}:{self.name}" if self.name else owner
        self.log.info("Delivered fresh credentials to %s (earliest expiry %s)", name, bundle.expires_at)

    @property
    def casa_expires_at(self) -> datetime.datetime | None:
        """When the running server's credentials expire (None: not running with Casa credentials)."""
        return self._casa_expires_at

    @property
    def casa_stopping(self) -> bool:
        """True from the moment ``stop()`` begins until the next ``start()``."""
        return self._casa_stopped

    @property
    def casa_log_name(self) -> str:
        """How the logs name this server: ``user`` or ``user:server``."""
        return f"{self.user.name}:{self.name}" if self.name else self.user.name

    @property
    def casa_generation(self) -> int:
        """How many times this spawner started in this hub process."""
        return self._casa_generation

    async def start(self):
        self._casa_stopped = False
        result = await super().start()
        # running with casa_bundle from now on: its expiry tells the hub's refresher when it comes due
        self._casa_expires_at = self.casa_bundle.expires_at if self.casa_bundle is not None else None
        self._casa_generation += 1
        return result

    async def stop(self, now=False):
        """Stop the server, then remove its credentials (whatever happened while stopping); a delivery in
        flight finishes first and is then removed with the rest, a later one is dropped."""
        self._casa_stopped = True
        self._casa_expires_at = None  # nothing more to refresh
        try:
            await super().stop(now=now)
        finally:
            try:
                async with self._casa_delivery_lock:
                    await self.casa_remove_bundle()
            except Exception:  # never hide why the stop happened; what is owned by the pod goes with it
                self.log.exception("Could not remove the credentials of %s", self.casa_log_name)

    # ------------------------------------------------------------------ expiry (read by the hub's refresher)
    _casa_expires_at: datetime.datetime | None = None
    _casa_generation = 0

    # ------------------------------------------------------------------ progress
    def casa_progress(self, message: str, progress: int | None = None) -> None:
        """Record one of Casa's spawn steps (shown by :meth:`casa_progress_events` / ``progress()``)."""
        events = self.__dict__.setdefault("_casa_events", [])
        event = {"message": message}
        if progress is not None:
            event["progress"] = progress
        events.append(event)
        for listener in self.__dict__.get("_casa_listeners", ()):
            listener.set()

    def casa_reset_progress(self) -> None:
        self.__dict__["_casa_events"] = []

    async def casa_progress_events(self) -> AsyncIterator[dict]:
        """The steps recorded so far (does not wait for more)."""
        for event in list(self.__dict__.get("_casa_events", [])):
            yield event

    async def casa_merge_progress(self, upstream: AsyncIterator[dict]) -> AsyncIterator[dict]:
        """``upstream`` (e.g. KubeSpawner's pod events) with Casa's steps interleaved as they happen."""
        changed = asyncio.Event()
        listeners = self.__dict__.setdefault("_casa_listeners", set())
        listeners.add(changed)
        sent = 0

        def new_events():
            nonlocal sent
            events = self.__dict__.get("_casa_events", [])
            fresh, sent = events[sent:], len(events)
            return fresh

        iterator = upstream.__aiter__()
        pending = asyncio.ensure_future(iterator.__anext__())
        try:
            while True:
                changed.clear()  # before draining: steps recorded while we yield wake the wait below
                for event in new_events():
                    yield event
                waiter = asyncio.ensure_future(changed.wait())
                try:
                    await asyncio.wait({pending, waiter}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waiter.cancel()
                if pending.done():
                    for event in new_events():
                        yield event
                    try:
                        event = pending.result()
                    except StopAsyncIteration:
                        break
                    yield event
                    pending = asyncio.ensure_future(iterator.__anext__())
        finally:
            pending.cancel()
            listeners.discard(changed)
        for event in new_events():
            yield event

    # ------------------------------------------------------------------ spawner state (survives hub restarts)
    def get_state(self):
        state = super().get_state()
        if self._casa_expires_at is not None:
            state["casa_expires_at"] = self._casa_expires_at.isoformat()
        return state

    def load_state(self, state):
        super().load_state(state)
        if state.get("casa_expires_at"):
            self._casa_expires_at = datetime.datetime.fromisoformat(state["casa_expires_at"])

    def clear_state(self):
        super().clear_state()
        self._casa_expires_at = None
