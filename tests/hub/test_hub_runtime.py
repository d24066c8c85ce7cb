"""Which JupyterHub and Python the hub processes of the hub tier run. scripts/test.sh runs the hub tier twice:
with this interpreter's JupyterHub (the newest releases, requirements/test.txt), then with the Z2JH chart's hub
environment (CASA_HUB_PYTHON=scripts/z2jh-hub-python, CASA_HUB_EXPECT="jupyterhub=5.5.0 python=3.14"); this test
makes sure each run really ran what it says."""

from __future__ import annotations

from tests.hub import hub as H

READ_HUB = """
c.JupyterHub.load_roles.append({"name": "casa-test-info", "scopes": ["read:hub"], "services": ["casa-test"]})
"""


def test_the_hub_process_runs_the_expected_jupyterhub_and_python(tmp_path):
    with H.running_hub(tmp_path, READ_HUB) as hub:
        info = H.check_runtime(hub)
    print(f"spawner {info['spawner']}, authenticator {info['authenticator']}")
    assert info["spawner"]["class"] == "casa_hub.local.CasaLocalSpawner"
    assert info["authenticator"]["class"] == "casa_hub.authenticator.CasaAuthenticator"
