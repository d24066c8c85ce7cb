"""The Jupyter server extension: settings from the server's config, one manager, clusters closed on stop."""

from __future__ import annotations

from jupyter_server.extension.application import ExtensionApp

from .handlers import handlers
from .manager import ClusterManager
from .options import CasaClusterSettings


class CasaExtensionApp(ExtensionApp):
    name = "casa_hub_ext"
    load_other_extensions = True

    def initialize_settings(self):
        settings = CasaClusterSettings(parent=self.serverapp, config=self.serverapp.config)
        self.manager = ClusterManager(settings)
        self.settings["casa_manager"] = self.manager
        self.serverapp.web_app.settings["casa_manager"] = self.manager

    def initialize_handlers(self):
        self.serverapp.web_app.add_handlers(".*$", handlers(self.serverapp.base_url))

    async def stop_extension(self):
        await self.manager.close_all()
