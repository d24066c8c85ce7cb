"""README's first command: the one-command local facility, used the way a person would, then Ctrl-C; and changed
without editing code (``--config my-facility.py``)."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time

import httpx
import jwt
import pytest

from casa_hub.credentials.bundle import CredentialBundle
from tests.hub import hub as H
from tests.support import REPO, free_port, need, wait_for_port


@pytest.fixture
def start_facility(tmp_path):
    """``start(*args)``: ``python -m casa_demo.facility`` with ``args`` on free ports, as ``scripts/facility.sh``
    runs it; returns (process, port, state directory). Killed at the end of the test if still running."""
    procs = []

    def start(*args):
        need(H.CHP.exists(), "configurable-http-proxy (npm ci)")
        port, oidc_port = free_port(), free_port()
        proc = subprocess.Popen(
            H.facility_command(port, oidc_port, tmp_path / "state", *args),
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        procs.append(proc)
        wait_for_port(port, proc=proc, timeout=60)
        return proc, port, tmp_path / "state"

    yield start
    for proc in procs:
        if proc.poll() is None:
            # SIGTERM first: the facility stops its hub and provider, which run in sessions of their own (a
            # SIGKILL of its process group alone would leave them running)
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


@pytest.fixture
def facility(start_facility):
    return start_facility()


def _read_banner(proc) -> str:
    deadline = time.monotonic() + 60
    banner = ""
    while "Ctrl-C stops everything" not in banner and time.monotonic() < deadline:
        banner += proc.stdout.readline()
    return banner


def _processes_mentioning(text: str) -> list[str]:
    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout.splitlines()
    return [line for line in out if text in line and "pytest" not in line]


def test_log_in_start_a_server_see_credentials_then_ctrl_c(facility):
    proc, port, state = facility
    base = f"http://127.0.0.1:{port}"
    banner = _read_banner(proc)
    assert f"open {base}/" in banner and "alice" in banner

    hub = H.Hub(base, state, proc, "", None)
    client = H.oauth_login(hub, "alice", httpx.Client(timeout=60, follow_redirects=False))
    assert client.last_callback.status_code == 302
    # the spawn form offers the profiles of alice's groups; pick GPU and follow the spawn to JupyterLab
    client.follow_redirects = True
    form = client.get(f"{base}/hub/spawn")
    assert 'value="gpu"' in form.text and 'value="cpu"' in form.text
    client.post(f"{base}/hub/spawn", data={"profile": "gpu", "_xsrf": H.xsrf(client)})
    started = time.monotonic()
    lab = None
    while time.monotonic() - started < 90:
        lab = client.get(f"{base}/user/alice/lab")
        if lab.status_code == 200 and "JupyterLab" in lab.text:
            break
        time.sleep(1)
    assert lab is not None and lab.status_code == 200 and "JupyterLab" in lab.text, lab.status_code
    creds = state / "home" / "alice" / ".casa" / "credentials"
    assert (creds / "xcache.token").is_file() and (creds / "dask" / "ca.pem").is_file()

    proc.send_signal(signal.SIGINT)  # what Ctrl-C in the terminal sends
    assert proc.wait(60) == 0
    assert "stopping the facility" in proc.stdout.read()
    for pattern in (str(state), f"127.0.0.1:{port}"):
        assert not _processes_mentioning(pattern), _processes_mentioning(pattern)
    with pytest.raises(httpx.ConnectError):
        httpx.get(base, timeout=2)


# what a person would put in my-facility.py (README): a lifetime, one more profile (with its Dask backends), and
# an API token so that this test can read what the hub minted
MY_FACILITY = """
c.XCacheToken.lifetime = 1234
c.CasaLocalSpawner.profiles.append(
    {"display_name": "Big CPU", "slug": "bigcpu", "description": "more workers, local Dask only",
     "environment": {"CASA_GPU_COUNT": "0", "CASA_DASK_BACKENDS": "local"}})
c.JupyterHub.load_roles = [{"name": "casa-test", "scopes": ["admin:users", "admin:auth_state"],
                            "services": ["casa-test"]}]
c.JupyterHub.services = [{"name": "casa-test", "api_token": "%s"}]
"""


def test_a_config_file_changes_what_the_facility_does(start_facility, tmp_path):
    api_token = secrets.token_hex(16)
    config = tmp_path / "my-facility.py"
    config.write_text(MY_FACILITY % api_token)
    proc, port, state = start_facility("--config", config)
    base = f"http://127.0.0.1:{port}"
    assert f"Extra configuration: {config}" in _read_banner(proc)

    hub = H.Hub(base, state, proc, api_token, None)
    client = H.oauth_login(hub, "alice", httpx.Client(timeout=60, follow_redirects=False))
    assert client.last_callback.status_code == 302
    form = client.get(f"{base}/hub/spawn", follow_redirects=True)
    assert 'value="bigcpu"' in form.text and 'value="gpu"' in form.text  # added to the generated profiles
    with hub.api() as api:
        model = api.get("/users/alice").json()
    token = CredentialBundle.from_dict(model["auth_state"]["casa"]).files["xcache.token"].content.decode().strip()
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 1234


def test_a_broken_config_file_is_refused_before_anything_starts(tmp_path):
    config = tmp_path / "my-facility.py"
    config.write_text("c.XCacheToken.lifetime = = 1\n")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "casa_demo.facility",
            "--state",
            str(tmp_path / "state"),
            "--config",
            str(config),
            "--config",
            str(tmp_path / "missing.py"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "--config" in result.stderr and "my-facility.py" in result.stderr, result
    assert not (tmp_path / "state").exists()
