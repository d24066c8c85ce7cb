"""``xcache``: a WLCG-profile (SciTokens-compatible) bearer token for XCache / XRootD, signed by the facility
issuer (``BEARER_TOKEN_FILE``)."""

from __future__ import annotations

import datetime
import ipaddress
import re
import urllib.parse

from traitlets import List, TraitError, Unicode, validate

from .. import storage, xcache
from ..bundle import BundleFile
from ..kind import ACCESS_TOKEN_MAX_LIFETIME, ACCESS_TOKEN_WHY, CredentialKind, Minted, MintRequest, Seconds
from ..layout import MOUNT, ManifestEntry
from .per_user import PerUserCache

TOKEN_FILE = "xcache.token"
TOKEN_ENV = "BEARER_TOKEN_FILE"  # what WLCG token consumers (XRootD clients, gfal, ServiceX) read
CACHE_URL_ENV = "CASA_XCACHE_URL"  # the facility's XCache, for notebooks that build their own file URLs
CACHE_URL_SCHEMES = ("root", "roots", "https", "davs")  # XRootD's native protocol and its https/WebDAV door
_HOST_NAME = re.compile(
    r"(?=.{1,253}\Z)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?"
)


class XCacheToken(CredentialKind):
    """The storage token: read (and optionally write) access to the facility's XCache/XRootD paths."""

    name = "xcache"
    label = "XCache storage token"
    uses_issuer = True

    scopes = List(
        Unicode(),
        ["storage.read:/store"],
        help="""WLCG storage scopes of the XCache token (``storage.read|create|modify|stage:PATH``, or SciTokens'
        ``read:PATH`` / ``write:PATH``). ``{userdir}`` in a path is replaced by the user's storage directory name:
        a prefix-free escape of the user name ending in ``~`` (``alice`` -> ``alice~``; ``python -m
        casa_hub.credentials.storage NAME`` prints it), so that XRootD < 5.7, which matches scope paths as plain
        string prefixes, cannot let ``ali`` into ``alice``'s area. ``{username}`` is refused, as are paths that
        are relative, end with ``/``, contain ``//``, ``.``, ``..`` or ``%``, use ``{userdir}`` inside a path
        component, and scopes without ``{userdir}`` that cover the per-user areas (e.g. ``storage.create:/store/user``).
        The first per-user path is put in the user's environment as ``CASA_STORAGE_AREA``.
        Default ``["storage.read:/store"]``.
        Example: ``c.XCacheToken.scopes = ["storage.read:/store", "storage.create:/store/user/{userdir}"]``""",
    ).tag(config=True)

    audience = List(
        Unicode(),
        ["https://wlcg.cern.ch/jwt/v1/any"],
        minlen=1,
        help="""Audience(s) of the XCache token: the XCache/XRootD endpoints that must accept it. Default the WLCG
        "any" audience. Example: ``c.XCacheToken.audience = ["https://xcache.example.org"]``""",
    ).tag(config=True)

    lifetime = Seconds(
        3600,
        maximum=ACCESS_TOKEN_MAX_LIFETIME,
        why=ACCESS_TOKEN_WHY,
        help="""Lifetime of the XCache token (seconds). Default 3600 (1 h): a bearer token cannot be revoked, so
        it should not outlive its use by much; the WLCG Common JWT Profile allows at most 21600 (6 h), which is
        refused above. The hub re-mints before expiry (``CasaAuthenticator.credential_refresh_margin``, keep it
        below this). Example: ``c.XCacheToken.lifetime = 1800``""",
    ).tag(config=True)

    cache_url = Unicode(
        "",
        help="""The facility's XCache as an XRootD URL root: scheme ``root``, ``roots``, ``https`` or ``davs``, a
        host and optionally a port; no user, path (not even ``/``), query or fragment. Put in the user's
        environment as ``CASA_XCACHE_URL``, so notebooks read through the cache the same way at every facility,
        ``f"{os.environ['CASA_XCACHE_URL']}//store/data/f.root"``, instead of having client-side code rewrite
        file URLs to the cache host as Coffea-Casa does. Default ``""``: not set, and ``CASA_XCACHE_URL`` is
        not in the environment. Example: ``c.XCacheToken.cache_url = "root://xcache.example.org:1094"``""",
    ).tag(config=True)

    @validate("cache_url")
    def _check_cache_url(self, proposal):
        try:
            check_cache_url(proposal.value)
        except ValueError as e:
            raise TraitError(f"XCacheToken.cache_url: {e}") from None  # not the value: it may hold a password
        return proposal.value

    @validate("scopes")
    def _check_scopes(self, proposal):
        if not proposal.value:
            raise TraitError("XCacheToken.scopes: a storage token needs at least one scope")
        try:
            storage.check_scopes(proposal.value)
        except ValueError as e:
            raise TraitError(f"XCacheToken.scopes: {e}") from None
        return proposal.value

    def files(self) -> tuple[str, ...]:
        return (TOKEN_FILE,)

    def env_names(self) -> tuple[str, ...]:
        return (TOKEN_ENV, storage.AREA_ENV, CACHE_URL_ENV)

    def _settings(self):
        audience = self.audience[0] if len(self.audience) == 1 else list(self.audience)
        return audience, datetime.timedelta(seconds=self.lifetime), PerUserCache()

    def _for_user(self, user: str, audience) -> tuple[list[str], dict[str, str], ManifestEntry]:
        scopes = storage.render_scopes(self.scopes, user)
        env = {TOKEN_ENV: f"{MOUNT}/{TOKEN_FILE}"}
        area = storage.storage_area(self.scopes, user)
        if area is not None:
            env[storage.AREA_ENV] = area
        if self.cache_url:
            env[CACHE_URL_ENV] = self.cache_url
        entry = ManifestEntry(self.name, self.label, TOKEN_FILE, TOKEN_ENV, audience=audience, scopes=tuple(scopes))
        return scopes, env, entry

    def mint(self, request: MintRequest) -> Minted:
        audience, lifetime, per_user = self.derived("settings", self._settings)
        scopes, env, entry = per_user.get(request.user, lambda user: self._for_user(user, audience))
        token, expires_at = xcache.mint_wlcg_token(
            request.issuer.key,
            issuer=request.issuer.url,
            subject=request.user,
            scopes=scopes,
            audience=audience,
            now=request.now,
            lifetime=lifetime,
        )
        return Minted({TOKEN_FILE: BundleFile(token, 0o400, expires_at)}, env, ((entry, expires_at),))


def check_cache_url(url: str) -> None:
    """Raise ValueError unless ``url`` is empty (not set) or an XRootD URL root ``SCHEME://HOST[:PORT]``."""
    if not url:
        return
    if any(c.isspace() or not c.isprintable() for c in url):
        raise ValueError("white space or control characters in the URL")
    scheme, sep, _ = url.partition("://")
    if not sep or scheme not in CACHE_URL_SCHEMES:
        raise ValueError(
            f"the URL must start with one of {', '.join(s + '://' for s in CACHE_URL_SCHEMES)} "
            "(e.g. root://xcache.example.org:1094)"
        )
    parts = urllib.parse.urlsplit(url)
    if "@" in parts.netloc:
        raise ValueError("no user or password in the URL: the user's storage token authenticates")
    host = parts.hostname
    if not host:
        raise ValueError("the URL has no host")
    if not (_is_ipv6(host) if parts.netloc.startswith("[") else _HOST_NAME.fullmatch(host)):
        raise ValueError(f"{host!r} is not a host name, IPv4 address or [IPv6] address")
    try:
        port = parts.port
    except ValueError as e:
        raise ValueError(f"bad port: {e}") from None
    if port == 0 or (port is None and parts.netloc.endswith(":")):
        raise ValueError("bad port: it must be 1-65535, or left out")
    if parts.path or parts.query or parts.fragment or url.endswith(("?", "#")):
        raise ValueError(
            "the URL must be SCHEME://HOST[:PORT] only, with no path (not even a trailing /), query or fragment: "
            "notebooks append //PATH to it"
        )


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True
