"""README's first command: the one-command local facility, used the way a person would, then Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from tests.hub import hub as H
from tests.support import REPO, free_port, need, wait_for_port


@pytest.fixture
def facility(tmp_path):
    need(H.CHP.exists(), "configurable-http-proxy (npm ci)")
    port, oidc_port = free_port(), free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "casa_hub.facility", "--port", str(port), "--oidc-port", str(oidc_port),
         "--state", str(tmp_path / "state")],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        wait_for_port(port, proc=proc, timeout=60)
        yield proc, port, tmp_path / "state"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def _processes_mentioning(text: str) -> list[str]:
    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout.splitlines()
    return [line for line in out if text in line and "pytest" not in line]


def test_log_in_start_a_server_see_credentials_then_ctrl_c(facility):
    proc, port, state = facility
    base = f"http://127.0.0.1:{port}"
    # ready banner
    deadline = time.monotonic() + 60
    banner = ""
    while "Ctrl-C stops everything" not in banner and time.monotonic() < deadline:
        banner += proc.stdout.readline()
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
