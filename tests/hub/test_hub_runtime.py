"""Which JupyterHub and Python the hub processes of the hub tier run. scripts/test.sh runs the hub tier twice:
with this interpreter's JupyterHub (the newest releases, requirements/test.txt), then with the Z2JH chart's hub
environment (CASA_HUB_PYTHON=scripts/z2jh-hub-python, CASA_HUB_EXPECT="jupyterhub=5.5.0 python=3.14"); this test
makes sure each run really ran what it says."""

from __future__ import annotations

import os
import sys

import httpx
import jupyterhub

from tests.hub import hub as H

READ_HUB = """
c.JupyterHub.load_roles.append({"name": "casa-test-info", "scopes": ["read:hub"], "services": ["casa-test"]})
"""


def _expected() -> dict[str, str]:
    if os.environ.get("CASA_HUB_EXPECT"):  # "jupyterhub=5.5.0 python=3.14"
        return dict(item.split("=", 1) for item in os.environ["CASA_HUB_EXPECT"].split())
    assert not os.environ.get("CASA_HUB_PYTHON"), "CASA_HUB_PYTHON without CASA_HUB_EXPECT: nothing to check against"
    return {"jupyterhub": jupyterhub.__version__, "python": "%d.%d" % sys.version_info[:2]}


def test_the_hub_process_runs_the_expected_jupyterhub_and_python(tmp_path):
    want = _expected()
    with H.running_hub(tmp_path, READ_HUB) as hub:
        root = httpx.get(hub.url + "/hub/api", timeout=10)
        with hub.api() as api:
            info = api.get("/info").json()
    print(
        f"hub process: JupyterHub {info['version']} on Python {info['python'].split()[0]} "
        f"({info['sys_executable']}); spawner {info['spawner']}, authenticator {info['authenticator']}"
    )
    assert root.headers["X-JupyterHub-Version"] == root.json()["version"] == info["version"] == want["jupyterhub"]
    assert info["python"].split()[0].startswith(want["python"] + ".")
    assert info["spawner"]["class"] == "casa_hub.local.CasaLocalSpawner"
    assert info["authenticator"]["class"] == "casa_hub.authenticator.CasaAuthenticator"
