"""Thin REST layer over :class:`~casa_hub_ext.manager.ClusterManager` (all logic lives there).

GET  /casa/options               the form's bounded fields, limits and what is booked, GPU availability
GET  /casa/gpus                  inventory + the bounded options (older shape, kept for compatibility)
GET  /casa/credentials           every mounted credential, present or not, as the hub's manifest describes it
                                 (name, label, file, env, audience, scopes, expires_at), seconds to expiry
GET  /casa/clusters              the Casa clusters among dask-labextension's (its model + "casa")
POST /casa/clusters              {name?, backend, workers | adapt: {minimum, maximum}, cores, memory,
                                 gpus_per_worker} -> 201 the model
GET  /casa/clusters/<id>         one;  PATCH {workers: n} | {adapt: {minimum, maximum}};  DELETE -> 204

Cluster ids are dask-labextension's, so ``/dask/clusters/<id>`` and ``/dask/dashboard/<id>/`` serve the same
clusters. A :class:`~casa_hub_ext.errors.CasaUserError` becomes a 4xx with ``{"message", "error", "field"}``;
anything else is logged and a generic 500.
"""

from __future__ import annotations

import json

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from tornado import web

from .errors import CasaUserError
from .manager import ClusterManager

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
        """Where dask-labextension's proxy serves the cluster's dashboard in this server."""
        if model.get("dashboard_link"):
            model["dashboard_proxy"] = url_path_join(self.base_url, "dask", "dashboard", model["id"], "status")
        else:
            model["dashboard_proxy"] = None
        return model

    def write_error(self, status_code, **kwargs):
        error = kwargs.get("exc_info", (None, None))[1]
        if isinstance(error, CasaUserError):
            self.set_header("Content-Type", "application/json")
            body = {"message": str(error), "error": type(error).__name__, "field": error.field}
            self.finish(json.dumps(body))
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


class OptionsHandler(CasaHandler):
    @web.authenticated
    @authorized
    def get(self):
        self.reply(self.manager.options())


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
    async def get(self):
        self.reply([self.with_proxy_link(m) for m in await self.manager.list()])

    @web.authenticated
    @authorized
    async def post(self):
        model = await self.manager.create(self.body())
        self.reply(self.with_proxy_link(model), 201)


class ClusterHandler(CasaHandler):
    @web.authenticated
    @authorized
    async def get(self, cluster_id):
        self.reply(self.with_proxy_link(await self.manager.get(cluster_id)))

    @web.authenticated
    @authorized
    async def patch(self, cluster_id):
        model = await self.manager.scale(cluster_id, self.body())
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
        (path("options"), OptionsHandler),
        (path("gpus"), GPUHandler),
        (path("credentials"), CredentialsHandler),
        (path("clusters"), ClustersHandler),
        (path("clusters", r"(?P<cluster_id>[^/]+)"), ClusterHandler),
    ]
