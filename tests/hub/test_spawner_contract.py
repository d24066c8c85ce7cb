"""What both Casa spawners promise (docs/dev/contracts.md, "Authenticator -> spawner"), one test per behaviour,
run for CasaSpawner (against the Kubernetes emulator) and CasaLocalSpawner (a stand-in process) through the
``casa_spawner`` fixture (tests/hub/conftest.py, kits in tests/hub/spawners.py). What really differs stays in
test_spawner_k8s.py (Secret, pod, RBAC, Dask objects, GPU caps) and test_local_spawner.py (directory modes,
atomic replacement, ownership, a real jupyterhub-singleuser)."""

from __future__ import annotations

import pytest
from tornado.web import HTTPError
from traitlets import TraitError

from tests.hub.spawners import bundle


async def test_start_delivers_the_bundle_with_env_pointing_at_it_and_stop_removes_it(casa_spawner):
    spawner = casa_spawner.make()
    await casa_spawner.start(spawner, profile="cpu")
    try:
        assert casa_spawner.mounted(spawner) == {p: f.content for p, f in spawner.casa_bundle.files.items()}
        env = casa_spawner.server_env(spawner)
        mount = casa_spawner.mount_path(spawner)
        assert {k: env[k] for k in spawner.casa_bundle.env} == spawner.casa_bundle.env_for(mount)
        assert "token-1" not in str(env)  # paths in the env, never a credential
        assert [e["message"] async for e in spawner.casa_progress_events()][0] == "Minting credentials"
    finally:
        await spawner.stop()
    assert casa_spawner.mounted(spawner) is None


async def test_a_delivered_bundle_replaces_the_mounted_one_and_another_users_is_refused(casa_spawner):
    spawner = casa_spawner.make()
    await casa_spawner.start(spawner, profile="cpu")
    try:
        fresh = bundle(token=b"token-2\n", drop=["condor-tokens/casa"])
        await spawner.casa_apply_bundle(fresh)
        assert casa_spawner.mounted(spawner) == {p: f.content for p, f in fresh.files.items()}  # the dropped file too
        assert spawner.casa_bundle is fresh
        with pytest.raises(ValueError, match="refusing to deliver credentials of 'mallory'"):
            await spawner.casa_apply_bundle(bundle(user="mallory", token=b"evil"))
        assert casa_spawner.mounted(spawner)["xcache.token"] == b"token-2\n"
    finally:
        await spawner.stop()


async def test_a_bundle_of_another_user_is_never_taken(casa_spawner):
    spawner = casa_spawner.make()
    with pytest.raises(TraitError, match="refusing credentials of 'mallory' for 'alice'"):
        spawner.casa_bundle = bundle(user="mallory")
    assert spawner.casa_bundle.user == "alice"


async def test_start_without_credentials_is_refused_and_creates_nothing(casa_spawner):
    spawner = casa_spawner.make()
    spawner.casa_bundle = None
    with pytest.raises(HTTPError) as e:
        await casa_spawner.start(spawner, profile="cpu")
    assert e.value.status_code == 403
    assert e.value.jupyterhub_message == "No credentials for this server: please log out and log in again."
    assert not casa_spawner.anything_created(spawner)


async def test_a_profile_of_other_groups_is_refused_before_anything_is_written(casa_spawner):
    spawner = casa_spawner.make(groups=["cms"])
    form = await _form(spawner)
    assert 'value="cpu"' in form and 'value="gpu"' not in form
    with pytest.raises(HTTPError) as e:
        await casa_spawner.start(spawner, profile="gpu")  # not on this user's form: a tampered request
    assert e.value.status_code == 403
    assert e.value.jupyterhub_message == "The profile 'gpu' is not available to your account; you may choose: cpu."
    assert not casa_spawner.anything_created(spawner)
    member = casa_spawner.make(name="gpuuser", groups=["cms", "gpu-users"])
    assert 'value="gpu"' in await _form(member)


async def test_a_cpu_server_is_told_it_has_no_gpus(casa_spawner):
    """CASA_GPU_COUNT caps the GPUs the user side finds through NVML: a CPU server on a GPU node must find none."""
    spawner = casa_spawner.make(groups=["cms", "gpu-users"])
    await casa_spawner.start(spawner, profile="cpu")
    try:
        assert casa_spawner.server_env(spawner)["CASA_GPU_COUNT"] == "0"
    finally:
        await spawner.stop()


async def _form(spawner) -> str:
    form = spawner.options_form(spawner) if callable(spawner.options_form) else spawner.options_form
    return await form if hasattr(form, "__await__") else form
