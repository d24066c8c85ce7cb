"""Where the user-side settings (CasaClusterSettings) come from in a real Jupyter Server: the admin guide's Z2JH
snippet (singleuser.extraFiles + singleuser.extraEnv) rendered as Z2JH renders it, read by the server extension.

Each server runs in a subprocess with its own Jupyter paths (``JUPYTER_CONFIG_PATH`` stands for ``/etc/jupyter``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.admin_guide import user_settings_snippet

REPO = Path(__file__).resolve().parents[2]

SERVER = """
import json
from jupyter_server.serverapp import ServerApp
app = ServerApp()
app.initialize(argv=["--ServerApp.open_browser=False", "--ServerApp.port=0", "--ServerApp.ip=127.0.0.1"])
manager = app.web_app.settings.get("casa_manager")
settings = manager.settings if manager else None
names = settings.trait_names(config=True) if settings else []
print("CASA-SETTINGS " + json.dumps({n: getattr(settings, n) for n in names} if settings else None))
"""


def _server_settings(tmp_path: Path, files: dict[str, dict], env: dict[str, str] | None = None) -> dict | None:
    """The CasaClusterSettings of a Jupyter Server whose system config directory holds ``files`` (relative path:
    JSON content), with ``env`` added to a clean environment."""
    etc = tmp_path / "etc-jupyter"
    switch = "jupyter_server_config.d/casa_hub_ext.json"  # what the wheel installs: the extension switched on
    files = {switch: json.loads((REPO / "jupyter-config" / switch).read_text()), **files}
    for rel, content in files.items():
        (etc / rel).parent.mkdir(parents=True, exist_ok=True)
        (etc / rel).write_text(json.dumps(content))
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("CASA_", "DASK_GATEWAY__", "JUPYTER", "JPY_"))}
    clean.update(
        HOME=str(home),
        JUPYTER_CONFIG_DIR=str(home / ".jupyter"),
        JUPYTER_DATA_DIR=str(home / "data"),
        JUPYTER_RUNTIME_DIR=str(home / "runtime"),
        JUPYTER_CONFIG_PATH=str(etc),
        **(env or {}),
    )
    result = subprocess.run(
        [sys.executable, "-c", SERVER], cwd=tmp_path, env=clean, capture_output=True, text=True, timeout=120
    )
    line = next((ln for ln in result.stdout.splitlines() if ln.startswith("CASA-SETTINGS ")), None)
    assert line, f"the server did not report its settings\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return json.loads(line.removeprefix("CASA-SETTINGS "))


@pytest.fixture(scope="module")
def snippet():
    return user_settings_snippet()["singleuser"]


def test_the_admin_guides_settings_file_and_variables_configure_the_extension(tmp_path, snippet):
    (settings_file,) = snippet["extraFiles"].values()
    name = Path(settings_file["mountPath"]).name
    env = {k: str(v) for k, v in snippet.get("extraEnv", {}).items()}
    got = _server_settings(tmp_path, {name: settings_file["data"]}, env)
    assert got is not None, "the Casa server extension did not load"
    for trait, value in settings_file["data"]["CasaClusterSettings"].items():
        assert got[trait] == value, trait
    assert got["backends"] == env["CASA_DASK_BACKENDS"].split(",")
    assert got["max_gpus_per_worker"] == int(env["CASA_GPU_MAX_PER_WORKER"])


def test_settings_in_a_jupyter_server_config_d_fragment_are_ignored(tmp_path, snippet):
    """The admin guide says not to use jupyter_server_config.d/: Jupyter Server reads those fragments only to
    switch extensions on."""
    (settings_file,) = snippet["extraFiles"].values()
    got = _server_settings(tmp_path, {"jupyter_server_config.d/casa-settings.json": settings_file["data"]})
    assert got is not None
    assert got["max_workers"] != settings_file["data"]["CasaClusterSettings"]["max_workers"]
    assert got["max_workers"] == 16  # the built-in default
