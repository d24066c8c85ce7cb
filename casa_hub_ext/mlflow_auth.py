"""MLflow's client sends the Casa MLflow token with its requests to the facility's tracking server.

MLflow takes a bearer token only from ``MLFLOW_TRACKING_TOKEN``, an env *value*; Casa never puts secrets in the
environment and renews tokens in place. So this package registers an MLflow request-header provider (entry point
group ``mlflow.request_header_provider``) that reads the token from the file the manifest names for the ``mlflow``
credential (``$CASA_MLFLOW_TOKEN_FILE``) on every request, so a renewed token is used at once. It adds the
header only while MLflow talks to the tracking server the hub configured (``MLFLOW_TRACKING_URI``, the manifest's
``tracking_uri``): pointed at another server, MLflow sends no Casa token there. A token the user set in
``MLFLOW_TRACKING_TOKEN`` takes precedence.
"""

from __future__ import annotations

import os
from pathlib import Path

from .bundle import MountedBundle
from .errors import CredentialError

KIND = "mlflow"


def _same_server(uri: str, configured: str) -> bool:
    uri, configured = uri.rstrip("/"), configured.rstrip("/")
    return bool(configured) and (uri == configured or uri.startswith(configured + "/"))


class CasaMLflowTokenHeaderProvider:
    """An MLflow ``RequestHeaderProvider`` (``in_context`` / ``request_headers``); MLflow instantiates it."""

    def _token_file(self) -> Path | None:
        if os.environ.get("MLFLOW_TRACKING_TOKEN"):
            return None
        try:
            credential = MountedBundle.from_env().credentials.get(KIND)
        except CredentialError:  # no Casa credentials in this process
            return None
        if credential is None:
            return None
        try:
            import mlflow
        except ImportError:
            return None
        if not _same_server(mlflow.get_tracking_uri(), str(credential.extra.get("tracking_uri", ""))):
            return None
        return credential.path

    def in_context(self) -> bool:
        return self._token_file() is not None

    def request_headers(self) -> dict[str, str]:
        path = self._token_file()
        if path is None:
            return {}
        try:
            token = path.read_text().strip()
        except OSError:  # not mounted (yet): MLflow's request then fails with the server's 401, not here
            return {}
        return {"Authorization": f"Bearer {token}"} if token else {}
