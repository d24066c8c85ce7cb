"""Opt-in tier: the spawner against a real Kubernetes cluster (set CASA_TEST_KUBECONFIG to a kubeconfig whose
current context may create pods and Secrets in CASA_TEST_NAMESPACE, default "casa-test").

The hub runs on this machine; the pod must become Running in the cluster (any image that starts). Skipped
unless the variable is set: no cluster can run in CI here."""

from __future__ import annotations

import os
import time

import pytest

from tests.hub import hub as H
from tests.hub.oidc import start_provider, stop_provider

KUBECONFIG = os.environ.get("CASA_TEST_KUBECONFIG")
NAMESPACE = os.environ.get("CASA_TEST_NAMESPACE", "casa-test")
pytestmark = [
    pytest.mark.k8s_real,
    pytest.mark.skipif(not KUBECONFIG, reason="opt-in: set CASA_TEST_KUBECONFIG for a real cluster"),
]

CONFIG = f"""
c.JupyterHub.spawner_class = "casa"
c.KubeSpawner.namespace = "{NAMESPACE}"
c.KubeSpawner.image = os.environ.get("CASA_TEST_IMAGE", "quay.io/jupyter/base-notebook:2025-10-20")
c.KubeSpawner.start_timeout = 300
"""


async def test_secret_owned_by_pod_in_a_real_cluster(tmp_path):
    from kubernetes_asyncio import client, config

    provider = start_provider(tmp_path)
    try:
        hub = H.start_hub(
            tmp_path / "hub", provider, extra_config="import os\n" + CONFIG, env={"KUBECONFIG": KUBECONFIG}
        )
        try:
            H.oauth_login(hub, "alice")
            with hub.api() as api:
                assert api.post("/users/alice/server").status_code in (201, 202)
            await config.load_kube_config(config_file=KUBECONFIG)
            async with client.ApiClient() as api_client:
                core = client.CoreV1Api(api_client)
                deadline = time.monotonic() + 300
                while True:
                    try:
                        secret = await core.read_namespaced_secret("casa-alice", NAMESPACE)
                        pod = await core.read_namespaced_pod("jupyter-alice", NAMESPACE)
                        break
                    except client.ApiException as e:
                        assert e.status == 404 and time.monotonic() < deadline
                        time.sleep(2)
                (owner,) = secret.metadata.owner_references
                assert owner.uid == pod.metadata.uid
            with hub.api() as api:
                api.delete("/users/alice/server")
        finally:
            H.stop_hub(hub)
    finally:
        stop_provider(provider)
