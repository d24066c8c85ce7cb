"""Keep the storage tokens inside running Dask workers fresh.

HTCondor and gateway workers do not see the user's mounted credential directory: without help they keep
whatever token they started with, and their reads fail once it expires (XCache tokens live an hour by default),
although the hub has long renewed the mounted file. :class:`WorkerCredentials` closes that gap:

* :meth:`WorkerCredentials.attach` registers a :class:`CredentialFiles` worker plugin (one fixed name,
  :data:`PLUGIN_NAME`) on the cluster's scheduler. Every worker, those joining later included, writes the
  credential files into a private directory below its local directory (0600, atomically) and points the
  variable the manifest names for them (``BEARER_TOKEN_FILE`` for the storage token, which the XRootD client's
  ztn plugin, gfal and ServiceX read) at its copy, so the next read in that worker uses it;
* a watcher polls the mounted files (in a thread, never blocking the event loop) and, when their content
  changed (the hub re-minted; the kubelet swaps Secret files atomically), registers the plugin again on every
  attached cluster: the workers replace their copy in place;
* :meth:`WorkerCredentials.detach` stops pushing to a cluster and closes its client (call it before the
  cluster closes).

Failures are logged without token bytes and retried with bounded backoff; the next poll tries again.
Nothing here runs at import time.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from distributed.diagnostics.plugin import WorkerPlugin
from traitlets import Float, Integer, List, Unicode
from traitlets.config import LoggingConfigurable

from .bundle import MountedBundle
from .errors import CredentialError

PLUGIN_NAME = "casa-credentials"
WORKER_DIR = "casa-credentials"  # below the worker's local directory
# WLCG token discovery reads $BEARER_TOKEN before $BEARER_TOKEN_FILE: a stale inline token would win
INLINE_TOKEN_ENV = "BEARER_TOKEN"
TOKEN_FILE_ENV = "BEARER_TOKEN_FILE"


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


# ---------------------------------------------------------------------------------------------- worker side
def write_private(directory: Path, name: str, content: bytes) -> Path:
    """Write ``directory/name`` (0600) through a temporary file renamed over it: a reader sees the old or the
    new content, never a partial one."""
    target = directory / name
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.")  # mkstemp: 0600, ours
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return target


class CredentialFiles(WorkerPlugin):
    """The current bytes of the worker-bound credentials, written by each worker into
    ``<local_directory>/casa-credentials/`` with the variables that name them set in the worker's environment.

    Shipped by value (see :func:`ship_by_value`): worker nodes need ``distributed`` but not ``casa_hub_ext``.
    ``files`` holds ``(file name, env variable or None, content)``; its bytes never appear in ``repr``.
    """

    idempotent = False  # registering again replaces the old copy: that is the point

    def __init__(self, files: tuple[tuple[str, str | None, bytes], ...], expires_at: str | None = None):
        for name, _, _ in files:
            if not name or name != os.path.basename(name) or name.startswith("."):
                raise ValueError(f"credential file name {name!r} must be a plain file name")
        self.files = tuple(files)
        self.expires_at = expires_at

    def __repr__(self) -> str:
        names = ", ".join(name for name, _, _ in self.files)
        return f"<CredentialFiles [{names}] expiring {self.expires_at or 'never'}>"

    def setup(self, worker) -> None:
        directory = Path(worker.local_directory) / WORKER_DIR
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        directory.chmod(0o700)
        for name, env, content in self.files:
            path = write_private(directory, name, content)
            if env:
                os.environ[env] = str(path)
                if env == TOKEN_FILE_ENV:
                    os.environ.pop(INLINE_TOKEN_ENV, None)

    def teardown(self, worker) -> None:
        # the files stay: a replacing plugin is set up right after this, and readers must never find none;
        # they go with the worker's local directory
        pass


def ship_by_value() -> None:
    """Have cloudpickle send :class:`CredentialFiles` by value, so worker nodes need not install this package
    (distributed's ``dumps`` uses cloudpickle for modules in this registry). Idempotent."""
    import cloudpickle

    module = sys.modules[__name__]
    if module.__name__ not in cloudpickle.list_registry_pickle_by_value():
        cloudpickle.register_pickle_by_value(module)


# ---------------------------------------------------------------------------------------------- user side
@dataclass(frozen=True)
class Snapshot:
    """The worker-bound credentials as mounted at one moment."""

    files: tuple[tuple[str, str | None, bytes], ...]
    fingerprint: str
    expires_at: datetime.datetime | None
    kinds: tuple[str, ...]

    def plugin(self) -> CredentialFiles:
        return CredentialFiles(self.files, self.expires_at.isoformat() if self.expires_at else None)

    def redact(self, text: str) -> str:
        """``text`` with any credential content cut out (exception messages we did not write)."""
        for _, _, content in self.files:
            secret = content.strip().decode(errors="replace")
            if secret:
                text = text.replace(secret, "[redacted]")
        return text


def read_snapshot(bundle: MountedBundle, kinds: list[str]) -> Snapshot:
    """The files of ``kinds`` present in ``bundle`` (blocking I/O: run it in a thread)."""
    files, expiries, found = [], [], []
    for kind in kinds:
        cred = bundle.credentials.get(kind)
        if cred is None:
            continue  # not minted by this hub (e.g. no macaroon)
        try:
            content = cred.path.read_bytes()
        except OSError as e:
            raise CredentialError(kind, f"cannot read the {cred.title} ({kind}) at {cred.path}: {e.strerror}") from None
        if not content.strip():
            raise CredentialError(kind, f"the {cred.title} ({kind}) at {cred.path} is empty")
        files.append((cred.path.name, cred.env, content))
        found.append(kind)
        if cred.expires_at is not None:
            expiries.append(cred.expires_at)
    digest = hashlib.sha256()
    for name, env, content in files:
        digest.update(f"{name}\0{env}\0{len(content)}\0".encode() + content)
    return Snapshot(tuple(files), digest.hexdigest(), min(expiries) if expiries else None, tuple(found))


def _is_gateway(cluster) -> bool:
    """A dask-gateway cluster (Casa's own subclass too): its scheduler speaks the gateway's per-cluster TLS."""
    gateway = sys.modules.get("dask_gateway")  # no gateway cluster exists before dask_gateway is imported
    return gateway is not None and isinstance(cluster, gateway.GatewayCluster)


def _cluster_name(cluster) -> str:
    return str(getattr(cluster, "name", None) or getattr(cluster, "scheduler_address", None) or type(cluster).__name__)


def _closed(cluster) -> bool:
    status = getattr(cluster, "status", None)
    return getattr(status, "name", str(status)) in ("closing", "closed", "failed")


@dataclass(eq=False)
class _Attachment:
    cluster: object
    name: str
    client: object | None = None
    pushed: str | None = None  # fingerprint of what the workers have
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class WorkerCredentials(LoggingConfigurable):
    """Pushes the user's storage credentials to the workers of attached clusters, and again whenever the hub
    renews them (see the module documentation). Wire :meth:`attach` after a cluster started and :meth:`detach`
    before it closes; :meth:`close` when the server stops."""

    kinds = List(
        Unicode(),
        ["xcache", "macaroon"],
        help="""Credential kinds (manifest names) whose files go to Dask workers: by default the XCache storage
        token (``BEARER_TOKEN_FILE``) and, where the hub mints one, the XCache macaroon
        (``CASA_MACAROON_FILE``). Kinds the bundle lacks are skipped. Keep pool and TLS credentials out: workers
        get those at submit time. Example: ``c.WorkerCredentials.kinds = ["xcache"]``""",
    ).tag(config=True)

    poll_interval = Float(
        30.0,
        min=0.05,
        help="""Seconds between two looks at the mounted credentials; a renewal reaches the workers within about
        this long (plus the kubelet's own Secret sync delay). Keep it well below the hub's renewal margin
        (``CasaAuthenticator.credential_refresh_margin``). Default 30.
        Example: ``c.WorkerCredentials.poll_interval = 10``""",
    ).tag(config=True)

    push_timeout = Float(
        30.0,
        min=0.1,
        help="""Seconds one push (connecting to the scheduler and registering the plugin on every worker) may
        take before it counts as failed. Default 30. Example: ``c.WorkerCredentials.push_timeout = 60``""",
    ).tag(config=True)

    push_attempts = Integer(
        4,
        min=1,
        help="""Attempts per push, with exponential backoff from ``retry_delay`` between them, before waiting
        for the next poll. Default 4. Example: ``c.WorkerCredentials.push_attempts = 2``""",
    ).tag(config=True)

    retry_delay = Float(
        1.0,
        min=0.0,
        help="""Seconds before the first retry of a failed push; doubled each time, at most 30.
        Default 1. Example: ``c.WorkerCredentials.retry_delay = 2``""",
    ).tag(config=True)

    read_timeout = Float(
        10.0,
        min=0.1,
        help="""Seconds reading the mounted credential files may take (a hung network file system must not
        stall the watcher forever). Default 10. Example: ``c.WorkerCredentials.read_timeout = 5``""",
    ).tag(config=True)

    def __init__(self, *, bundle: Callable[[], MountedBundle] = MountedBundle.from_env, **kwargs):
        super().__init__(**kwargs)
        self._bundle = bundle
        self._attached: dict[int, _Attachment] = {}
        self._watcher: asyncio.Task | None = None
        self._warned_expiry: str | None = None

    # ------------------------------------------------------------------ public
    @property
    def clusters(self) -> list:
        return [a.cluster for a in self._attached.values()]

    async def attach(self, cluster) -> bool:
        """Push the current credentials to ``cluster``'s workers (present and future) and keep them fresh.
        True when the workers have them; False when the first push failed (logged; the watcher retries)."""
        ship_by_value()
        attachment = self._attached.get(id(cluster))
        if attachment is None:
            attachment = self._attached[id(cluster)] = _Attachment(cluster, _cluster_name(cluster))
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.create_task(self._watch(), name="casa-worker-credentials")
        snapshot = await self._snapshot()
        if snapshot is None:
            return False
        return await self._push(attachment, snapshot)

    async def detach(self, cluster) -> None:
        """Stop pushing to ``cluster`` and close its client (the workers keep their current copy)."""
        attachment = self._attached.pop(id(cluster), None)
        if attachment is not None:
            async with attachment.lock:
                await self._drop_client(attachment)
        if not self._attached:
            await self._stop_watcher()

    async def close(self) -> None:
        """Detach from every cluster and stop watching."""
        for attachment in list(self._attached.values()):
            await self.detach(attachment.cluster)
        await self._stop_watcher()

    async def sync(self) -> None:
        """One poll: push to every attached cluster whose workers do not have the mounted credentials."""
        for key, attachment in list(self._attached.items()):
            if _closed(attachment.cluster):  # closed without detach: nothing left to keep fresh
                self.log.info("casa: cluster %s closed; no more credential pushes to it", attachment.name)
                self._attached.pop(key, None)
                await self._drop_client(attachment)
        if not self._attached:
            return
        snapshot = await self._snapshot()
        if snapshot is None:
            return
        stale = [a for a in self._attached.values() if a.pushed != snapshot.fingerprint]
        await asyncio.gather(*(self._push(a, snapshot) for a in stale))

    # ------------------------------------------------------------------ internals
    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval)
            try:
                await self.sync()
            except Exception:  # a bug here must not end the watcher (no token bytes reach this path)
                self.log.exception("casa: the worker credential watcher failed; trying again at the next poll")

    async def _stop_watcher(self) -> None:
        watcher, self._watcher = self._watcher, None
        if watcher is not None and watcher is not asyncio.current_task():
            watcher.cancel()
            try:
                await watcher
            except asyncio.CancelledError:
                pass

    async def _snapshot(self) -> Snapshot | None:
        kinds = list(self.kinds)
        try:
            async with asyncio.timeout(self.read_timeout):
                snapshot = await asyncio.to_thread(lambda: read_snapshot(self._bundle(), kinds))
        except (CredentialError, OSError, TimeoutError) as e:
            # e.g. the manifest caught mid-swap: keep what the workers have, look again at the next poll
            self.log.warning("casa: cannot read the worker credentials (%s): %s", type(e).__name__, e)
            return None
        if not snapshot.files:
            self.log.info("casa: none of the worker credential kinds %s is in the bundle", kinds)
        left = (snapshot.expires_at - _utcnow()).total_seconds() if snapshot.expires_at else None
        if left is not None and left < 2 * self.poll_interval and self._warned_expiry != snapshot.fingerprint:
            self._warned_expiry = snapshot.fingerprint
            self.log.warning(
                "casa: the worker credentials %s expire in %d s and have not been renewed yet",
                list(snapshot.kinds),
                int(left),
            )
        return snapshot

    async def _push(self, attachment: _Attachment, snapshot: Snapshot) -> bool:
        async with attachment.lock:
            if attachment.pushed == snapshot.fingerprint:
                return True
            if not snapshot.files:
                return False
            plugin = snapshot.plugin()
            delay = self.retry_delay
            for attempt in range(1, self.push_attempts + 1):
                try:
                    client = await self._client(attachment)
                    async with asyncio.timeout(self.push_timeout):
                        await client.register_plugin(plugin, name=PLUGIN_NAME)
                except asyncio.CancelledError:
                    raise
                except Exception as e:  # noqa: BLE001 - any failure: log (redacted) and retry
                    self.log.warning(
                        "casa: pushing %s to the workers of %s failed (attempt %d/%d): %s: %s",
                        list(snapshot.kinds),
                        attachment.name,
                        attempt,
                        self.push_attempts,
                        type(e).__name__,
                        snapshot.redact(str(e)),
                    )
                    await self._drop_client(attachment)  # the next attempt connects afresh (new certificates)
                    if attempt < self.push_attempts:
                        await asyncio.sleep(delay)
                        delay = min(30.0, delay * 2)
                    continue
                attachment.pushed = snapshot.fingerprint
                self.log.info(
                    "casa: workers of %s have %s (expiring %s)",
                    attachment.name,
                    list(snapshot.kinds),
                    snapshot.expires_at.isoformat() if snapshot.expires_at else "never",
                )
                return True
            self.log.error(
                "casa: the workers of %s did not get %s after %d attempts; trying again in %.0f s",
                attachment.name,
                list(snapshot.kinds),
                self.push_attempts,
                self.poll_interval,
            )
            return False

    async def _client(self, attachment: _Attachment):
        if attachment.client is not None:
            return attachment.client
        from distributed import Client

        cluster = attachment.cluster
        if _is_gateway(cluster):
            security = cluster.security  # the gateway's per-cluster TLS credentials
        else:
            async with asyncio.timeout(self.read_timeout):
                security = await asyncio.to_thread(lambda: self._bundle().security(roles=("client",)))
        client = Client(
            cluster.scheduler_address,
            security=security,
            asynchronous=True,
            set_as_default=False,  # never the user's default client
            timeout=self.push_timeout,
        )
        try:
            async with asyncio.timeout(self.push_timeout):
                await client
        except BaseException:
            await asyncio.shield(self._close_client(client))
            raise
        attachment.client = client
        return client

    async def _drop_client(self, attachment: _Attachment) -> None:
        client, attachment.client = attachment.client, None
        if client is not None:
            await self._close_client(client)

    async def _close_client(self, client) -> None:
        try:
            async with asyncio.timeout(self.push_timeout):
                await client.close()
        except Exception as e:  # noqa: BLE001 - closing a dead connection may fail; nothing to do about it
            self.log.debug("casa: closing a credential client failed: %s", type(e).__name__)
