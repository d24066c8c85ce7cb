"""ServiceX from a Casa pod, configured only by the files the hub mounted.

``BEARER_TOKEN_FILE`` in a Casa pod is the storage (XCache) token, and the ServiceX client would send it to
ServiceX. In the hub's ``access`` mode the ServiceX access token lives in ``CASA_SERVICEX_TOKEN_FILE``
instead; :func:`servicex_client` gives a client that reads that file (re-read on every request, so the
hub's refreshes are picked up). In ``refresh`` mode the token in ``servicex.yaml`` is used as is.
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
    """A ``servicex.ServiceXClient`` for the facility's ServiceX, authenticated with the Casa credentials."""
    from servicex.servicex_client import ServiceXClient
    from servicex.servicex_adapter import ServiceXAdapter

    config = _path_from_env("CASA_SERVICEX_CONFIG")
    client = ServiceXClient(config_path=str(config), **kwargs)
    # never BEARER_TOKEN_FILE (the storage token): access mode reads the Casa token file, refresh mode none
    token_file = _path_from_env("CASA_SERVICEX_TOKEN_FILE") if os.environ.get("CASA_SERVICEX_TOKEN_FILE") else None

    class CasaServiceXAdapter(ServiceXAdapter):
        @staticmethod
        def _get_bearer_token_file():
            return token_file.read_text().strip() if token_file else None

    client.servicex = CasaServiceXAdapter(client.servicex.url, refresh_token=client.servicex.refresh_token)
    return client
