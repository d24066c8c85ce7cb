"""Clusters started from JupyterLab, without any Tornado code (the handlers are a thin layer over this)."""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass
from inspect import isawaitable
from typing import Callable

from .bundle import MountedBundle
from .errors import ClusterNotFound, OptionError
from .factory import make_cluster
from .gpu import Inventory, discover
from .options import CasaClusterSettings, ClusterOptions, OptionsSpec

log = logging.getLogger(__name__)


@dataclass
class _Entry:
    id: str
    name: str
    options: ClusterOptions
    cluster: object


class ClusterManager:
    """Creates, lists, scales and closes the user's clusters.

    ``bundle`` and ``inventory`` are callables so every request sees the current credentials (the hub
    replaces them on refresh) and GPUs; tests inject their own.
    """

    def __init__(
        self,
        settings: CasaClusterSettings,
        *,
        bundle: Callable[[], MountedBundle] = MountedBundle.from_env,
        inventory: Callable[[], Inventory] = discover,
        start_timeout: float = 120,
    ):
        self.settings = settings
        self._bundle, self._inventory = bundle, inventory
        self.start_timeout = start_timeout
        self._clusters: dict[str, _Entry] = {}
        self._count = 0

    # ------------------------------------------------------------------ read-only
    def spec(self) -> OptionsSpec:
        return OptionsSpec(self.settings, self._inventory())

    def gpus(self) -> dict:
        spec = self.spec()
        return {"inventory": spec.inventory.to_dict(), "options": spec.spec()}

    def credentials(self) -> dict:
        return self._bundle().status()

    def list(self) -> list[dict]:
        return [self._model(e) for e in self._clusters.values()]

    def get(self, cluster_id: str) -> dict:
        return self._model(self._entry(cluster_id))

    # ------------------------------------------------------------------ lifecycle
    async def create(self, request: dict | None = None) -> dict:
        request = dict(request or {})
        name = request.pop("name", None)
        inventory = self._inventory()
        options = OptionsSpec(self.settings, inventory).validate(request)  # bounded, before anything starts
        bundle = self._bundle()
        bundle.security()  # a missing/expired certificate is a CredentialError naming it, before anything starts
        cluster = await asyncio.wait_for(
            make_cluster(options, bundle, settings=self.settings, inventory=inventory, asynchronous=True),
            self.start_timeout,
        )
        self._count += 1
        entry = _Entry(uuid.uuid4().hex, name or f"Cluster {self._count}", options, cluster)
        self._clusters[entry.id] = entry
        log.info("casa: started %s cluster %s (%s)", options.backend, entry.id, options)
        return self._model(entry)

    async def scale(self, cluster_id: str, workers) -> dict:
        entry = self._entry(cluster_id)
        spec = self.spec()
        n = next(f for f in spec.fields if f.name == "workers").validate(workers)
        spec.check_gpus(entry.options, n)
        result = entry.cluster.scale(n)
        if isawaitable(result):
            await result
        return self._model(entry)

    async def close(self, cluster_id: str) -> dict:
        entry = self._clusters.pop(cluster_id, None)
        if entry is None:
            raise ClusterNotFound(f"no cluster with id {cluster_id!r}")
        model = self._model(entry)
        await self._close(entry)
        return model

    async def close_all(self) -> None:
        entries, self._clusters = list(self._clusters.values()), {}
        await asyncio.gather(*(self._close(e) for e in entries), return_exceptions=True)

    @staticmethod
    async def _close(entry: _Entry) -> None:
        try:
            result = entry.cluster.close()
            if isawaitable(result):
                await asyncio.wait_for(result, 60)
        except Exception:
            log.exception("casa: closing cluster %s failed", entry.id)

    # ------------------------------------------------------------------ models
    def _entry(self, cluster_id: str) -> _Entry:
        try:
            return self._clusters[cluster_id]
        except KeyError:
            raise ClusterNotFound(f"no cluster with id {cluster_id!r}") from None

    @staticmethod
    def _model(entry: _Entry) -> dict:
        cluster = entry.cluster
        info = getattr(cluster, "scheduler_info", None) or {}
        workers = [
            {
                "name": str(w.get("name")),
                "address": addr,
                "resources": w.get("resources", {}),
                "nthreads": w.get("nthreads"),
            }
            for addr, w in sorted(info.get("workers", {}).items())
        ]
        requested = getattr(cluster, "worker_spec", None)
        try:
            dashboard = cluster.dashboard_link
        except Exception:
            dashboard = None
        return {
            "id": entry.id,
            "name": entry.name,
            "backend": entry.options.backend,
            "options": entry.options.to_dict(),
            "scheduler_address": getattr(cluster, "scheduler_address", None),
            "dashboard_link": dashboard,
            "requested_workers": len(requested) if requested is not None else None,
            "workers": workers,
        }


def scale_request(body: dict) -> int:
    if not isinstance(body, dict) or "workers" not in body:
        raise OptionError('expected a JSON body like {"workers": 2}')
    return body["workers"]
