"""A real dask-gateway-server (local backend) with the facility's cluster options, authenticating users
against a real JupyterHub (its JupyterHubAuthenticator), as a facility runs it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tests.support import VENV_BIN, free_port, stop_process, wait_for_port

CONFIG = """\
from casa_hub_ext.gateway import cluster_options
c.DaskGateway.address = "127.0.0.1:{api_port}"
c.Proxy.address = "127.0.0.1:{proxy_port}"
c.DaskGateway.backend_class = "dask_gateway_server.backends.local.UnsafeLocalBackend"
c.DaskGateway.authenticator_class = "dask_gateway_server.auth.JupyterHubAuthenticator"
c.JupyterHubAuthenticator.jupyterhub_api_url = "{hub_api_url}"
c.JupyterHubAuthenticator.jupyterhub_api_token = "{hub_api_token}"
c.LocalBackend.cluster_start_timeout = 60
c.LocalBackend.worker_start_timeout = 60
c.ClusterConfig.scheduler_cmd = [{dask!r}, "scheduler"]
c.ClusterConfig.worker_cmd = [{dask!r}, "worker"]
c.ClusterConfig.idle_timeout = 300
c.Backend.cluster_options = cluster_options(max_cores=2, max_memory_gib=4, max_gpus=1,
                                            worker_cmd=[{dask!r}, "worker"])
"""


@dataclass
class GatewayServer:
    address: str
    proxy_address: str
    proc: subprocess.Popen
    log: Path


def start_gateway(work: Path, hub_api_url: str, hub_api_token: str, timeout: float = 30) -> GatewayServer:
    work.mkdir(parents=True, exist_ok=True)
    api_port, proxy_port = free_port(), free_port()
    config = work / "dask_gateway_config.py"
    config.write_text(
        CONFIG.format(
            api_port=api_port,
            proxy_port=proxy_port,
            dask=str(VENV_BIN / "dask"),
            hub_api_url=hub_api_url,
            hub_api_token=hub_api_token,
        )
    )
    log = work / "gateway.log"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dask_gateway_server", "-f", str(config)],
            cwd=work,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for_port(proxy_port, timeout=timeout, proc=proc)
        _wait_for_api(f"http://127.0.0.1:{proxy_port}/api/health", timeout, proc)
    except Exception:
        stop_process(proc)
        raise RuntimeError(f"dask-gateway-server did not start:\n{log.read_text()[-3000:]}") from None
    # clients talk to the proxy: HTTP API and scheduler routes share its port
    return GatewayServer(f"http://127.0.0.1:{proxy_port}", f"gateway://127.0.0.1:{proxy_port}", proc, log)


def _wait_for_api(url: str, timeout: float, proc: subprocess.Popen) -> None:
    """The proxy answers 404 until it has fetched its routes from the gateway: wait for the API route."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} not ready after {timeout}s")


def stop_gateway(server: GatewayServer) -> None:
    stop_process(server.proc, timeout=20)
