"""Casa clusters from notebook code, started by the user's own Jupyter server so the Dask sidebar lists them.

A kernel is another process than the Jupyter server: a cluster it built itself would be invisible to
dask-labextension's sidebar. :class:`CasaCluster` asks the server instead, over Casa's REST API
(``POST casa/clusters``, see :mod:`casa_hub_ext.handlers`), and keeps a handle that behaves like a Dask cluster::

    from casa_hub_ext import CasaCluster

    cluster = CasaCluster(backend="local", workers=2, gpus_per_worker=1)   # listed in the Dask sidebar
    client = cluster.get_client()                                          # TLS with the user's certificates
    cluster.scale(4); cluster.adapt(minimum=0, maximum=8); cluster.close()

How a kernel finds its server: the server extension (:func:`publish_server`, called by
:class:`~casa_hub_ext.app.CasaExtensionApp` once the server listens) sets, for the kernels it starts and only
where they are absent, ``CASA_SERVER_URL`` (the server's local URL with its base URL) and, for a server with
token auth outside JupyterHub, ``CASA_SERVER_TOKEN_FILE``, a user-private file (0600, in the Jupyter runtime
directory) holding the server's token. Under JupyterHub the kernel authenticates with ``JUPYTERHUB_API_TOKEN``
(its scope ``access:servers!server`` admits it to its own server). Tokens never go into a log or a message.

Nothing here runs at import time; :mod:`distributed` is imported by the first cluster.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
import os
import ssl
import threading
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any, Mapping, MutableMapping

from .errors import CasaUserError, ClusterNotFound, CredentialError, LimitError, OptionError

log = logging.getLogger(__name__)

SERVER_URL_ENV = "CASA_SERVER_URL"
TOKEN_FILE_ENV = "CASA_SERVER_TOKEN_FILE"
HUB_TOKEN_ENV = "JUPYTERHUB_API_TOKEN"
START_TIMEOUT = 600.0  # a start: HTCondor jobs can take minutes to run (the server bounds its own wait too)
REQUEST_TIMEOUT = 60.0  # every other call
CLOSE_TIMEOUT = 180.0

_USER_ERRORS = {cls.__name__: cls for cls in (CasaUserError, OptionError, LimitError, ClusterNotFound)}


class CasaServerError(RuntimeError):
    """The user's Jupyter server could not be asked, or answered something else than Casa's API does."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class NoCasaServer(CasaServerError):
    """This process is no kernel of a Jupyter server running Casa's extension (``CASA_SERVER_URL``)."""


# ---------------------------------------------------------------------------------------------- server side
def local_server_url(serverapp) -> str | None:
    """The URL this process (and its kernels) reaches the Jupyter server at, base URL included; None for a
    server on a Unix socket."""
    if getattr(serverapp, "sock", None):
        return None
    ip = serverapp.ip or ""
    if ip in ("", "0.0.0.0", "*"):
        host = "127.0.0.1"
    elif ip == "::":
        host = "[::1]"
    elif ":" in ip:
        host = f"[{ip}]"
    else:
        host = ip
    scheme = "https" if serverapp.certfile else "http"
    base = "/" + serverapp.base_url.strip("/") + "/" if serverapp.base_url.strip("/") else "/"
    return f"{scheme}://{host}:{serverapp.port}{base}"


def publish_server(serverapp, environ: MutableMapping[str, str] | None = None) -> Path | None:
    """Tell kernels where their server is (``CASA_SERVER_URL``) and, outside JupyterHub with token auth, where
    its token is (``CASA_SERVER_TOKEN_FILE``, a 0600 file in the runtime directory). Only variables that are
    absent are set. Returns the token file written (the caller removes it when the server stops)."""
    environ = os.environ if environ is None else environ
    if SERVER_URL_ENV in environ:
        log.info("casa: kernels keep %s from the environment", SERVER_URL_ENV)
        return None
    url = local_server_url(serverapp)
    if url is None:
        log.warning("casa: the server listens on a Unix socket: CasaCluster() in kernels cannot reach it")
        return None
    token = getattr(getattr(serverapp, "identity_provider", None), "token", "") or ""
    path = None
    if token and HUB_TOKEN_ENV not in environ and TOKEN_FILE_ENV not in environ:
        from jupyter_core.paths import secure_write

        path = Path(serverapp.runtime_dir) / f"casa-server-{os.getpid()}.token"
        with secure_write(str(path)) as f:  # 0600, refused if it cannot be made private
            f.write(token)
        environ[TOKEN_FILE_ENV] = str(path)
    environ[SERVER_URL_ENV] = url
    log.info("casa: CasaCluster() in kernels asks %s%s", url, f" (token in {path})" if path else "")
    return path


# ---------------------------------------------------------------------------------------------- the client
@dataclass(frozen=True)
class CasaServer:
    """Casa's REST API of one Jupyter server, over HTTP with a timeout on every call."""

    url: str  # ends with /
    token: str | None = field(default=None, repr=False)
    ssl_context: ssl.SSLContext | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> CasaServer:
        environ = os.environ if environ is None else environ
        url = environ.get(SERVER_URL_ENV)
        if not url:
            raise NoCasaServer(
                f"no Casa server to ask: {SERVER_URL_ENV} is not set. CasaCluster works in a kernel started by a "
                "Jupyter server with Casa's extension (casa_hub_ext); elsewhere use casa_hub_ext.factory.make_cluster"
            )
        if not urllib.parse.urlsplit(url).scheme.startswith("http"):
            raise NoCasaServer(f"no Casa server to ask: {SERVER_URL_ENV}={url!r} is not an http(s) URL")
        token = environ.get(HUB_TOKEN_ENV) or None
        token_file = environ.get(TOKEN_FILE_ENV)
        if token is None and token_file:
            try:
                token = Path(token_file).read_text().strip() or None
            except OSError as e:
                raise NoCasaServer(
                    f"no Casa server to ask: cannot read {TOKEN_FILE_ENV}={token_file}: {e.strerror} "
                    "(restart the kernel if the server was restarted)"
                ) from None
        return cls(url.rstrip("/") + "/", token)

    @functools.cached_property
    def _opener(self) -> urllib.request.OpenerDirector:
        # the server is local: no HTTP proxy of the environment applies to it, and no redirect is followed
        class NoRedirect(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *args, **kwargs):
                return None

        return urllib.request.build_opener(
            urllib.request.ProxyHandler({}), NoRedirect(), urllib.request.HTTPSHandler(context=self.ssl_context)
        )

    def request(self, method: str, path: str, body: Any = None, timeout: float = REQUEST_TIMEOUT) -> Any:
        """The decoded JSON answer (None for 204); a Casa error answer raises the server's exception."""
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"token {self.token}"
        data = None
        if body is not None:
            data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        what = f"{method} {self.url}{path}"
        try:
            with self._opener.open(request, timeout=timeout) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        except (TimeoutError, urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            if isinstance(reason, TimeoutError) or isinstance(e, TimeoutError):
                raise CasaServerError(f"{what}: no answer within {timeout:g} s") from None
            raise CasaServerError(f"{what}: your Jupyter server did not answer ({reason})") from None
        return self._decode(what, status, raw)

    @staticmethod
    def _decode(what: str, status: int, raw: bytes) -> Any:
        try:
            value = json.loads(raw) if raw else None
        except ValueError:
            value = None
        if 200 <= status < 300:
            if raw and value is None:
                raise CasaServerError(f"{what}: the answer is not JSON", status)
            return value
        message = value.get("message") if isinstance(value, dict) else None
        error = value.get("error") if isinstance(value, dict) else None
        if error:  # one of Casa's user errors: raised again here, with the server's message and field
            field_name = value.get("field")
            if error == "CredentialError":
                raise CredentialError(field_name or "credentials", message)
            exc = _USER_ERRORS.get(error, CasaUserError)(message)
            exc.field = field_name
            raise exc
        if status == 404:
            raise NoCasaServer(f"no Casa server to ask: {what} is not found (is casa_hub_ext enabled there?)", status)
        if status in (401, 403):
            raise CasaServerError(f"{what}: the server refused this kernel's credentials ({status})", status)
        raise CasaServerError(f"{what}: HTTP {status}: {message or 'see the Jupyter server log'}", status)


_shared_runner = None
_shared_lock = threading.Lock()


def _shared_loop():
    """One background event loop for every synchronous handle (as distributed's clients share theirs)."""
    global _shared_runner
    from distributed.utils import LoopRunner

    with _shared_lock:
        if _shared_runner is None:
            runner = LoopRunner(asynchronous=False)
            runner.start()
            _shared_runner = runner
        return _shared_runner.loop


def _awaitable_none():
    from distributed.utils import NoOpAwaitable

    return NoOpAwaitable()


@functools.cache
def _cluster_class():
    """:class:`CasaCluster`, built on :mod:`distributed`'s ``SyncMethodMixin`` at first use, not at import."""
    from distributed.core import Status
    from distributed.utils import SyncMethodMixin

    class CasaCluster(SyncMethodMixin):
        __doc__ = _CLUSTER_DOC

        def __init__(
            self,
            *,
            backend: str | None = None,
            workers: int | None = None,
            adapt: Mapping[str, int] | None = None,
            cores: int | None = None,
            memory: int | str | None = None,
            gpus_per_worker: int | None = None,
            name: str | None = None,
            asynchronous: bool = False,
            timeout: float = START_TIMEOUT,
            server: CasaServer | None = None,
            _model: dict | None = None,
        ):
            request = {
                "name": name,
                "backend": backend,
                "workers": workers,
                "adapt": dict(adapt) if isinstance(adapt, Mapping) else adapt,
                "cores": cores,
                "memory": memory,
                "gpus_per_worker": gpus_per_worker,
            }
            self._request = {k: v for k, v in request.items() if v is not None}
            self._server = server or CasaServer.from_env()
            self._timeout = timeout
            self._model = _model
            self._asynchronous = asynchronous
            self._security = None
            self.status = Status.running if _model is not None else Status.created
            if asynchronous:
                from tornado.ioloop import IOLoop

                self.loop = IOLoop.current()
            else:
                self.loop = _shared_loop()
                if _model is None:
                    self.sync(self._start)

        # -------------------------------------------------------------- what the server says
        @property
        def id(self) -> str | None:
            return self._model["id"] if self._model else None

        @property
        def name(self) -> str | None:
            return self._model.get("name") if self._model else self._request.get("name")

        @property
        def model(self) -> dict:
            """The server's last description of the cluster (dask-labextension's model plus ``casa``)."""
            return dict(self._model or {})

        @property
        def scheduler_address(self) -> str:
            return self._model["scheduler_address"] if self._model else "<Not Connected>"

        @property
        def dashboard_link(self) -> str | None:
            """The dashboard as JupyterLab serves it (dask-labextension's proxy, through the user's server)."""
            return (self._model or {}).get("dashboard_proxy")

        @property
        def security(self):
            """The user's Dask TLS client configuration, from the mounted Casa credentials."""
            if self._security is None:
                from .bundle import MountedBundle

                self._security = MountedBundle.from_env().security(roles=("client",))
            return self._security

        # -------------------------------------------------------------- lifecycle
        async def _call(self, method: str, path: str, body=None, timeout: float = REQUEST_TIMEOUT):
            loop = asyncio.get_running_loop()
            call = functools.partial(self._server.request, method, path, body, timeout)
            return await loop.run_in_executor(None, call)

        async def _start(self):
            if self.status == Status.created:
                self.status = Status.starting
                try:
                    self._model = await self._call("POST", "casa/clusters", self._request, self._timeout)
                except BaseException:
                    self.status = Status.failed
                    raise
                self.status = Status.running
            elif self.status == Status.failed:
                raise RuntimeError("this cluster failed to start; make a new CasaCluster")
            return self

        def __await__(self):
            return self._start().__await__()

        async def __aenter__(self):
            return await self

        async def __aexit__(self, *exc):
            await self._close()

        def __enter__(self):
            if self.asynchronous:
                raise TypeError("an asynchronous CasaCluster is used with 'async with'")
            return self

        def __exit__(self, *exc):
            self.close()

        async def _close(self):
            if self.status in (Status.closed, Status.created, Status.failed):
                self.status = Status.closed
                return
            self.status = Status.closing
            try:
                await self._call("DELETE", f"casa/clusters/{self.id}", timeout=CLOSE_TIMEOUT)
            except ClusterNotFound:
                pass  # shut down already, from the sidebar
            except BaseException:
                self.status = Status.running
                raise
            self.status = Status.closed

        def close(self, timeout: float | None = None):
            """Shut the cluster down (like the sidebar's SHUTDOWN) and free what it booked."""
            if self.status == Status.closed:
                return _awaitable_none() if self.asynchronous else None
            return self.sync(self._close, callback_timeout=timeout)

        # -------------------------------------------------------------- scaling
        def _need_running(self):
            if self.status != Status.running:
                raise RuntimeError(f"the cluster is {self.status.name}")

        async def _patch(self, body):
            self._need_running()
            self._model = await self._call("PATCH", f"casa/clusters/{self.id}", body)
            return self._model

        def scale(self, n: int):
            """Run ``n`` workers (ends adaptive scaling), within the facility's bounds."""
            return self.sync(self._patch, {"workers": n})

        def adapt(self, minimum: int = 0, maximum: int | None = None, **kwargs):
            """Scale between ``minimum`` and ``maximum`` workers with the load (GPUs are booked for the maximum)."""
            if kwargs:
                raise TypeError(
                    f"CasaCluster.adapt takes minimum and maximum workers only, not {', '.join(sorted(kwargs))}"
                )
            if isinstance(maximum, float) and math.isinf(maximum):
                maximum = None
            return self.sync(self._patch, {"adapt": {"minimum": minimum, "maximum": maximum}})

        async def _refresh(self):
            self._model = await self._call("GET", f"casa/clusters/{self.id}")
            return self._model

        def refresh(self):
            """Read the cluster's state again (workers, adapt) from the server."""
            self._need_running()
            return self.sync(self._refresh)

        def get_client(self, **kwargs):
            """A :class:`distributed.Client` of this cluster, with the user's TLS certificates."""
            from distributed import Client

            self._need_running()
            kwargs.setdefault("asynchronous", self.asynchronous)
            return Client(self, **kwargs)

        # -------------------------------------------------------------- finding clusters
        @classmethod
        def from_id(cls, cluster_id: str, *, asynchronous: bool = False, server: CasaServer | None = None):
            """The handle of a Casa cluster the server runs (started from the sidebar, the dialog or code)."""
            server = server or CasaServer.from_env()
            path = f"casa/clusters/{urllib.parse.quote(str(cluster_id), safe='')}"
            if asynchronous:

                async def attach():
                    model = await asyncio.get_running_loop().run_in_executor(None, server.request, "GET", path)
                    return cls(asynchronous=True, server=server, _model=model)

                return attach()
            return cls(server=server, _model=server.request("GET", path))

        @classmethod
        def list(cls, *, asynchronous: bool = False, server: CasaServer | None = None):
            """Handles of every Casa cluster of the server, as the Dask sidebar lists them."""
            server = server or CasaServer.from_env()
            if asynchronous:

                async def listing():
                    models = await asyncio.get_running_loop().run_in_executor(
                        None, server.request, "GET", "casa/clusters"
                    )
                    return [cls(asynchronous=True, server=server, _model=m) for m in models]

                return listing()
            return [cls(server=server, _model=m) for m in server.request("GET", "casa/clusters")]

        # -------------------------------------------------------------- display
        def _summary(self) -> str:
            m = self._model or {}
            adapt = m.get("adapt")
            size = f"adapt={adapt['minimum']}..{adapt['maximum']}" if adapt else f"workers={m.get('workers', '?')}"
            backend = (m.get("casa") or {}).get("backend") or self._request.get("backend") or "?"
            return f"{self.name!r}, {backend}, {self.scheduler_address!r}, {size}, status={self.status.name}"

        def __repr__(self):
            return f"CasaCluster({self._summary()})"

        def _repr_html_(self):
            link = self.dashboard_link
            dashboard = f' <a href="{escape(link)}" target="_blank">dashboard</a>' if link else ""
            return f"<p><strong>CasaCluster</strong> {escape(self._summary())}{dashboard}</p>"

    CasaCluster.__module__, CasaCluster.__qualname__ = __name__, "CasaCluster"
    return CasaCluster


_CLUSTER_DOC = """A Casa cluster started by the user's Jupyter server, so the JupyterLab Dask sidebar lists it.

``CasaCluster(backend=, workers= | adapt={"minimum": a, "maximum": b}, cores=, memory=, gpus_per_worker=,
name=)`` asks the server (``POST casa/clusters``), which bounds the options like the dialog's and raises, with
its own message, :class:`~casa_hub_ext.errors.OptionError` (422), :class:`~casa_hub_ext.errors.LimitError`
(409) or :class:`~casa_hub_ext.errors.CredentialError`; nothing starts then. Options left out take the
facility's defaults. Synchronous by default; ``asynchronous=True`` gives an awaitable, as other Dask cluster
classes do. ``timeout``: seconds to wait for the start (HTCondor jobs can take minutes).

``CasaCluster.from_id(id)`` and ``CasaCluster.list()`` give handles of clusters the server already runs.
"""


def __getattr__(name: str):
    if name == "CasaCluster":
        return _cluster_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
