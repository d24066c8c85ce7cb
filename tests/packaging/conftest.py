"""A casa-hub wheel built the way a release is, from the files of this working tree (committed or not, but never
git-ignored build output: no js/node_modules, no prebuilt casa_hub_ext/labextension), installed into fresh venvs.

Build: ``pip wheel`` with build isolation, so the build requirements are exactly pyproject.toml's
``[build-system]`` (hatchling + hatch-jupyter-builder, which runs the npm build of js/).
Installs: from a wheelhouse (``$CASA_WHEELHOUSE``, default ``~/.cache/casa-hub/wheelhouse``) with ``--no-index``;
when it lacks something, it is filled from PyPI once (pins: requirements/test.txt) and the install is retried,
so later runs need no network. npm reuses its own cache (``prefer-offline``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import tomllib
import venv
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.support import REPO, need

WHEELHOUSE = Path(os.environ.get("CASA_WHEELHOUSE", Path.home() / ".cache" / "casa-hub" / "wheelhouse"))
ANSI = re.compile(r"\x1b\[[0-9;]*m")
_filling = threading.Lock()  # the two venvs install at the same time, but fill the wheelhouse one at a time


def pins() -> dict[str, str]:
    """requirements/test.txt as {normalized name: "name==version"} (extras dropped: pip refuses them in constraints)."""
    out = {}
    for line in (REPO / "requirements" / "test.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)(\[[^\]]*\])?\s*==\s*(\S+)", line)
        if m:
            out[re.sub(r"[-_.]+", "-", m.group(1)).lower()] = f"{m.group(1)}=={m.group(3)}"
    return out


def run(cmd: list, *, cwd: Path, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``cmd``; on failure, fail the test with its output (not a traceback into subprocess)."""
    result = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        pytest.fail(
            f"{' '.join(map(str, cmd))} exited with {result.returncode}\n"
            f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}",
            pytrace=False,
        )
    return result


def pip(*args, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """This venv's pip (any target interpreter via ``--python``); only PyPI, never the extra indexes of this host."""
    env = dict(env or os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1")
    return subprocess.run(
        [sys.executable, "-m", "pip", *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def offline_first(args: list, fill: list, *, cwd: Path, env: dict | None = None) -> None:
    """``pip *args`` from the wheelhouse alone; if that fails, ``pip wheel *fill`` into it (PyPI) and retry."""
    offline = ["--no-index", "--find-links", WHEELHOUSE]
    if pip(*args, *offline, cwd=cwd, env=env).returncode == 0:
        return
    with _filling:
        WHEELHOUSE.mkdir(parents=True, exist_ok=True)
        filled = pip("wheel", "--wheel-dir", WHEELHOUSE, "--find-links", WHEELHOUSE, *fill, cwd=cwd, env=env)
        for stale in WHEELHOUSE.glob("casa_hub-*.whl"):  # never install a cached casa-hub instead of the fresh one
            stale.unlink()
    if filled.returncode != 0:
        pytest.fail(
            f"filling the wheelhouse {WHEELHOUSE} failed:\n{filled.stdout[-3000:]}\n{filled.stderr[-3000:]}",
            pytrace=False,
        )
    result = pip(*args, *offline, cwd=cwd, env=env)
    if result.returncode != 0:
        pytest.fail(
            f"pip {' '.join(map(str, args))} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}", pytrace=False
        )


@pytest.fixture(scope="session")
def source_tree(tmp_path_factory) -> Path:
    """The working tree's tracked and untracked-but-not-ignored files (what a clean checkout of it would hold)."""
    need(shutil.which("git") is not None and (REPO / ".git").exists(), "git and a git checkout")
    listed = (
        subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=REPO,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split("\0")
    )
    tree = tmp_path_factory.mktemp("clean") / "casa-hub"
    for name in filter(None, listed):
        src = REPO / name
        if not src.is_file():  # deleted in the working tree but still in the index
            continue
        dest = tree / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest)
    assert not (tree / "casa_hub_ext" / "labextension").exists() and not (tree / "js" / "node_modules").exists()
    return tree


@pytest.fixture(scope="session")
def wheel(source_tree, tmp_path_factory) -> Path:
    """``pip wheel`` of the clean tree with build isolation: the npm build of js/ runs inside it."""
    need(shutil.which("npm") is not None and shutil.which("node") is not None, "Node.js and npm")
    out = tmp_path_factory.mktemp("dist")
    build_requires = tomllib.loads((source_tree / "pyproject.toml").read_text())["build-system"]["requires"]
    env = dict(os.environ, npm_config_prefer_offline="true", npm_config_audit="false", npm_config_fund="false")
    offline_first(["wheel", "--no-deps", "--wheel-dir", out, source_tree], build_requires, cwd=out, env=env)
    wheels = list(out.glob("casa_hub-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def _fresh_venv(path: Path, wheel: Path, requirements: list[str]) -> Path:
    venv.EnvBuilder(with_pip=False).create(path)  # pip comes from outside (--python): no ensurepip per venv
    python = path / "bin" / "python"
    constraints = path / "constraints.txt"
    constraints.write_text("\n".join(pins().values()) + "\n")
    reqs = [f"{wheel}{r}" if r.startswith("[") else r for r in requirements]
    offline_first(
        ["--python", python, "install", "--constraint", constraints, *reqs],
        ["--constraint", constraints, *reqs],
        cwd=path,
    )
    return path


@pytest.fixture(scope="session")
def venvs(wheel, tmp_path_factory) -> dict[str, Path]:
    """Two fresh venvs, installed at the same time: ``user`` (casa-hub[user] + JupyterLab, as the user image has
    it) and ``hub`` (casa-hub[hub])."""
    root = tmp_path_factory.mktemp("venvs")
    wanted = {"user": ["[user]", pins()["jupyterlab"]], "hub": ["[hub]"]}
    with ThreadPoolExecutor(2) as pool:
        futures = {name: pool.submit(_fresh_venv, root / name, wheel, reqs) for name, reqs in wanted.items()}
        return {name: f.result() for name, f in futures.items()}


def venv_run(venv_dir: Path, *cmd, cwd: Path) -> str:
    """A command from the venv's bin/, run outside the repository (so nothing is imported from the source tree);
    its stdout + stderr without colour codes."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "JUPYTER", "VIRTUAL_ENV"))}
    home = venv_dir / "home"  # no ~/.jupyter or ~/.local/share/jupyter of this machine's user
    home.mkdir(exist_ok=True)
    env.update(PATH=f"{venv_dir / 'bin'}:{env.get('PATH', '')}", VIRTUAL_ENV=str(venv_dir), HOME=str(home))
    result = run([venv_dir / "bin" / cmd[0], *cmd[1:]], cwd=cwd, env=env, timeout=120)
    return ANSI.sub("", result.stdout + result.stderr)
