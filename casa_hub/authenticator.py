"""CasaAuthenticator: OIDC login (discovery, verified id_tokens, groups) that mints per-user credentials.

Built on oauthenticator's GenericOAuthenticator by overriding its documented steps only:
``get_token_info`` (verify every fresh id_token), ``token_to_user`` (id_token and userinfo must agree),
``build_auth_state_dict`` (the identity and groups to keep), ``get_user_groups``, ``run_post_auth_hook``
(bind the hub user to the provider identity and mint, once JupyterHub has admitted the user),
``refresh_user``, ``pre_spawn_start``, ``get_handlers``; plus a login handler that runs discovery before
redirecting and binds the id_token to the login with a ``nonce`` (as oauthenticator's CILogon handler adds its
own authorize parameters), and a callback handler that never logs the callback's query.

Identity: every hub user is bound, at its first login, to the provider's stable identity (``iss`` + ``sub``,
kept in ``auth_state["casa_identity"]``). A later login or refresh that names another identity for the same
hub user, or another user name for the same identity, gets no credentials (see docs/admin-guide.md, "Identity").

Refresh flows one way: the hub's :class:`~casa_hub.refresher.CasaRefresher` asks :meth:`CasaAuthenticator.renew`
(identity + admission, then a mint) and hands the bundle to the spawner; nothing here calls a spawner.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import contextvars
import datetime
import hashlib
import time
import unicodedata
from functools import cached_property

from jupyterhub.utils import maybe_future
from oauthenticator.generic import GenericOAuthenticator
from oauthenticator.oauth2 import OAuthCallbackHandler, OAuthLoginHandler
from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPClientError
from traitlets import Any, Bool, Integer, List, TraitError, Unicode, default, observe, validate

from . import audit, metrics, startup_heap
from .admin import admin_handlers
from .credentials.bundle import CredentialBundle
from .handlers import issuer_handlers
from .minter import CasaMinter
from .oidc import ASYMMETRIC_ALGORITHMS, JWKSCache, OIDCError, ProviderMetadata, parse_discovery, verify_id_token
from .refresher import CasaRefresher
from .revoke import revocation_refusal


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:  # handlers built outside a running hub (a docs build, a unit test)
        return False
    return True


def login_nonce(state: str) -> str:
    """The OIDC ``nonce`` of one login, derived from its OAuth ``state``: random per login and, through
    oauthenticator's signed state cookie, bound to the browser that started it. An id_token replayed from
    another login carries another nonce."""
    digest = hashlib.sha256(b"casa-hub oidc nonce\0" + state.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


# how long the hub may take from building its handlers to having loaded its users before the start-up heap is left
# unfrozen
HUB_START_LIMIT = 900


# set by refresh_credentials for the duration of one refresh: get_token_info records provider outages in it,
# because oauthenticator turns any failure of the refresh grant into "log in again"
_refresh_outages: contextvars.ContextVar[list | None] = contextvars.ContextVar("casa_refresh_outages", default=None)


class CasaLoginHandler(OAuthLoginHandler):
    """Discovers the provider (cached) before oauthenticator builds the authorize redirect."""

    async def get(self):
        await self.authenticator.discover()
        return super().get()

    def authorize_redirect(self, *args, extra_params=None, **kwargs):
        extra_params = dict(extra_params or {})
        extra_params["nonce"] = login_nonce(extra_params["state"])
        return super().authorize_redirect(*args, extra_params=extra_params, **kwargs)


class CasaCallbackHandler(OAuthCallbackHandler):
    """oauthenticator's callback; a refused or failed login is logged without the callback's query, whose
    ``code`` and ``state`` tornado's own warning would otherwise print."""

    def log_exception(self, typ, value, tb):
        summary = f"{self.request.method} {self.request.path} ({self.request.remote_ip})"
        if isinstance(value, web.HTTPError):
            if value.log_message:
                self.log.warning("%d %s: %s", value.status_code, summary, value.get_message())
        else:
            self.log.error("Uncaught exception %s", summary, exc_info=(typ, value, tb))


class CredentialsRefused(Exception):
    """A refresh that must not mint: the user is no longer admitted, or the provider names another identity.
    The message says why (no secrets) and is logged; retrying does not help, a new login decides."""


class ProviderUnavailable(web.HTTPError):
    """The identity provider is unavailable (see :func:`is_provider_outage`): a 503 with a sentence for the user."""

    def __init__(self, issuer: str):
        super().__init__(503, log_message=f"OIDC provider {issuer} unreachable", reason="Identity provider unavailable")
        self.jupyterhub_message = (
            f"The identity provider ({issuer}) cannot be reached right now. Please try again in a few minutes."
        )


def is_provider_outage(error: BaseException) -> bool:
    """The one rule of what counts as an identity-provider outage, for discovery, login and refresh alike: no
    answer (``OSError``, a timeout), a 5xx answer, or tornado's 599 (its own timeouts, "Timeout in request
    queue"). A 4xx answer is the provider's word (e.g. a revoked token) and is not an outage."""
    if isinstance(error, ProviderUnavailable):
        return True
    if isinstance(error, HTTPClientError):
        return error.code >= 500  # 599 included
    return isinstance(error, (OSError, asyncio.TimeoutError))


def groups_from_claim(claim: str, strip: str = ""):
    """An ``auth_state_groups_key`` reading the claim ``claim`` (any name, dots included: ``"wlcg.groups"``)
    from userinfo, else from the verified id_token; a string value is split on commas and spaces, and
    ``strip`` is removed from the start of every group (``"/"`` for WLCG groups). E.g.
    ``c.CasaAuthenticator.auth_state_groups_key = groups_from_claim("wlcg.groups", strip="/")``."""

    def groups(auth_state: dict) -> set[str]:
        raw = (auth_state.get("oauth_user") or {}).get(claim)
        if raw is None:
            raw = (auth_state.get("token_response") or {}).get("id_token_claims", {}).get(claim)
        return _clean_groups(raw, strip)

    groups.claim = claim  # for logs and the docs
    return groups


def _clean_groups(raw, strip: str = "") -> set[str]:
    if isinstance(raw, str):
        raw = raw.replace(",", " ").split()
    if not isinstance(raw, (list, tuple, set)):
        return set()
    out = set()
    for g in raw:
        if isinstance(g, str) and g.strip():
            g = g.strip()
            out.add(g[len(strip) :] if strip and g.startswith(strip) else g)
    return out


class CasaAuthenticator(GenericOAuthenticator):
    """Log in with the facility's OIDC provider and mint the user's Casa credentials."""

    login_handler = CasaLoginHandler
    callback_handler = CasaCallbackHandler

    oidc_issuer = Unicode(
        "",
        help="""Issuer URL of the OIDC provider (CILogon, CERN IAM, a Keycloak realm).

        The authorize, token, userinfo and JWKS endpoints are discovered from
        ``<oidc_issuer>/.well-known/openid-configuration``; there is no need to set
        ``authorize_url``/``token_url``/``userdata_url``.
        Example: ``c.CasaAuthenticator.oidc_issuer = "https://cms-auth.web.cern.ch/"``""",
    ).tag(config=True)

    @default("auth_state_groups_key")
    def _casa_groups_key_default(self):
        # oauthenticator's own trait; Casa's default also reads the verified id_token when userinfo has no
        # groups claim (see get_user_groups)
        return f"{self.user_auth_state_key}.groups"

    @validate("auth_state_groups_key")
    def _check_groups_key(self, proposal):
        # "oauth_user.wlcg.groups" would be read as oauth_user -> wlcg -> groups: say what to write instead
        key = proposal.value
        if isinstance(key, str) and "wlcg.groups" in key:
            raise TraitError(
                f"CasaAuthenticator.auth_state_groups_key={key!r}: a claim with a dot in its name cannot be part of "
                "a dotted key; use c.CasaAuthenticator.auth_state_groups_key = "
                'casa_hub.authenticator.groups_from_claim("wlcg.groups", strip="/")'
            )
        return key

    groups_claim = Unicode(
        None,
        allow_none=True,
        help="""Deprecated: set oauthenticator's ``auth_state_groups_key`` instead (``"oauth_user.<claim>"``, or
        ``groups_from_claim("wlcg.groups", strip="/")`` for WLCG groups). Still honoured, with a warning.""",
    ).tag(config=True)

    @observe("groups_claim")
    def _groups_claim_deprecated(self, change):
        if change.new is None:
            return
        self.log.warning(
            "CasaAuthenticator.groups_claim is deprecated: use CasaAuthenticator.auth_state_groups_key "
            "(see docs/admin-guide.md, Groups)"
        )
        self.auth_state_groups_key = groups_from_claim(change.new, strip="/" if change.new == "wlcg.groups" else "")

    id_token_algorithms = List(
        Unicode(),
        ["RS256", "ES256"],
        help="""Signature algorithms accepted on id_tokens. Asymmetric ones only (``RS*``, ``PS*``, ``ES*``,
        ``EdDSA``): ``none`` and ``HS*`` would let anyone holding the client secret, or the provider's public
        key, forge identities. Example: ``c.CasaAuthenticator.id_token_algorithms = ["RS256"]``""",
    ).tag(config=True)

    @validate("id_token_algorithms")
    def _check_id_token_algorithms(self, proposal):
        bad = [a for a in proposal.value if a not in ASYMMETRIC_ALGORITHMS]
        if bad or not proposal.value:
            raise TraitError(
                f"CasaAuthenticator.id_token_algorithms={proposal.value!r}: expected a non-empty "
                f"list of asymmetric JWS algorithms from {', '.join(ASYMMETRIC_ALGORITHMS)}"
            )
        return proposal.value

    id_token_trusted_audiences = List(
        Unicode(),
        help="""Audiences besides ``client_id`` that an id_token may also name (OIDC Core 3.1.3.7: an id_token
        naming an audience the client does not trust is refused). Default empty: only this hub's
        ``client_id``. Example: ``["https://cms-auth.web.cern.ch/"]``""",
    ).tag(config=True)

    id_token_leeway = Integer(30, min=0, help="Clock skew tolerated on id_token exp/iat (seconds).").tag(config=True)

    discovery_timeout = Integer(10, min=1, help="Timeout of each request to the provider (seconds).").tag(config=True)

    credential_refresh_margin = Integer(
        1800,
        min=60,
        help="""Renew Casa's credentials (the minted bundle, not the OIDC session, which JupyterHub's
        ``auth_refresh_age`` governs) when the earliest one expires within this many seconds: a running server's
        are renewed by the hub's refresher (``CasaRefresher``), a server starting with stored ones this close to
        expiry gets new ones. Keep it well below the shortest credential lifetime. Default 1800; e.g.
        ``c.CasaAuthenticator.credential_refresh_margin = 900``.""",
    ).tag(config=True)

    provider_max_connections = Integer(
        64,
        min=1,
        help="""Connections the hub opens to the identity provider at once (token, userinfo, discovery).
        Tornado's shared client allows 10 and fails requests that wait longer than their timeout in its queue:
        a lecture hall logging in at once needs more. Default 64.""",
    ).tag(config=True)

    @default("http_client")
    def _casa_http_client(self):
        # our own client (not tornado's process-wide one, which the hub's proxy calls share); every request to
        # the provider (token and userinfo too, not only discovery) is bounded by discovery_timeout: a provider
        # that hangs is an outage, not a login or refresh waiting for tornado's 20 s default
        timeouts = {"request_timeout": self.discovery_timeout, "connect_timeout": self.discovery_timeout}
        return AsyncHTTPClient(force_instance=True, max_clients=self.provider_max_connections, defaults=timeouts)

    freeze_startup_heap = Bool(
        False,
        help="""For hubs with hundreds of running servers: keep what the hub loads at start-up (its users, their
        spawners, database rows) out of Python's full garbage collections, which otherwise stall the hub's REST
        API and the credential refresher for 100-300 ms each with 1000 servers. Automatic collection is paused
        while the hub loads its users; once they are loaded, before the hub listens, one collection runs (about
        350 ms with 1000 users) and the survivors are frozen (``gc.freeze``). The cost: reference cycles among
        those start-up objects are not freed until the hub restarts (e.g. a user deleted later keeps a few
        kilobytes). Default False; e.g. ``c.CasaAuthenticator.freeze_startup_heap = True``.""",
    ).tag(config=True)

    mint_concurrency = Integer(
        4, min=1, help="How many mints may run at once in worker threads (keeps the event loop free)."
    ).tag(config=True)

    clock = Any(
        help="Callable returning the current aware UTC datetime; a seam for tests. Default: the real clock.",
    ).tag(config=False)

    @default("clock")
    def _clock_default(self):
        return _utcnow

    @default("username_claim")
    def _username_claim_default(self):
        return "preferred_username"

    @default("scope")
    def _scope_default(self):
        return ["openid", "profile", "email", "offline_access"]

    @default("enable_auth_state")
    def _enable_auth_state_default(self):
        return True

    @default("manage_groups")
    def _manage_groups_default(self):
        return True

    @default("custom_403_message")
    def _custom_403_message_default(self):
        return (
            "Your account is not in a group allowed to use this facility. "
            "If you need access, ask the facility administrators to add you to one of its groups."
        )

    @default("userdata_url")
    def _userdata_url_default(self):
        return ""  # discovered

    _heap_freezer: asyncio.Task | None = None  # freeze_startup_heap's task, once the hub builds its handlers
    _start_users: asyncio.Task | None = None  # holds the running servers' users while the hub loads its spawners

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        if not self.enable_auth_state:
            raise ValueError(
                "CasaAuthenticator needs Authenticator.enable_auth_state = True (credentials are "
                "kept in encrypted auth state); set JUPYTERHUB_CRYPT_KEY as well"
            )
        try:
            self.minter.load_keys()  # misconfigured keys fail at hub start, not at the first login
        except RuntimeError as e:  # one line an admin can act on, not a traceback through traitlets
            self.log.critical("Casa cannot start: %s", e)
            raise SystemExit(1) from None

    # ------------------------------------------------------------------ collaborators
    @cached_property
    def minter(self) -> CasaMinter:
        return CasaMinter(parent=self)

    @cached_property
    def _mint_slots(self) -> asyncio.Semaphore:
        return asyncio.Semaphore(self.mint_concurrency)

    @cached_property
    def refresher(self) -> CasaRefresher:
        """Renews running servers' credentials (started by :meth:`get_handlers`; configured as ``CasaRefresher``)."""
        return CasaRefresher(parent=self, authenticator=self)

    @cached_property
    def _jwks(self) -> JWKSCache:
        return JWKSCache(self._fetch_jwks)

    _provider: ProviderMetadata | None = None

    # ------------------------------------------------------------------ discovery
    async def discover(self) -> ProviderMetadata:
        if self._provider is not None:
            return self._provider
        if not self.oidc_issuer:
            raise ValueError("CasaAuthenticator.oidc_issuer is not set")
        url = self.oidc_issuer.rstrip("/") + "/.well-known/openid-configuration"
        try:
            document = await self._get_json(url)
            provider = parse_discovery(document, self.oidc_issuer)
        except OIDCError as e:
            self.log.error("OIDC discovery at %s refused: %s", url, e)
            error = web.HTTPError(502, reason="Identity provider misconfigured")
            error.jupyterhub_message = (
                "The identity provider's configuration does not match this facility's. "
                "Please tell the facility administrators."
            )
            raise error from None
        self.authorize_url = provider.authorization_endpoint
        self.token_url = provider.token_endpoint
        self.userdata_url = provider.userinfo_endpoint
        if self.enable_pkce and provider.code_challenge_methods and "S256" not in provider.code_challenge_methods:
            self.log.warning("OIDC provider does not advertise PKCE S256; PKCE disabled")
            self.enable_pkce = False
        self._provider = provider
        self.log.info("OIDC provider %s discovered", provider.issuer)
        return provider

    async def _get_json(self, url: str, attempts: int = 3) -> dict:
        """GET a provider document with a timeout and bounded retries; outages become a clear 503."""
        delay = 0.2
        for attempt in range(attempts):
            try:
                return await self.httpfetch(
                    url,
                    label="OIDC provider",
                    method="GET",
                    request_timeout=self.discovery_timeout,
                    connect_timeout=self.discovery_timeout,
                    validate_cert=self.validate_server_cert,
                )
            except Exception as e:
                if not is_provider_outage(e):
                    raise
                error = e
            if attempt + 1 < attempts:
                await asyncio.sleep(delay)
                delay *= 4
        self.log.warning("OIDC provider unreachable at %s: %s", url, type(error).__name__)
        raise ProviderUnavailable(self.oidc_issuer)

    async def _fetch_jwks(self) -> dict:
        provider = await self.discover()
        return await self._get_json(provider.jwks_uri)

    # ------------------------------------------------------------------ oauthenticator steps
    @contextlib.asynccontextmanager
    async def _provider_outages(self):
        """An outage (:func:`is_provider_outage`) becomes a clear 503, recorded for a refresh in progress (whose
        refresh grant oauthenticator would otherwise report as "log in again"). Anything else passes through."""
        try:
            yield
        except Exception as e:
            if not is_provider_outage(e):
                raise
            outages = _refresh_outages.get()
            metrics.count_provider_outage("refresh" if outages is not None else "login")
            if outages is not None:
                outages.append(type(e).__name__)
            raise ProviderUnavailable(self.oidc_issuer) from None

    async def get_token_info(self, handler, params):
        """Every token response fresh from the provider: verify its id_token before anything trusts it."""
        login = params.get("grant_type") == "authorization_code"
        async with self._provider_outages():
            await self.discover()
            token_info = await super().get_token_info(handler, params)
        id_token = token_info.get("id_token")
        if id_token:
            # the nonce we sent with this login's authorize request (the callback checked its state already)
            nonce = login_nonce(handler.get_argument("state")) if login and handler is not None else None
            try:
                claims = await verify_id_token(
                    id_token,
                    self._jwks,
                    issuer=self._provider.issuer,
                    audience=self.client_id,
                    algorithms=self.id_token_algorithms,
                    leeway=self.id_token_leeway,
                    nonce=nonce,
                    now=self.clock().timestamp(),
                    trusted_audiences=self.id_token_trusted_audiences,
                )
            except OIDCError as e:
                self.log.warning("Refusing login: %s", e)
                raise web.HTTPError(403, reason="Invalid identity token", log_message=str(e)) from None
            token_info["id_token_claims"] = claims
        elif login:
            raise web.HTTPError(403, reason="The identity provider returned no id_token (is 'openid' in scope?)")
        return token_info

    async def token_to_user(self, token_info):
        """userinfo (fresh from the provider) merged over the verified id_token claims; ``sub`` must agree."""
        await self.discover()  # a refresh may be the first request a restarted hub sends to the provider
        async with self._provider_outages():
            user_info = await super().token_to_user(token_info)
        claims = token_info.get("id_token_claims") or {}
        if claims and user_info.get("sub") != claims.get("sub"):
            raise web.HTTPError(403, reason="Identity mismatch", log_message="userinfo sub != id_token sub")
        return {**claims, **user_info}

    def user_info_to_username(self, user_info):
        try:
            return super().user_info_to_username(user_info)
        except ValueError:
            # oauthenticator's message would echo every claim into the log and the error page
            raise web.HTTPError(
                403,
                reason="Your identity provider sent no user name",
                log_message=f"no usable {self.username_claim!r} claim",
            ) from None

    def normalize_username(self, username):
        """JupyterHub's normalisation (lower case, ``username_map``), then Unicode NFC: canonically equivalent
        spellings (``"do\u0308rte"`` and ``"dörte"``) are one user."""
        return unicodedata.normalize("NFC", super().normalize_username(username))

    def validate_username(self, username):
        """Refuse names that are empty, over 255 characters, contain control/separator characters or '/', or
        that Unicode compatibility normalisation (NFKC) would still change: folding those (full-width letters,
        ligatures, superscripts) could let one identity log in as another user, so they are refused, not
        folded."""
        if not username or len(username) > 255 or "/" in username:
            return False
        if any(unicodedata.category(c)[0] in ("C", "Z") for c in username):
            return False
        if unicodedata.normalize("NFKC", username) != username:
            return False
        return super().validate_username(username)

    async def get_user_groups(self, auth_state):
        """oauthenticator's ``auth_state_groups_key`` (a dotted key into auth_state, or a callable), with Casa's
        reading: a key under userinfo (``oauth_user.<claim>``) falls back to the same claim of the verified
        id_token; a string value is split on commas and spaces; empty and non-string entries are dropped."""
        key = self.auth_state_groups_key
        if callable(key):
            raw = await maybe_future(key(auth_state))
            return _clean_groups(list(raw) if isinstance(raw, (set, frozenset)) else raw)
        prefix = f"{self.user_auth_state_key}."
        if key.startswith(prefix):
            return groups_from_claim(key[len(prefix) :])(auth_state)
        raw = auth_state
        for part in key.split("."):
            raw = raw.get(part) if isinstance(raw, dict) else None
        return _clean_groups(raw)

    async def build_auth_state_dict(self, token_info, user_info):
        """oauthenticator's auth_state plus the provider identity (``casa_identity``) and groups; credentials
        are minted only once the user is admitted (:meth:`run_post_auth_hook`, :meth:`refresh_credentials`)."""
        state = super().build_auth_state_dict(token_info, user_info)
        username = self.normalize_username(self.user_info_to_username(user_info))
        # JupyterHub validates names only after authenticate(): a clear message here instead of a bare 403
        if not self.validate_username(username):
            self.log.warning("Refusing login with an invalid user name %r", username[:80])
            raise web.HTTPError(403, reason="User name not allowed", log_message=f"invalid user name {username[:80]!r}")
        sub = user_info.get("sub")
        if not isinstance(sub, str) or not sub:
            raise web.HTTPError(
                403,
                reason="Your identity provider sent no subject",
                log_message="no 'sub' claim in the verified identity",
            )
        state["casa_identity"] = {"iss": (await self.discover()).issuer, "sub": sub}
        state["casa_groups"] = sorted(await self.get_user_groups(state))
        return state

    def _verified_email(self, auth_state: dict) -> str | None:
        """The e-mail, only where the provider says it verified it (``email_verified: true``)."""
        claims = {
            **(auth_state.get("token_response", {}).get("id_token_claims") or {}),
            **(auth_state.get(self.user_auth_state_key) or {}),
        }
        email = claims.get("email")
        return email if isinstance(email, str) and email and claims.get("email_verified") is True else None

    async def run_post_auth_hook(self, handler, auth_model):
        """JupyterHub runs this only for admitted users (valid name, not blocked, allowed): the admin's
        ``post_auth_hook`` first, then Casa binds the hub user to the provider identity and mints."""
        auth_model = await super().run_post_auth_hook(handler, auth_model)
        name, state = auth_model["name"], auth_model.get("auth_state") or {}
        identity = state.get("casa_identity")
        if not identity:
            raise web.HTTPError(403, reason="No verified identity", log_message=f"no identity for {name!r}")
        previous = await self._stored_auth_state(handler, name)
        bound = (previous or {}).get("casa_identity")
        if bound and bound != identity:
            self.log.warning(
                "Refusing login as %r: the hub user is bound to another identity at %s", name[:80], bound.get("iss")
            )
            error = web.HTTPError(
                403,
                reason="Account bound to another identity",
                log_message=f"hub user {name[:80]!r} is bound to another provider identity",
            )
            error.jupyterhub_message = (
                "This account name belongs to another identity at the identity provider. "
                "Please contact the facility administrators."
            )
            raise error
        try:
            bundle = await self.mint(name, email=self._verified_email(state))
        except ValueError as e:  # e.g. ServiceX needs a verified e-mail the provider did not give
            self.log.warning("Refusing login as %r: %s", name[:80], e)
            error = web.HTTPError(403, reason="Credentials cannot be issued", log_message=str(e))
            error.jupyterhub_message = f"Your credentials cannot be issued: {e}"
            raise error from None
        state["casa"] = bundle.to_dict()
        auth_model["auth_state"] = state
        self.refresher.resume(name)  # a new login lifts a refusal or lapse of the user's running servers
        return auth_model

    @staticmethod
    async def _stored_auth_state(handler, name: str) -> dict | None:
        """The auth_state JupyterHub keeps for hub user ``name`` (None: no such user yet)."""
        user = handler.find_user(name) if handler is not None and hasattr(handler, "find_user") else None
        return await user.get_auth_state() if user is not None else None

    # ------------------------------------------------------------------ admission (login and refresh alike)
    def _stored_auth_model(self, user, auth_state: dict) -> dict:
        """The auth model JupyterHub's login checks see, rebuilt from what the last login or refresh stored."""
        groups = list(auth_state.get("casa_groups", []))
        admin = True if user.name in self.admin_users or set(groups) & set(self.admin_groups) else None
        return {"name": user.name, "admin": admin, "groups": groups, "auth_state": auth_state}

    async def admission_refusal(self, name: str, auth_model: dict) -> str | None:
        """Why JupyterHub's login checks (name, ``blocked_users``, ``allowed_users``/``allowed_groups``/...)
        would refuse ``name`` now; None when admitted. The same checks, in the same order, as
        ``Authenticator.get_authenticated_user``, so admission on refresh is admission on login."""
        if not self.validate_username(name):
            return "its user name is not valid"
        if not await maybe_future(self.check_blocked_users(name, auth_model)):
            return "it is blocked (blocked_users)"
        if not self.allow_all and not await maybe_future(self.check_allowed(name, auth_model)):
            return "it is no longer allowed (allowed_users, allowed_groups)"
        return revocation_refusal(auth_model.get("auth_state"))  # an admin's revoke, until a new login

    @staticmethod
    def identity_refusal(user, stored: dict, refreshed: dict) -> str | None:
        """Why a refreshed auth model does not belong to ``user`` (None: it does). The provider must name the
        identity the hub user is bound to, and this very user name (a rename at the provider is a new login)."""
        bound = stored.get("casa_identity")
        seen = refreshed["auth_state"].get("casa_identity")
        if bound and seen != bound:
            return "the provider now names another identity for this session"
        if refreshed["name"] != user.name:
            return "the provider now gives this identity another user name"
        return None

    # ------------------------------------------------------------------ minting and refresh
    async def mint(self, username: str, email: str | None = None) -> CredentialBundle:
        """Mint in a worker thread (CPU work off the event loop), a bounded number at a time."""

        def timed():  # timed and described in the worker thread: the event loop only writes the audit line
            started = time.perf_counter()
            bundle = self.minter.mint(username, email=email, now=self.clock())
            return bundle, time.perf_counter() - started, audit.describe(bundle)

        async with self._mint_slots:
            try:
                bundle, seconds, credentials = await asyncio.to_thread(timed)
            except Exception as e:
                metrics.count_mint("refused" if isinstance(e, ValueError) else "error")
                raise
        metrics.observe_mint(seconds)
        metrics.count_mint("success")
        audit.record("mint", username, credentials=credentials, seconds=round(seconds, 6))
        return bundle

    def _needs_refresh(self, bundle: CredentialBundle | None) -> bool:
        if bundle is None or bundle.expires_at is None:
            return bundle is None
        return bundle.expires_at - self.clock() <= datetime.timedelta(seconds=self.credential_refresh_margin)

    def _expired(self, bundle: CredentialBundle | None) -> bool:
        return bundle is None or (bundle.expires_at is not None and bundle.expires_at <= self.clock())

    @staticmethod
    def _stored_bundle(auth_state: dict) -> CredentialBundle | None:
        return CredentialBundle.from_dict(auth_state["casa"]) if auth_state.get("casa") else None

    async def decide(self, user, auth_state: dict | None = None, handler=None) -> dict:
        """The provider's current word on ``user``, as an auth model, once it is admitted and bound to the same
        identity: admission against today's configuration (stored groups), then oauthenticator's
        ``refresh_user`` (userinfo with the stored access token; the refresh grant only when that token is no
        longer accepted), then the same identity and user name, then admission with the provider's answer.

        Raises :class:`CredentialsRefused` (logged: the user must log in again) or :class:`ProviderUnavailable`.
        """
        stored = auth_state if auth_state is not None else (await user.get_auth_state() or {})
        refusal = await self.admission_refusal(user.name, self._stored_auth_model(user, stored))
        if refusal:
            self._refuse(user, refusal)
        outages: list[str] = []
        reset = _refresh_outages.set(outages)
        try:
            model = await super().refresh_user(user, handler)
        except Exception as e:
            if is_provider_outage(e):
                raise ProviderUnavailable(self.oidc_issuer) from None
            if isinstance(e, web.HTTPError):  # the provider answered, with an identity we must not trust
                self._refuse(user, f"the provider's answer was refused ({e.log_message or e.reason})")
            raise
        finally:
            _refresh_outages.reset(reset)
        if not isinstance(model, dict):
            if outages:
                raise ProviderUnavailable(self.oidc_issuer)
            self._refuse(user, "the provider did not renew the session")
        refusal = self.identity_refusal(user, stored, model) or await self.admission_refusal(user.name, model)
        if refusal:
            self._refuse(user, refusal)
        return model

    async def renew(self, user, auth_state: dict | None = None) -> tuple[dict, CredentialBundle]:
        """:meth:`decide`, then mint for the admitted user: ``(auth model, bundle)``. Persists nothing (see
        :meth:`save_session`) and delivers nothing (the refresher does)."""
        model = await self.decide(user, auth_state)
        bundle = await self.mint(user.name, email=self._verified_email(model["auth_state"]))
        return model, bundle

    # What a refresh must persist. JupyterHub commits the whole encrypted auth_state on every save, and that commit
    # was 57 % of each refresh's event-loop time. Kept: the provider's refresh token (a rotated one is the only way
    # back to the provider; a lost access token is simply replaced through the refresh grant) and what admission
    # and minting read (identity, groups, verified e-mail). Not kept: the minted credentials, which the hub
    # re-mints whenever it needs them (the running server holds its copy, the spawner state their expiry).
    SESSION_KEYS = ("refresh_token", "casa_identity", "casa_groups")

    async def save_session(self, user, stored: dict, model: dict, bundle: CredentialBundle) -> bool:
        """Save ``model``'s auth_state (with ``bundle``, as it is saved anyway) only when something of
        :attr:`SESSION_KEYS` or the verified e-mail changed; returns whether it saved."""
        fresh = model["auth_state"]
        if all(fresh.get(k) == stored.get(k) for k in self.SESSION_KEYS) and self._verified_email(
            fresh
        ) == self._verified_email(stored):
            return False
        await user.save_auth_state({**fresh, "casa": bundle.to_dict()})
        return True

    async def refresh_user(self, user, handler=None, **kwargs):
        """JupyterHub's refresh (per request once ``auth_refresh_age`` has passed, and before every spawn with
        ``refresh_pre_spawn``). Every call checks admission against the current configuration (blocked or no
        longer allowed: ``False``, also after a hub restart). Stored credentials far from expiry: ``True``, the
        provider is not asked. Within ``credential_refresh_margin`` of expiry: :meth:`decide` with the provider
        and re-mint; JupyterHub stores the returned model (so a server started next mounts fresh credentials).
        Provider unavailable: the session is kept while the credentials are valid, then ``False``. Delivers
        nothing to running servers: that is the refresher's job."""
        auth_state = await user.get_auth_state() or {}
        bundle = self._stored_bundle(auth_state)
        try:
            refusal = await self.admission_refusal(user.name, self._stored_auth_model(user, auth_state))
            if refusal:
                self._refuse(user, refusal)
            if not self._needs_refresh(bundle):
                return True
            model, fresh = await self.renew(user, auth_state)
        except CredentialsRefused:
            return False
        except ProviderUnavailable:
            if not self._expired(bundle):
                self.log.warning(
                    "OIDC provider unavailable while refreshing %s; keeping credentials valid until %s",
                    user.name,
                    bundle.expires_at,
                )
                return True
            self.log.warning(
                "Credentials of %s expired while the OIDC provider was unavailable: a new login is required", user.name
            )
            return False
        model["auth_state"]["casa"] = fresh.to_dict()
        return model

    def _refuse(self, user, reason: str):
        self.log.warning("No fresh credentials for %s: %s; a new login is required", user.name, reason)
        raise CredentialsRefused(f"{user.name}: {reason}")

    async def pre_spawn_start(self, user, spawner):
        """Give a Casa spawner fresh credentials and the user's groups: the stored bundle when it is far from
        expiry (the usual case: ``refresh_pre_spawn`` has just renewed it), else a new one (:meth:`renew`, with
        the provider; when the provider is down, the stored one while it is still valid)."""
        from .mixin import CasaCredentialsMixin

        auth_state = await user.get_auth_state() or {}
        refusal = await self.admission_refusal(user.name, self._stored_auth_model(user, auth_state))
        if refusal:
            self.log.warning("Refusing to start a server for %s: %s", user.name, refusal)
            raise web.HTTPError(403, reason="Not allowed to use this facility", log_message=f"{user.name}: {refusal}")
        if not auth_state.get("casa"):
            raise web.HTTPError(403, reason="No credentials: please log out and log in again")
        if not isinstance(spawner, CasaCredentialsMixin):
            return
        groups = auth_state.get("casa_groups", [])
        try:
            bundle = self._stored_bundle(auth_state)
            if self._needs_refresh(bundle):
                try:
                    model, bundle = await self.renew(user, auth_state)
                    await self.save_session(user, auth_state, model, bundle)
                    groups = model["auth_state"].get("casa_groups", groups)
                except ProviderUnavailable:
                    if self._expired(bundle):
                        raise
                    self.log.warning(
                        "OIDC provider unavailable while starting %s's server: its credentials are valid until %s",
                        user.name,
                        bundle.expires_at,
                    )
                except CredentialsRefused as e:
                    raise web.HTTPError(
                        403, reason="Credentials cannot be renewed: please log in again", log_message=str(e)
                    ) from None
            spawner.casa_bundle = bundle
        except TraitError as e:  # stored credentials of another user: never mounted
            self.log.error("Refusing to start %s's server: %s", user.name, e)
            raise web.HTTPError(
                403, reason="Credentials belong to another user: please log in again", log_message=str(e)
            ) from None
        spawner.casa_groups = list(groups)

    def get_handlers(self, app):
        # the hub's loop and app exist from here on: the refresher starts (once) and reads app.users
        self.refresher.start(app)
        if self._start_users is None and _loop_running() and getattr(app, "db", None) is not None:
            # JupyterHub loads its spawners next, and their users row by row unless they are in its session
            started = time.perf_counter()
            held = startup_heap.hold_running_users(app.db)
            self.log.info(
                "Loaded the %d users with a running server in one query (%.0f ms) for the hub's start",
                len(held),
                (time.perf_counter() - started) * 1000,
            )
            self._start_users = asyncio.ensure_future(startup_heap.release_when_loaded(app, held, HUB_START_LIMIT))
        if self.freeze_startup_heap and self._heap_freezer is None and _loop_running():
            # JupyterHub builds its handlers before it loads its users' spawners: collection pauses from here
            resume = startup_heap.pause_collection()
            freezing = startup_heap.freeze_when_loaded(app, self.log, timeout=HUB_START_LIMIT, resume=resume)
            self._heap_freezer = asyncio.ensure_future(freezing)
        return super().get_handlers(app) + issuer_handlers(self.minter) + admin_handlers(self, app)
