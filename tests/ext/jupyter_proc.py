"""A real ``jupyter server`` / ``jupyter lab`` subprocess with the Casa extension enabled by its jupyter-config
file (as a pip install would) and the built labextension on the data path."""

from __future__ import annotations

import os
import secrets
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import requests

from tests.support import REPO, VENV_BIN, free_port, stop_process, wait_for_port

LABEXTENSION = REPO / "casa_hub_ext" / "labextension"


@dataclass
class JupyterProc:
    url: str  # base url, ending in /
    token: str
    proc: subprocess.Popen
    log: Path
    runtime: Path | None = None  # its JUPYTER_RUNTIME_DIR (kernels' connection files)

    def headers(self) -> dict:
        return {"Authorization": f"token {self.token}"}

    def api(self, method: str, path: str, timeout: float = 60, **kw) -> requests.Response:
        """``method`` on ``path`` below the server's base URL, authenticated as its user."""
        return requests.request(method, self.url + path, headers=self.headers(), timeout=timeout, **kw)


class Kernel:
    """A kernel the Jupyter server started (so with the environment it gives kernels), driven over ZMQ."""

    def __init__(self, server: JupyterProc, timeout: float = 60):
        from jupyter_client import BlockingKernelClient

        r = server.api("POST", "api/kernels", json={"name": "python3"})
        assert r.status_code == 201, r.text
        self.server, self.id, self.timeout = server, r.json()["id"], timeout
        self.client = BlockingKernelClient(connection_file=str(server.runtime / f"kernel-{self.id}.json"))
        self.client.load_connection_file()
        self.client.start_channels()
        self.client.wait_for_ready(timeout=timeout)

    def run(self, code: str) -> str:
        """Run ``code``; what it printed (an error's traceback fails the calling test)."""
        out = []

        def collect(msg):
            if msg["msg_type"] == "stream":
                out.append(msg["content"]["text"])
            elif msg["msg_type"] == "error":
                out.append("\n".join(msg["content"]["traceback"]))

        reply = self.client.execute_interactive(code, timeout=self.timeout, output_hook=collect)
        assert reply["content"]["status"] == "ok", "".join(out)
        return "".join(out)

    def close(self) -> None:
        if self.client is None:
            return
        self.client.stop_channels()
        self.client = None
        if self.server.proc.poll() is None:  # a stopped server took its kernels with it
            self.server.api("DELETE", f"api/kernels/{self.id}")


def start_jupyter(
    work: Path,
    env: dict[str, str],
    *,
    app: str = "server",
    timeout: float = 60,
    args: list[str] = (),
    unset: list[str] = (),
) -> JupyterProc:
    """``args``: extra command-line options, e.g. ``["--CasaClusterSettings.max_clusters=2"]``; ``unset``:
    variables of this process's environment the server must not inherit."""
    work.mkdir(parents=True, exist_ok=True)
    (work / "root").mkdir(exist_ok=True)
    data = work / "data" / "labextensions"
    data.mkdir(parents=True, exist_ok=True)
    if app == "lab" and not (data / "casa-hub-ext").exists():
        (data / "casa-hub-ext").symlink_to(LABEXTENSION)
    port, token = free_port(), secrets.token_hex(16)
    full_env = {
        **os.environ,
        "JUPYTER_CONFIG_DIR": str(work / "config"),
        "JUPYTER_CONFIG_PATH": str(REPO / "jupyter-config"),  # the auto-enable file shipped in the wheel
        "JUPYTER_DATA_DIR": str(work / "userdata"),
        "JUPYTER_PATH": str(work / "data"),
        "JUPYTER_RUNTIME_DIR": str(work / "runtime"),
        "JUPYTERLAB_SETTINGS_DIR": str(work / "settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(work / "workspaces"),
        **env,
    }
    for name in unset:
        full_env.pop(name, None)
    command = [
        str(VENV_BIN / "jupyter"),
        app,
        "--no-browser",
        "--ip=127.0.0.1",
        f"--port={port}",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={work / 'root'}",
        "--ServerApp.port_retries=0",
        "--allow-root",
    ]
    command += list(args)
    if app == "lab":
        command += ["--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    log = work / f"{app}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            command, cwd=work, env=full_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_for_port(port, timeout=timeout, proc=proc)
        deadline = time.monotonic() + timeout
        while True:
            try:
                req = urllib.request.Request(url + "api/status", headers={"Authorization": f"token {token}"})
                with urllib.request.urlopen(req, timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
    except Exception:
        stop_process(proc)
        raise RuntimeError(f"jupyter {app} did not start:\n{log.read_text()[-3000:]}") from None
    return JupyterProc(url, token, proc, log, work / "runtime")


def stop_jupyter(server: JupyterProc) -> None:
    stop_process(server.proc, timeout=30)


def clean_log(server: JupyterProc) -> str:
    """The log of a stopped ``server``, which must hold no traceback."""
    log = server.log.read_text()
    assert "Traceback" not in log, log[-4000:]
    return log


def login_cluster_args() -> list[str]:
    """Command-line options for an empty local login cluster on a free 127.0.0.1 port: the scheduler a user's
    laptop route leads to (the laptop bundle is offered only with one)."""
    return [
        '--CasaClusterSettings.login_cluster={"backend": "local", "workers": 0}',
        "--CasaClusterSettings.scheduler_host=127.0.0.1",
        f"--CasaClusterSettings.scheduler_port={free_port()}",
    ]
