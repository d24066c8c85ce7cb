"""The floor of the login-storm benchmark: JupyterHub's plain KubeSpawner behind the same OIDC login, with no
Casa credentials at all (nothing minted, nothing mounted). Benchmark-only: the hub config of the
``kubespawner`` mode of bench_storm.py names :class:`NoCredentialsAuthenticator`."""

from __future__ import annotations

import datetime

from casa_hub.authenticator import CasaAuthenticator
from casa_hub.credentials.bundle import CredentialBundle


class NoCredentialsAuthenticator(CasaAuthenticator):
    """CasaAuthenticator's login (discovery, verified id_token, groups, identity binding) without minting: the
    stored bundle is empty, so the login costs what an OIDC login alone costs."""

    async def mint(self, username: str, email: str | None = None) -> CredentialBundle:
        return CredentialBundle(user=username, issued_at=datetime.datetime.now(datetime.timezone.utc), files={})
