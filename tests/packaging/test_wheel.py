"""The casa-hub wheel from a clean tree is complete: JupyterLab front end, server-extension switch, LICENSE and the
JupyterHub entry points; and it holds product code only (the demo facility and OIDC provider stay out)."""

from __future__ import annotations

import re
import zipfile

import pytest

from tests.packaging.conftest import venv_run

pytestmark = pytest.mark.timeout(900)  # the first test builds the wheel and both venvs (session fixtures)

DATA = "casa_hub-{version}.data/data/"


def _names(wheel) -> list[str]:
    with zipfile.ZipFile(wheel) as z:
        return z.namelist()


def test_wheel_holds_the_built_front_end_the_server_switch_and_the_license(wheel):
    names = _names(wheel)
    version = re.match(r"casa_hub-([^-]+)-", wheel.name).group(1)
    data = DATA.format(version=version)
    lab = data + "share/jupyter/labextensions/casa-hub-ext/"
    assert lab + "package.json" in names and lab + "static/style.js" in names and lab + "install.json" in names
    assert any(re.fullmatch(re.escape(lab) + r"static/remoteEntry\.[0-9a-f]+\.js", n) for n in names), names
    assert data + "etc/jupyter/jupyter_server_config.d/casa_hub_ext.json" in names
    with zipfile.ZipFile(wheel) as z:
        meta = z.read(f"casa_hub-{version}.dist-info/METADATA").decode()
        license_text = z.read(f"casa_hub-{version}.dist-info/licenses/LICENSE").decode()
        entry_points = z.read(f"casa_hub-{version}.dist-info/entry_points.txt").decode()
    assert "License-Expression: BSD-3-Clause" in meta and "License-File: LICENSE" in meta
    assert "BSD 3-Clause License" in license_text and "Casa Hub contributors" in license_text
    assert "casa = casa_hub.authenticator:CasaAuthenticator" in entry_points
    assert "casa-local = casa_hub.local:CasaLocalSpawner" in entry_points
    kinds = entry_points.split("[casa_hub.credentials]\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert {line.split(" = ")[0] for line in kinds} == {
        "xcache",
        "macaroon",
        "htcondor",
        "servicex",
        "dask-tls",
        "mlflow",
    }


def test_wheel_holds_product_code_only(wheel):
    names = _names(wheel)
    packages = {n.split("/", 1)[0] for n in names if "/" in n and ".dist-info/" not in n and ".data/" not in n}
    assert packages == {"casa_hub", "casa_hub_ext"}, packages
    for unwanted in ("casa_demo", "demo_oidc", "facility.py", "tests/", "node_modules", "casa_hub_ext/labextension"):
        assert not [n for n in names if unwanted in n], unwanted


def test_user_install_enables_the_lab_and_server_extensions(venvs, tmp_path):
    user = venvs["user"]
    labext = venv_run(user, "jupyter", "labextension", "list", cwd=tmp_path)
    line = next((ln for ln in labext.splitlines() if "casa-hub-ext" in ln), "")
    assert re.search(r"casa-hub-ext v\S+ enabled\s+OK \(python, casa-hub\)", line), labext
    server = venv_run(user, "jupyter", "server", "extension", "list", cwd=tmp_path)
    assert re.search(r"casa_hub_ext enabled", server), server
    assert re.search(r"casa_hub_ext \S+ OK", server), server
    # the server extension imports with the [user] extra alone (no hub packages)
    out = venv_run(
        user,
        "python",
        "-c",
        "import casa_hub_ext, casa_hub_ext.factory, importlib.util as u;"
        "print(u.find_spec('jupyterhub'), u.find_spec('casa_demo'))",
        cwd=tmp_path,
    )
    assert out.strip() == "None None", out


def test_hub_install_loads_the_jupyterhub_entry_points(venvs, tmp_path):
    hub = venvs["hub"]
    out = venv_run(
        hub,
        "python",
        "-c",
        """
from importlib.metadata import entry_points
from jupyterhub.auth import Authenticator
from jupyterhub.spawner import Spawner
auth = entry_points(group="jupyterhub.authenticators")["casa"].load()
spawners = {n: entry_points(group="jupyterhub.spawners")[n].load() for n in ("casa", "casa-local")}
assert issubclass(auth, Authenticator) and all(issubclass(s, Spawner) for s in spawners.values())
print(auth.__name__, *sorted(s.__name__ for s in spawners.values()))
import importlib.util as u
print(u.find_spec("casa_demo"), u.find_spec("casa_hub.facility"), u.find_spec("casa_hub.demo_oidc"))
""",
        cwd=tmp_path,
    )
    assert out.splitlines() == ["CasaAuthenticator CasaLocalSpawner CasaSpawner", "None None None"], out
    key = venv_run(hub, "casa-hub-keys", "issuer", cwd=tmp_path)
    assert "PRIVATE KEY" in key
