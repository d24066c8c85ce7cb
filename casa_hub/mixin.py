"""What every Casa spawner shares: the credential bundle it was handed, delivering refreshed bundles, and a
per-server timer that asks the authenticator for fresh credentials shortly before they expire."""

from __future__ import annotations

import asyncio
import datetime
import random

from traitlets import Any, Float, HasTraits, List, default

from .credentials.bundle import CredentialBundle


class CasaCredentialsMixin(HasTraits):
    """Mixed into a JupyterHub Spawner (first in the bases). Subclasses implement :meth:`casa_write_bundle`."""

    casa_bundle = Any(None, allow_none=True, help="The CredentialBundle for this server (set by the authenticator).")
    casa_groups = List(help="The user's groups at login (set by the authenticator).")

    @default("casa_groups")
    def _casa_groups_default(self):
        # before a spawn (e.g. rendering the options form) the hub's own groups are the ones managed from
        # the OIDC groups claim
        return sorted(g.name for g in getattr(self.user, "groups", []) or [])

    casa_refresh_jitter = Float(
        0.1, min=0, max=0.5,
        help="""Fraction of the refresh margin by which each server's refresh is spread at random, so that
        servers started together do not all refresh at the same moment.""",
    ).tag(config=True)

    _casa_refresh_task: asyncio.Task | None = None
    _casa_expires_at: datetime.datetime | None = None

    async def casa_write_bundle(self, bundle: CredentialBundle) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    async def casa_remove_bundle(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    async def casa_apply_bundle(self, bundle: CredentialBundle) -> None:
        """Deliver refreshed credentials to the running server and re-arm the timer."""
        if bundle.user != self.user.name:
            raise ValueError(f"refusing to deliver credentials of {bundle.user!r} to {self.user.name!r}'s server")
        self.casa_bundle = bundle
        await self.casa_write_bundle(bundle)
        self.log.info("Delivered fresh credentials to %s (earliest expiry %s)", self._log_name, bundle.expires_at)
        self.casa_schedule_refresh(bundle.expires_at)

    async def stop(self, now=False):
        """Stop the server, then remove its credentials (whatever happened while stopping)."""
        self.casa_cancel_refresh()
        try:
            await super().stop(now=now)
        finally:
            await self.casa_remove_bundle()

    # ------------------------------------------------------------------ refresh timer
    def _refresh_margin(self) -> float:
        return float(getattr(self.user.authenticator, "credential_refresh_margin", 1800))

    def casa_schedule_refresh(self, expires_at: datetime.datetime | None) -> None:
        self.casa_cancel_refresh()
        self._casa_expires_at = expires_at
        if expires_at is None:
            return
        margin = self._refresh_margin()
        spread = margin * self.casa_refresh_jitter * random.random()
        now = datetime.datetime.now(datetime.timezone.utc)
        delay = max(0.0, (expires_at - now).total_seconds() - margin + spread)
        self._casa_refresh_task = asyncio.ensure_future(self._casa_refresh_after(delay))

    def casa_cancel_refresh(self) -> None:
        if self._casa_refresh_task is not None and not self._casa_refresh_task.done():
            self._casa_refresh_task.cancel()
        self._casa_refresh_task = None

    async def _casa_refresh_after(self, delay: float) -> None:
        await asyncio.sleep(delay)
        try:
            bundle = await self.user.authenticator.casa_refresh_credentials(self.user)
        except asyncio.CancelledError:
            raise
        except Exception:
            self.log.exception("Refreshing credentials of %s failed; retrying in 60 s", self._log_name)
            self._casa_refresh_task = asyncio.ensure_future(self._casa_refresh_after(60))
            return
        if bundle is None:
            self.log.warning("Credentials of %s could not be refreshed (provider refused or unavailable); "
                             "they lapse at %s", self._log_name, self._casa_expires_at)

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
        if status is None and self._casa_refresh_task is None and self._casa_expires_at is not None:
            self.casa_schedule_refresh(self._casa_expires_at)
        return status
