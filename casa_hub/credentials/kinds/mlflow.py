"""``mlflow``: a bearer token for an MLflow tracking server, the documented example of a credential kind.

A kind is one file like this one and one entry point::

    [project.entry-points."casa_hub.credentials"]
    mlflow = "casa_hub.credentials.kinds.mlflow:MLflowToken"

then ``c.CasaMinter.kinds = ["xcache", "dask-tls", "mlflow"]`` and its own section, ``c.MLflowToken.*``.

The token is a JWT signed by the facility issuer (``CasaMinter.issuer_url``), so the MLflow server (or the
proxy in front of it) verifies it with the issuer's JWKS (``<issuer_url>/jwks.json``), like XRootD does the
storage token, and accepts only its own audience (:attr:`MLflowToken.audience`): a storage token is not an
MLflow token and the other way round. Claims follow the WLCG Common JWT Profile for access tokens.

In the user's server: ``MLFLOW_TRACKING_URI`` names the server; the token is in the file
``$CASA_MLFLOW_TOKEN_FILE`` (``mlflow.token``), never in an env variable. MLflow's client reads a token only
from ``MLFLOW_TRACKING_TOKEN`` (a value), so ``casa_hub_ext`` registers an MLflow request-header provider
(``casa_hub_ext.mlflow_auth``) that sends ``Authorization: Bearer <the file's token>`` with every request, read
afresh each time so a token the hub renewed is used at once.
"""

from __future__ import annotations

import datetime
import uuid

from traitlets import Unicode

from ..bundle import BundleFile
from ..kind import ACCESS_TOKEN_MAX_LIFETIME, ACCESS_TOKEN_WHY, CredentialKind, Minted, MintRequest, Seconds
from ..layout import MOUNT, ManifestEntry

TOKEN_FILE = "mlflow.token"
TOKEN_ENV = "CASA_MLFLOW_TOKEN_FILE"
URI_ENV = "MLFLOW_TRACKING_URI"  # MLflow's own variable: where the tracking server is (not a secret)


class MLflowToken(CredentialKind):
    """A bearer token for the facility's MLflow tracking server, with its own audience."""

    name = "mlflow"
    label = "MLflow tracking token"
    uses_issuer = True  # signed with the facility issuer's current key

    tracking_uri = Unicode(
        "",
        help="""URL of the MLflow tracking server, put in the user's environment as ``MLFLOW_TRACKING_URI``.
        Required when the kind is enabled. Example: ``c.MLflowToken.tracking_uri = "https://mlflow.example.org"``""",
    ).tag(config=True)

    audience = Unicode(
        "",
        help="""Audience (``aud``) of the token: what the MLflow server checks, so that no other Casa token
        (e.g. the storage token) is accepted there and this one nowhere else. Default empty: the
        ``tracking_uri``. Example: ``c.MLflowToken.audience = "https://mlflow.example.org"``""",
    ).tag(config=True)

    scope = Unicode(
        "mlflow",
        help="""The token's ``scope`` claim (space-separated scopes the server may check). Default ``"mlflow"``.
        Example: ``c.MLflowToken.scope = "mlflow.read mlflow.write"``""",
    ).tag(config=True)

    lifetime = Seconds(
        3600,
        maximum=ACCESS_TOKEN_MAX_LIFETIME,
        why=ACCESS_TOKEN_WHY,
        help="""Lifetime of the token (seconds). Default 3600 (1 h), the same reasoning as the storage token's:
        a bearer token cannot be revoked, the WLCG Common JWT Profile allows access tokens at most 21600 (6 h),
        refused above, and the hub renews it before it expires. Example: ``c.MLflowToken.lifetime = 1800``""",
    ).tag(config=True)

    def files(self) -> tuple[str, ...]:
        return (TOKEN_FILE,)

    def env_names(self) -> tuple[str, ...]:
        return (TOKEN_ENV, URI_ENV)

    def load_keys(self) -> None:
        if not self.tracking_uri:
            raise RuntimeError(f"{self.where('tracking_uri')} is not set: the MLflow token needs its server")

    def token_audience(self) -> str:
        return self.audience or self.tracking_uri

    def _settings(self):
        audience = self.token_audience()
        env = {TOKEN_ENV: f"{MOUNT}/{TOKEN_FILE}", URI_ENV: self.tracking_uri}
        entry = ManifestEntry(
            self.name,
            self.label,
            TOKEN_FILE,
            TOKEN_ENV,
            audience=audience,
            scopes=tuple(self.scope.split()),
            extra={"tracking_uri": self.tracking_uri},
        )
        return audience, env, entry

    def mint(self, request: MintRequest) -> Minted:
        audience, env, entry = self.derived("settings", self._settings)
        iat = request.iat
        claims = {
            "wlcg.ver": "1.0",
            "iss": request.issuer.url,
            "sub": request.user,
            "aud": audience,
            "scope": self.scope,
            "iat": iat,
            "nbf": iat,
            "exp": iat + self.lifetime,
            "jti": str(uuid.uuid4()),
        }
        token = request.issuer.key.sign(claims).encode() + b"\n"
        expires_at = datetime.datetime.fromtimestamp(claims["exp"], datetime.timezone.utc)
        return Minted({TOKEN_FILE: BundleFile(token, 0o400, expires_at)}, env, ((entry, expires_at),))
