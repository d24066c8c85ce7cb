"""The admin's view of credentials: a hub page and a REST API over the same model.

=========================================================== ====== ==========================================
route (under the hub's prefix, ``/hub/``)                   method scope
=========================================================== ====== ==========================================
``casa/credentials``                                        GET    ``admin:users`` (page)
``casa/credentials/<user>/renew`` / ``.../revoke``          POST   as the API's (page form, with ``_xsrf``)
``api/casa/credentials``                                    GET    ``admin:users``
``api/casa/credentials/<user>``                             GET    ``admin:users`` (``!user=<user>`` enough)
``api/casa/credentials/<user>/renew`` (``?server=<name>``)  POST   ``admin:servers``
``api/casa/credentials/<user>/revoke``                      POST   ``admin:servers`` and ``admin:users``
``api/casa/revocations`` (``?format=condor``)               GET    ``admin:users``
=========================================================== ====== ==========================================

JupyterHub's built-in scopes: the ``admin`` role has them (an admin needs nothing more), and a script gets them
through a role in ``JupyterHub.load_roles`` (Z2JH: ``hub.loadRoles``), e.g. a read-only monitor with
``admin:users`` alone. Renew and revoke act on a server, hence ``admin:servers``.

Every row is one running server: its credentials (kind, label, id, expiry, from what the server holds, else
what the hub stored), and its refresh status from :class:`casa_hub.refresher.CasaRefresher` (last refresh,
next due, last outcome and error). No credential bytes ever leave the hub here.
"""

from __future__ import annotations

import asyncio
import datetime
import json
from pathlib import Path
from urllib.parse import urlencode

from jinja2 import ChoiceLoader, FileSystemLoader
from jupyterhub.apihandlers.base import APIHandler
from jupyterhub.handlers.base import BaseHandler
from jupyterhub.scopes import needs_scope
from jupyterhub.utils import url_path_join
from tornado import web

from . import audit, metrics, revocation
from .credentials.bundle import CredentialBundle
from .revoke import CasaRevocations, revoke_user, revoked_at

TEMPLATES = Path(__file__).parent / "templates"
# how long a revocation waits for each server to stop before it answers (the stop goes on after)
STOP_WAIT = 60


def _iso(t: datetime.datetime | None) -> str | None:
    return t.isoformat() if t is not None else None


def _casa_spawners(user) -> list[tuple[str, object]]:
    from .mixin import CasaCredentialsMixin

    return [
        (name, sp)
        for name, sp in sorted(getattr(user, "spawners", {}).items())
        if isinstance(sp, CasaCredentialsMixin) and sp.active
    ]


def server_row(user, name: str, spawner, stored: CredentialBundle | None, status) -> dict:
    """One running server as the page and the API show it (pure: no I/O)."""
    bundle = getattr(spawner, "casa_bundle", None)
    source = "server" if bundle is not None else "stored"
    bundle = bundle or stored
    creds = audit.describe(bundle)
    expires = getattr(spawner, "casa_expires_at", None) or (bundle.expires_at if bundle else None)
    refresh = status.as_dict() if status is not None else None
    return {
        "user": user.name,
        "server": name,
        "ready": bool(spawner.ready),
        "pending": spawner.pending,
        "source": source if bundle is not None else None,
        "issued_at": _iso(bundle.issued_at) if bundle else None,
        "expires_at": _iso(expires),
        "credentials": [
            {"name": c.name, "label": c.label, "id": c.id, "expires_at": _iso(c.expires_at)} for c in creds
        ],
        "refresh": refresh,
    }


class _CasaMixin:
    """What the page and the API share: the model, and the two actions."""

    @property
    def casa(self):
        return self.authenticator

    @property
    def refresher(self):
        return getattr(self.authenticator, "refresher", None)

    def initialize(self, revocations: CasaRevocations):
        self.revocations = revocations

    def casa_user(self, user_name: str):
        user = self.find_user(user_name)
        if user is None:
            raise web.HTTPError(404, f"No such user: {user_name!r}")
        return user

    def _status(self, user_name: str, server: str):
        return self.refresher.status(user_name, server) if self.refresher is not None else None

    async def user_model(self, user) -> dict:
        state = await user.get_auth_state() or {}
        stored = CredentialBundle.from_dict(state["casa"]) if state.get("casa") else None
        return {
            "user": user.name,
            "admin": bool(user.admin),
            "revoked_at": _iso(revoked_at(state)),
            "servers": [server_row(user, n, sp, stored, self._status(user.name, n)) for n, sp in _casa_spawners(user)],
        }

    async def servers_model(self) -> list[dict]:
        """Every running Casa server (JupyterHub keeps every user with a running server in ``self.users``)."""
        users = [u for u in list(self.users.values()) if _casa_spawners(u)]
        models = await asyncio.gather(*(self.user_model(u) for u in users))
        return [row for m in sorted(models, key=lambda m: m["user"]) for row in m["servers"]]

    def _actor(self) -> str:
        who = self.current_user
        return f"{getattr(who, 'kind', 'user')}:{who.name}"

    async def renew(self, user, server: str) -> tuple[int, dict]:
        """Renew one running server now; (HTTP status, model). 409: no such running server or user revoked."""
        spawner = dict(_casa_spawners(user)).get(server)
        if spawner is None or not spawner.ready:
            raise web.HTTPError(
                409, f"{user.name} has no running server {server!r} to renew (start it first; a stopped server "
                "gets fresh credentials when it starts)",
            )  # fmt: skip
        state = await user.get_auth_state() or {}
        if revoked_at(state) is not None:
            raise web.HTTPError(409, f"{user.name}'s credentials are revoked: a new login by the user is required")
        if self.refresher is None:
            raise web.HTTPError(501, "this hub's authenticator has no credential refresher")
        try:
            status = await self.refresher.renew_now(user.name, server)
        except KeyError:
            raise web.HTTPError(409, f"{user.name}'s server {server!r} has no credentials to renew") from None
        code = {"renewed": 200, "refused": 409, "outage": 503}.get(status.last_outcome, 502)
        audit.record(
            "renew", user.name, outcome="success" if code == 200 else status.last_outcome or "error",
            bundle=getattr(spawner, "casa_bundle", None) if code == 200 else None,
            server=server, actor=self._actor(), reason=status.last_error,
        )  # fmt: skip
        model = await self.user_model(user)
        row = next((r for r in model["servers"] if r["server"] == server), None)
        return code, {"renewed": code == 200, "error": status.last_error, "server": row}

    async def revoke(self, user) -> dict:
        async def stop(u, name):
            future = await self.stop_single_user(u, name)
            async with asyncio.timeout(STOP_WAIT):
                await asyncio.shield(future)

        refresher = self.refresher
        result = await revoke_user(
            user,
            actor=self._actor(),
            now=self.casa.clock(),
            store=self.revocations,
            stop_server=stop,
            stop_refreshing=(lambda u: refresher.stop_refreshing(u.name, "revoked by an administrator"))
            if refresher is not None
            else None,
        )
        metrics.count_revocation()
        answer = result.to_dict()
        audit.record(
            "revoke", user.name, credentials=result.credentials, actor=self._actor(),
            outcome="success" if not result.errors else "partial",
            servers_stopped=result.servers_stopped, reason="; ".join(result.errors) or None,
        )  # fmt: skip
        self.log.warning("%s revoked the credentials of %s", self._actor(), user.name)
        return answer


# ------------------------------------------------------------------ REST API
class _CasaAPIHandler(_CasaMixin, APIHandler):
    def write_json(self, model, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps(model))


class CredentialsAPIHandler(_CasaAPIHandler):
    @needs_scope("admin:users")
    async def get(self):
        self.write_json({"servers": await self.servers_model()})


class UserCredentialsAPIHandler(_CasaAPIHandler):
    @needs_scope("admin:users")
    async def get(self, user_name):
        self.write_json(await self.user_model(self.casa_user(user_name)))


class RenewAPIHandler(_CasaAPIHandler):
    @needs_scope("admin:servers")
    async def post(self, user_name):
        code, model = await self.renew(self.casa_user(user_name), self.get_argument("server", ""))
        self.write_json(model, code)


class RevokeAPIHandler(_CasaAPIHandler):
    @needs_scope("admin:servers")
    @needs_scope("admin:users")
    async def post(self, user_name):
        self.write_json(await self.revoke(self.casa_user(user_name)))


class RevocationsAPIHandler(_CasaAPIHandler):
    @needs_scope("admin:users")
    async def get(self):
        fmt = self.get_argument("format", "json")
        if fmt not in ("json", "condor"):
            raise web.HTTPError(400, f"format={fmt!r}: expected 'json' (the revocation list) or 'condor'")
        try:
            revoked = await self.revocations.load()
        except RuntimeError as e:
            raise web.HTTPError(500, str(e)) from None
        self.set_header("Cache-Control", "no-store")
        if fmt == "condor":
            self.set_header("Content-Type", "text/plain; charset=utf-8")
            self.finish(revocation.condor_revocation_config(revoked, source="the hub's revocation list"))
        else:
            self.set_header("Content-Type", "application/json")
            self.finish(revocation.dumps(revoked))


# ------------------------------------------------------------------ the page
class _CasaPageHandler(_CasaMixin, BaseHandler):
    def get_template(self, name, sync=False):
        key = "casa_jinja2_env_sync" if sync else "casa_jinja2_env"
        env = self.settings.get(key)
        if env is None:  # the hub's templates (page.html, a site's own overrides) plus Casa's
            hub_env = self.settings["jinja2_env_sync" if sync else "jinja2_env"]
            env = hub_env.overlay(loader=ChoiceLoader([hub_env.loader, FileSystemLoader(str(TEMPLATES))]))
            self.settings[key] = env
        return env.get_template(name)


class CredentialsPageHandler(_CasaPageHandler):
    @web.authenticated
    @needs_scope("admin:users")
    async def get(self):
        now = self.casa.clock()
        servers = await self.servers_model()
        revoked = await self.revocations.load()
        html = await self.render_template(
            "casa-credentials.html",
            servers=servers,
            now=now,
            margin=getattr(self.casa, "credential_refresh_margin", 0),
            revoked=revoked,
            message=self.get_argument("message", ""),
            error=self.get_argument("error", ""),
            action_url=url_path_join(self.hub.base_url, "casa/credentials"),
            api_url=url_path_join(self.hub.base_url, "api/casa/credentials"),
            revocations_url=url_path_join(self.hub.base_url, "api/casa/revocations"),
            fromiso=datetime.datetime.fromisoformat,
        )
        self.finish(html)


class CredentialsActionHandler(_CasaPageHandler):
    """The page's buttons (a form POST, checked against the ``_xsrf`` token by JupyterHub)."""

    def _back(self, **query) -> None:
        self.redirect(url_path_join(self.hub.base_url, "casa/credentials") + "?" + urlencode(query))

    @web.authenticated
    @needs_scope("admin:servers")
    async def post(self, user_name, action):
        user = self.casa_user(user_name)
        try:
            if action == "renew":
                code, model = await self.renew(user, self.get_body_argument("server", ""))
                if code != 200:
                    return self._back(error=f"{user.name}: renewal failed ({model['error']})")
                return self._back(message=f"Renewed the credentials of {user.name}")
            if not self.has_casa_scope("admin:users", user_name):
                raise web.HTTPError(403, "revoking needs the scope admin:users too")
            answer = await self.revoke(user)
        except web.HTTPError as e:
            if e.status_code in (403, 404):
                raise
            return self._back(error=e.log_message or e.reason or str(e))
        stopped = ", ".join(repr(s or "default") for s in answer["servers_stopped"]) or "none"
        return self._back(message=f"Revoked {user.name}: servers stopped: {stopped}; credentials deleted")

    def has_casa_scope(self, scope: str, user_name: str) -> bool:
        from jupyterhub.scopes import has_scope

        return has_scope(f"{scope}!user={user_name}", self.parsed_scopes, db=self.db)


def admin_handlers(authenticator, app) -> list[tuple]:
    """Routes (relative to the hub prefix) for ``Authenticator.get_handlers``; also makes the expiry gauges of
    /hub/metrics read this hub's running servers."""
    store = {"revocations": CasaRevocations(parent=authenticator)}

    def expiries():
        for user in list(app.users.values()):
            for _, spawner in _casa_spawners(user):
                expires = getattr(spawner, "casa_expires_at", None)
                if expires is not None or spawner.ready:
                    yield expires

    metrics.watch_servers(expiries, authenticator.clock, lambda: authenticator.credential_refresh_margin)
    user = r"(?P<user_name>[^/]+)"
    return [
        (r"/casa/credentials/?", CredentialsPageHandler, store),
        (rf"/casa/credentials/{user}/(?P<action>renew|revoke)", CredentialsActionHandler, store),
        (r"/api/casa/credentials/?", CredentialsAPIHandler, store),
        (rf"/api/casa/credentials/{user}/?", UserCredentialsAPIHandler, store),
        (rf"/api/casa/credentials/{user}/renew", RenewAPIHandler, store),
        (rf"/api/casa/credentials/{user}/revoke", RevokeAPIHandler, store),
        (r"/api/casa/revocations/?", RevocationsAPIHandler, store),
    ]
