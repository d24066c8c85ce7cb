"""Spawner helpers of the hub tier: CasaSpawners against the Kubernetes emulator (tests/hub/kube.py), a
credential bundle to deliver, and what its Secret must then hold. Used by test_spawner_k8s.py and test_faults.py."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import logging
from pathlib import Path
from types import SimpleNamespace

from jupyterhub.objects import Hub, Server
from kubernetes_asyncio.config import kube_config

from casa_hub.credentials.bundle import BundleFile, CredentialBundle
from casa_hub.objects import secret_key
from casa_hub.profiles import gpu_profile
from casa_hub.spawner import CasaSpawner

NOW = datetime.datetime.now(datetime.timezone.utc)
EXP = NOW + datetime.timedelta(hours=2)


def bundle(user="alice", token=b"token-1\n", extra=None, drop=()) -> CredentialBundle:
    files = {
        "xcache.token": BundleFile(token, 0o400, EXP),
        "condor-tokens/casa": BundleFile(b"idtoken", 0o400, EXP),
        "dask/ca.pem": BundleFile(b"CA", 0o444),
        "dask/client.key": BundleFile(b"KEY", 0o400),
        "casa.json": BundleFile(b'{"user": "%s"}' % user.encode(), 0o444),
    }
    files.update(extra or {})
    for path in drop:
        files.pop(path)
    return CredentialBundle(
        user=user,
        issued_at=NOW,
        files=files,
        env={
            "BEARER_TOKEN_FILE": "{mount}/xcache.token",
            "CASA_CREDENTIALS_DIR": "{mount}",
            "_CONDOR_SEC_TOKEN_DIRECTORY": "{mount}/condor-tokens",
            "DASK_DISTRIBUTED__COMM__TLS__CA_FILE": "{mount}/dask/ca.pem",
        },
    )


PROFILES = [
    {"display_name": "CPU", "slug": "cpu", "default": True, "kubespawner_override": {"cpu_limit": 2}},
    gpu_profile(
        "gpu",
        "GPU",
        gpus=[1, 2, 8],
        mig=["1g.5gb"],
        allowed_groups=["gpu-users", "gpu-power"],
        choice_groups={"8": ["gpu-power"]},
        description="NVIDIA A100",
    ),
]


@contextlib.contextmanager
def use_kubeconfig(path: Path):
    """KubeSpawner loads the default kubeconfig (kubernetes_asyncio read $KUBECONFIG at import time); each
    spawner's ``k8s_api_host`` then points at the emulator."""
    old = kube_config.KUBE_CONFIG_DEFAULT_LOCATION
    kube_config.KUBE_CONFIG_DEFAULT_LOCATION = str(path)
    try:
        yield path
    finally:
        kube_config.KUBE_CONFIG_DEFAULT_LOCATION = old


def make_spawner(kube, name="alice", groups=("cms",), **traits) -> CasaSpawner:
    user = SimpleNamespace(
        name=name,
        id=7,
        url=f"/user/{name}/",
        escaped_name=name,
        groups=[],
        spawners={},
        authenticator=SimpleNamespace(credential_refresh_margin=600),
    )
    defaults = dict(
        namespace="default",
        k8s_api_host=kube.url,
        image="registry.example.org/casa/notebook:test",
        fs_gid=100,
        start_timeout=20,
        k8s_api_request_timeout=3,
        k8s_api_request_retry_timeout=5,
        profile_list=PROFILES,
        casa_max_gpus=4,
        casa_max_gpus_by_group={"gpu-power": 8},
    )
    defaults.update(traits)
    spawner = CasaSpawner(
        user=user,
        hub=Hub(),
        api_token="test-token",
        oauth_client_id=f"jupyterhub-user-{name}",
        log=logging.getLogger("test_spawner_k8s"),
        **defaults,
    )
    spawner.server = Server(ip="127.0.0.1", port=8888, base_url=f"/user/{name}/")  # where the pod answers
    user.spawners[""] = spawner
    spawner.casa_bundle = bundle(name)
    spawner.casa_groups = list(groups)
    return spawner


async def start(spawner, **options):
    spawner.user_options = options
    return await asyncio.wait_for(spawner.start(), 30)


def decoded(secret: dict) -> dict[str, bytes]:
    return {k: base64.b64decode(v) for k, v in (secret.get("data") or {}).items()}


def expected_data(b: CredentialBundle) -> dict[str, bytes]:
    return {secret_key(p): f.content for p, f in b.files.items()}
