"""What every Casa spawner shares (see docs/dev/contracts.md, "Authenticator -> spawner"):

- ``casa_bundle`` / ``casa_groups``, set by ``CasaAuthenticator.pre_spawn_start``;
- ``casa_apply_bundle(bundle)``: deliver refreshed credentials to the running server;
- a per-server refresh timer (armed in ``start()``, restored in ``poll()`` after a hub restart from the expiry
  kept in the spawner state, cancelled in ``stop()``) that calls
  ``self.user.authenticator.casa_refresh_credentials(self.user)`` shortly before
  ``casa_bundle.expires_at - margin``, and stops for good when that refuses (``CredentialsRefused``);
- deliveries and removal serialised by one lock: once ``stop()`` has begun, no delivery writes credentials
  again and no timer is armed, whatever was in flight;
- a bundle is only ever taken for the server's own user (``casa_bundle`` refuses another user's).
- Casa's own spawn-progress steps, merged into the spawner's ``progress()``.

Subclasses implement :meth:`casa_write_bundle` and :meth:`casa_remove_bundle`.
"""

from __future__ import annotations

import asyncio
import datetime
import random
from typing import AsyncIterator

from traitlets import Float, HasTraits, Instance, List, TraitError, Unicode, default, validate

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

    casa_refresh_jitter = Float(
        0.1,
        min=0,
        max=0.5,
        help="""Fraction of the refresh margin (``CasaAuthenticator.credential_refresh_margin``) by which each
        server's refresh is brought forward at random, so that servers started together do not all refresh at
        the same moment. Default 0.1; e.g. ``c.CasaSpawner.casa_refresh_jitter = 0`` in tests.""",
    ).tag(config=True)

    casa_refresh_retry_interval = Float(
        60,
        min=1,
        help="""Seconds between attempts when a refresh fails (provider or hub briefly unavailable); retries
        stop once the credentials have expired. Default 60.""",
    ).tag(config=True)

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
        """Deliver refreshed credentials to the running server and re-arm the refresh timer (nothing once the
        server is stopping)."""
        if bundle.user != self.user.name:
            raise ValueError(f"refusing to deliver credentials of {bundle.user!r} to {self.user.name!r}'s server")
        async with self._casa_delivery_lock:
            if self._casa_stopped:
                self.log.info("Not delivering credentials to %s: the server is stopping", self._log_name)
                return
            self.casa_bundle = bundle
            await self.casa_write_bundle(bundle)
        self.log.info("Delivered fresh credentials to %s (earliest expiry %s)", self._log_name, bundle.expires_at)
        self.casa_schedule_refresh(bundle.expires_at)

    async def start(self):
        self._casa_stopped = False
        return await super().start()

    async def stop(self, now=False):
        """Stop the server, then remove its credentials (whatever happened while stopping); a delivery in
        flight finishes first and is then removed with the rest, a later one is dropped."""
        self._casa_stopped = True
        self.casa_cancel_refresh()
        self._casa_expires_at = None  # so that poll() while stopping does not re-arm the timer
        try:
            await super().stop(now=now)
        finally:
            try:
                async with self._casa_delivery_lock:
                    await self.casa_remove_bundle()
            except Exception:  # never hide why the stop happened; what is owned by the pod goes with it
                self.log.exception("Could not remove the credentials of %s", self._log_name)

    # ------------------------------------------------------------------ refresh timer
    _casa_refresh_task: asyncio.Task | None = None
    _casa_expires_at: datetime.datetime | None = None

    def _casa_refresh_margin(self) -> float:
        return float(getattr(self.user.authenticator, "credential_refresh_margin", 1800))

    def casa_refresh_delay(self, expires_at: datetime.datetime, now: datetime.datetime | None = None) -> float:
        """Seconds until the refresh: ``expires_at - margin``, brought forward by up to ``jitter * margin``."""
        now = now or datetime.datetime.now(datetime.timezone.utc)
        margin = self._casa_refresh_margin()
        early = margin * self.casa_refresh_jitter * random.random()
        return max(0.0, (expires_at - now).total_seconds() - margin - early)

    def casa_schedule_refresh(self, expires_at: datetime.datetime | None) -> None:
        """(Re-)arm the timer for credentials expiring at ``expires_at`` (None: nothing expires)."""
        self.casa_cancel_refresh()
        if self._casa_stopped:
            return
        self._casa_expires_at = expires_at
        if expires_at is None:
            return
        self._casa_refresh_task = asyncio.ensure_future(self._casa_refresh_after(self.casa_refresh_delay(expires_at)))

    def casa_cancel_refresh(self) -> None:
        task, self._casa_refresh_task = self._casa_refresh_task, None
        # the timer itself re-arms through casa_apply_bundle: never cancel the task we are running in
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()

    async def _casa_refresh_after(self, delay: float) -> None:
        from .authenticator import CredentialsRefused

        await asyncio.sleep(delay)
        try:
            bundle = await self.user.authenticator.casa_refresh_credentials(self.user)
        except asyncio.CancelledError:
            raise
        except CredentialsRefused as e:  # final: the authenticator logged why; a new login decides
            self.log.warning(
                "Credentials of %s are no longer renewed (%s); they lapse at %s",
                self._log_name,
                e,
                self._casa_expires_at,
            )
            return
        except Exception as e:
            if getattr(e, "log_message", None):  # a refusal that says what failed (e.g. Kubernetes' answer)
                self.log.warning("Refreshing the credentials of %s failed: %s", self._log_name, e.log_message)
            else:
                self.log.exception("Refreshing the credentials of %s failed", self._log_name)
            bundle = None
        if bundle is not None:
            return  # delivered through casa_apply_bundle, which re-armed the timer
        now = datetime.datetime.now(datetime.timezone.utc)
        if self._casa_stopped:
            return
        if (
            self._casa_expires_at is not None
            and now + datetime.timedelta(seconds=self.casa_refresh_retry_interval) < self._casa_expires_at
        ):
            self.log.warning(
                "Credentials of %s not refreshed; trying again in %.0f s (they lapse at %s)",
                self._log_name,
                self.casa_refresh_retry_interval,
                self._casa_expires_at,
            )
            self._casa_refresh_task = asyncio.ensure_future(self._casa_refresh_after(self.casa_refresh_retry_interval))
        else:
            self.log.warning(
                "Credentials of %s could not be refreshed and lapse at %s; a new login is needed",
                self._log_name,
                self._casa_expires_at,
            )

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

    async def poll(self):
        status = await super().poll()
        # after a hub restart the timer is gone: re-arm it from the persisted expiry
        if (
            status is None
            and self._casa_refresh_task is None
            and self._casa_expires_at is not None
            and not self._casa_stopped
        ):
            self.casa_schedule_refresh(self._casa_expires_at)
        return status
