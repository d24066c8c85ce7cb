"""Fixtures of the hub tier: a real OIDC provider per test (tests needing one shared per module define their own)."""

import pytest

from tests.hub.oidc import start_provider, stop_provider


@pytest.fixture
def provider(tmp_path):
    p = start_provider(tmp_path)
    try:
        yield p
    finally:
        stop_provider(p)


@pytest.fixture(scope="module")
def kube_emulator(tmp_path_factory):
    """The Kubernetes emulator in a thread of the test process, KubeSpawner's kubeconfig pointing at it."""
    from tests.hub.kube import KubeThread
    from tests.hub.spawners import use_kubeconfig

    with KubeThread() as kube, use_kubeconfig(kube.write_kubeconfig(tmp_path_factory.mktemp("kube") / "kubeconfig")):
        yield kube


@pytest.fixture(params=["kube", "local"])
async def casa_spawner(request, tmp_path):
    """Each Casa spawner's kit (tests/hub/spawners.py): CasaSpawner against the emulator, CasaLocalSpawner with
    a stand-in process; both make, start, and read back the mounted bundle and the server's env."""
    from kubespawner import KubeSpawner

    from tests.hub.spawners import KubeKit, LocalKit

    if request.param == "local":
        yield LocalKit(tmp_path)
        return
    kube = request.getfixturevalue("kube_emulator")
    try:
        yield KubeKit(kube)
    finally:
        kube.clear_faults()
        kube.kubelet.delay = 0
        await KubeSpawner._stop_all_reflectors()  # they live on the test's event loop
