"""The Jupyter server extension: settings from the server's config, Casa's cluster manager over
dask-labextension's, the kernels' Dask client configuration, the login cluster, every Casa cluster closed on
stop."""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Mapping, MutableMapping

from jupyter_server.extension.application import ExtensionApp

from . import client_bundle, notebook
from .bundle import CredentialError, MountedBundle
from .handlers import handlers
from .labmanager import LabManager, ensure_casa_factory, set_active
from .manager import ClusterManager
from .options import CasaClusterSettings
from .worker_credentials import WorkerCredentials


def kernel_dask_env(bundle: MountedBundle | None, settings: CasaClusterSettings) -> dict[str, str]:
    """Dask's client configuration for kernels (they inherit the server's environment): TLS with the user's
    client certificate, so the sidebar's ``Client("tls://...")`` connects, and, with a login cluster,
    ``DASK_SCHEDULER_ADDRESS`` so that a bare ``Client()`` does. File paths only, never their content."""
    env = {}
    if bundle is not None:
        cert, key = bundle.dask_paths("client")
        env.update(
            {
                "DASK_DISTRIBUTED__COMM__TLS__CA_FILE": str(bundle.dask_ca),
                "DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT": str(cert),
                "DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY": str(key),
                "DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION": "True",
            }
        )
    if settings.login_cluster is not None:
        env["DASK_SCHEDULER_ADDRESS"] = f"tls://localhost:{settings.scheduler_port}"
    return env


def set_absent(environ: MutableMapping[str, str], values: Mapping[str, str]) -> list[str]:
    """Set the variables the pod (the hub's DaskTLS kind) did not set already; the names set."""
    added = [name for name in values if name not in environ]
    for name in added:
        environ[name] = values[name]
    return added


def _log_to(server_log: logging.Logger) -> None:
    """Casa's module loggers (``casa_hub_ext.*``) write where the server's log goes, at its level."""
    casa_log = logging.getLogger("casa_hub_ext")
    if not casa_log.handlers:
        for handler in server_log.handlers:
            casa_log.addHandler(handler)
        casa_log.propagate = False
    casa_log.setLevel(server_log.getEffectiveLevel())


class CasaExtensionApp(ExtensionApp):
    name = "casa_hub_ext"
    load_other_extensions = True

    def initialize_settings(self):
        _log_to(self.serverapp.log)
        settings = CasaClusterSettings(parent=self.serverapp, config=self.serverapp.config)
        self.manager = ClusterManager(
            settings, lab=LabManager(self.serverapp.web_app.settings), start_timeout=settings.start_timeout
        )
        self.settings["casa_manager"] = self.manager
        self.serverapp.web_app.settings["casa_manager"] = self.manager
        set_active(self.manager)
        ensure_casa_factory()
        # workers of every Casa cluster get the storage token the hub keeps renewing in the mounted Secret
        self.worker_credentials = WorkerCredentials(parent=self.serverapp, config=self.serverapp.config)
        self.manager.on_started.append(self.worker_credentials.attach)
        self.manager.on_closing.append(self.worker_credentials.detach)
        self.serverapp.web_app.settings[client_bundle.SETTINGS_KEY] = client_bundle.ClientBundleSettings(
            parent=self.serverapp, config=self.serverapp.config
        )
        try:
            bundle = MountedBundle.from_env()
        except CredentialError as e:  # a local run without Casa credentials: kernels get no TLS defaults
            self.log.info("casa: no Dask TLS configuration for kernels: %s", e)
            bundle = None
        added = set_absent(os.environ, kernel_dask_env(bundle, settings))
        if added:
            self.log.info("casa: Dask client configuration for kernels: %s", ", ".join(added))
        self._login_task = None
        self._server_token_file = None

    def initialize_handlers(self):
        base_url = self.serverapp.base_url
        self.serverapp.web_app.add_handlers(".*$", handlers(base_url) + client_bundle.handlers(base_url))

    async def _start_jupyter_server_extension(self, serverapp):
        # the server listens now (its port is known): kernels learn where to ask for Casa clusters
        self._server_token_file = notebook.publish_server(serverapp)
        # in the background: the server answers while the login cluster starts (minutes for HTCondor jobs)
        if self.manager.settings.login_cluster is not None:
            self._login_task = asyncio.ensure_future(self.manager.start_login_cluster())

    async def stop_extension(self):
        if self._login_task is not None and not self._login_task.done():
            self._login_task.cancel()
            await asyncio.gather(self._login_task, return_exceptions=True)
        await self.manager.close_all()
        await self.worker_credentials.close()
        set_active(None)
        if self._server_token_file is not None:
            self._server_token_file.unlink(missing_ok=True)
