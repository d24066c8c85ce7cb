"""Credential kinds through the whole path, in a real hub logged into through the real OIDC flow.

* The MLflow kind (the documented example): minted at login, held by the user's Kubernetes Secret (emulator),
  verifiable with the hub's own JWKS for its audience only, and listed by JupyterLab's credentials panel when a
  JupyterLab server gets the Secret's files as the kubelet would mount them.
* A site's own kind, one file and one ``entry_points.txt`` on the hub's PYTHONPATH, minted with no change to Casa.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import textwrap
from pathlib import Path

import jwt
import pytest

from casa_hub.credentials.bundle import CredentialBundle
from tests.hub import hub as H
from tests.hub.kube import assert_credentials_mounted, start_kube, stop_kube
from tests.support import CHROMIUM, free_port, launch_chromium, need, wait_until

MLFLOW_URI = "https://mlflow.casa.test"
MLFLOW_AUDIENCE = "casa-mlflow"

KUBE_CONFIG = """
c.JupyterHub.spawner_class = "casa"
c.KubeSpawner.namespace = "default"
c.KubeSpawner.port = {pod_port}
c.KubeSpawner.start_timeout = 30
c.KubeSpawner.image = "registry.example.org/casa/notebook:test"
c.CasaMinter.kinds = ["xcache", "dask-tls", "mlflow"]
c.MLflowToken.tracking_uri = "{mlflow_uri}"
c.MLflowToken.audience = "{mlflow_audience}"
"""


def _user(hub, name):
    with hub.api() as api:
        return api.get(f"/users/{name}").json()


def _mount_like_the_kubelet(pod: dict, secret: dict, directory: Path) -> Path:
    """The files the pod's credentials volume shows: every item of the Secret volume at its path and mode."""
    (volume,) = [v for v in pod["spec"]["volumes"] if v["name"] == "casa-credentials"]
    for item in volume["secret"]["items"]:
        path = directory / item["path"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(secret["data"][item["key"]]))
        path.chmod(item["mode"])
    return directory


@pytest.fixture(scope="module")
def mlflow_site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mlflow-kind")
    kube = start_kube(tmp)
    try:
        config = KUBE_CONFIG.format(pod_port=free_port(), mlflow_uri=MLFLOW_URI, mlflow_audience=MLFLOW_AUDIENCE)
        with H.running_hub(tmp, config, env={"KUBECONFIG": str(kube.kubeconfig)}) as hub:
            yield hub, kube, tmp
    finally:
        stop_kube(kube)


def test_mlflow_token_from_login_to_the_secret_verified_with_the_hubs_jwks(mlflow_site):
    hub, kube, _ = mlflow_site
    H.oauth_login(hub, "alice")
    with hub.api() as api:
        assert api.post("/users/alice/server", json={}).status_code in (201, 202)
    wait_until(lambda: (_user(hub, "alice")["servers"].get("") or {}).get("ready"), what="alice ready")
    bundle = CredentialBundle.from_dict(_user(hub, "alice")["auth_state"]["casa"])
    pod = next(p for p in kube.objects("pods") if p["metadata"]["name"] == "jupyter-alice")
    secret = next(s for s in kube.objects("secrets") if s["metadata"]["name"] == "casa-alice")
    container, _ = assert_credentials_mounted(pod, secret, bundle, "alice")  # the Secret holds exactly the bundle
    assert "mlflow.token" in secret["data"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["CASA_MLFLOW_TOKEN_FILE"] == "/etc/casa/mlflow.token" and env["MLFLOW_TRACKING_URI"] == MLFLOW_URI
    token = base64.b64decode(secret["data"]["mlflow.token"]).decode().strip()
    assert all(token not in (v or "") for v in env.values())  # a file, never an env value

    # what an MLflow server (or its proxy) does: the issuer's discovery document, its JWKS, this audience only
    issuer, key = H.issuer_key_for(hub, token)
    claims = jwt.decode(token, key, algorithms=[key.algorithm_name], audience=MLFLOW_AUDIENCE, issuer=issuer)
    assert (claims["sub"], claims["scope"], claims["exp"] - claims["iat"]) == ("alice", "mlflow", 3600)
    with pytest.raises(jwt.InvalidAudienceError):  # a service with another audience refuses it
        jwt.decode(token, key, algorithms=[key.algorithm_name], audience="https://wlcg.cern.ch/jwt/v1/any")
    storage_token = base64.b64decode(secret["data"]["xcache.token"]).decode().strip()
    with pytest.raises(jwt.InvalidAudienceError):  # and the MLflow server refuses the storage token
        jwt.decode(storage_token, key, algorithms=[key.algorithm_name], audience=MLFLOW_AUDIENCE)
    manifest = json.loads(base64.b64decode(secret["data"]["casa.json"]))
    assert manifest["credentials"]["mlflow"]["audience"] == MLFLOW_AUDIENCE


def test_jupyterlab_lists_the_mlflow_token_in_its_credentials_panel(mlflow_site):
    from tests.ext.jupyter_proc import LABEXTENSION, start_jupyter, stop_jupyter

    need(Path(CHROMIUM).exists(), "Debian chromium")
    need(importlib.util.find_spec("playwright") is not None, "playwright (python)")
    need((LABEXTENSION / "package.json").exists(), "the built labextension (cd js && npm ci && npm run build)")
    hub, kube, tmp = mlflow_site
    H.oauth_login(hub, "bob")
    with hub.api() as api:
        assert api.post("/users/bob/server", json={}).status_code in (201, 202)
    wait_until(lambda: (_user(hub, "bob")["servers"].get("") or {}).get("ready"), what="bob ready")
    pod = next(p for p in kube.objects("pods") if p["metadata"]["name"] == "jupyter-bob")
    secret = next(s for s in kube.objects("secrets") if s["metadata"]["name"] == "casa-bob")
    mount = _mount_like_the_kubelet(pod, secret, tmp / "bob-pod" / "etc-casa")
    lab = start_jupyter(tmp / "bob-lab", {"CASA_CREDENTIALS_DIR": str(mount)}, app="lab")
    try:
        from playwright.sync_api import sync_playwright

        with sync_playwright() as p:
            browser = launch_chromium(p)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 900})
                page.set_default_timeout(60_000)
                page.goto(f"{lab.url}lab?token={lab.token}")
                status = page.locator("[data-testid=casa-credential-status]")
                status.wait_for()
                page.wait_for_function(  # the 1 h tokens lapse first
                    "/^Credentials: 5[89]m$/.test("
                    "document.querySelector('[data-testid=casa-credential-status]').textContent)"
                )
                status.click()
                row = page.locator("[data-testid=casa-credential][data-name=mlflow]")
                row.wait_for()
                page.screenshot(path=str(tmp / "casa-credentials-panel.png"))
                text = {
                    field: row.locator(f"[data-testid=casa-credential-{field}]").inner_text()
                    for field in ("label", "file", "env", "use", "expiry")
                }
                names = page.locator("[data-testid=casa-credential]").evaluate_all(
                    "rows => rows.map(r => r.dataset.name)"
                )
            finally:
                browser.close()
    finally:
        stop_jupyter(lab)
    assert text["label"] == "MLflow tracking token"
    assert text["file"] == str(mount / "mlflow.token") and text["env"] == "$CASA_MLFLOW_TOKEN_FILE"
    assert text["use"] == f"audience: {MLFLOW_AUDIENCE}; scopes: mlflow"
    assert text["expiry"].startswith(("in 59m", "in 58m")), text["expiry"]
    assert set(names) == {"xcache", "dask-ca", "dask-scheduler", "dask-worker", "dask-client", "mlflow"}


# ------------------------------------------------------------------ a site's own kind: one file, one entry point
SITE_KIND = '''
"""A site's credential kind: an API token for the site's own service, signed by the facility issuer."""

import datetime
import uuid

from traitlets import Unicode

from casa_hub.credentials.bundle import BundleFile
from casa_hub.credentials.kind import CredentialKind, Minted, Seconds
from casa_hub.credentials.layout import ManifestEntry


class SiteToken(CredentialKind):
    name = "site-token"
    label = "Site API token"
    uses_issuer = True

    audience = Unicode("https://api.site.example", help="Audience of the token.").tag(config=True)
    lifetime = Seconds(600, help="Lifetime (seconds).").tag(config=True)

    def files(self):
        return ("site/api.token",)

    def env_names(self):
        return ("SITE_API_TOKEN_FILE",)

    def mint(self, request):
        claims = {"iss": request.issuer.url, "sub": request.user, "aud": self.audience, "iat": request.iat,
                  "exp": request.iat + self.lifetime, "jti": str(uuid.uuid4())}
        expires = datetime.datetime.fromtimestamp(claims["exp"], datetime.timezone.utc)
        entry = ManifestEntry(self.name, self.label, "site/api.token", "SITE_API_TOKEN_FILE", audience=self.audience)
        return Minted({"site/api.token": BundleFile(request.issuer.key.sign(claims).encode(), 0o400, expires)},
                      {"SITE_API_TOKEN_FILE": "{mount}/site/api.token"}, ((entry, expires),))
'''


def _install_site_kind(directory: Path) -> Path:
    """One module and one entry point, as a site package would install them (no change to Casa)."""
    directory.mkdir(parents=True)
    (directory / "site_kind.py").write_text(textwrap.dedent(SITE_KIND))
    dist = directory / "site_kind-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: site-kind\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[casa_hub.credentials]\nsite-token = site_kind:SiteToken\n")
    return directory


def test_a_sites_own_kind_is_minted_by_a_real_hub(tmp_path):
    site = _install_site_kind(tmp_path / "site-packages")
    config = 'c.CasaMinter.kinds = ["xcache", "dask-tls", "site-token"]\nc.SiteToken.lifetime = 900\n'
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    with H.running_hub(tmp_path, config, env={"PYTHONPATH": path}) as hub:
        H.oauth_login(hub, "alice")
        bundle = CredentialBundle.from_dict(_user(hub, "alice")["auth_state"]["casa"])
        token = bundle.files["site/api.token"].content.decode()
        _, key = H.issuer_key_for(hub, token)
    claims = jwt.decode(token, key, algorithms=[key.algorithm_name], audience="https://api.site.example")
    assert (claims["sub"], claims["exp"] - claims["iat"]) == ("alice", 900)
    assert bundle.env["SITE_API_TOKEN_FILE"] == "{mount}/site/api.token"
    entry = json.loads(bundle.files["casa.json"].content)["credentials"]["site-token"]
    assert (entry["label"], entry["file"], entry["env"]) == ("Site API token", "site/api.token", "SITE_API_TOKEN_FILE")


def test_a_hub_with_an_unknown_kind_does_not_start_and_says_which_are_installed(tmp_path):
    with pytest.raises(RuntimeError, match="did not start") as failed:
        with H.running_hub(tmp_path, 'c.CasaMinter.kinds = ["xcache", "dask-tls", "site-token"]\n'):
            pass
    message = str(failed.value)
    assert "Casa cannot start: CasaMinter.kinds: no credential kind 'site-token' is installed" in message
    assert "installed kinds: dask-tls, htcondor, macaroon, mlflow, servicex, xcache" in message
