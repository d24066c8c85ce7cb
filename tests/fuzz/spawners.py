"""Spawners without a cluster, for the fuzz tier: CasaSpawners built on a private event loop against a kubeconfig
whose API server is never contacted (the ``spawners`` fixture in conftest.py)."""

from __future__ import annotations

import asyncio
import datetime
import logging
from types import SimpleNamespace
from urllib.parse import quote

from jupyterhub import orm
from jupyterhub.objects import Hub, Server

from casa_hub.credentials.bundle import BundleFile, CredentialBundle
from casa_hub.spawner import CasaSpawner

EXP = datetime.datetime(2030, 1, 1, tzinfo=datetime.timezone.utc)
KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{name: none, cluster: {server: "http://127.0.0.1:9"}}]
users: [{name: none, user: {token: unused}}]
contexts: [{name: none, context: {cluster: none, user: none}}]
current-context: none
"""


class Spawners:
    """Builds CasaSpawners on a private event loop (KubeSpawner's client needs one; nothing is ever sent)."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.hub = Hub()  # one hub (its port is random per Hub object)

    def make(self, username: str, server: str = "", groups=()) -> CasaSpawner:
        async def build():
            user = SimpleNamespace(
                name=username,
                id=7,
                url=f"/user/{quote(username, safe='')}/",
                escaped_name=quote(username, safe=""),
                groups=[],
                spawners={},
                authenticator=SimpleNamespace(credential_refresh_margin=600),
            )
            spawner = CasaSpawner(
                user=user,
                orm_spawner=orm.Spawner(name=server),
                hub=self.hub,
                api_token="test-token",
                oauth_client_id="jupyterhub-user-x",
                namespace="casa",
                k8s_api_host="http://127.0.0.1:9",
                image="registry.example.org/casa/notebook:test",
                fs_gid=100,
                casa_dask_service_enabled=True,
                casa_dask_route_host_template="dask-{user_server}.hub.example.org",
                log=logging.getLogger("fuzz.names"),
            )
            spawner.server = Server(ip="127.0.0.1", port=8888, base_url=user.url)
            user.spawners[server] = spawner
            spawner.casa_bundle = CredentialBundle(
                user=username,
                issued_at=EXP,
                files={"xcache.token": BundleFile(b"t\n", 0o400, EXP), "dask/ca.pem": BundleFile(b"CA", 0o444)},
                env={"CASA_CREDENTIALS_DIR": "{mount}"},
            )
            spawner.casa_groups = list(groups)
            return spawner

        return self.loop.run_until_complete(build())

    def pod(self, spawner: CasaSpawner):
        return self.loop.run_until_complete(spawner.get_pod_manifest())
