"""``macaroon``: a macaroon for XCache / XRootD servers that take macaroons but not tokens
(``CASA_MACAROON_FILE``), signed with the secret XRootD shares with the hub."""

from __future__ import annotations

import base64
import datetime

from traitlets import TraitError, Unicode, validate

from .. import storage, xcache
from ..bundle import BundleFile
from ..kind import CredentialKind, Minted, MintRequest, Seconds
from ..layout import MOUNT, ManifestEntry
from .per_user import PerUserCache

MACAROON_FILE = "xcache.macaroon"
MACAROON_ENV = "CASA_MACAROON_FILE"


class XCacheMacaroon(CredentialKind):
    """A read-only macaroon (XRootD's dialect: ``name``, ``activity``, ``path``, ``before`` caveats)."""

    name = "macaroon"
    label = "XCache macaroon"

    secret_file = Unicode(
        "",
        help="""XRootD's ``macaroons.secretkey`` file (base64 of the raw key), shared with the cache; mounted into
        the hub only. Example: ``c.XCacheMacaroon.secret_file = "/etc/casa-hub/keys/macaroon.secret"``""",
    ).tag(config=True)

    location = Unicode(
        "",
        help="""The cache's ``all.sitename``: the macaroon's location. Default empty.
        Example: ``c.XCacheMacaroon.location = "CASA_XCACHE"``""",
    ).tag(config=True)

    path = Unicode(
        "/store",
        help="""Path prefix the macaroon grants read access to; ``{userdir}`` is replaced by the user's storage
        directory name, as in ``XCacheToken.scopes`` (``{username}`` is refused: XRootD matches macaroon paths as
        plain string prefixes). When the XCache token is not enabled and this path is per user, it is the user's
        ``CASA_STORAGE_AREA``. Default ``"/store"``. Example: ``c.XCacheMacaroon.path = "/store/user/{userdir}"``""",
    ).tag(config=True)

    lifetime = Seconds(
        6 * 3600,
        maximum=86400,
        why="XRootD caps macaroons at 86400 s",
        help="""Lifetime of the macaroon (seconds), at most 86400 (24 h; XRootD refuses longer ones). Default 21600
        (6 h), as before: macaroons serve legacy caches that cannot check tokens, and the hub renews them before
        they expire. Example: ``c.XCacheMacaroon.lifetime = 3600``""",
    ).tag(config=True)

    @validate("path")
    def _check_path(self, proposal):
        try:
            storage.check_path_template(proposal.value)
        except ValueError as e:
            raise TraitError(f"XCacheMacaroon.path: {e}") from None
        return proposal.value

    def files(self) -> tuple[str, ...]:
        return (MACAROON_FILE,)

    def env_names(self) -> tuple[str, ...]:
        return (MACAROON_ENV,)

    def env_default_names(self) -> tuple[str, ...]:
        return (storage.AREA_ENV,)

    def _secret(self) -> bytes:
        return self.derived(
            "secret", lambda: self.load_secret("secret_file", "macaroon secret", lambda raw: base64.b64decode(raw))
        )

    def load_keys(self) -> None:
        self._secret()

    def _for_user(self, user: str) -> tuple[str, dict[str, str], ManifestEntry]:
        path = storage.render_path(self.path, user)
        area = {storage.AREA_ENV: path} if storage.is_per_user(self.path) else {}
        entry = ManifestEntry(self.name, self.label, MACAROON_FILE, MACAROON_ENV, extra={"path": path})
        return path, area, entry

    def mint(self, request: MintRequest) -> Minted:
        lifetime, env, per_user = self.derived(
            "settings",
            lambda: (
                datetime.timedelta(seconds=self.lifetime),
                {MACAROON_ENV: f"{MOUNT}/{MACAROON_FILE}"},
                PerUserCache(),
            ),
        )
        path, area, entry = per_user.get(request.user, self._for_user)
        macaroon, expires_at = xcache.mint_macaroon(
            secret=self._secret(),
            location=self.location,
            user=request.user,
            path=path,
            now=request.now,
            lifetime=lifetime,
        )
        return Minted({MACAROON_FILE: BundleFile(macaroon, 0o400, expires_at)}, env, ((entry, expires_at),), area)
