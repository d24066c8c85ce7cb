"""Fixtures of the Z2JH tier: a stand-in cluster (the demo OIDC provider, the Kubernetes emulator over TLS) and
Casa deployed into it with ``helm-values/values.yaml`` as the chart would deploy it (tests/z2jh/pod.py)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import helm
from tests.hub.hub import Hub
from tests.hub.kube import Kube, start_kube, stop_kube
from tests.hub.oidc import Provider, start_provider, stop_provider
from tests.support import CHP, free_port, need, write_keys
from tests.z2jh import pod as P

NAMESPACE = "jhub"
KEY_SECRET = "casa-hub-keys"  # helm-values/values.yaml mounts it; docs/admin-guide.md §1 creates it
# what an admin puts into that Secret (admin guide §1: casa-hub-keys KIND > FILE; HTCondor's pool key as POOL)
KEY_FILES = {
    "issuer": "issuer.pem",
    "dask-ca": "dask-ca.secret",
    "macaroon": "macaroon.secret",
    "servicex": "servicex.secret",
    "condor": "POOL",
}
TEST_SCOPES = ["admin:users", "admin:auth_state", "admin:servers", "read:users", "list:users", "read:hub"]


def site_values(*, provider_url: str, public_url: str, hub_port: int, pod_port: int) -> dict:
    """This test site's own values file (``helm install -f helm-values/values.yaml -f site.yaml``): what
    helm-values/values.yaml marks CHANGE, and what a machine shared with other tests needs."""
    return {
        "hub": {
            "config": {
                "CasaAuthenticator": {
                    "oidc_issuer": provider_url,
                    "client_secret": "demo-provider-does-not-check-it",
                    "oauth_callback_url": f"{public_url}/hub/oauth_callback",
                    "credential_refresh_margin": 60,
                },
                # credentials live 70 s and are refreshed 60 s before expiry: a refresh ~10 s after login
                "CasaMinter": {"issuer_url": f"{public_url}/hub/casa-issuer"},
                "XCacheToken": {"lifetime": 70},
                "CasaRefresher": {"jitter": 0},
                # the chart binds the hub to :8081 of its pod; on a shared machine, a free port of 127.0.0.1
                "JupyterHub": {"hub_bind_url": f"http://127.0.0.1:{hub_port}"},
                # the emulator's stand-in single-user servers answer on 127.0.0.1:<port>
                "KubeSpawner": {"port": pod_port},
            },
            # an API client of the test, as a chart user declares one (its token lands in the hub Secret)
            "services": {"casa-test": {}},
            "loadRoles": {"casa-test": {"scopes": TEST_SCOPES, "services": ["casa-test"]}},
        },
        # the chart's idle culler is a hub-managed process that calls http://localhost:8081/hub/api (fixed port)
        "cull": {"enabled": False},
    }


def key_secret(directory: Path) -> dict[str, bytes]:
    """A fresh casa-hub-keys Secret: the hub's signing keys from casa_hub.keys, named as the admin guide says."""
    paths = write_keys(directory)
    return {KEY_FILES[kind]: path.read_bytes() for kind, path in paths.items()}


@dataclass
class Deployment:
    hub: Hub
    hub_proc: P.Proc
    proxy: P.Proc | None
    pod: P.HubPod
    values: dict


@dataclass
class Cluster:
    tmp: Path
    provider: Provider
    kube: Kube

    def objects(self, plural: str) -> list[dict]:
        return self.kube.objects(plural, namespace=NAMESPACE)

    def prepare(
        self, work: Path, values_text: str | None = None, *, secret_data: dict | None = None, site: dict | None = None
    ) -> tuple[P.HubPod, dict, dict]:
        """Merge the values (``values_text``: helm-values/values.yaml's text unless given) and lay the hub
        pod out; returns the pod, the merged values and the ports of the Services."""
        ports = {"hub": free_port(), "proxy-api": free_port(), "proxy-public": free_port(), "pod": free_port()}
        public_url = f"http://127.0.0.1:{ports['proxy-public']}"
        site = (
            site
            if site is not None
            else site_values(
                provider_url=self.provider.url, public_url=public_url, hub_port=ports["hub"], pod_port=ports["pod"]
            )
        )
        values = helm.values(values_text if values_text is not None else helm.CASA_VALUES.read_text(), site)
        errors = helm.schema_errors(values)
        assert not errors, "the chart's schema refuses the values:\n" + "\n".join(errors)
        if secret_data is None:
            secret_data = {KEY_SECRET: key_secret(work / "admin-keys")}
        names = P.name_templates(values)
        hosts = P.hosts_file(work / "hosts", [names["hub"], names["proxy-api"], names["proxy-public"]])
        host, port = self.kube.tls_url.removeprefix("https://").rsplit(":", 1)
        pod = P.lay_out(
            work / "hub-pod",
            values,
            secret_data=secret_data,
            hosts=hosts,
            kube_host=host,
            kube_port=int(port),
            ca_file=self.kube.ca_file,
            namespace=NAMESPACE,
            ports=ports,
        )
        return pod, values, ports

    def put_singleuser_secret(self, name: str, files: dict[str, bytes] | None) -> None:
        """What ``helm install`` creates beside the hub: the Secret user pods mount ``singleuser.extraFiles``
        from (a real kubelet, like the emulator's, starts no pod whose Secret is missing)."""
        import base64

        import httpx

        url = f"{self.kube.url}/api/v1/namespaces/{NAMESPACE}/secrets/{name}"
        r = httpx.delete(url, timeout=10)  # a deployment of an earlier test in this module
        assert r.status_code in (200, 404), r.text
        if files is not None:
            data = {k: base64.b64encode(v).decode() for k, v in files.items()}
            body = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "type": "Opaque", "data": data}
            self.kube.create("secrets", body, namespace=NAMESPACE)

    @contextmanager
    def deploy(self, work: Path, **kwargs):
        """Casa on the chart: the proxy and the hub pod, up and answering; both stopped on exit."""
        pod, values, ports = self.prepare(work, **kwargs)
        names = P.name_templates(values)
        self.put_singleuser_secret(names["singleuser"], P.singleuser_secret(values))
        proxy = P.start_proxy(
            work,
            hosts=work / "hosts",
            token=pod.generated.proxy_token,
            public_port=ports["proxy-public"],
            api_port=ports["proxy-api"],
            hub_port=ports["hub"],
            hub_name=names["hub"],
        )
        hub_proc = None
        try:
            hub_proc = pod.start()
            url = f"http://127.0.0.1:{ports['proxy-public']}"
            P.wait_ready(url, hub_proc)
            hub = Hub(url, pod.work, hub_proc.proc, pod.generated.service_tokens["casa-test"], self.provider)
            yield Deployment(hub, hub_proc, proxy, pod, values)
        finally:
            if hub_proc is not None:
                hub_proc.stop()
            proxy.stop()


def _hub_has_pycurl() -> bool:
    if not P.HUB_PYTHON:
        return importlib.util.find_spec("pycurl") is not None
    return (
        subprocess.run(
            [*P.HUB_PYTHON, "-c", "import pycurl"], stdin=subprocess.DEVNULL, capture_output=True, timeout=60
        ).returncode
        == 0
    )


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    need(
        os.geteuid() == 0 and shutil.which("unshare") is not None,
        "root and unshare(1) (the hub pod's files are mounted in a private mount namespace)",
    )
    need(CHP.exists(), "configurable-http-proxy (npm ci)")
    need(
        _hub_has_pycurl(),
        "pycurl in the hub's Python (the chart's hub config switches tornado to its curl client, "
        "as the chart's hub image has it)",
    )
    tmp = tmp_path_factory.mktemp("z2jh")
    provider = start_provider(tmp)
    try:
        kube = start_kube(tmp, tls=True)
        try:
            yield Cluster(tmp, provider, kube)
        finally:
            stop_kube(kube)
    finally:
        stop_provider(provider)
