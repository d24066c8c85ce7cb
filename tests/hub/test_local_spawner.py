"""CasaLocalSpawner: the private credentials directory (modes, atomic replacement, ownership, refusals), the
env a real started process sees, cleanup on stop, group-gated profiles, and one real jupyterhub-singleuser."""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import os
import stat
import sys
import time
from pathlib import Path

import httpx
import pytest
from aiohttp import web
from jupyterhub.objects import Hub, Server

from casa_hub.credentials.bundle import BundleFile, CredentialBundle
from casa_hub.credentials.bundle_dir import remove_bundle_dir, write_bundle_dir
from casa_hub.local import CasaLocalSpawner
from tests.hub.spawners import hub_user
from tests.support import VENV_BIN, free_port

EXP = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)


def _bundle(user="alice", token=b"token-1\n", extra=None, exp=EXP) -> CredentialBundle:
    files = {
        "xcache.token": BundleFile(token, 0o400, exp),
        "condor-tokens/casa": BundleFile(b"idtoken", 0o400, exp),
        "dask/ca.pem": BundleFile(b"CA", 0o444),
        "casa.json": BundleFile(b"{}", 0o444),
    }
    files.update(extra or {})
    return CredentialBundle(
        user=user,
        issued_at=EXP - datetime.timedelta(hours=1),
        files=files,
        env={
            "BEARER_TOKEN_FILE": "{mount}/xcache.token",
            "CASA_CREDENTIALS_DIR": "{mount}",
            "_CONDOR_SEC_TOKEN_DIRECTORY": "{mount}/condor-tokens",
        },
    )


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def _tree(directory: Path) -> dict[str, tuple[bytes | None, int]]:
    return {
        str(p.relative_to(directory)): (p.read_bytes() if p.is_file() else None, _mode(p))
        for p in sorted(directory.rglob("*"))
    }


# ------------------------------------------------------------------ the directory itself
def test_directory_is_private_with_the_bundle_modes(tmp_path):
    d = tmp_path / "home" / ".casa" / "credentials"
    write_bundle_dir(d, _bundle())
    assert _mode(d) == 0o700
    assert _tree(d) == {
        "casa.json": (b"{}", 0o444),
        "condor-tokens": (None, 0o700),
        "condor-tokens/casa": (b"idtoken", 0o400),
        "dask": (None, 0o700),
        "dask/ca.pem": (b"CA", 0o444),
        "xcache.token": (b"token-1\n", 0o400),
    }


def test_rewrite_replaces_files_atomically_and_drops_stale_ones(tmp_path):
    d = tmp_path / "creds"
    write_bundle_dir(d, _bundle(extra={"xcache.macaroon": BundleFile(b"mac", 0o400, EXP)}))
    old_inode = (d / "xcache.token").stat().st_ino
    with open(d / "xcache.token", "rb") as reader:  # a reader that opened the old file keeps whole old bytes
        write_bundle_dir(d, _bundle(token=b"token-2\n"))
        assert reader.read() == b"token-1\n"
    assert (d / "xcache.token").read_bytes() == b"token-2\n"
    assert (d / "xcache.token").stat().st_ino != old_inode  # renamed over, not rewritten in place
    assert not (d / "xcache.macaroon").exists()
    assert not [p for p in d.rglob(".casa-*")], "temporary files left behind"


def test_files_are_owned_by_the_user(tmp_path):
    if os.geteuid() != 0:
        pytest.fail("this test suite runs as root (chown to another uid)")
    d = tmp_path / "creds"
    write_bundle_dir(d, _bundle(), uid=65534, gid=65534)
    owners = {(p.lstat().st_uid, p.lstat().st_gid) for p in [d, *d.rglob("*")]}
    assert owners == {(65534, 65534)}


def test_a_planted_symlink_is_refused_and_its_target_untouched(tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir(mode=0o755)
    (tmp_path / "home").mkdir()
    d = tmp_path / "home" / "credentials"
    d.symlink_to(victim)
    with pytest.raises(OSError):
        write_bundle_dir(d, _bundle())
    assert _mode(victim) == 0o755 and list(victim.iterdir()) == []
    remove_bundle_dir(d)  # removes the link, never the target
    assert not d.is_symlink() and victim.is_dir()


@pytest.mark.parametrize("path", ["/etc/passwd", "../escape", "a/../../b", ""])
def test_paths_outside_the_directory_are_refused(tmp_path, path):
    with pytest.raises(ValueError, match="not a plain relative path"):
        write_bundle_dir(tmp_path / "creds", _bundle(extra={path: BundleFile(b"x", 0o400)}))


def test_remove_tolerates_a_missing_directory(tmp_path):
    remove_bundle_dir(tmp_path / "never-written")


# ------------------------------------------------------------------ the spawner
def _spawner(tmp_path, name="alice", **traits) -> CasaLocalSpawner:
    user = hub_user(name, 1, server=Server(base_url=f"/user/{name}/"))
    traits.setdefault("run_as_hub_user", True)
    traits.setdefault("home_dir_template", str(tmp_path / "home" / "{username}"))
    spawner = CasaLocalSpawner(
        user=user,
        hub=traits.pop("hub", Hub(ip="127.0.0.1", port=1, base_url="/hub/")),
        api_token="test-token",
        oauth_client_id=f"jupyterhub-user-{name}",
        log=logging.getLogger("test_local_spawner"),
        **traits,
    )
    spawner.server = user.server
    user.spawners[""] = spawner
    return spawner


async def _wait_file(path: Path, timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.stat().st_size:
            try:
                return json.loads(path.read_text())
            except ValueError:
                pass
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{path} not written")


async def test_started_process_sees_env_pointing_at_the_files_and_stop_removes_them(tmp_path):
    out = tmp_path / "seen.json"
    probe = (
        "import json, os, pathlib, sys, time\n"
        "d = os.environ['CASA_CREDENTIALS_DIR']\n"
        "seen = {'env': dict(os.environ), 'token': pathlib.Path(os.environ['BEARER_TOKEN_FILE']).read_text()}\n"
        f"pathlib.Path({str(out)!r}).write_text(json.dumps(seen))\n"
        "time.sleep(60)\n"
    )
    spawner = _spawner(tmp_path, cmd=[sys.executable, "-c", probe])
    spawner.casa_bundle = _bundle()
    await spawner.start()
    try:
        seen = await _wait_file(out)
        d = spawner.credentials_dir
        assert d == tmp_path / "home" / "alice" / ".casa" / "credentials"
        assert {
            k: seen["env"][k] for k in ("BEARER_TOKEN_FILE", "CASA_CREDENTIALS_DIR", "_CONDOR_SEC_TOKEN_DIRECTORY")
        } == _bundle().env_for(str(d))
        assert seen["token"] == "token-1\n"
        assert "token-1" not in json.dumps(seen["env"])  # paths in the env, never the credential itself
        assert await spawner.poll() is None
        assert spawner.get_state()["casa_expires_at"] == EXP.isoformat()
        messages = [e["message"] async for e in spawner.progress()]
        assert messages[:2] == ["Minting credentials", "Credentials written to a private directory"]
    finally:
        await spawner.stop()
    assert not spawner.credentials_dir.exists()
    assert await spawner.poll() is not None


PROFILES = [
    {"display_name": "CPU", "slug": "cpu", "environment": {"CASA_GPU_COUNT": "0"}},
    {
        "display_name": "GPU",
        "slug": "gpu",
        "casa_allowed_groups": ["gpu-users"],
        "environment": {"CASA_GPU_COUNT": "2"},
    },
]


async def test_the_chosen_profiles_environment_reaches_the_process(tmp_path):
    """Group gating and tampered choices: test_spawner_contract.py (both spawners)."""
    out = tmp_path / "seen.json"
    probe = (
        f"import json, os, pathlib, time; pathlib.Path({str(out)!r}).write_text(json.dumps(dict(os.environ)));"
        " time.sleep(60)"
    )
    spawner = _spawner(tmp_path, profiles=PROFILES, cmd=[sys.executable, "-c", probe])
    spawner.casa_bundle = _bundle()
    spawner.casa_groups = ["cms", "gpu-users"]
    spawner.user_options = spawner.options_from_form({"profile": ["gpu"]})
    await spawner.start()
    try:
        assert (await _wait_file(out))["CASA_GPU_COUNT"] == "2"
    finally:
        await spawner.stop()


async def test_real_jupyterhub_singleuser_starts_with_the_credentials(tmp_path):
    """One real single-user server (the hub API it checks at startup is a stand-in answering its version)."""
    hub_port = free_port()

    async def hub_api(request):
        return web.json_response({"version": "6.1.1"})

    app = web.Application()
    app.router.add_get("/hub/api", hub_api)
    app.router.add_get("/hub/api/", hub_api)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", hub_port).start()
    args = ["--ServerApp.allow_root=True"] if os.geteuid() == 0 else []
    spawner = _spawner(
        tmp_path,
        hub=Hub(ip="127.0.0.1", port=hub_port, base_url="/hub/"),
        cmd=[str(VENV_BIN / "jupyterhub-singleuser")],
        args=args,
        environment={"JUPYTER_CONFIG_DIR": str(tmp_path / "jupyter-config")},
    )
    spawner.casa_bundle = _bundle()
    try:
        ip, port = await spawner.start()
        t0 = time.monotonic()
        async with httpx.AsyncClient(timeout=5) as client:
            while True:
                try:
                    r = await client.get(f"http://{ip}:{port}/user/alice/api")
                    break
                except httpx.TransportError:
                    assert await spawner.poll() is None, "jupyterhub-singleuser exited"
                    assert time.monotonic() - t0 < 60, "jupyterhub-singleuser did not answer in 60 s"
                    await asyncio.sleep(0.2)
        assert r.status_code == 200 and "version" in r.json()
        assert (spawner.credentials_dir / "xcache.token").read_bytes() == b"token-1\n"
    finally:
        await spawner.stop()
        await runner.cleanup()
    assert not spawner.credentials_dir.exists()


# ------------------------------------------------------------------ deliveries racing a stop
async def test_a_delivery_racing_a_stop_never_recreates_the_credentials_or_arms_a_timer(tmp_path):
    spawner = _spawner(tmp_path)
    await spawner.casa_write_bundle(_bundle())  # the running server's credentials
    real_write = spawner.casa_write_bundle

    async def slow_write(bundle):  # a refresh whose write is still in flight when the stop comes
        await asyncio.sleep(0.3)
        await real_write(bundle)

    spawner.casa_write_bundle = slow_write
    in_flight = asyncio.ensure_future(spawner.casa_apply_bundle(_bundle(token=b"token-2\n")))
    await asyncio.sleep(0.05)
    await spawner.stop()
    await in_flight
    assert not spawner.credentials_dir.exists(), "the delivery re-created the credentials after the stop"
    assert spawner.casa_expires_at is None  # nothing left for the hub's refresher
    await spawner.casa_apply_bundle(_bundle(token=b"token-3\n"))  # one that arrives after the stop
    assert not spawner.credentials_dir.exists() and spawner.casa_expires_at is None
    assert await spawner.poll() is not None and spawner.casa_expires_at is None
