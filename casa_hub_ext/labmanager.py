"""dask-labextension's cluster manager, the one list of clusters in the user's server.

Casa starts its clusters through dask-labextension's manager, so they appear in its sidebar with its dashboard
proxy (``/dask/dashboard/<id>/...``), scaling and shutdown. Only the manager's public methods are called,
awaited when they return an awaitable: dask-labextension 7.0.0 keeps a module-level manager with synchronous
getters, its main branch one in ``web_app.settings["dask_cluster_manager"]`` with coroutines.

dask-labextension passes its factory only ``asynchronous=True`` and the factory's configured kwargs, so the
options Casa validated travel to :func:`casa_hub_ext.factory.labextension_cluster` in a :class:`contextvars.ContextVar`
set around ``start_cluster`` (the call runs in the same task, which sees the variable).
"""

from __future__ import annotations

import contextvars
import logging
from inspect import isawaitable
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    from .manager import ClusterManager, PendingCluster

log = logging.getLogger(__name__)

CASA_FACTORY = {"module": "casa_hub_ext.factory", "class": "labextension_cluster", "args": [], "kwargs": {}}
_DEFAULT_FACTORIES = {("dask.distributed", "LocalCluster"), ("distributed", "LocalCluster")}
_OLD_CASA_FACTORIES = {("casa_hub_ext.factory", "CasaCluster")}  # its name before notebook.CasaCluster existed

_pending: contextvars.ContextVar[PendingCluster | None] = contextvars.ContextVar("casa_pending_cluster", default=None)
_active: list[ClusterManager] = []  # the server extension's manager, while the extension runs


def pending_cluster() -> PendingCluster | None:
    """The cluster Casa's manager is starting through dask-labextension in this task, if any."""
    return _pending.get()


def active_manager() -> ClusterManager | None:
    return _active[-1] if _active else None


def set_active(manager: ClusterManager | None) -> None:
    _active.clear()
    if manager is not None:
        _active.append(manager)


async def _resolved(value):
    return await value if isawaitable(value) else value


class LabManager:
    """Calls dask-labextension's manager, whichever release is installed."""

    def __init__(self, web_app_settings: Mapping[str, Any] | None = None, manager: Any = None):
        self._settings, self._manager = web_app_settings, manager

    @property
    def manager(self):
        # looked up on every call: dask-labextension's extension may load after Casa's
        if self._manager is not None:
            return self._manager
        found = (self._settings or {}).get("dask_cluster_manager")
        if found is None:
            from dask_labextension.manager import manager as found  # 7.0.0
        return found

    async def start_cluster(self, cluster_id: str, configuration: dict, pending: PendingCluster) -> dict:
        token = _pending.set(pending)
        try:
            return await _resolved(self.manager.start_cluster(cluster_id, configuration))
        finally:
            _pending.reset(token)

    async def close_cluster(self, cluster_id: str) -> dict | None:
        return await _resolved(self.manager.close_cluster(cluster_id))

    async def get_cluster(self, cluster_id: str) -> dict | None:
        return await _resolved(self.manager.get_cluster(cluster_id))

    async def list_clusters(self) -> list[dict]:
        return await _resolved(self.manager.list_clusters())

    async def scale_cluster(self, cluster_id: str, n: int) -> dict | None:
        return await _resolved(self.manager.scale_cluster(cluster_id, n))

    async def adapt_cluster(self, cluster_id: str, minimum: int, maximum: int) -> dict | None:
        return await _resolved(self.manager.adapt_cluster(cluster_id, minimum, maximum))


def ensure_casa_factory() -> bool:
    """Point dask-labextension's factory (dask config ``labextension.factory``) at Casa's, unless the admin
    chose another one than dask-labextension's default ``LocalCluster``. True when Casa's is in place."""
    import dask

    try:
        import dask_labextension.config  # noqa: F401 - registers dask-labextension's defaults
    except ImportError:
        log.warning("casa: dask-labextension is not installed: Casa clusters will not show in its sidebar")
        return False
    factory = dask.config.get("labextension.factory", default={}) or {}
    current = (factory.get("module"), factory.get("class"))
    if current == (CASA_FACTORY["module"], CASA_FACTORY["class"]):
        return True
    if current not in _DEFAULT_FACTORIES | _OLD_CASA_FACTORIES and current != (None, None):
        log.warning(
            "casa: dask-labextension's factory is %s.%s (dask config labextension.factory), not Casa's: "
            "the sidebar's +NEW starts clusters outside Casa's bounds",
            *current,
        )
        return False
    dask.config.set({"labextension.factory": dict(CASA_FACTORY)})
    return True
