"""CasaSpawner (KubeSpawner) in a real hub, logged in through the real OIDC flow, against the Kubernetes
emulator (tests/hub/kube_emulator.py) over HTTP with KubeSpawner's own watch reflectors."""

from __future__ import annotations

import base64
import json

import httpx
import pytest

from casa_hub.credentials.bundle import CredentialBundle
from casa_hub.objects import secret_key
from tests.hub import hub as H
from tests.hub.kube import assert_credentials_mounted, start_kube, stop_kube
from tests.support import free_port, wait_until

PROFILES = [
    {"display_name": "CPU", "slug": "cpu", "default": True, "kubespawner_override": {"cpu_limit": 2}},
    {
        "display_name": "GPU",
        "slug": "gpu",
        "casa_allowed_groups": ["gpu-users"],
        "kubespawner_override": {
            "node_selector": {"nvidia.com/gpu.present": "true"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        },
        "profile_options": {
            "gpus": {
                "display_name": "GPUs",
                "choices": {
                    "one": {
                        "display_name": "1 GPU",
                        "default": True,
                        "kubespawner_override": {"extra_resource_limits": {"nvidia.com/gpu": "1"}},
                    },
                    "two": {
                        "display_name": "2 GPUs",
                        "kubespawner_override": {"extra_resource_limits": {"nvidia.com/gpu": "2"}},
                    },
                    "mig": {
                        "display_name": "MIG 1g.10gb",
                        "kubespawner_override": {"extra_resource_limits": {"nvidia.com/mig-1g.10gb": "1"}},
                    },
                    "lots": {
                        "display_name": "16 GPUs (over the limit)",
                        "kubespawner_override": {"extra_resource_limits": {"nvidia.com/gpu": "16"}},
                    },
                },
            }
        },
    },
]

KUBE_CONFIG = """
c.JupyterHub.spawner_class = "casa"
c.KubeSpawner.namespace = "default"
c.KubeSpawner.port = {pod_port}
c.KubeSpawner.fs_gid = 100
c.KubeSpawner.start_timeout = 30
c.KubeSpawner.k8s_api_request_retry_timeout = 8
c.KubeSpawner.image = "registry.example.org/casa/notebook:test"
c.KubeSpawner.profile_list = {profiles!r}
c.CasaSpawner.casa_max_gpus = 4
c.XCacheToken.lifetime = 70
c.CasaAuthenticator.credential_refresh_margin = 60
c.CasaRefresher.jitter = 0
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("kube")
    kube = start_kube(tmp)
    try:
        config = KUBE_CONFIG.format(pod_port=free_port(), profiles=PROFILES)
        with H.running_hub(tmp, config, env={"KUBECONFIG": str(kube.kubeconfig)}) as hub:
            yield hub, kube
    finally:
        stop_kube(kube)


def _user(hub, name):
    with hub.api() as api:
        return api.get(f"/users/{name}").json()


def _spawn(hub, name, options: dict) -> httpx.Response:
    with hub.api() as api:
        return api.post(f"/users/{name}/server", json=options)


def _ready(hub, name):
    return wait_until(lambda: (_user(hub, name)["servers"].get("") or {}).get("ready"), what=f"{name} ready")


def _stop(hub, name):
    with hub.api() as api:
        api.delete(f"/users/{name}/server")
    wait_until(lambda: not _user(hub, name)["servers"], what=f"{name} stopped")


def _pod(kube, name):
    return next((p for p in kube.objects("pods") if p["metadata"]["name"] == f"jupyter-{name}"), None)


def _secret(kube, name):
    return next((s for s in kube.objects("secrets") if s["metadata"]["name"] == f"casa-{name}"), None)


def _spawn_failure(hub, name, options: dict) -> str:
    """The message a refused or failed spawn shows: the API's answer if it failed at once, else the
    failure event of the progress stream."""
    r = _spawn(hub, name, options)
    if 400 <= r.status_code < 600:
        return r.json().get("message", "")
    return _progress_failure(hub, name)


def _progress_failure(hub, name) -> str:
    with hub.api() as api:
        with api.stream("GET", f"/users/{name}/server/progress", timeout=60) as r:
            for line in r.iter_lines():
                if line.startswith("data:"):
                    event = json.loads(line[5:])
                    if event.get("failed"):
                        return event.get("message", "")
    return ""


def test_gpu_profile_spawn_mounts_the_secret_and_the_stop_deletes_it(site):
    hub, kube = site
    H.oauth_login(hub, "alice")
    assert _spawn(hub, "alice", {"profile": "gpu", "gpus": "two"}).status_code in (201, 202)
    _ready(hub, "alice")
    pod, secret = _pod(kube, "alice"), _secret(kube, "alice")
    bundle = CredentialBundle.from_dict(_user(hub, "alice")["auth_state"]["casa"])
    # the Secret holds exactly the bundle (written before the pod, deleted by the stop), mounted read-only;
    # group-readable (fsGroup) files, env pointing at paths only
    container, volume = assert_credentials_mounted(pod, secret, bundle, "alice")
    modes = {i["path"]: i["mode"] for i in volume["secret"]["items"]}
    assert modes["xcache.token"] == 0o440 and modes["dask/client.key"] == 0o440 and modes["dask/ca.pem"] == 0o444
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["BEARER_TOKEN_FILE"] == "/etc/casa/xcache.token"
    assert env["_CONDOR_SEC_TOKEN_DIRECTORY"] == "/etc/casa/condor-tokens"
    token = bundle.files["xcache.token"].content.decode().strip()
    assert all(token not in (v or "") for v in env.values())
    # the GPU choice reached the pod
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert pod["spec"]["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["spec"]["tolerations"][0]["key"] == "nvidia.com/gpu"
    _stop(hub, "alice")
    assert _secret(kube, "alice") is None and _pod(kube, "alice") is None


def test_respawn_does_not_duplicate_volumes_and_takes_over_stale_secret(site):
    hub, kube = site
    H.oauth_login(hub, "alice")
    # a leftover Secret of an earlier server: create answers 409, the spawner takes it over
    kube.create(
        "secrets",
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "casa-alice"},
            "data": {"stale.key": base64.b64encode(b"old").decode()},
        },
    )
    for _ in range(2):
        assert _spawn(hub, "alice", {"profile": "cpu"}).status_code in (201, 202)
        _ready(hub, "alice")
        pod, secret = _pod(kube, "alice"), _secret(kube, "alice")
        assert [v["name"] for v in pod["spec"]["volumes"]].count("casa-credentials") == 1
        assert "stale.key" not in (secret["data"] or {})
        assert "nvidia.com/gpu" not in (pod["spec"]["containers"][0]["resources"].get("limits") or {})
        _stop(hub, "alice")


def test_gpu_profile_refused_outside_its_groups(site):
    hub, kube = site
    H.oauth_login(hub, "bob")  # atlas only: the GPU profile is for gpu-users
    message = _spawn_failure(hub, "bob", {"profile": "gpu"})
    assert "'gpu' is not available to your account" in message
    assert _pod(kube, "bob") is None and _secret(kube, "bob") is None


def test_gpu_count_over_the_facility_limit_is_refused(site):
    hub, kube = site
    H.oauth_login(hub, "alice")
    assert "the facility allows at most 4" in _spawn_failure(hub, "alice", {"profile": "gpu", "gpus": "lots"})
    assert _pod(kube, "alice") is None


def test_tampered_gpu_choice_is_refused(site):
    hub, kube = site
    H.oauth_login(hub, "alice")
    message = _spawn_failure(hub, "alice", {"profile": "gpu", "gpus": "eight", "gpus--unlisted-choice": "8"})
    assert "takes no value of your own" in message and "one, two, mig, lots" in message, message
    assert _pod(kube, "alice") is None


def test_kubernetes_500s_on_secret_create_are_retried(site):
    hub, kube = site
    H.oauth_login(hub, "admin")
    kube.fault("POST", "secrets", 500, count=2)
    assert _spawn(hub, "admin", {"profile": "cpu"}).status_code in (201, 202)
    _ready(hub, "admin")
    assert _secret(kube, "admin") is not None
    assert "answered 500 while writing Secret casa-admin; retrying" in hub.log()
    _stop(hub, "admin")


def test_kubernetes_that_keeps_failing_gives_a_clear_error_and_leaves_nothing(site):
    hub, kube = site
    H.oauth_login(hub, "admin")
    kube.fault("POST", "secrets", 503, count=1000)
    try:
        message = _spawn_failure(hub, "admin", {"profile": "cpu"})
    finally:
        kube.clear_faults()
    assert "Kubernetes is not answering" in message
    wait_until(lambda: _pod(kube, "admin") is None, what="pod removed after the failed spawn")
    assert _secret(kube, "admin") is None


def test_user_outside_allowed_groups_cannot_spawn(site):
    hub, kube = site
    client = H.oauth_login(hub, "eve")
    assert client.last_callback.status_code == 403
    assert _pod(kube, "eve") is None


def test_refreshed_credentials_reach_the_secret_with_the_charts_rights(site):
    hub, kube = site
    H.oauth_login(hub, "bob")
    assert _spawn(hub, "bob", {"profile": "cpu"}).status_code in (201, 202)
    _ready(hub, "bob")
    first = _secret(kube, "bob")
    token_key = secret_key("xcache.token")
    changed = wait_until(
        lambda: (lambda s: s if s and s["data"][token_key] != first["data"][token_key] else None)(_secret(kube, "bob")),
        timeout=40,
        what="Secret refreshed",
    )
    assert changed["metadata"]["labels"] == first["metadata"]["labels"]
    assert len([s for s in kube.objects("secrets") if s["metadata"]["name"] == changed["metadata"]["name"]]) == 1
    H.assert_renewed_for(
        hub, "bob", base64.b64decode(changed["data"][token_key]), base64.b64decode(first["data"][token_key])
    )
    _stop(hub, "bob")


def test_spawn_form_shows_only_allowed_profiles_with_live_gpu_count(site):
    hub, kube = site
    kube.set_rbac("chart+extras")  # listing nodes and pods cluster-wide: helm-values/extra-rbac.yaml
    httpx.post(
        kube.url + "/api/v1/nodes",
        timeout=10,
        json={
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": "gpu-node-1"},
            "status": {"allocatable": {"nvidia.com/gpu": "4", "cpu": "32"}},
        },
    ).raise_for_status()
    alice = H.oauth_login(hub, "alice")
    form = H.follow(alice, alice.get(hub.url + "/hub/spawn"))
    assert form.status_code == 200
    text = H.page_message(form.text)
    assert "GPU" in text and "(4 GPUs free now)" in text
    bob = H.oauth_login(hub, "bob")
    bob_form = H.page_message(H.follow(bob, bob.get(hub.url + "/hub/spawn")).text)
    assert "CPU" in bob_form and "GPUs free now" not in bob_form and "MIG" not in bob_form
    kube.set_rbac("chart")


def test_no_credential_in_hub_log_events_or_pod_env(site):
    hub, kube = site
    with hub.api() as api:
        users = [u["name"] for u in api.get("/users").json()]
    secrets_ = []
    for name in users:
        state = _user(hub, name).get("auth_state") or {}
        if not state.get("casa"):
            continue
        bundle = CredentialBundle.from_dict(state["casa"])
        secrets_ += [
            f.content.decode().strip()
            for p, f in bundle.files.items()
            if p.endswith((".token", ".key", ".macaroon")) or p.startswith("condor-tokens/")
        ]
        secrets_ += [state["access_token"], state["refresh_token"], state["id_token"]]
    assert secrets_, "no credentials to look for"
    haystacks = {
        "hub log": hub.log(),
        "events": json.dumps(kube.objects("events")),
        "pods": json.dumps(kube.objects("pods")),
    }
    for where, text in haystacks.items():
        for s in secrets_:
            assert s[:40] not in text, f"a credential appears in the {where}"


def test_progress_shows_casa_steps(site):
    import threading

    hub, kube = site
    H.oauth_login(hub, "admin")
    kube.kubelet_delay(6)  # the pod stays Pending: the spawn is in progress while we watch
    try:
        poster = threading.Thread(target=_spawn, args=(hub, "admin", {"profile": "cpu"}))
        poster.start()
        wait_until(
            lambda: (_user(hub, "admin")["servers"].get("") or {}).get("pending") == "spawn",
            timeout=20,
            what="spawn pending",
        )
        messages = []
        with hub.api() as api:
            with api.stream("GET", "/users/admin/server/progress", timeout=60) as r:
                for line in r.iter_lines():
                    if line.startswith("data:"):
                        event = json.loads(line[5:])
                        messages.append(event.get("message", ""))
                        if event.get("ready") or event.get("failed"):
                            break
        poster.join(60)
    finally:
        kube.kubelet_delay(0)
    minted = [i for i, m in enumerate(messages) if m.startswith("Credentials minted (valid until")]
    assert minted and "Credentials secret ready" in messages, messages
    assert minted[0] < messages.index("Credentials secret ready") < len(messages) - 1  # before "ready"
    _stop(hub, "admin")
