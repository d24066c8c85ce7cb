"""Spawner helpers of the hub tier: CasaSpawners against the Kubernetes emulator (tests/hub/kube.py), a
credential bundle to deliver, and what its Secret must then hold (test_spawner_k8s.py, test_faults.py); and one
kit per Casa spawner (:class:`KubeKit`, :class:`LocalKit`: make, start, read back the mounted bundle and the
server's env) for the tests of their shared contract (the ``casa_spawner`` fixture, test_spawner_contract.py)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import logging
import sys
from pathlib import Path
from types import SimpleNamespace

from jupyterhub.objects import Hub, Server
from kubernetes_asyncio.config import kube_config

from casa_hub.credentials.bundle import BundleFile, CredentialBundle
from casa_hub.local import CasaLocalSpawner
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


def hub_user(name: str, user_id: int, **extra) -> SimpleNamespace:
    """What a spawner reads of JupyterHub's User. No ``authenticator``: a Casa spawner never calls it (refresh
    flows hub -> spawner)."""
    return SimpleNamespace(
        name=name, id=user_id, url=f"/user/{name}/", escaped_name=name, groups=[], spawners={}, **extra
    )


def make_spawner(kube, name="alice", groups=("cms",), **traits) -> CasaSpawner:
    user = hub_user(name, 7)
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


# ------------------------------------------------------------------ both spawners, one contract
LOCAL_PROFILES = [
    {"display_name": "CPU", "slug": "cpu", "environment": {"CASA_GPU_COUNT": "0"}},
    {
        "display_name": "GPU",
        "slug": "gpu",
        "casa_allowed_groups": ["gpu-users"],
        "environment": {"CASA_GPU_COUNT": "2"},
    },
]

# a stand-in single-user server for CasaLocalSpawner: it stays up until stopped
_SLEEPER = [sys.executable, "-c", "import time; time.sleep(120)"]


class KubeKit:
    """CasaSpawner against the emulator: the mounted bundle is what the Secret holds, at the paths the pod's
    volume gives its keys; the server's env is the pod's."""

    kind = "kube"

    def __init__(self, kube):
        self.kube = kube

    def make(self, name="alice", groups=("cms",), **traits) -> CasaSpawner:
        return make_spawner(self.kube, name=name, groups=groups, **traits)

    async def start(self, spawner, **options):
        return await start(spawner, **options)

    def mounted(self, spawner) -> dict[str, bytes] | None:
        secret = self.kube.get("secrets", spawner.casa_secret_name)
        if secret is None:
            return None
        paths = {secret_key(p): p for p in spawner.casa_bundle.files}
        return {paths.get(k, k): v for k, v in decoded(secret).items()}

    def server_env(self, spawner) -> dict[str, str]:
        pod = self.kube.get("pods", spawner.pod_name)
        return {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}

    def mount_path(self, spawner) -> str:
        return spawner.casa_mount_path

    def anything_created(self, spawner) -> bool:
        return any(
            self.kube.get(plural, name) is not None
            for plural, name in (("pods", spawner.pod_name), ("secrets", spawner.casa_secret_name))
        )


class LocalKit:
    """CasaLocalSpawner running a stand-in process as the hub's user: the mounted bundle is the private
    directory's files; the server's env is what the process is started with."""

    kind = "local"

    def __init__(self, tmp_path: Path):
        self.tmp_path = tmp_path

    def make(self, name="alice", groups=("cms",), **traits) -> CasaLocalSpawner:
        user = hub_user(name, 1, server=Server(base_url=f"/user/{name}/"))
        traits.setdefault("run_as_hub_user", True)
        traits.setdefault("home_dir_template", str(self.tmp_path / "home" / "{username}"))
        traits.setdefault("cmd", _SLEEPER)
        traits.setdefault("profiles", LOCAL_PROFILES)
        spawner = CasaLocalSpawner(
            user=user,
            hub=Hub(ip="127.0.0.1", port=1, base_url="/hub/"),
            api_token="test-token",
            oauth_client_id=f"jupyterhub-user-{name}",
            log=logging.getLogger("test_local_spawner"),
            **traits,
        )
        spawner.server = user.server
        user.spawners[""] = spawner
        spawner.casa_bundle = bundle(name)
        spawner.casa_groups = list(groups)
        return spawner

    async def start(self, spawner, **options):
        spawner.user_options = options
        return await asyncio.wait_for(spawner.start(), 30)

    def mounted(self, spawner) -> dict[str, bytes] | None:
        d = spawner.credentials_dir
        if not d.exists():
            return None
        return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}

    def server_env(self, spawner) -> dict[str, str]:
        return spawner.get_env()

    def mount_path(self, spawner) -> str:
        return str(spawner.credentials_dir)

    def anything_created(self, spawner) -> bool:
        return spawner.credentials_dir.exists() or spawner.proc is not None
