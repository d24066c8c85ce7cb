"""``servicex``: a ServiceX access token in ServiceX's own dialect and the client's ``servicex.yaml``
(``CASA_SERVICEX_TOKEN_FILE``, ``CASA_SERVICEX_CONFIG``); see :mod:`casa_hub.credentials.servicex`."""

from __future__ import annotations

import datetime
import uuid

from traitlets import Enum, Unicode

from .. import servicex
from ..bundle import BundleFile
from ..jws import JWSSigner
from ..kind import ACCESS_TOKEN_MAX_LIFETIME, ACCESS_TOKEN_WHY, CredentialKind, Minted, MintRequest, Seconds
from ..layout import MOUNT, ManifestEntry

TOKEN_FILE = "servicex.token"
CONFIG_FILE = "servicex.yaml"
TOKEN_ENV = "CASA_SERVICEX_TOKEN_FILE"  # not BEARER_TOKEN_FILE: that is the storage token (casa_hub_ext.servicex)
CONFIG_ENV = "CASA_SERVICEX_CONFIG"


class ServiceXToken(CredentialKind):
    """A short-lived ServiceX access token (never a refresh token: see the pure module)."""

    name = "servicex"
    label = "ServiceX token"

    endpoint = Unicode(
        "",
        help="""ServiceX endpoint URL written into servicex.yaml.
        Example: ``c.ServiceXToken.endpoint = "https://servicex.example.org"``""",
    ).tag(config=True)

    # the endpoint's name in servicex.yaml (a traitlets trait cannot be called ``name``: that is the kind's name)
    endpoint_name = Unicode(
        "casa",
        help="""Endpoint name in servicex.yaml (also its default-endpoint). Default ``"casa"``.
        Example: ``c.ServiceXToken.endpoint_name = "uc-af"``""",
    ).tag(config=True)

    secret_file = Unicode(
        "",
        help="""File with the ServiceX deployment's JWT_SECRET_KEY, mounted into the hub only.
        Example: ``c.ServiceXToken.secret_file = "/etc/casa-hub/keys/servicex.secret"``""",
    ).tag(config=True)

    identity = Enum(
        ["username", "email"],
        "username",
        help="""Identity ServiceX knows users by: the hub user name (older ServiceX, ``sub``) or e-mail.
        ``email`` uses only an e-mail the identity provider marked verified (``email_verified: true``); a user
        without one gets no credentials: minting refuses with an error saying so. Default ``"username"``.
        Example: ``c.ServiceXToken.identity = "email"``""",
    ).tag(config=True)

    identity_claim = Unicode(
        "sub",
        help="""flask-jwt-extended ``JWT_IDENTITY_CLAIM`` of the ServiceX deployment. Default ``"sub"``.
        Example: ``c.ServiceXToken.identity_claim = "identity"``""",
    ).tag(config=True)

    lifetime = Seconds(
        3600,
        maximum=ACCESS_TOKEN_MAX_LIFETIME,
        why=ACCESS_TOKEN_WHY,
        help="""Lifetime of the ServiceX access token in ``servicex.token`` (seconds). Default 3600 (1 h): an
        access token in ServiceX's dialect cannot be revoked either, so it follows the WLCG Common JWT Profile
        for access tokens, at most 21600 (6 h), refused above; the hub renews it before it expires.
        Example: ``c.ServiceXToken.lifetime = 1800``""",
    ).tag(config=True)

    def files(self) -> tuple[str, ...]:
        return (TOKEN_FILE, CONFIG_FILE)

    def env_names(self) -> tuple[str, ...]:
        return (TOKEN_ENV, CONFIG_ENV)

    def _signer(self) -> JWSSigner:
        return self.derived(
            "signer",
            lambda: JWSSigner(
                "HS256", self.load_secret("secret_file", "ServiceX JWT secret", lambda raw: raw.strip()), {}
            ),
        )

    def load_keys(self) -> None:
        self._signer()

    def _settings(self):
        config = BundleFile(servicex.servicex_yaml(endpoint=self.endpoint, name=self.endpoint_name), 0o444)
        env = {TOKEN_ENV: f"{MOUNT}/{TOKEN_FILE}", CONFIG_ENV: f"{MOUNT}/{CONFIG_FILE}"}
        entry = ManifestEntry(self.name, self.label, TOKEN_FILE, TOKEN_ENV, extra={"endpoint": self.endpoint})
        return datetime.timedelta(seconds=self.lifetime), config, env, entry

    def mint(self, request: MintRequest) -> Minted:
        lifetime, config, env, entry = self.derived("settings", self._settings)
        # ``email`` is only ever a provider-verified address: CasaAuthenticator passes None otherwise
        identity = request.user if self.identity == "username" else request.email
        if not identity:
            raise ValueError(
                f"ServiceX needs an e-mail address of user {request.user!r} that is present and verified by "
                "the identity provider (email_verified: true), because "
                "ServiceXToken.identity='email'; the provider gave none"
            )
        claims = servicex.servicex_token_claims(
            identity=identity,
            identity_claim=self.identity_claim,
            now=request.now,
            lifetime=lifetime,
            jti=str(uuid.uuid4()),
        )
        token = self._signer().encode(claims).encode() + b"\n"
        expires_at = datetime.datetime.fromtimestamp(claims["exp"], datetime.timezone.utc)
        files = {TOKEN_FILE: BundleFile(token, 0o400, expires_at), CONFIG_FILE: config}
        return Minted(files, env, ((entry, expires_at),))
