"""A Kubernetes API for the spawner tests: kmock 0.8's KubernetesEmulator over real HTTP, made usable by
kubernetes_asyncio / KubeSpawner, with fault injection and a toy kubelet.

No kube-apiserver can run here (see TESTBED.md). What kmock lacks and this adds:
- ``?watch=True`` (a Python bool urlencoded by kubernetes_asyncio) is treated as ``watch=true``;
- server-side metadata (namespace, uid, resourceVersion, creationTimestamp) on create and update;
- the core resources are declared, so list/watch of an empty collection is not a 404;
- faults: ``POST /casa-test/faults`` with ``{"method": "POST", "plural": "secrets", "status": 500, "count": 2}``
  makes the next matching requests fail with that status (a 409 for creates, 5xx, ...); ``{"clear": true}``
  removes them all; ``{"kubelet_delay": 2}`` keeps new pods Pending that long;
- a kubelet: each new pod becomes Running with podIP 127.0.0.1 and a tiny HTTP server on its port answers
  for the single-user server.

Run: ``python -m tests.hub.kube_emulator PORT``.
"""

from __future__ import annotations

import asyncio
import datetime
import itertools
import json
import sys
import uuid

import aiohttp
import attrs
import kmock
from aiohttp import web
from kmock._internal import enums, parsing

_versions = itertools.count(1)
KUBELET = {"delay": 0.0}  # seconds a new pod stays Pending (slow image pulls, busy nodes)
_original_guess = parsing.guess_k8s


def _guess_k8s(k8s, method, query):
    if str(query.get("watch", "")).lower() == "true":
        query = dict(query, watch="true")
    return _original_guess(k8s, method, query)


@attrs.define(kw_only=True)
class Emulator(kmock.KubernetesEmulator):
    faults: list = attrs.field(factory=list)

    async def _handle(self, request):
        if request.url.path == "/casa-test/faults":
            fault = json.loads(request.body or b"{}")
            if fault.get("clear"):
                self.faults.clear()
            elif "kubelet_delay" in fault:
                KUBELET["delay"] = float(fault["kubelet_delay"])
            else:
                self.faults.append(fault)
            return web.json_response({"faults": len(self.faults)})
        for fault in self.faults:
            if fault["method"] == str(request.method).upper().split(".")[-1] and \
                    request.url.path.rstrip("/").split("/")[-1 if fault.get("collection", True) else -2] == fault[
                    "plural"]:
                fault["count"] -= 1
                if fault["count"] <= 0:
                    self.faults.remove(fault)
                return web.json_response({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                          "message": "injected fault", "code": fault["status"]},
                                         status=fault["status"])
        if request.resource is not None and isinstance(request.data, dict):
            if request.action == enums.action.CREATE:
                meta = request.data.setdefault("metadata", {})
                if request.namespace:
                    meta.setdefault("namespace", request.namespace)
                meta.setdefault("uid", str(uuid.uuid4()))
                meta.setdefault("creationTimestamp",
                                datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
                meta["resourceVersion"] = str(next(_versions))
                if request.resource.plural == "pods":
                    request.data.setdefault("status", {"phase": "Pending"})
            elif request.action == enums.action.UPDATE:
                request.data.setdefault("metadata", {})["resourceVersion"] = str(next(_versions))
        return await super()._handle(request)


def declare_core(k8s) -> None:
    for plural, kind in (("pods", "Pod"), ("secrets", "Secret"), ("events", "Event"), ("services", "Service"),
                         ("persistentvolumeclaims", "PersistentVolumeClaim"), ("nodes", "Node")):
        k8s.resources[f"v1/{plural}"] = kmock.ResourceInfo(
            kind=kind, namespaced=plural != "nodes", verbs={"list", "watch", "get", "create", "patch", "delete",
                                                            "update"})


async def _single_user_stand_in(port: int, name: str):
    async def answer(request):
        return web.json_response({"pod": name, "path": request.path})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


async def kubelet(url: str) -> None:
    servers = {}
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{url}/api/v1/pods?watch=true", timeout=aiohttp.ClientTimeout(total=None)) as watch:
            async for line in watch.content:
                if not line.strip():
                    continue
                event = json.loads(line)
                pod, meta = event["object"], event["object"]["metadata"]
                key = (meta.get("namespace"), meta["name"])
                if event["type"] == "ADDED" and pod.get("status", {}).get("phase") == "Pending":
                    await asyncio.sleep(KUBELET["delay"])
                    port = pod["spec"]["containers"][0].get("ports", [{}])[0].get("containerPort", 8888)
                    try:
                        servers[key] = await _single_user_stand_in(port, meta["name"])
                    except OSError as e:
                        print(f"kubelet: cannot serve pod {key} on {port}: {e}", flush=True)
                    await http.patch(f"{url}/api/v1/namespaces/{key[0]}/pods/{key[1]}/status", json={"status": {
                        "phase": "Running", "podIP": "127.0.0.1",
                        "containerStatuses": [{"name": "notebook", "ready": True, "state": {"running": {}}}]}})
                elif event["type"] == "DELETED" and key in servers:
                    await servers.pop(key).cleanup()


async def main(port: int) -> None:
    parsing.guess_k8s = _guess_k8s
    async with Emulator() as k8s, kmock.Server(k8s, port=port) as server:
        declare_core(k8s)
        print(f"kube emulator on {server.url}", flush=True)
        await kubelet(str(server.url).rstrip("/"))


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
