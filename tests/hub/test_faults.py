"""Faults of the Kubernetes API under CasaSpawner, and a hub restart while a server runs.

- Slow answers and timeouts (tests/hub/kube.py ``delay``: answered after the client's
  ``k8s_api_request_timeout``, either applied at once or lost), and 5xx, on the credentials Secret (create at
  spawn, patch at refresh, delete at stop) and the Dask Service (create): transient faults are retried and the
  operation completes; persistent ones fail the spawn with the user-facing 503 text and leave nothing behind.
  Driven in-process against the emulator in a thread, as tests/hub/test_spawner_k8s.py (the 409/500/503 faults
  on Secret create are there already).
- A real hub (and the emulator as a subprocess) restarted while the user's server runs: the refresh timer comes
  back from the persisted spawner state and replaces the Secret (same name and owner), without a new login.
"""

from __future__ import annotations

import base64
import logging

import httpx
import kmock
import pytest
from kubespawner import KubeSpawner

from casa_hub.errors import SpawnRefused
from casa_hub.objects import EXPIRY_ANNOTATION, secret_key
from tests.hub import hub as H
from tests.hub.kube import KubeThread, start_kube, stop_kube
from tests.hub.oidc import start_provider, stop_provider
from tests.hub.spawners import bundle, decoded, expected_data, make_spawner, start, use_kubeconfig
from tests.support import free_port, need, wait_until

USER_ERROR = (
    "The cluster's Kubernetes is not answering (while preparing your credentials); please try again in a few minutes."
)
# the client gives up after 1 s; the emulator's slow answers take 2 s
FAST = dict(k8s_api_request_timeout=1, k8s_api_request_retry_timeout=6)
SLOW = 2


@pytest.fixture(scope="module")
def kube(tmp_path_factory):
    with KubeThread() as kube, use_kubeconfig(kube.write_kubeconfig(tmp_path_factory.mktemp("kube") / "kubeconfig")):
        yield kube


@pytest.fixture(autouse=True)
async def _clean(kube):
    yield
    kube.clear_faults()
    await KubeSpawner._stop_all_reflectors()  # they live on the test's event loop


def _nothing_left(kube, name: str) -> bool:
    return all(
        kube.get(plural, f"{prefix}-{name}") is None
        for plural, prefix in (("pods", "jupyter"), ("secrets", "casa"), ("services", "casa-dask"))
    )


# ------------------------------------------------------------------ spawn: Secret and Service create
async def test_a_slow_secret_create_is_retried_and_the_late_write_taken_over(kube, caplog):
    # the API server stores the Secret but answers after the client gave up: the retry meets a 409
    kube.delay(kmock.action.CREATE, "secrets", SLOW)
    spawner = make_spawner(kube, name="slow", **FAST)
    with caplog.at_level(logging.INFO):
        await start(spawner, profile="cpu")
    try:
        pod, secret = kube.get("pods", "jupyter-slow"), kube.get("secrets", "casa-slow")
        assert decoded(secret) == expected_data(spawner.casa_bundle)
        assert pod is not None and not secret["metadata"].get("ownerReferences")  # before the pod: owned by nothing
        assert "Kubernetes did not answer in 1s while writing Secret casa-slow; retrying" in caplog.text
        assert "Secret casa-slow exists; replacing it" in caplog.text
    finally:
        await spawner.stop()
    assert _nothing_left(kube, "slow")


async def test_a_secret_create_that_keeps_timing_out_fails_clearly_and_leaves_nothing(kube):
    kube.delay(kmock.action.CREATE, "secrets", SLOW, times=100)
    spawner = make_spawner(kube, name="stuck", **dict(FAST, k8s_api_request_retry_timeout=3))
    with pytest.raises(SpawnRefused) as failed:
        await start(spawner, profile="cpu")
    assert (failed.value.status_code, failed.value.jupyterhub_message) == (503, USER_ERROR)
    assert "Kubernetes kept failing for 3s while writing Secret casa-stuck" in failed.value.log_message
    assert _nothing_left(kube, "stuck")  # no pod; the failed start deleted the Secret its first try stored
    await spawner.stop()  # what the hub does after a failed spawn
    assert _nothing_left(kube, "stuck")


async def test_a_slow_dask_service_create_is_retried_and_taken_over(kube, caplog):
    kube.delay(kmock.action.CREATE, "services", SLOW)
    spawner = make_spawner(kube, name="dasky", casa_dask_service_enabled=True, **FAST)
    with caplog.at_level(logging.WARNING):
        await start(spawner, profile="cpu")
    try:
        pod, service = kube.get("pods", "jupyter-dasky"), kube.get("services", "casa-dask-dasky")
        assert pod is not None and service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
        assert len([s for s in kube.stored("services") if s["metadata"]["name"] == "casa-dask-dasky"]) == 1
        assert "did not answer in 1s while writing Service casa-dask-dasky; retrying" in caplog.text
    finally:
        await spawner.stop()
    assert _nothing_left(kube, "dasky")


async def test_a_dask_service_create_that_keeps_failing_fails_clearly_and_leaves_nothing(kube, caplog):
    kube.fail(kmock.action.CREATE, "services", 500, times=1000)
    spawner = make_spawner(
        kube, name="nodask", casa_dask_service_enabled=True, **dict(FAST, k8s_api_request_retry_timeout=2)
    )
    with caplog.at_level(logging.WARNING), pytest.raises(SpawnRefused) as failed:
        await start(spawner, profile="cpu")
    assert (failed.value.status_code, failed.value.jupyterhub_message) == (503, USER_ERROR)
    assert "Kubernetes kept failing for 2s while writing Service casa-dask-nodask" in failed.value.log_message
    assert "Kubernetes answered 500 while writing Service casa-dask-nodask; retrying" in caplog.text
    assert _nothing_left(kube, "nodask")  # no pod; the failed start deleted the Secret
    await spawner.stop()
    assert _nothing_left(kube, "nodask")


# ------------------------------------------------------------------ refresh: Secret delete + create
async def test_a_lost_slow_or_failing_refresh_is_retried_and_the_secret_gets_the_new_credentials(kube, caplog):
    """The refresh replaces the Secret (delete, create: the chart's rights); a create that never reached
    storage, one applied but answered too late, and 503s are all retried to one Secret with the new data."""
    spawner = make_spawner(kube, name="patchy", **FAST)
    await start(spawner, profile="cpu")
    try:
        before = kube.get("secrets", "casa-patchy")
        for n, (fault, args) in enumerate([("delay", dict(lost=True)), ("delay", {}), ("fail", {})]):
            if fault == "delay":
                kube.delay(kmock.action.CREATE, "secrets", SLOW, **args)
            else:
                kube.fail(kmock.action.CREATE, "secrets", 503, times=2)
            fresh = bundle("patchy", token=b"token-%d\n" % n)
            caplog.clear()
            with caplog.at_level(logging.WARNING):
                await spawner.casa_apply_bundle(fresh)
            after = kube.get("secrets", "casa-patchy")
            assert decoded(after) == expected_data(fresh), fault
            assert after["metadata"]["labels"] == before["metadata"]["labels"]
            assert len([s for s in kube.stored("secrets") if s["metadata"]["name"] == "casa-patchy"]) == 1
            if fault == "delay":
                assert "did not answer in 1s while refreshing Secret casa-patchy; retrying" in caplog.text
            else:
                assert caplog.text.count("Kubernetes answered 503 while refreshing Secret casa-patchy; retrying") == 2
    finally:
        await spawner.stop()
    assert _nothing_left(kube, "patchy")


# ------------------------------------------------------------------ stop: Secret delete (owned by nothing: only the
# spawner's own delete removes it)
async def test_a_lost_or_failing_secret_delete_is_retried_and_stop_completes(kube, caplog):
    spawner = make_spawner(kube, name="deller", **FAST)
    await start(spawner, profile="cpu")
    kube.delay(kmock.action.DELETE, "secrets", SLOW, lost=True)
    kube.fail(kmock.action.DELETE, "secrets", 503)
    with caplog.at_level(logging.WARNING):
        await spawner.stop()
    assert _nothing_left(kube, "deller")
    assert "did not answer in 1s while deleting Secret casa-deller; retrying" in caplog.text
    assert "Kubernetes answered 503 while deleting Secret casa-deller; retrying" in caplog.text
    assert "Could not remove the credentials" not in caplog.text


async def test_a_secret_delete_that_keeps_failing_does_not_block_stop(kube, caplog):
    spawner = make_spawner(kube, name="undel", **dict(FAST, k8s_api_request_retry_timeout=2))
    await start(spawner, profile="cpu")
    kube.fail(kmock.action.DELETE, "secrets", 503, times=1000)
    try:
        with caplog.at_level(logging.WARNING):
            await spawner.stop()  # returns: the server is stopped even though its Secret could not go
        assert kube.get("pods", "jupyter-undel") is None and spawner.casa_expires_at is None
        assert "Could not remove the credentials of" in caplog.text
        assert "Kubernetes kept failing for 2s while deleting Secret casa-undel" in caplog.text
    finally:
        kube.clear_faults()
        httpx.delete(f"{kube.url}/api/v1/namespaces/default/secrets/casa-undel", timeout=10)


# ------------------------------------------------------------------ a real hub restarted while a server runs
# credentials are refreshed ~30 s after login, i.e. after the restart; Kubernetes calls time out after 1 s
RESTART_CONFIG = (
    H.KUBE_SPAWNER_CONFIG
    + """
c.KubeSpawner.k8s_api_request_timeout = 1
c.KubeSpawner.k8s_api_request_retry_timeout = 8
"""
)


def _user(hub, name: str) -> dict:
    with hub.api() as api:
        return api.get(f"/users/{name}").json()


def _user_secrets(kube, name: str) -> list[dict]:
    return [
        s
        for s in kube.objects("secrets")
        if (s["metadata"].get("labels") or {}).get("hub.jupyter.org/username") == name
    ]


def test_hub_restart_restores_the_refresh_timer_and_refreshes_the_secret(tmp_path):
    need(H.CHP.exists(), "configurable-http-proxy (npm ci)")
    token_key = secret_key("xcache.token")
    kube = start_kube(tmp_path)
    provider = hub = None
    try:
        provider = start_provider(tmp_path)
        config = RESTART_CONFIG.format(pod_port=free_port())
        env = {"KUBECONFIG": str(kube.kubeconfig)}
        hub = H.start_hub(tmp_path / "hub", provider, extra_config=config, env=env)
        H.oauth_login(hub, "alice")
        with hub.api() as api:
            assert api.post("/users/alice/server", json={}).status_code in (201, 202)
        wait_until(lambda: (_user(hub, "alice")["servers"].get("") or {}).get("ready"), 40, "alice's server ready")
        first = _user_secrets(kube, "alice")
        assert len(first) == 1, first
        first = first[0]

        H.stop_hub(hub)  # SIGTERM; cleanup_servers = False: the pod keeps running
        (tmp_path / "hub" / "hub.log").rename(tmp_path / "hub" / "hub-before-restart.log")
        (secret_at_stop,) = _user_secrets(kube, "alice")
        assert secret_at_stop["data"] == first["data"], "refreshed before the restart: the test proves nothing"
        assert kube.objects("pods"), "the server did not survive the hub's stop"

        kube.delay("POST", "secrets", 2, lost=True)  # and the first refresh's create after the restart times out
        hub = H.start_hub(tmp_path / "hub", provider, extra_config=config, env=env)  # same state dir and db
        refreshed = wait_until(
            lambda: next(
                (s for s in _user_secrets(kube, "alice") if s["data"][token_key] != first["data"][token_key]), None
            ),
            60,
            f"Secret refreshed after the restart\n{hub.log()[-3000:]}",
        )
        assert len(_user_secrets(kube, "alice")) == 1  # no duplicate
        assert refreshed["metadata"]["labels"] == first["metadata"]["labels"]
        old_expiry = first["metadata"]["annotations"][EXPIRY_ANNOTATION]
        assert refreshed["metadata"]["annotations"][EXPIRY_ANNOTATION] > old_expiry
        model = _user(hub, "alice")
        H.assert_renewed_for(
            hub, "alice", base64.b64decode(refreshed["data"][token_key]), base64.b64decode(first["data"][token_key])
        )
        log = hub.log()
        assert "did not answer in 1s while refreshing Secret casa-alice; retrying" in log
        assert "Delivered fresh credentials to" in log and "Traceback" not in log
        # the server is still running and reachable through the restarted hub's proxy
        assert model["servers"][""]["ready"] is True
        r = httpx.get(hub.url + "/user/alice/api/status", timeout=10)
        assert r.status_code == 200 and r.json()["pod"] == "jupyter-alice"
    finally:
        if hub is not None:
            H.stop_hub(hub)
        if provider is not None:
            stop_provider(provider)
        stop_kube(kube)
