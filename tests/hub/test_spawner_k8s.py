"""CasaSpawner against the Kubernetes emulator (tests/hub/kube.py) over real HTTP, driven in-process like
kubespawner's own tests, with KubeSpawner's watch reflectors and async client.

Also an opt-in tier against a real cluster: ``CASA_TEST_KUBECONFIG=~/.kube/config pytest -m k8s_real``.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
from pathlib import Path
from types import SimpleNamespace

import httpx
import kmock
import pytest
from kubernetes_asyncio.client.rest import ApiException
from kubespawner import KubeSpawner
from traitlets.config import Config

from casa_hub.errors import SpawnRefused
from casa_hub.spawner import CasaSpawner
from tests.hub.spawners import EXP, PROFILES, bundle, decoded, expected_data, make_spawner, start, use_kubeconfig


@pytest.fixture(scope="module")
def kube(kube_emulator):
    return kube_emulator


@pytest.fixture(autouse=True)
async def _reflectors(kube):
    yield
    kube.clear_faults()
    kube.kubelet.delay = 0
    await KubeSpawner._stop_all_reflectors()  # they live on the test's event loop


# ------------------------------------------------------------------ start / stop
async def test_gpu_profile_start_writes_the_secret_before_the_pod_and_mounts_it(kube):
    spawner = make_spawner(kube, groups=["cms", "gpu-users"])
    events = []

    async def watch_progress():
        await asyncio.sleep(0.05)
        async for event in spawner.progress():
            events.append(event["message"])

    watcher = asyncio.ensure_future(watch_progress())
    kube.kubelet.delay = 0.5  # the pod stays Pending a moment: progress streams while the spawn runs
    await start(spawner, profile="gpu", gpus="2")
    await asyncio.wait_for(watcher, 10)
    try:
        pod, secret = kube.get("pods", "jupyter-alice"), kube.get("secrets", "casa-alice")
        # the Secret holds exactly the bundle and is labelled; written before the pod (so owned by nothing: the
        # stop deletes it), so the pod never waits for it
        assert decoded(secret) == expected_data(spawner.casa_bundle)
        assert secret["type"] == "Opaque"
        assert not secret["metadata"].get("ownerReferences")
        assert int(secret["metadata"]["resourceVersion"]) < int(pod["metadata"]["resourceVersion"])
        assert pod["metadata"]["labels"]["casa-hub/server"] == "jupyter-alice"
        assert secret["metadata"]["labels"]["component"] == "casa-credentials"
        assert secret["metadata"]["labels"]["hub.jupyter.org/username"] == "alice"
        assert secret["metadata"]["annotations"] == {"casa-hub/expires-at": EXP.isoformat()}
        # read-only mount, file modes (fsGroup: owner-only files group-readable), env = bundle.env_for(mount)
        container = pod["spec"]["containers"][0]
        assert {"name": "CASA_GPU_COUNT", "value": "2"} in container["env"]  # what the profile grants
        assert [m for m in container["volumeMounts"] if m["name"] == "casa-credentials"] == [
            {"name": "casa-credentials", "mountPath": "/etc/casa", "readOnly": True}
        ]
        assert [v for v in pod["spec"]["volumes"] if v["name"] == "casa-credentials"] == [
            {
                "name": "casa-credentials",
                "secret": {
                    "secretName": "casa-alice",
                    "defaultMode": 0o400,
                    "items": [
                        {"key": "casa.json", "path": "casa.json", "mode": 0o444},
                        {"key": "condor-tokens__casa", "path": "condor-tokens/casa", "mode": 0o440},
                        {"key": "dask__ca.pem", "path": "dask/ca.pem", "mode": 0o444},
                        {"key": "dask__client.key", "path": "dask/client.key", "mode": 0o440},
                        {"key": "xcache.token", "path": "xcache.token", "mode": 0o440},
                    ],
                },
            }
        ]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert {k: env[k] for k in spawner.casa_bundle.env} == spawner.casa_bundle.env_for("/etc/casa")
        assert "token-1" not in str(container["env"])  # paths only, never a credential
        # the GPU choice reached the pod, with the GPU nodes' selector and toleration
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"
        assert pod["spec"]["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["spec"]["tolerations"]
        # Casa's steps, in order, before the pod was ready
        assert events.index("Minting credentials") < events.index("Credentials secret ready"), events
        assert any(m.startswith("Credentials minted (valid until") for m in events), events
        assert spawner.get_state()["casa_expires_at"] == EXP.isoformat()
    finally:
        await spawner.stop()
    assert kube.get("secrets", "casa-alice") is None and kube.get("pods", "jupyter-alice") is None


async def test_mig_slice_and_owner_only_files_without_fsgroup(kube):
    spawner = make_spawner(kube, name="mig", groups=["gpu-users"], fs_gid=None)
    await start(spawner, profile="gpu", gpus="mig-1g.5gb")
    try:
        pod = kube.get("pods", "jupyter-mig")
        assert pod["spec"]["containers"][0]["resources"]["limits"] == {"nvidia.com/mig-1g.5gb": "1"}
        assert {"name": "CASA_GPU_COUNT", "value": "1"} in pod["spec"]["containers"][0]["env"]
        (volume,) = [v for v in pod["spec"]["volumes"] if v["name"] == "casa-credentials"]
        assert {i["path"]: i["mode"] for i in volume["secret"]["items"]}["xcache.token"] == 0o400
    finally:
        await spawner.stop()


async def test_leftover_secret_is_replaced_and_respawns_do_not_duplicate_volumes(kube):
    # a Secret of an earlier server: create answers 409 and the spawner replaces it whole
    httpx.post(
        f"{kube.url}/api/v1/namespaces/default/secrets",
        timeout=10,
        json={
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "casa-alice", "labels": {"stale": "yes"}},
            "data": {"stale.key": base64.b64encode(b"old").decode()},
        },
    ).raise_for_status()
    spawner = make_spawner(kube)
    for _ in range(2):
        await start(spawner, profile="cpu")
        try:
            pod, secret = kube.get("pods", "jupyter-alice"), kube.get("secrets", "casa-alice")
            assert decoded(secret) == expected_data(spawner.casa_bundle)  # no stale key
            assert "stale" not in secret["metadata"]["labels"]
            assert secret["metadata"]["labels"]["component"] == "casa-credentials"
            assert [v["name"] for v in pod["spec"]["volumes"]].count("casa-credentials") == 1
            assert [m["name"] for m in pod["spec"]["containers"][0]["volumeMounts"]].count("casa-credentials") == 1
            env_names = [e["name"] for e in pod["spec"]["containers"][0]["env"]]
            assert len(env_names) == len(set(env_names))
            assert "nvidia.com/gpu" not in (pod["spec"]["containers"][0]["resources"].get("limits") or {})
        finally:
            await spawner.stop()


async def test_refresh_replaces_the_secret_with_only_the_charts_rights(kube):
    """Under the Z2JH chart's hub Role (no patch, no update): the refresh deletes and creates the Secret, same
    name, same owner, the fresh credentials in it."""
    spawner = make_spawner(kube)
    await start(spawner, profile="cpu")
    try:
        before = kube.get("secrets", "casa-alice")
        fresh = bundle(token=b"token-2\n", drop=["condor-tokens/casa"])
        await spawner.casa_apply_bundle(fresh)
        after = kube.get("secrets", "casa-alice")
        assert decoded(after) == expected_data(fresh)  # new token, the dropped file's key removed
        assert after["metadata"]["labels"] == before["metadata"]["labels"]
        assert len([s for s in kube.stored("secrets") if s["metadata"]["name"] == "casa-alice"]) == 1
        assert spawner.casa_bundle is fresh
        # a bundle minted for someone else never reaches this server
        with pytest.raises(ValueError, match="refusing to deliver"):
            await spawner.casa_apply_bundle(bundle(user="mallory", token=b"evil"))
        assert decoded(kube.get("secrets", "casa-alice")) == expected_data(fresh)
        # the Secret deleted behind our back: the refresh creates it again
        httpx.delete(f"{kube.url}/api/v1/namespaces/default/secrets/casa-alice", timeout=10).raise_for_status()
        await spawner.casa_apply_bundle(before_bundle := bundle(token=b"token-3\n"))
        again = kube.get("secrets", "casa-alice")
        assert decoded(again) == expected_data(before_bundle)
        assert again["metadata"]["labels"] == before["metadata"]["labels"]
    finally:
        await spawner.stop()


async def test_500s_on_secret_create_are_retried(kube, caplog):
    kube.fail(kmock.action.CREATE, "secrets", 500, times=2)
    spawner = make_spawner(kube)
    with caplog.at_level(logging.WARNING):
        await start(spawner, profile="cpu")
    try:
        assert decoded(kube.get("secrets", "casa-alice")) == expected_data(spawner.casa_bundle)
        assert caplog.text.count("Kubernetes answered 500 while writing Secret casa-alice; retrying") == 2
    finally:
        await spawner.stop()


async def test_a_kubernetes_that_keeps_failing_gives_a_clear_error_and_leaves_nothing(kube):
    kube.fail(kmock.action.CREATE, "secrets", 503, times=1000)
    spawner = make_spawner(kube, k8s_api_request_retry_timeout=2)
    with pytest.raises(SpawnRefused) as e:
        await start(spawner, profile="cpu")
    assert e.value.status_code == 503
    assert e.value.jupyterhub_message == (
        "The cluster's Kubernetes is not answering (while preparing your "
        "credentials); please try again in a few minutes."
    )
    assert "Kubernetes kept failing for 2s while writing Secret casa-alice" in e.value.log_message
    assert kube.get("pods", "jupyter-alice") is None and kube.get("secrets", "casa-alice") is None


async def test_other_api_errors_reach_the_user_as_a_sentence(kube, caplog):
    kube.fail(kmock.action.CREATE, "secrets", 403, times=1000)
    spawner = make_spawner(kube)
    with pytest.raises(SpawnRefused) as e:
        await start(spawner, profile="cpu")
    assert e.value.jupyterhub_message == (
        "The hub is not allowed to do a step of starting your server in Kubernetes. Please tell the facility "
        "administrators; the hub's log says which right its Kubernetes Role lacks."
    )
    assert "Kubernetes answered 403" in e.value.log_message and "while writing Secret casa-alice" in e.value.log_message
    assert "CIMultiDict" not in str(e.value) and "HTTP response" not in e.value.jupyterhub_message
    assert "retrying" not in caplog.text
    assert kube.get("pods", "jupyter-alice") is None and kube.get("secrets", "casa-alice") is None


async def test_stop_tolerates_objects_already_gone(kube):
    kube.set_rbac("chart+extras")
    spawner = make_spawner(
        kube, casa_dask_service_enabled=True, casa_dask_route_host_template="dask-{user_server}.hub.example.org"
    )
    await start(spawner, profile="cpu")
    for path in (
        "api/v1/namespaces/default/secrets/casa-alice",
        "api/v1/namespaces/default/services/casa-dask-alice",
        "apis/traefik.io/v1alpha1/namespaces/default/ingressroutetcps/casa-dask-alice",
    ):
        httpx.delete(f"{kube.url}/{path}", timeout=10).raise_for_status()
    await spawner.stop()
    kube.set_rbac("chart")
    assert kube.get("pods", "jupyter-alice") is None


# ------------------------------------------------------------------ Dask Service and route
async def test_dask_scheduler_service_and_route_select_the_pod_and_go_with_the_stop(kube):
    # a leftover Service of an earlier server is replaced; the route needs the casa-dask-route Role of
    # helm-values/extra-rbac.yaml
    kube.set_rbac("chart+extras")
    httpx.post(
        f"{kube.url}/api/v1/namespaces/default/services",
        timeout=10,
        json={
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "name": "casa-dask-alice",
                "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": "jupyter-alice", "uid": "gone"}],
            },
            "spec": {"clusterIP": "10.0.0.7", "ports": [{"port": 1}]},
        },
    ).raise_for_status()
    spawner = make_spawner(
        kube, casa_dask_service_enabled=True, casa_dask_route_host_template="dask-{user_server}.hub.example.org"
    )
    await start(spawner, profile="cpu")
    try:
        pod = kube.get("pods", "jupyter-alice")
        service = kube.get("services", "casa-dask-alice")
        assert service["spec"]["ports"] == [
            {"name": "dask-scheduler", "port": 8786, "targetPort": 8786, "protocol": "TCP"}
        ]
        # the label Casa sets on this pod alone (pod names are unique in a namespace)
        assert service["spec"]["selector"] == {"casa-hub/server": "jupyter-alice"}
        assert pod["metadata"]["labels"]["casa-hub/server"] == "jupyter-alice"
        assert service["metadata"]["labels"]["hub.jupyter.org/username"] == "alice"
        assert not service["metadata"].get("ownerReferences")  # created before the pod: the stop deletes it
        route = kube.get("ingressroutetcps", "casa-dask-alice")
        assert route["spec"] == {
            "entryPoints": ["dask"],
            "tls": {"passthrough": True},
            "routes": [
                {
                    "match": "HostSNI(`dask-alice.hub.example.org`)",
                    "services": [{"name": "casa-dask-alice", "port": 8786}],
                }
            ],
        }
        assert not route["metadata"].get("ownerReferences")
        # the address the user's laptop bundle points at: the route's host on the router's port
        env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
        assert env["CASA_DASK_ADDRESS"] == "tls://dask-alice.hub.example.org:8786"
    finally:
        await spawner.stop()
        kube.set_rbac("chart")
    assert kube.get("services", "casa-dask-alice") is None and kube.get("ingressroutetcps", "casa-dask-alice") is None


async def test_without_route_rights_the_server_starts_without_a_route_and_says_why(kube, caplog):
    spawner = make_spawner(
        kube, casa_dask_service_enabled=True, casa_dask_route_host_template="dask-{user_server}.hub.example.org"
    )
    with caplog.at_level(logging.INFO):
        await start(spawner, profile="cpu")
    try:
        assert kube.get("services", "casa-dask-alice") is not None
        assert kube.get("ingressroutetcps", "casa-dask-alice") is None
        assert (
            "No Dask route for alice (grant the casa-dask-route Role of helm-values/extra-rbac.yaml): Kubernetes "
            "answered 403 Forbidden while writing route casa-dask-alice: ingressroutetcps.traefik.io is forbidden: "
            'User "system:serviceaccount:default:hub" cannot create resource "ingressroutetcps"'
        ) in caplog.text
    finally:
        await spawner.stop()


async def test_no_dask_objects_by_default(kube):
    spawner = make_spawner(kube)
    await start(spawner, profile="cpu")
    try:
        assert kube.stored("services") == [] and kube.stored("ingressroutetcps") == []
        pod = kube.get("pods", "jupyter-alice")
        assert "CASA_DASK_ADDRESS" not in {e["name"] for e in pod["spec"]["containers"][0]["env"]}
    finally:
        await spawner.stop()


# ------------------------------------------------------------------ profiles: refusals and the form
@pytest.mark.parametrize(
    "groups,options,message",
    [
        (
            ["cms"],
            {"profile": "gpu", "gpus": "1"},
            "The profile 'gpu' is not available to your account; you may choose: cpu.",
        ),
        (
            ["gpu-users"],
            {"profile": "gpu", "gpus": "8"},
            "8 GPUs is not available to your account; for GPUs you may choose: 1, 2, mig-1g.5gb.",
        ),
        (
            ["gpu-users"],
            {"profile": "gpu", "gpus": "eight"},
            "'eight' is not a choice for GPUs in profile 'gpu'; choose one of: 1, 2, mig-1g.5gb.",
        ),
        (
            ["gpu-users"],
            {"profile": "gpu", "gpus--unlisted-choice": "16"},
            "GPUs in profile 'gpu' takes no value of your own; choose one of: 1, 2, mig-1g.5gb.",
        ),
        (["gpu-users"], {"profile": "../../etc"}, "There is no profile '../../etc'."),
    ],
)
async def test_a_tampered_form_is_refused_before_anything_is_created(kube, groups, options, message):
    spawner = make_spawner(kube, groups=groups)
    with pytest.raises(SpawnRefused) as e:
        await start(spawner, **options)
    assert (e.value.status_code, e.value.jupyterhub_message) == (403, message)
    assert kube.get("pods", "jupyter-alice") is None and kube.get("secrets", "casa-alice") is None


async def test_gpu_cap_follows_the_users_groups(kube):
    spawner = make_spawner(kube, groups=["gpu-power"], casa_max_gpus=1)
    await start(spawner, profile="gpu", gpus="8")  # gpu-power may have 8
    try:
        assert (
            kube.get("pods", "jupyter-alice")["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "8"
        )
    finally:
        await spawner.stop()
    capped = make_spawner(kube, groups=["gpu-users"], casa_max_gpus=1)
    with pytest.raises(SpawnRefused) as e:
        await start(capped, profile="gpu", gpus="2")
    assert e.value.jupyterhub_message == "This server asks for 2 GPU(s); the facility allows at most 1 per server."


async def test_spawn_form_shows_the_users_profiles_and_live_gpu_availability(kube):
    kube.set_rbac("chart+extras")  # the casa-gpu-availability ClusterRole of helm-values/extra-rbac.yaml
    httpx.post(
        f"{kube.url}/api/v1/nodes",
        timeout=10,
        json={
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": "gpu-node-1"},
            "status": {"allocatable": {"nvidia.com/gpu": "4", "nvidia.com/mig-1g.5gb": "7", "cpu": "32"}},
        },
    )
    httpx.post(
        f"{kube.url}/api/v1/namespaces/other/pods",
        timeout=10,
        json={
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "busy"},
            "spec": {
                "nodeName": "gpu-node-1",
                "containers": [
                    {"name": "c", "resources": {"requests": {"nvidia.com/gpu": "1"}, "limits": {"nvidia.com/gpu": "1"}}}
                ],
            },
        },
    ).raise_for_status()
    try:
        gpu_user = make_spawner(kube, groups=["gpu-users"])
        form = await gpu_user.options_form(gpu_user)
        assert "NVIDIA A100 (3 GPUs, 7 × MIG 1g.5gb free now)" in form
        assert 'value="mig-1g.5gb"' in form and 'value="8"' not in form  # 8 GPUs: gpu-power only
        cms_user = make_spawner(kube, groups=["cms"])
        cms_form = await cms_user.options_form(cms_user)
        assert "CPU" in cms_form and "NVIDIA A100" not in cms_form and "free now" not in cms_form
        # no right to list nodes (RBAC): the form still renders, without a count; within the TTL the listing
        # made for the first form serves the others, so the count stays until it lapses
        kube.fail(kmock.action.LIST, "nodes", 403, times=1)
        assert "3 GPUs, 7 × MIG 1g.5gb free now" in await gpu_user.options_form(gpu_user)
        uncached = make_spawner(kube, groups=["gpu-users"], casa_gpu_availability_ttl=0)
        assert "free now" not in await uncached.options_form(uncached)
    finally:
        kube.set_rbac("chart")
        httpx.delete(f"{kube.url}/api/v1/nodes/gpu-node-1", timeout=10)
        httpx.delete(f"{kube.url}/api/v1/namespaces/other/pods/busy", timeout=10)


async def test_with_the_charts_rights_alone_the_form_shows_no_gpu_count_and_the_log_says_why(kube, caplog):
    """The chart grants nothing cluster-wide: the listing is refused (403), which must not read as "0 free"."""
    httpx.post(
        f"{kube.url}/api/v1/nodes",
        timeout=10,
        json={
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": "gpu-node-2"},
            "status": {"allocatable": {"nvidia.com/gpu": "4"}},
        },
    ).raise_for_status()
    CasaSpawner._casa_gpu_refusal_logged = False
    try:
        with caplog.at_level(logging.INFO):
            for _ in range(2):
                spawner = make_spawner(kube, groups=["gpu-users"], casa_gpu_availability_ttl=0)
                form = await spawner.options_form(spawner)
                assert "NVIDIA A100" in form and "free now" not in form and "0 GPUs" not in form
        assert caplog.text.count("The hub may not list nodes and pods cluster-wide (Kubernetes answered 403)") == 1
        assert "helm-values/extra-rbac.yaml" in caplog.text
    finally:
        httpx.delete(f"{kube.url}/api/v1/nodes/gpu-node-2", timeout=10)


async def test_gpu_profiles_extend_the_deployments_tolerations(kube):
    """Z2JH puts scheduling.userPods.tolerations in KubeSpawner.tolerations; a GPU profile adds its own."""
    chart = [{"key": "hub.jupyter.org/dedicated", "operator": "Equal", "value": "user", "effect": "NoSchedule"}]
    spawner = make_spawner(kube, groups=["gpu-users"], tolerations=chart)
    spawner.user_options = {"profile": "gpu", "gpus": "1"}
    await spawner.load_user_options()
    pod = await spawner.get_pod_manifest()
    keys = [t.key for t in pod.spec.tolerations]
    assert keys[0] == "hub.jupyter.org/dedicated" and "nvidia.com/gpu" in keys
    spawner.user_options = {"profile": "cpu"}  # and nothing of the GPU profile stays for a CPU server
    await spawner.load_user_options()
    assert [t["key"] for t in spawner.tolerations] == ["hub.jupyter.org/dedicated"]


async def test_names_are_collision_free_slugs(kube):
    names = {make_spawner(kube, name=n).casa_secret_name for n in ("alice.b", "alice-b", "Alice-B", "al/ice")}
    assert len(names) == 4
    assert all(len(n) <= 63 and n == n.lower() and n.replace("-", "").isalnum() for n in names), names


async def test_the_admins_pod_hooks_read_back_as_set_and_both_run(kube):
    """Casa takes no KubeSpawner hook: what the admin configures reads back unchanged, and KubeSpawner runs it
    (modify_pod_hook on the pod Casa built, with the Secret already there; after_pod_created_hook once the pod
    exists)."""
    seen = []

    def modify(spawner, pod):
        volumes = [v.name for v in pod.spec.volumes]
        seen.append(("modify", "casa-credentials" in volumes, kube.get("secrets", "casa-alice") is not None))
        pod.metadata.labels["site/admin-hook"] = "yes"
        return pod

    async def after(spawner, pod):
        seen.append(("after", pod["metadata"]["name"], pod["metadata"]["labels"].get("site/admin-hook")))

    config = Config()
    config.CasaSpawner.modify_pod_hook = modify
    config.CasaSpawner.after_pod_created_hook = after
    config.CasaSpawner.profile_list = PROFILES
    spawner = make_spawner(kube, config=config)
    assert spawner.modify_pod_hook is modify and spawner.after_pod_created_hook is after
    assert spawner.profile_list == PROFILES and spawner.options_form == spawner._casa_options_form
    await start(spawner, profile="cpu")
    try:
        assert seen == [("modify", True, True), ("after", "jupyter-alice", "yes")]
        assert spawner.modify_pod_hook is modify and spawner.after_pod_created_hook is after
    finally:
        await spawner.stop()
    plain = make_spawner(kube)  # nothing configured: nothing set by Casa either
    assert plain.modify_pod_hook is None and plain.after_pod_created_hook is None


# ------------------------------------------------------------------ opt-in: a real cluster
@pytest.mark.k8s_real
async def test_real_cluster_secret_owned_mounted_and_removed():
    kubeconfig = os.environ.get("CASA_TEST_KUBECONFIG")
    if not kubeconfig:
        pytest.skip("set CASA_TEST_KUBECONFIG to run against a real cluster")
    namespace = os.environ.get("CASA_TEST_NAMESPACE", "default")
    with use_kubeconfig(Path(kubeconfig).expanduser()):
        spawner = make_spawner(
            SimpleNamespace(url=None),
            name="casa-test",
            namespace=namespace,
            k8s_api_host=None,
            image=os.environ.get("CASA_TEST_IMAGE", "quay.io/jupyter/base-notebook:latest"),
            start_timeout=300,
            k8s_api_request_retry_timeout=30,
        )
        await _real_cluster_round_trip(spawner, namespace)


async def _real_cluster_round_trip(spawner, namespace):
    try:
        await asyncio.wait_for(spawner.start(), 330)
        secret = await spawner.api.read_namespaced_secret(spawner.casa_secret_name, namespace)
        pod = await spawner.api.read_namespaced_pod(spawner.pod_name, namespace)
        assert secret.metadata.owner_references[0].uid == pod.metadata.uid
        assert {k: base64.b64decode(v) for k, v in secret.data.items()} == expected_data(spawner.casa_bundle)
    finally:
        await spawner.stop(now=True)
        await KubeSpawner._stop_all_reflectors()
    with pytest.raises(ApiException) as e:
        await spawner.api.read_namespaced_secret(spawner.casa_secret_name, namespace)
    assert e.value.status == 404


# ------------------------------------------------------------------ deliveries racing a stop
async def test_a_delivery_racing_a_stop_never_recreates_the_secret_or_arms_a_timer(kube):
    spawner = make_spawner(kube)
    await start(spawner, profile="cpu")
    kube.delay(kmock.action.DELETE, "secrets", 1.0)  # the refresh's delete is answered late: the stop comes meanwhile
    in_flight = asyncio.ensure_future(spawner.casa_apply_bundle(bundle(token=b"token-2\n")))
    await asyncio.sleep(0.2)
    await spawner.stop()
    await in_flight
    await spawner.casa_apply_bundle(bundle(token=b"token-3\n"))  # one that arrives after the stop
    await asyncio.sleep(0.5)  # anything left in flight would have written by now
    assert kube.get("secrets", "casa-alice") is None, "a delivery re-created the Secret after the stop"
    assert kube.get("pods", "jupyter-alice") is None
    assert spawner.casa_expires_at is None  # nothing left for the hub's refresher


# ------------------------------------------------------------------ the emulator enforces the chart's rights
def test_the_emulator_refuses_what_the_charts_hub_role_does_not_grant(kube):
    """Requests with the hub's token are checked against tests/data/z2jh/hub/rbac.yaml, as a real API server
    checks the hub's service account: namespaced get/list/watch/create/delete on pods, PVCs, secrets, services;
    nothing else, nothing cluster-wide."""
    hub = {"Authorization": "Bearer test"}
    base = f"{kube.url}/api/v1/namespaces/default/secrets"
    body = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "rbac-probe"}, "data": {}}
    assert httpx.post(base, json=body, headers=hub, timeout=10).status_code < 300
    assert httpx.get(f"{base}/rbac-probe", headers=hub, timeout=10).status_code == 200
    refused = httpx.patch(
        f"{base}/rbac-probe",
        json={"data": {}},
        timeout=10,
        headers={**hub, "Content-Type": "application/merge-patch+json"},
    )
    assert refused.status_code == 403
    assert refused.json() == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "reason": "Forbidden",
        "code": 403,
        "details": {"name": "rbac-probe", "kind": "secrets"},
        "message": 'secrets "rbac-probe" is forbidden: User "system:serviceaccount:default:hub" cannot patch '
        'resource "secrets" in API group "" in the namespace "default"',
    }
    assert httpx.put(f"{base}/rbac-probe", json=body, headers=hub, timeout=10).status_code == 403  # update
    assert httpx.get(f"{kube.url}/api/v1/nodes", headers=hub, timeout=10).status_code == 403
    assert httpx.get(f"{kube.url}/api/v1/pods", headers=hub, timeout=10).status_code == 403  # all namespaces
    routes = f"{kube.url}/apis/traefik.io/v1alpha1/namespaces/default/ingressroutetcps"
    assert httpx.get(routes, headers=hub, timeout=10).status_code == 403
    kube.set_rbac("chart+extras")  # helm-values/extra-rbac.yaml: exactly the two optional features
    try:
        assert httpx.get(f"{kube.url}/api/v1/nodes", headers=hub, timeout=10).status_code == 200
        assert httpx.get(f"{kube.url}/api/v1/pods", headers=hub, timeout=10).status_code == 200
        route = {"apiVersion": "traefik.io/v1alpha1", "kind": "IngressRouteTCP", "metadata": {"name": "probe"}}
        assert httpx.post(routes, json=route, headers=hub, timeout=10).status_code < 300
        assert httpx.get(f"{routes}/probe", headers=hub, timeout=10).status_code == 403  # create, delete only
        assert httpx.delete(f"{routes}/probe", headers=hub, timeout=10).status_code == 200
        assert httpx.get(f"{kube.url}/api/v1/nodes/n1", headers=hub, timeout=10).status_code == 403  # list only
        assert (
            httpx.patch(
                f"{base}/rbac-probe",
                json={},
                timeout=10,
                headers={**hub, "Content-Type": "application/merge-patch+json"},
            ).status_code
            == 403
        )  # still no patch
    finally:
        kube.set_rbac("chart")
    assert httpx.delete(f"{base}/rbac-probe", headers=hub, timeout=10).status_code == 200
    assert httpx.patch(f"{kube.url}/api/v1/namespaces/default/pods/x", json={}, timeout=10).status_code != 403  # admin
