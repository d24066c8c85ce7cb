"""Helpers shared by the test layers: CI-aware skipping, ports, processes and a ready-to-use minter."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from traitlets.config import Config

from casa_hub import keys
from casa_hub.minter import CasaMinter

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
REPO = Path(__file__).resolve().parent.parent
VENV_BIN = REPO / ".venv" / "bin"
CHP = REPO / "node_modules" / ".bin" / "configurable-http-proxy"


def chart_proxy_command(hub: str, public_port: int, api_port: int) -> list[str]:
    """The Z2JH chart's proxy Deployment command (``--api-port=8001 --default-target=http://hub:$(HUB_SERVICE_PORT)
    --error-target=.../hub/error --port=8000``), on 127.0.0.1 and the given ports, for the hub at ``hub``
    (host:port). Its token comes from CONFIGPROXY_AUTH_TOKEN."""
    return [
        str(CHP),
        "--ip=127.0.0.1",
        "--api-ip=127.0.0.1",
        f"--api-port={api_port}",
        f"--default-target=http://{hub}",
        f"--error-target=http://{hub}/hub/error",
        f"--port={public_port}",
    ]


def need(condition: bool, what: str) -> None:
    """A test that needs a real server or tool: skip locally when it is missing, FAIL in CI."""
    if condition:
        return
    message = f"{what} is not available (run ./scripts/provision.sh)"
    if IN_CI:
        pytest.fail(f"CI=true and {message}", pytrace=False)
    pytest.skip(message)


def need_binary(name: str) -> str:
    path = shutil.which(name)
    need(path is not None, f"the {name!r} executable")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, host: str = "127.0.0.1", timeout: float = 30.0, proc: subprocess.Popen | None = None):
    """Bounded wait until something listens on host:port (fails early if ``proc`` died)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.args!r} exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")


def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """Terminate a process group we started; kill it if it does not go."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout)


def write_keys(directory: Path, algorithm: str = "ES256") -> dict[str, Path]:
    """Fresh hub secrets in ``directory`` (issuer, dask-ca, macaroon, servicex, condor)."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for kind in ("issuer", "dask-ca", "macaroon", "servicex", "condor"):
        p = directory / kind
        p.write_bytes(keys.generate(kind, algorithm))
        p.chmod(0o600)
        paths[kind] = p
    return paths


BUILT_IN_KINDS = ("xcache", "macaroon", "htcondor", "servicex", "dask-tls")  # every built-in kind but the example


def make_minter(key_dir: Path, *, algorithm: str = "ES256", kinds=BUILT_IN_KINDS, **sections) -> CasaMinter:
    """A CasaMinter minting ``kinds`` (default: every built-in kind but MLflow) with fresh keys in ``key_dir``.

    ``sections`` are configuration sections by class name, each a dict of trait values, applied over the
    defaults here, e.g. ``make_minter(tmp, HTCondorToken={"trust_domain": "x"}, CasaMinter={...})``. The kinds
    are resolved at once, so a bad setting raises here (a RuntimeError naming ``Class.trait``)."""
    k = write_keys(key_dir, algorithm)
    c = Config()
    c.CasaMinter.kinds = list(kinds)
    c.CasaMinter.issuer_url = "https://127.0.0.1:1/casa-issuer"
    c.CasaMinter.issuer_key_file = str(k["issuer"])
    c.XCacheMacaroon.secret_file = str(k["macaroon"])
    c.XCacheMacaroon.location = "CASA_TEST"
    c.HTCondorToken.signing_key_file = str(k["condor"])
    c.HTCondorToken.trust_domain = "casa.test"
    c.ServiceXToken.secret_file = str(k["servicex"])
    c.ServiceXToken.endpoint = "http://127.0.0.1:1"
    c.DaskTLS.ca_secret_file = str(k["dask-ca"])
    c.MLflowToken.tracking_uri = "https://mlflow.casa.test"
    for section, values in sections.items():
        for name, value in values.items():
            setattr(c[section], name, value)
    minter = CasaMinter(config=c)
    minter.enabled_kinds  # noqa: B018 - resolve the kinds now: configuration errors surface here
    return minter


def write_bundle(bundle, directory: Path) -> Path:
    """Lay a bundle out as the local spawner does (private directory, files with their modes)."""
    from casa_hub.credentials.bundle_dir import write_bundle_dir

    write_bundle_dir(directory, bundle)
    return directory


def wait_until(predicate, timeout: float = 40, what: str = "condition", interval: float = 0.2):
    """Poll ``predicate`` until it returns something truthy (returned), or raise TimeoutError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(what)


# ---------------------------------------------------------------- the real browser (Debian's chromium + playwright)
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
]


def launch_chromium(playwright):
    """Debian's Chromium driven by playwright (never ``playwright install``), headless, as every browser test
    runs it."""
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
