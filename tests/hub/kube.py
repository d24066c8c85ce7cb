"""Start/stop the Kubernetes emulator subprocess and read what the spawner wrote into it."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.support import REPO, free_port, stop_process, wait_for_port

KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{{name: emu, cluster: {{server: "http://127.0.0.1:{port}"}}}}]
users: [{{name: emu, user: {{token: test}}}}]
contexts: [{{name: emu, context: {{cluster: emu, user: emu, namespace: default}}}}]
current-context: emu
"""


@dataclass
class Kube:
    url: str
    proc: subprocess.Popen
    kubeconfig: Path

    def get(self, path: str) -> httpx.Response:
        return httpx.get(self.url + path, timeout=10)

    def objects(self, plural: str, namespace: str = "default") -> list[dict]:
        r = self.get(f"/api/v1/namespaces/{namespace}/{plural}")
        r.raise_for_status()
        return r.json()["items"]

    def fault(self, method: str, plural: str, status: int, count: int = 1) -> None:
        httpx.post(self.url + "/casa-test/faults", timeout=10, json={
            "method": method, "plural": plural, "status": status, "count": count}).raise_for_status()

    def kubelet_delay(self, seconds: float) -> None:
        httpx.post(self.url + "/casa-test/faults", json={"kubelet_delay": seconds}, timeout=10).raise_for_status()

    def clear_faults(self) -> None:
        httpx.post(self.url + "/casa-test/faults", json={"clear": True}, timeout=10).raise_for_status()

    def create(self, plural: str, body: dict, namespace: str = "default") -> None:
        httpx.post(f"{self.url}/api/v1/namespaces/{namespace}/{plural}", json=body, timeout=10).raise_for_status()


def start_kube(tmp: Path) -> Kube:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tests.hub.kube_emulator", str(port)], cwd=REPO,
                            stdout=open(tmp / "kube.log", "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    wait_for_port(port, proc=proc, timeout=30)
    kubeconfig = tmp / "kubeconfig"
    kubeconfig.write_text(KUBECONFIG.format(port=port))
    return Kube(f"http://127.0.0.1:{port}", proc, kubeconfig)


def stop_kube(kube: Kube) -> None:
    stop_process(kube.proc)
