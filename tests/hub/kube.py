"""A Kubernetes API for the spawner tests: kmock 0.8's KubernetesEmulator over real HTTP, made usable by
kubernetes_asyncio / KubeSpawner, with a toy kubelet and garbage collector.

No kube-apiserver can run here (see TESTBED.md). What kmock 0.8 lacks and this adds:

- ``?watch=True`` (a Python bool urlencoded by kubernetes_asyncio) is recognised as a watch;
- server-side metadata on create (namespace, uid, resourceVersion, creationTimestamp) and a new
  resourceVersion on every change; pods start ``Pending``;
- ``PUT`` on a named object replaces it (kmock only knows PATCH), keeping uid and creationTimestamp;
- the core resources (and Traefik's IngressRouteTCP) are declared, so list/watch of an empty collection works;
- a garbage collector: deleting an object deletes the objects whose ownerReferences point at its uid;
- a kubelet: a new pod becomes Running (podIP 127.0.0.1) once every Secret it mounts exists, like a real
  kubelet that cannot mount a missing Secret; optionally after a delay, and optionally with a tiny HTTP
  server on the pod's port standing in for the single-user server;
- faults through kmock's own rule DSL on a separate root, ``kube.faults``, consulted before anything else
  and without touching the stored objects (kmock's emulator stores an object before user reactions run)::

      kube.faults[kmock.action.CREATE, kmock.resource("v1", "secrets")] << kmock.Response(status=500)
      kube.fail(kmock.action.CREATE, "secrets", status=500, times=2)   # the same, twice, then gone

- RBAC as the API server enforces it (tests/hub/rbac.py): requests bearing the hub's token (``test``, the
  kubeconfig's) are checked against the Z2JH chart's hub Role, and with ``CASA_KUBE_RBAC=chart+extras`` (or
  ``kube.set_rbac("chart+extras")`` at run time) also Casa's ``helm-values/extra-rbac.yaml``, and refused with
  a real 403 Status object; the kubelet and the tests' own requests carry no token and act as cluster admin;
  ``CASA_KUBE_RBAC=off`` turns enforcement off;
- slow answers: ``kube.delay(kmock.action.CREATE, "secrets", seconds=3)`` applies the next such request at
  once but answers it only after 3 s (a client with a shorter timeout gives up although the change was made,
  as with an API server whose answer is lost); ``lost=True``: the request is not applied at all and answered
  504 after the delay (it timed out before reaching storage);

Two ways to run it: in a thread of the test process (:class:`KubeThread`, used by the spawner tests, which
drive CasaSpawner on pytest's loop against this server over HTTP), or as a subprocess:
``python -m tests.hub.kube PORT`` (for a hub running in its own process; :func:`start_kube`), optionally also
serving the API over TLS as a cluster does (``start_kube(tls=True)``: ``--tls TLS_PORT CERT KEY``).
"""

from __future__ import annotations

import asyncio
import datetime
import itertools
import json
import os
import sys
import threading
import uuid
from pathlib import Path

import aiohttp
import attrs
import kmock
from aiohttp import web
from kmock._internal import enums, parsing

from tests.hub import rbac

# ------------------------------------------------------------------ compat shim
_original_guess = parsing.guess_k8s


def _guess_k8s(k8s, method, query):
    if str(query.get("watch", "")).lower() == "true":
        query = dict(query, watch="true")
    return _original_guess(k8s, method, query)


parsing.guess_k8s = _guess_k8s  # kmock looks it up at call time; harmless for every other kmock user

CORE = (
    ("pods", "Pod", True),
    ("secrets", "Secret", True),
    ("events", "Event", True),
    ("services", "Service", True),
    ("persistentvolumeclaims", "PersistentVolumeClaim", True),
    ("serviceaccounts", "ServiceAccount", True),
    ("nodes", "Node", False),
    ("namespaces", "Namespace", False),
)
VERBS = {"list", "watch", "get", "create", "patch", "update", "delete"}


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _status(code: int, message: str) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message, "code": code}


@attrs.define(kw_only=True)
class CasaKubeEmulator(kmock.KubernetesEmulator):
    """kmock's emulator with server-side metadata, PUT, garbage collection and a fault root."""

    faults: kmock.RawHandler = attrs.field(factory=kmock.RawHandler)
    delays: list = attrs.field(factory=list)  # [match(request) -> bool, seconds, lost, times left]
    rbac_rules: list | None = attrs.field(factory=lambda: rbac.rules_for(os.environ.get("CASA_KUBE_RBAC", "chart")))
    hub_token: str = "test"  # the kubeconfig's token: the hub's service account
    _versions: itertools.count = attrs.field(factory=lambda: itertools.count(1))
    _in_flight: dict = attrs.field(factory=dict)
    _watches: list = attrs.field(factory=list)  # open watch requests (they stream until the client closes them)
    _matching: asyncio.Lock = attrs.field(factory=asyncio.Lock)  # one request at a time in kmock's matching
    _owners_seen: bool = False  # no object ever had ownerReferences: nothing for the garbage collector to do

    def declare(self) -> None:
        for plural, kind, namespaced in CORE:
            self.resources[f"v1/{plural}"] = kmock.ResourceInfo(kind=kind, namespaced=namespaced, verbs=VERBS)
        self.resources["traefik.io/v1alpha1/ingressroutetcps"] = kmock.ResourceInfo(
            kind="IngressRouteTCP", namespaced=True, verbs=VERBS
        )

    def fail(self, action, plural: str, status: int, times: int = 1, group_version: str = "v1"):
        """The next ``times`` requests ``action`` on ``plural`` are answered ``status`` (kmock rule DSL)."""
        answers = iter([kmock.Response(status=status, payload=_status(status, "injected fault"))] * times)
        return self.faults[action, kmock.resource(group_version, plural)] << (lambda: next(answers, NotImplemented))

    def delay(self, action, plural: str, seconds: float, times: int = 1, lost: bool = False) -> None:
        """The next ``times`` requests ``action`` on ``plural`` are answered after ``seconds`` (applied at once,
        or with ``lost`` not applied at all and answered 504)."""

        def match(request):
            return request.action == action and request.resource is not None and request.resource.plural == plural

        self.delays.append([match, float(seconds), lost, times])

    def clear_faults(self) -> None:
        self.faults._payloads.clear()
        self.delays.clear()

    def set_rbac(self, mode: str) -> None:
        self.rbac_rules = rbac.rules_for(mode)

    def _forbidden(self, request) -> dict | None:
        """The 403 Status for a request of the hub that its rights do not allow (None: allowed)."""
        if self.rbac_rules is None or request.resource is None or rbac.bearer(request.headers) != self.hub_token:
            return None
        group = request.resource.group or ""
        resource = request.resource.plural + (f"/{request.subresource}" if request.subresource else "")
        method = str(request.method).upper().rsplit(".", 1)[-1]
        verb = rbac.verb_of(method, request.name, request.subresource, request.params)
        if any(rule.allows(verb, group, resource, request.namespace) for rule in self.rbac_rules):
            return None
        return rbac.forbidden(verb, group, resource, request.namespace, request.name)

    def _take_delay(self, request):
        for rule in self.delays:
            if rule[3] > 0 and rule[0](request):
                rule[3] -= 1
                return rule[1], rule[2]
        return None

    async def _handle(self, request):
        refusal = self._forbidden(request)
        if refusal is not None:
            return web.json_response(refusal, status=403)
        self._in_flight[id(request)] = request
        watch = request.action == enums.action.WATCH
        if watch:  # registered before anything awaits, so no other request drops it from kmock's history
            self._watches.append(request)
        try:
            return await self._handle_delayed(request)
        finally:
            del self._in_flight[id(request)]
            if watch:
                self._watches.remove(request)
            self._forget_handled_requests()

    def _forget_handled_requests(self, keep: int = 8) -> None:
        """kmock matches each request by scanning every request it has ever seen, so a benchmark of thousands
        of requests turns quadratic (100 ms per pod at 200 users). Nothing here reads that history: keep the
        recent and the in-flight requests (a request must be in it while its rules are matched)."""
        for handler in (self, self.faults):
            history = handler._requests
            if len(history) > 4 * keep:
                history[:] = [r for r in history[:-keep] if id(r) in self._in_flight] + history[-keep:]

    async def _handle_delayed(self, request):
        delay = self._take_delay(request) if self.delays else None
        if delay is not None:
            seconds, lost = delay
            if lost:
                await asyncio.sleep(seconds)
                return web.json_response(_status(504, "injected timeout"), status=504)
            try:
                return await self._handle_now(request)
            finally:  # errors too (kmock raises a 409 as an exception) are answered late
                await asyncio.sleep(seconds)
        return await self._handle_now(request)

    async def _handle_now(self, request):
        if self.faults._payloads:
            self.faults._requests.append(request)  # kmock's filters select among the root's requests
            try:
                return await self.faults._handle(request)
            except NotImplementedError:  # no fault rule for this request
                pass
        if request.resource is not None and isinstance(request.data, dict):
            if request.action == enums.action.CREATE:
                meta = request.data.setdefault("metadata", {})
                if request.namespace:
                    meta.setdefault("namespace", request.namespace)
                meta.setdefault("uid", str(uuid.uuid4()))
                meta.setdefault("creationTimestamp", _now())
                meta["resourceVersion"] = str(next(self._versions))
                if request.resource.plural == "pods":
                    request.data.setdefault("status", {"phase": "Pending"})
            elif request.action == enums.action.UPDATE:
                request.data.setdefault("metadata", {})["resourceVersion"] = str(next(self._versions))
            if request.data.get("metadata", {}).get("ownerReferences"):
                self._owners_seen = True
        if request.resource is not None and request.name and str(request.method).upper().endswith("PUT"):
            return await self._replace(request)
        response = await self._emulate(request)
        if request.action == enums.action.DELETE and request.name and response.status < 300 and self._owners_seen:
            await self._collect_garbage()
        return response

    async def _emulate(self, request):
        """kmock's own handling. kmock picks a request's reaction by looking the request up in its request history,
        once per reaction and applying every reaction's criteria to every request there: with 32 requests in
        flight that was 40 % of the emulator's time in a 1000-server refresh. A request has to be in that history
        only while kmock matches it, so requests are matched one at a time with the history holding just that
        request and the open watches (which stream until closed, so they never take the lock)."""
        if request.action == enums.action.WATCH:
            return await super()._handle(request)
        async with self._matching:
            self._requests[:] = [*self._watches, request]
            return await super()._handle(request)

    def _KubernetesEmulator__get_obj(self, request, strict: bool):
        """kmock's lookup of the one object a request names tests every object it holds (with a facility's 3000
        pods, Secrets and Services, 40 % of the emulator's time in a refresh herd), although the objects are kept
        by (resource, namespace, name), the key kmock's own create/delete/update interceptor looks them up by.
        Look there first; a miss (or a request naming no object) goes through kmock's scan as before. (kmock's
        private name: its version is pinned, and every emulated test exercises this.)"""
        if strict and request.resource is not None and request.name is not None:
            key = (request.resource, request.namespace, request.name)
            if key in self._objects:
                return self._objects[key]
        return kmock.KubernetesEmulator._KubernetesEmulator__get_obj(self, request, strict)

    async def _replace(self, request):
        key = (request.resource, request.namespace, request.name)
        async with self._lock:
            obj = self._objects[key] if key in self._objects else None
            if obj is None or obj.deleted:
                return web.json_response(_status(404, "not found"), status=404)
            old_meta = obj.raw.get("metadata", {})
            body = json.loads(json.dumps(request.data))
            meta = body.setdefault("metadata", {})
            meta.update(
                uid=old_meta.get("uid"),
                creationTimestamp=old_meta.get("creationTimestamp"),
                namespace=request.namespace,
                name=request.name,
                resourceVersion=str(next(self._versions)),
            )
            obj.patch({k: None for k in obj.raw})  # a replacement, not a merge
            obj.patch(body)
            raw = obj.raw
            await self._buses[request.resource].put({"type": "MODIFIED", "object": raw})
        return web.json_response(raw)

    async def _collect_garbage(self) -> None:
        """Delete objects owned by objects that no longer exist (repeated for chains of owners)."""
        while True:
            async with self._lock:
                alive = {o.raw.get("metadata", {}).get("uid") for o in self._objects.values() if not o.deleted}
                orphans = [
                    (key, o)
                    for key, o in self._objects.items()
                    if not o.deleted
                    and any(
                        ref.get("uid") not in alive for ref in o.raw.get("metadata", {}).get("ownerReferences") or []
                    )
                ]
                for (resource, _, _), o in orphans:
                    raw = o.raw
                    o.delete()
                    await self._buses[resource].put({"type": "DELETED", "object": raw})
            if not orphans:
                return

    # ------------------------------------------------------------------ reading the state (tests)
    def stored(self, plural: str, namespace: str | None = "default") -> list[dict]:
        return [
            json.loads(json.dumps(o.raw))
            for (r, ns, _), o in list(self._objects.items())
            if r.plural == plural and (namespace is None or ns == namespace) and not o.deleted
        ]

    def get(self, plural: str, name: str, namespace: str | None = "default") -> dict | None:
        return next((o for o in self.stored(plural, namespace) if o["metadata"]["name"] == name), None)


class Kubelet:
    """Marks pods Running once all their Secret volumes exist (after ``delay`` seconds); optionally serves a
    stand-in single-user server on each pod's port."""

    def __init__(self, url: str, serve_pods: bool = False):
        self.url = url.rstrip("/")
        self.serve_pods = serve_pods
        self.delay = 0.0
        self._pending: dict[tuple, dict] = {}
        self._secrets: set[tuple] = set()
        self._servers: dict[tuple, web.AppRunner] = {}
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        self._http = aiohttp.ClientSession()
        self._tasks = [asyncio.ensure_future(self._watch("pods")), asyncio.ensure_future(self._watch("secrets"))]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for runner in self._servers.values():
            await runner.cleanup()
        await self._http.close()

    async def _watch(self, plural: str) -> None:
        async with self._http.get(
            f"{self.url}/api/v1/{plural}?watch=true", timeout=aiohttp.ClientTimeout(total=None)
        ) as watch:
            async for line in watch.content:
                if line.strip():
                    await self._event(plural, json.loads(line))

    async def _event(self, plural: str, event: dict) -> None:
        obj, kind = event["object"], event["type"]
        key = (obj["metadata"].get("namespace"), obj["metadata"]["name"])
        if plural == "secrets":
            (self._secrets.discard if kind == "DELETED" else self._secrets.add)(key)
        elif kind == "DELETED":
            self._pending.pop(key, None)
            if key in self._servers:
                await self._servers.pop(key).cleanup()
        elif (obj.get("status") or {}).get("phase", "Pending") == "Pending":
            self._pending[key] = obj
        for key, pod in list(self._pending.items()):
            needs = {(key[0], v["secret"]["secretName"]) for v in pod["spec"].get("volumes") or [] if v.get("secret")}
            if needs <= self._secrets:
                del self._pending[key]
                asyncio.ensure_future(self._run(key, pod))

    async def _run(self, key: tuple, pod: dict) -> None:
        await asyncio.sleep(self.delay)
        if self.serve_pods:
            port = (pod["spec"]["containers"][0].get("ports") or [{}])[0].get("containerPort", 8888)
            try:
                self._servers[key] = await _stand_in(port, key[1])
            except OSError as e:
                print(f"kubelet: cannot serve pod {key} on {port}: {e}", flush=True)
        statuses = [
            {
                "name": c["name"],
                "image": c.get("image", ""),
                "imageID": f"{c.get('image', '')}@sha256:{0:064}",
                "ready": True,
                "started": True,
                "restartCount": 0,
                "state": {"running": {"startedAt": _now()}},
            }
            for c in pod["spec"]["containers"]
        ]
        await self._http.patch(
            f"{self.url}/api/v1/namespaces/{key[0]}/pods/{key[1]}/status",
            json={
                "status": {"phase": "Running", "podIP": "127.0.0.1", "startTime": _now(), "containerStatuses": statuses}
            },
        )


async def _stand_in(port: int, name: str) -> web.AppRunner:
    async def answer(request):
        return web.json_response({"pod": name, "path": request.path})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{{name: emu, cluster: {{server: "{url}"}}}}]
users: [{{name: emu, user: {{token: test}}}}]
contexts: [{{name: emu, context: {{cluster: emu, user: emu, namespace: default}}}}]
current-context: emu
"""


class KubeThread:
    """The emulator and kubelet on their own event loop in a thread of the test process, on a real port."""

    def __init__(self, serve_pods: bool = False):
        self.serve_pods = serve_pods
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="kube-emulator", daemon=True)

    def __enter__(self) -> "KubeThread":
        self._thread.start()
        self.call(self._start())
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.call(self._stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            self.loop.close()

    def call(self, coro, timeout: float = 30):
        """Run ``coro`` on the emulator's loop and wait (bounded) for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _start(self) -> None:
        self.k8s = CasaKubeEmulator()
        await self.k8s.__aenter__()
        self.k8s.declare()
        self._server = kmock.Server(self.k8s, host="127.0.0.1")
        await self._server.__aenter__()
        self.url = str(self._server.url).rstrip("/")
        self.kubelet = Kubelet(self.url, self.serve_pods)
        await self.kubelet.start()

    async def _stop(self) -> None:
        await self.kubelet.stop()
        await self._server.__aexit__(None, None, None)
        await self.k8s.__aexit__(None, None, None)

    def write_kubeconfig(self, path: Path) -> Path:
        path.write_text(KUBECONFIG.format(url=self.url))
        return path

    # conveniences for tests (the state is read on the emulator's loop)
    def stored(self, plural: str, namespace: str | None = "default") -> list[dict]:
        return self.call(_sync(self.k8s.stored, plural, namespace))

    def get(self, plural: str, name: str, namespace: str | None = "default") -> dict | None:
        return self.call(_sync(self.k8s.get, plural, name, namespace))

    def fail(self, action, plural: str, status: int, times: int = 1, group_version: str = "v1"):
        return self.call(_sync(self.k8s.fail, action, plural, status, times, group_version))

    def delay(self, action, plural: str, seconds: float, times: int = 1, lost: bool = False) -> None:
        self.call(_sync(self.k8s.delay, action, plural, seconds, times, lost))

    def clear_faults(self) -> None:
        self.call(_sync(self.k8s.clear_faults))

    def set_rbac(self, mode: str) -> None:
        self.call(_sync(self.k8s.set_rbac, mode))


async def _sync(fn, *args):
    return fn(*args)


@attrs.define(kw_only=True)
class ControlledEmulator(CasaKubeEmulator):
    """For a hub in another process: ``POST /casa-test/faults`` with ``{"method": "POST", "plural": "secrets",
    "status": 500, "count": 2}`` adds a kmock fault rule, ``{"method": "PATCH", "plural": "secrets", "delay": 3,
    "lost": false, "count": 1}`` a slow answer (see :meth:`CasaKubeEmulator.delay`), ``{"clear": true}`` removes
    them all and ``{"kubelet_delay": 2}`` keeps new pods Pending that long."""

    kubelet: "Kubelet | None" = None

    async def _handle(self, request):
        if request.url.path != "/casa-test/faults":
            return await super()._handle(request)
        body = json.loads(request.body or b"{}")
        if body.get("clear"):
            self.clear_faults()
        elif "rbac" in body:
            self.set_rbac(body["rbac"])
        elif "kubelet_delay" in body:
            self.kubelet.delay = float(body["kubelet_delay"])
        elif "delay" in body:
            method, plural = body["method"].upper(), body["plural"]
            self.delays.append(
                [
                    lambda r: r.method == method and r.resource is not None and r.resource.plural == plural,
                    float(body["delay"]),
                    bool(body.get("lost")),
                    int(body.get("count", 1)),
                ]
            )
        else:
            answers = iter(
                [kmock.Response(status=body["status"], payload=_status(body["status"], "injected fault"))]
                * int(body.get("count", 1))
            )
            self.faults[kmock.method(body["method"].upper()), kmock.resource("v1", body["plural"])] << (
                lambda: next(answers, NotImplemented)
            )
        return web.json_response({"faults": len(self.faults._payloads)})


def _tls_server_cls(cert_file: str, key_file: str) -> type:
    """kmock's aiohttp test server, serving TLS with this certificate (kmock.Server passes no ``ssl``)."""
    import ssl

    from aiohttp.test_utils import RawTestServer

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)

    class TLSServer(RawTestServer):
        async def start_server(self, loop=None, **kwargs):
            await super().start_server(loop=loop, ssl=context, **kwargs)

    return TLSServer


async def _main(port: int, tls: tuple[int, str, str] | None = None) -> None:
    """The emulator on http://127.0.0.1:PORT (the kubelet's and the tests' own door) and, with ``tls`` =
    (port, cert file, key file), the same API over https on that port, as a real API server serves it."""
    async with ControlledEmulator() as k8s, kmock.Server(k8s, host="127.0.0.1", port=port) as server:
        k8s.declare()
        kubelet = k8s.kubelet = Kubelet(str(server.url), serve_pods=True)
        await kubelet.start()
        print(f"kube emulator on {server.url}", flush=True)
        try:
            if tls is None:
                await asyncio.Event().wait()
            else:
                async with kmock.Server(
                    k8s, host="127.0.0.1", port=tls[0], server_cls=_tls_server_cls(tls[1], tls[2])
                ) as secure:
                    print(f"kube emulator on {secure.url}", flush=True)
                    await asyncio.Event().wait()
        finally:
            await kubelet.stop()


# ------------------------------------------------------------------ the emulator as a subprocess
# (tests/hub/test_kube_spawner.py: a hub in its own process; faults over HTTP, see ControlledEmulator)
import subprocess  # noqa: E402
from dataclasses import dataclass  # noqa: E402

import httpx  # noqa: E402

from tests.support import REPO, free_port, stop_process, wait_for_port  # noqa: E402


@dataclass
class Kube:
    url: str
    proc: subprocess.Popen
    kubeconfig: Path
    tls_url: str | None = None  # with start_kube(tls=True): the same API over https, as a cluster serves it
    ca_file: Path | None = None  # ... and the CA that signed its certificate (a service account's ca.crt)

    def get(self, path: str) -> httpx.Response:
        return httpx.get(self.url + path, timeout=10)

    def objects(self, plural: str, namespace: str = "default") -> list[dict]:
        r = self.get(f"/api/v1/namespaces/{namespace}/{plural}")
        r.raise_for_status()
        return r.json()["items"]

    def fault(self, method: str, plural: str, status: int, count: int = 1) -> None:
        httpx.post(
            self.url + "/casa-test/faults",
            timeout=10,
            json={"method": method, "plural": plural, "status": status, "count": count},
        ).raise_for_status()

    def delay(self, method: str, plural: str, seconds: float, count: int = 1, lost: bool = False) -> None:
        """The next ``count`` ``method`` requests on ``plural`` are answered after ``seconds`` (applied at once;
        with ``lost`` not applied and answered 504)."""
        httpx.post(
            self.url + "/casa-test/faults",
            timeout=10,
            json={"method": method, "plural": plural, "delay": seconds, "count": count, "lost": lost},
        ).raise_for_status()

    def kubelet_delay(self, seconds: float) -> None:
        httpx.post(self.url + "/casa-test/faults", json={"kubelet_delay": seconds}, timeout=10).raise_for_status()

    def clear_faults(self) -> None:
        httpx.post(self.url + "/casa-test/faults", json={"clear": True}, timeout=10).raise_for_status()

    def set_rbac(self, mode: str) -> None:
        """``chart``, ``chart+extras`` or ``off`` (see tests/hub/rbac.py)."""
        httpx.post(self.url + "/casa-test/faults", json={"rbac": mode}, timeout=10).raise_for_status()

    def create(self, plural: str, body: dict, namespace: str = "default") -> None:
        httpx.post(f"{self.url}/api/v1/namespaces/{namespace}/{plural}", json=body, timeout=10).raise_for_status()


KUBECONFIG_TLS = """apiVersion: v1
kind: Config
clusters: [{{name: emu, cluster: {{server: "{url}", certificate-authority: "{ca}"}}}}]
users: [{{name: emu, user: {{token: test}}}}]
contexts: [{{name: emu, context: {{cluster: emu, user: emu, namespace: default}}}}]
current-context: emu
"""


def assert_credentials_mounted(pod: dict, secret: dict, bundle, user: str) -> tuple[dict, dict]:
    """The Secret holds exactly ``bundle`` and is owned by nothing (written before the pod; the stop deletes it);
    the pod mounts it read-only at /etc/casa. Returns the container and the credentials volume."""
    import base64

    from casa_hub.objects import secret_key

    assert pod is not None and secret is not None
    assert {k: base64.b64decode(v) for k, v in secret["data"].items()} == {
        secret_key(p): f.content for p, f in bundle.files.items()
    }
    assert not secret["metadata"].get("ownerReferences")
    assert pod["metadata"]["labels"]["casa-hub/server"] == f"jupyter-{user}"
    container = pod["spec"]["containers"][0]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "casa-credentials"]
    assert mount == {"name": "casa-credentials", "mountPath": "/etc/casa", "readOnly": True}
    (volume,) = [v for v in pod["spec"]["volumes"] if v["name"] == "casa-credentials"]
    assert volume["secret"]["secretName"] == f"casa-{user}"
    return container, volume


def start_kube(tmp: Path, tls: bool = False) -> Kube:
    """The emulator as a subprocess on http://127.0.0.1 (``Kube.url``: the tests' and the kubelet's door).

    ``tls``: it also serves the API over https with a certificate for 127.0.0.1 from a fresh test CA
    (``Kube.tls_url``, ``Kube.ca_file``; ``tmp/kube-tls/``), and the kubeconfig points there, as a
    cluster's does (in-cluster config: ``https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT``, the
    service account's ``ca.crt``)."""
    port = free_port()
    argv = [sys.executable, "-m", "tests.hub.kube", str(port)]
    tls_port = ca_file = None
    if tls:
        from tests.pki import TestPKI

        pki = TestPKI.create("Casa test Kubernetes CA")
        cert, key = pki.server_cert(("127.0.0.1", "localhost", "kubernetes.default.svc"))
        tls_dir = tmp / "kube-tls"
        tls_dir.mkdir(exist_ok=True)
        ca_file, cert_file, key_file = tls_dir / "ca.crt", tls_dir / "tls.crt", tls_dir / "tls.key"
        ca_file.write_bytes(pki.ca_pem)
        cert_file.write_bytes(cert)
        key_file.write_bytes(key)
        key_file.chmod(0o600)
        tls_port = free_port()
        argv += ["--tls", str(tls_port), str(cert_file), str(key_file)]
    proc = subprocess.Popen(
        argv, cwd=REPO, stdout=open(tmp / "kube.log", "wb"), stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        wait_for_port(port, proc=proc, timeout=30)
        if tls_port:
            wait_for_port(tls_port, proc=proc, timeout=30)
    except Exception:
        stop_process(proc)
        raise
    kubeconfig = tmp / "kubeconfig"
    if tls_port:
        tls_url = f"https://127.0.0.1:{tls_port}"
        kubeconfig.write_text(KUBECONFIG_TLS.format(url=tls_url, ca=ca_file))
        return Kube(f"http://127.0.0.1:{port}", proc, kubeconfig, tls_url, ca_file)
    kubeconfig.write_text(KUBECONFIG.format(url=f"http://127.0.0.1:{port}"))
    return Kube(f"http://127.0.0.1:{port}", proc, kubeconfig)


def stop_kube(kube: Kube) -> None:
    stop_process(kube.proc)


if __name__ == "__main__":
    # python -m tests.hub.kube PORT [--tls TLS_PORT CERT_FILE KEY_FILE]
    _tls = (int(sys.argv[3]), sys.argv[4], sys.argv[5]) if sys.argv[2:3] == ["--tls"] else None
    asyncio.run(_main(int(sys.argv[1]), _tls))
