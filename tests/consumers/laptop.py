"""A user's laptop in the Dask-route tests: a bare process with only the unzipped client bundle, reaching the
facility's router by the route's host name, and a raw TLS client for what a Dask client cannot show.

The route names resolve to 127.0.0.1 for the laptop alone: it runs in a private mount namespace (``unshare -m``)
with a hosts file bind-mounted over ``/etc/hosts`` (``*.localhost`` does not resolve with Debian's glibc, and
``HOSTALIASES`` only maps names without dots); the machine's own ``/etc/hosts`` is never touched.
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import ssl
import subprocess
import zipfile
from pathlib import Path

from tests.support import VENV_BIN, need

# the frame of a laptop's probe script, run as ``python -c "$PROBE" TIMEOUT [ADDRESS]``: a Dask Client to ADDRESS
# (none: the bundle's dask.yaml), then one JSON line; ``chain`` says why a connection failed, causes included
_PROBE_FRAME = r"""
import json, sys
from distributed import Client, get_worker

{helpers}

def chain(e):
    out = []
    while e is not None:
        out.append(f"{{type(e).__name__}}: {{e}}")
        e = e.__cause__ or e.__context__
    return " <- ".join(out)


address = sys.argv[2] if len(sys.argv) > 2 else None
try:
    with Client(address, timeout=float(sys.argv[1])) as client:
        out = {{"ok": True, **result(client)}}
except Exception as e:
    out = {{"ok": False, "error": chain(e)}}
print(json.dumps(out))
"""


def client_probe(helpers: str) -> str:
    """A laptop's probe script. ``helpers``: source defining ``result(client) -> dict``, what it prints besides
    ``"ok": true`` once connected (``{"ok": false, "error": ...}`` when the connection fails)."""
    return _PROBE_FRAME.format(helpers=helpers)


def need_private_hosts() -> None:
    need(
        os.geteuid() == 0 and shutil.which("unshare") is not None and shutil.which("mount") is not None,
        "root with unshare and mount (the laptop's private /etc/hosts)",
    )


def unpack(directory: Path, content: bytes) -> Path:
    """A laptop's home: ``directory`` (made afresh) with only the unzipped bundle in it."""
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    with zipfile.ZipFile(io.BytesIO(content)) as z:
        z.extractall(directory)
    return directory


def run(hosts_file: Path, home: Path, script: str, extra_env: dict | None = None, timeout: float = 60):
    """Run ``script`` (bash) in ``home`` as a laptop would: a bare environment (no CASA_*, no DASK_*), the route
    names resolving through ``hosts_file``."""
    env = {"PATH": f"{VENV_BIN}:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8", **(extra_env or {})}
    return subprocess.run(
        ["unshare", "-m", "sh", "-c", 'mount --bind "$0" /etc/hosts && exec bash -c "$1"', str(hosts_file), script],
        cwd=home,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def raw_tls(port: int, server_hostname: str | None, ca: Path, cert: Path | None = None, key=None) -> tuple[int, str]:
    """One TLS connection to 127.0.0.1:``port`` (the router): (its local port, what happened); at most 10 s."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
    ctx.check_hostname = False  # as distributed: the CA is the user's own
    if cert:
        ctx.load_cert_chain(str(cert), str(key))
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    local_port = sock.getsockname()[1]
    try:
        with ctx.wrap_socket(sock, server_hostname=server_hostname) as tls:
            tls.sendall(b"\0" * 8)
            return local_port, f"read {tls.recv(1)!r}"
    except (OSError, ssl.SSLError) as e:
        return local_port, f"{type(e).__name__}: {e}"
    finally:
        sock.close()
