"""ServiceX from a Casa pod, configured only by the files the hub mounted.

The hub delivers a short-lived ServiceX *access* token in ``CASA_SERVICEX_TOKEN_FILE`` (refreshed in place
while the server runs) and a ``servicex.yaml`` (``CASA_SERVICEX_CONFIG``) naming the endpoint only.
``BEARER_TOKEN_FILE`` in a Casa pod is the storage (XCache) token, and the plain ServiceX client would send it to
ServiceX: :func:`servicex_client` gives a client that reads the Casa token file instead (re-read on every
request, so the hub's refreshes are picked up) and never asks ServiceX's ``/token/refresh``.
"""

from __future__ import annotations

import os
from pathlib import Path


class MissingServiceXCredentials(RuntimeError):
    """The pod has no ServiceX configuration from Casa (the facility did not enable it)."""


def _path_from_env(name: str) -> Path:
    value = os.environ.get(name)
    if not value:
        raise MissingServiceXCredentials(f"{name} is not set: this server has no ServiceX credentials from Casa")
    path = Path(value)
    if not path.is_file():
        raise MissingServiceXCredentials(f"{name} points at {path}, which does not exist")
    return path


def servicex_client(**kwargs):
    """A ``servicex.ServiceXClient`` for the facility's ServiceX, authenticated with the Casa access token."""
    from servicex.servicex_adapter import AuthorizationError, ServiceXAdapter
    from servicex.servicex_client import ServiceXClient

    config = _path_from_env("CASA_SERVICEX_CONFIG")
    token_file = _path_from_env("CASA_SERVICEX_TOKEN_FILE")  # never BEARER_TOKEN_FILE (the storage token)
    client = ServiceXClient(config_path=str(config), **kwargs)

    class CasaServiceXAdapter(ServiceXAdapter):
        @staticmethod
        def _get_bearer_token_file():
            return token_file.read_text().strip() or None

        async def _get_token(self):
            # the client asks /token/refresh when its access token is missing or expires within a minute; Casa
            # has no refresh token: the hub replaces the file before the token expires
            raise AuthorizationError(
                f"the Casa ServiceX access token in {token_file} is missing, expired or about "
                "to expire; the hub renews it while your server runs (restart the server "
                "if it does not)"
            )

    client.servicex = CasaServiceXAdapter(client.servicex.url)
    return client
