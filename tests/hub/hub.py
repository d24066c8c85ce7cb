"""A real JupyterHub (+ configurable-http-proxy) running CasaAuthenticator and CasaLocalSpawner against the
demo OIDC provider, all on 127.0.0.1, and an HTTP client that logs in through the real OAuth flow."""

from __future__ import annotations

import os
import re
import secrets
import shlex
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin

import httpx

from casa_demo.facility import prepare_state, render_hub_config
from tests.support import CHP, VENV_BIN, chart_proxy_command, free_port, stop_process, wait_for_port

# the command that runs the hub processes' Python: this interpreter, or CASA_HUB_PYTHON (a command prefix), e.g.
# scripts/z2jh-hub-python for the Z2JH chart's hub environment (JupyterHub 5.5.0 on Python 3.14; scripts/test.sh)
HUB_PYTHON = shlex.split(os.environ.get("CASA_HUB_PYTHON", "")) or [sys.executable]

# the hub tests run the facility's own configuration, plus an API token for the test and their extras
TEST_CONFIG = """
c.JupyterHub.load_roles = [{{"name": "casa-test", "scopes": ["admin:users", "admin:auth_state", "admin:servers",
                                                          "tokens", "read:users", "list:users"],
                             "services": ["casa-test"]}}]
c.JupyterHub.services = [{{"name": "casa-test", "api_token": "{api_token}"}}]
c.Spawner.start_timeout = 60
{extra}
"""


# CasaSpawner against the Kubernetes emulator (tests/hub/kube.py, pods answered on ``pod_port``), servers kept
# across hub restarts; credentials live 90 s and are refreshed 60 s before expiry (~30 s after login)
KUBE_SPAWNER_CONFIG = """
c.JupyterHub.spawner_class = "casa"
c.JupyterHub.cleanup_servers = False
c.KubeSpawner.namespace = "default"
c.KubeSpawner.port = {pod_port}
c.KubeSpawner.start_timeout = 30
c.KubeSpawner.image = "registry.example.org/casa/notebook:test"
c.XCacheToken.lifetime = 90
c.CasaAuthenticator.credential_refresh_margin = 60
c.CasaRefresher.jitter = 0
"""


@dataclass
class Hub:
    url: str
    work: Path
    proc: subprocess.Popen
    api_token: str
    provider: object

    def api(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url + "/hub/api", headers={"Authorization": f"token {self.api_token}"}, timeout=30
        )

    def log(self) -> str:
        return (self.work / "hub.log").read_text(errors="replace")

    def key_files(self) -> list[Path]:
        return list((self.work / "keys").iterdir())


@dataclass
class Proxy:
    """configurable-http-proxy in its own process, as Z2JH's chart runs it (the ``proxy`` Deployment): its routes
    outlive a restart of the hub, which finds them in place instead of adding one per running server."""

    proc: subprocess.Popen
    port: int
    api_port: int
    hub_port: int
    token: str

    def hub_config(self) -> str:
        """The chart's proxy settings of the hub: it does not start the proxy, and knows its token."""
        return f"c.ConfigurableHTTPProxy.should_start = False\nc.ConfigurableHTTPProxy.auth_token = {self.token!r}\n"


def start_proxy(work: Path) -> Proxy:
    """The chart's proxy (:func:`tests.support.chart_proxy_command`) on free ports, for a hub on 127.0.0.1; hand
    it to :func:`start_hub` (``proxy=``), stop it with :func:`stop_proxy`."""
    work.mkdir(parents=True, exist_ok=True)
    port, api_port, hub_port, token = free_port(), free_port(), free_port(), secrets.token_hex(32)
    proc = subprocess.Popen(
        chart_proxy_command(f"127.0.0.1:{hub_port}", port, api_port),
        env=dict(os.environ, CONFIGPROXY_AUTH_TOKEN=token),
        stdout=open(work / "proxy.log", "wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_for_port(port, proc=proc, timeout=30)
        wait_for_port(api_port, proc=proc, timeout=30)
    except Exception:
        stop_process(proc)
        raise
    return Proxy(proc, port, api_port, hub_port, token)


def stop_proxy(proxy: Proxy) -> None:
    stop_process(proxy.proc)


def start_hub(
    work: Path,
    provider,
    extra_config: str = "",
    timeout: float = 60,
    env: dict | None = None,
    proxy: Proxy | None = None,
) -> Hub:
    """JupyterHub on free ports with the facility's configuration plus ``extra_config``; it starts its own
    configurable-http-proxy unless given ``proxy`` (:func:`start_proxy`), which it then uses."""
    work.mkdir(parents=True, exist_ok=True)
    key_dir = prepare_state(work)
    if proxy is None:
        port, hub_port, proxy_api_port = free_port(), free_port(), free_port()
    else:
        port, hub_port, proxy_api_port = proxy.port, proxy.hub_port, proxy.api_port
        extra_config = proxy.hub_config() + extra_config
    api_token = secrets.token_hex(16)
    (work / "jupyterhub_config.py").write_text(
        render_hub_config(
            port=port,
            hub_port=hub_port,
            proxy_api_port=proxy_api_port,
            chp=str(CHP),
            state=work,
            oidc_issuer=provider.url,
            key_dir=key_dir,
            singleuser=str(VENV_BIN / "jupyterhub-singleuser"),
            extra=TEST_CONFIG.format(api_token=api_token, extra=extra_config),
        )
    )
    env = dict(
        os.environ,
        JUPYTERHUB_CRYPT_KEY=(work / "crypt_key").read_text().strip(),
        PATH=f"{VENV_BIN}:{os.environ['PATH']}",
        **(env or {}),
    )
    proc = subprocess.Popen(
        [*HUB_PYTHON, "-m", "jupyterhub", "-f", str(work / "jupyterhub_config.py")],
        cwd=work,
        env=env,
        stdout=open(work / "hub.log", "wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    hub = Hub(f"http://127.0.0.1:{port}", work, proc, api_token, provider)
    try:
        wait_for_port(port, proc=proc, timeout=timeout)
        deadline = time.monotonic() + timeout
        while True:  # the proxy listens before the hub is routed: wait for the hub API itself
            try:
                if httpx.get(hub.url + "/hub/api", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise TimeoutError("hub API not ready")
            time.sleep(0.1)
    except Exception as e:
        stop_hub(hub)
        raise RuntimeError(f"JupyterHub did not start: {e}\n{hub.log()[-4000:]}") from None
    return hub


def stop_hub(hub: Hub) -> None:
    stop_process(hub.proc, timeout=20)


def oauth_login(hub: Hub, sub: str, client: httpx.Client | None = None) -> httpx.Client:
    """Log in through the real flow: hub -> provider authorize (PKCE) -> choose user -> callback -> hub."""
    client = client or httpx.Client(timeout=30, follow_redirects=False)
    r = client.get(hub.url + "/hub/oauth_login")
    assert r.status_code == 302, r.text
    authorize = r.headers["location"]
    assert "code_challenge=" in authorize and "code_challenge_method=S256" in authorize
    form = client.get(authorize)
    assert form.status_code == 200, form.text
    r = client.post(authorize, data={"sub": sub})
    assert r.status_code == 302, r.text
    r = client.get(r.headers["location"])  # back to the hub's callback
    client.last_callback = r
    return client


def follow(client: httpx.Client, response: httpx.Response, limit: int = 10) -> httpx.Response:
    for _ in range(limit):
        if response.status_code not in (301, 302, 303, 307):
            return response
        response = client.get(urljoin(str(response.url), response.headers["location"]))
    return response


def xsrf(client: httpx.Client) -> str:
    return client.cookies.get("_xsrf", "")


def page_message(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


@contextmanager
def running_hub(tmp: Path, extra_config: str = "", env: dict | None = None):
    """The demo OIDC provider and a hub using it, both stopped on exit (skip-or-fail if CHP is missing)."""
    from tests.hub.oidc import start_provider, stop_provider
    from tests.support import need

    need(CHP.exists(), "configurable-http-proxy (npm ci)")
    provider = start_provider(tmp)
    try:
        hub = start_hub(tmp / "hub", provider, extra_config=extra_config, env=env)
        try:
            yield hub
        finally:
            stop_hub(hub)
    finally:
        stop_provider(provider)


def expected_runtime() -> dict[str, str]:
    """The JupyterHub and Python a hub process must run: ``CASA_HUB_EXPECT``'s (scripts/test.sh's second run,
    ``"jupyterhub=5.5.0 python=3.14"``), else this interpreter's."""
    import jupyterhub

    if os.environ.get("CASA_HUB_EXPECT"):
        return dict(item.split("=", 1) for item in os.environ["CASA_HUB_EXPECT"].split())
    assert not os.environ.get("CASA_HUB_PYTHON"), "CASA_HUB_PYTHON without CASA_HUB_EXPECT: nothing to check against"
    return {"jupyterhub": jupyterhub.__version__, "python": "%d.%d" % sys.version_info[:2]}


def check_runtime(hub: Hub, label: str = "hub process") -> dict:
    """Assert that ``hub`` runs the expected JupyterHub and Python (its version header, ``/hub/api`` and
    ``/hub/api/info``; the test's service needs ``read:hub``); print them for the run's log; return the info."""
    want = expected_runtime()
    root = httpx.get(hub.url + "/hub/api", timeout=10)
    with hub.api() as api:
        info = api.get("/info").json()
    print(f"{label}: JupyterHub {info['version']} on Python {info['python'].split()[0]} ({info['sys_executable']})")
    assert root.headers["X-JupyterHub-Version"] == root.json()["version"] == info["version"] == want["jupyterhub"]
    assert info["python"].split()[0].startswith(want["python"] + "."), info["python"]
    return info


def facility_command(port: int, oidc_port: int, state: Path, *args) -> list[str]:
    """The one-command local facility (casa_demo.facility, what scripts/facility.sh runs) on these ports."""
    return [
        sys.executable,
        "-m",
        "casa_demo.facility",
        "--port",
        str(port),
        "--oidc-port",
        str(oidc_port),
        "--state",
        str(state),
        *map(str, args),
    ]


def issuer_key_for(hub: Hub, token: str):
    """``(issuer, key)``: what a consumer of the hub's tokens (XRootD, an MLflow server) finds for ``token``, the
    issuer's discovery document, its JWKS and there the key the token names in its ``kid``."""
    import jwt

    issuer = f"{hub.url}/hub/casa-issuer"
    discovery = httpx.get(f"{issuer}/.well-known/openid-configuration", timeout=10).json()
    jwks = jwt.PyJWKSet.from_dict(httpx.get(discovery["jwks_uri"], timeout=10).json())
    kid = jwt.get_unverified_header(token)["kid"]
    return issuer, next(k for k in jwks.keys if k.key_id == kid)


def verified_storage_claims(hub: Hub, token: bytes | str, audience: str = "https://wlcg.cern.ch/jwt/v1/any") -> dict:
    """The claims of a storage token, verified as XRootD verifies it (:func:`issuer_key_for`, this audience,
    this issuer)."""
    import jwt

    token = (token.decode() if isinstance(token, bytes) else token).strip()
    issuer, key = issuer_key_for(hub, token)
    return jwt.decode(token, key, algorithms=[key.algorithm_name], audience=audience, issuer=issuer)


def assert_renewed_for(
    hub: Hub, user: str, renewed: bytes, first: bytes, audience: str = "https://wlcg.cern.ch/jwt/v1/any"
) -> None:
    """``renewed`` is a fresh storage token of ``user`` (signed by the hub, later expiry, new ``jti``) replacing
    ``first``. (Not compared with the stored auth_state: a refresh persists nothing the hub can re-mint.)"""
    import jwt

    new = verified_storage_claims(hub, renewed, audience)
    old = jwt.decode(first.strip(), options={"verify_signature": False})  # maybe from this hub before a restart
    assert new["sub"] == old["sub"] == user
    assert new["jti"] != old["jti"] and new["exp"] > old["exp"]
