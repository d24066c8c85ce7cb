"""Thin REST layer over :class:`~casa_hub_ext.manager.ClusterManager` (all logic lives there).

GET  /casa/gpus                  inventory + the bounded options the form offers
GET  /casa/credentials           every mounted credential, present or not, as the hub's manifest describes it
                                 (name, label, file, env, audience, scopes, expires_at), seconds to expiry
GET  /casa/clusters              list;   POST /casa/clusters  {backend, workers, cores, memory, gpus_per_worker}
GET  /casa/clusters/<id>         one;    PATCH {workers: n} scales;   DELETE shuts it down

A :class:`~casa_hub_ext.errors.CasaUserError` becomes a 4xx with ``{"message": ...}``; anything else is logged
and a generic 500.
"""

from __future__ import annotations

import json
from urllib.parse import urlparse

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from tornado import web

from .errors import CasaUserError
from .manager import ClusterManager, scale_request

AUTH_RESOURCE = "casa"


class CasaHandler(APIHandler):
    auth_resource = AUTH_RESOURCE

    @property
    def manager(self) -> ClusterManager:
        return self.settings["casa_manager"]

    def body(self) -> dict:
        if not self.request.body:
            return {}
        try:
            value = json.loads(self.request.body)
        except ValueError:
            raise CasaUserError("the request body is not JSON") from None
        if not isinstance(value, dict):
            raise CasaUserError("the request body must be a JSON object")
        return value

    def reply(self, value, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(value))

    def with_proxy_link(self, model: dict) -> dict:
        link = model.get("dashboard_link")
        port = urlparse(link).port if link else None
        model["dashboard_proxy"] = url_path_join(self.base_url, "proxy", str(port), "status") if port else None
        return model

    def write_error(self, status_code, **kwargs):
        error = kwargs.get("exc_info", (None, None))[1]
        if isinstance(error, CasaUserError):
            self.set_header("Content-Type", "application/json")
            self.finish(json.dumps({"message": str(error), "error": type(error).__name__}))
        else:
            super().write_error(status_code, **kwargs)

    def log_exception(self, typ, value, tb):
        if isinstance(value, CasaUserError):
            self.log.info("casa: %s: %s", type(value).__name__, value)
        else:
            super().log_exception(typ, value, tb)

    def send_error(self, status_code=500, **kwargs):
        error = kwargs.get("exc_info", (None, None))[1]
        if isinstance(error, CasaUserError):
            status_code = error.status_code
        super().send_error(status_code, **kwargs)


class GPUHandler(CasaHandler):
    @web.authenticated
    @authorized
    def get(self):
        self.reply(self.manager.gpus())


class CredentialsHandler(CasaHandler):
    @web.authenticated
    @authorized
    def get(self):
        self.reply(self.manager.credentials())


class ClustersHandler(CasaHandler):
    @web.authenticated
    @authorized
    def get(self):
        self.reply([self.with_proxy_link(m) for m in self.manager.list()])

    @web.authenticated
    @authorized
    async def post(self):
        model = await self.manager.create(self.body())
        self.reply(self.with_proxy_link(model), 201)


class ClusterHandler(CasaHandler):
    @web.authenticated
    @authorized
    def get(self, cluster_id):
        self.reply(self.with_proxy_link(self.manager.get(cluster_id)))

    @web.authenticated
    @authorized
    async def patch(self, cluster_id):
        model = await self.manager.scale(cluster_id, scale_request(self.body()))
        self.reply(self.with_proxy_link(model))

    @web.authenticated
    @authorized
    async def delete(self, cluster_id):
        await self.manager.close(cluster_id)
        self.set_status(204)
        self.finish()


def handlers(base_url: str) -> list[tuple]:
    def path(*parts):
        return url_path_join(base_url, "casa", *parts)

    return [
        (path("gpus"), GPUHandler),
        (path("credentials"), CredentialsHandler),
        (path("clusters"), ClustersHandler),
        (path("clusters", r"(?P<cluster_id>[0-9a-f]{32})"), ClusterHandler),
    ]
