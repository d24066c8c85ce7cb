"""A complete Casa facility on this machine: ``python -m casa_demo.facility`` (README's first command).

Starts the demo OIDC provider (demo users), JupyterHub with CasaAuthenticator + CasaLocalSpawner behind
configurable-http-proxy, JupyterLab servers with casa_hub_ext, and prints where to log in. Ctrl-C stops it all.
Keys and the hub database persist in the state directory, so a restart keeps everyone's Dask CA.

Change what the facility does without editing code: ``--config FILE`` (repeatable) appends a JupyterHub
configuration fragment after the generated configuration, so it can replace or extend any setting, e.g.::

    c.XCacheToken.lifetime = 1800                             # lifetimes (seconds)
    c.CasaLocalSpawner.profiles.append({"display_name": "Big", "slug": "big", "environment": {}})
    c.Spawner.environment = {"CASA_DASK_BACKENDS": "local"}   # Dask backends JupyterLab offers
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from casa_hub import keys

from .oidc_provider import DEMO_USERS

HUB_CONFIG = """\
# written by casa_demo.facility on every start: change it with --config FILE (appended below), not here
c = get_config()  # noqa
c.JupyterHub.authenticator_class = "casa"
c.JupyterHub.spawner_class = "casa-local"
c.JupyterHub.bind_url = "http://127.0.0.1:{port}"
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = {hub_port}
c.ConfigurableHTTPProxy.command = [{chp!r}]
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{proxy_api_port}"
c.JupyterHub.db_url = "sqlite:///{state}/jupyterhub.sqlite"
from casa_hub.hubdb import use_sqlite_wal
use_sqlite_wal()  # commits without an fsync each (casa_hub/hubdb.py)
c.JupyterHub.cookie_secret_file = "{state}/cookie_secret"
c.JupyterHub.pid_file = "{state}/jupyterhub.pid"
c.Authenticator.enable_auth_state = True
c.CasaAuthenticator.oidc_issuer = "{oidc_issuer}"
c.CasaAuthenticator.client_id = "casa-facility"
c.CasaAuthenticator.client_secret = "demo-provider-does-not-check-it"
c.CasaAuthenticator.oauth_callback_url = "http://127.0.0.1:{port}/hub/oauth_callback"
c.CasaAuthenticator.scope = ["openid", "profile", "email"]
c.CasaAuthenticator.login_service = "the Casa demo identity provider"
c.CasaAuthenticator.allowed_groups = {{"cms", "atlas", "facility-admins"}}
c.CasaAuthenticator.admin_groups = {{"facility-admins"}}
c.CasaMinter.kinds = ["xcache", "macaroon", "htcondor", "dask-tls"]
c.CasaMinter.issuer_url = "http://127.0.0.1:{port}/hub/casa-issuer"
c.CasaMinter.issuer_key_file = "{keys}/issuer"
c.DaskTLS.ca_secret_file = "{keys}/dask-ca"
c.DaskTLS.hostnames = ["localhost", "127.0.0.1"]
c.XCacheMacaroon.secret_file = "{keys}/macaroon"
c.XCacheMacaroon.location = "CASA_LOCAL"
c.HTCondorToken.signing_key_file = "{keys}/condor"
c.HTCondorToken.trust_domain = "casa.local"
c.CasaLocalSpawner.run_as_hub_user = True
c.CasaLocalSpawner.home_dir_template = "{state}/home/{{username}}"
c.Spawner.cmd = [{singleuser!r}]
c.Spawner.args = ["--ServerApp.allow_root=True"] if {as_root!r} else []
c.Spawner.default_url = "/lab"
c.CasaLocalSpawner.profiles = [
    {{"display_name": "CPU", "slug": "cpu", "description": "JupyterLab and local Dask workers, no GPU",
     "environment": {{"CASA_GPU_COUNT": "0"}}}},
    {{"display_name": "GPU", "slug": "gpu", "casa_allowed_groups": ["gpu-users"],
     "description": "{gpus} GPU(s) declared to this machine's servers",
     "environment": {{"CASA_GPU_COUNT": "{gpus}"}}}},
]
c.Spawner.start_timeout = 120
c.Spawner.http_timeout = 120
{extra}
"""


def render_hub_config(
    *,
    port: int,
    hub_port: int,
    proxy_api_port: int,
    chp: str,
    state: Path,
    oidc_issuer: str,
    key_dir: Path,
    singleuser: str,
    gpus: int = 0,
    extra: str = "",
) -> str:
    """The facility's jupyterhub_config.py (also what the hub tests run, plus their ``extra`` lines)."""
    return HUB_CONFIG.format(
        port=port,
        hub_port=hub_port,
        proxy_api_port=proxy_api_port,
        chp=chp,
        state=state,
        oidc_issuer=oidc_issuer,
        keys=key_dir,
        singleuser=singleuser,
        as_root=os.geteuid() == 0,
        gpus=gpus,
        extra=extra,
    )


def config_fragment(path: Path) -> str:
    """``path``'s text as a block of the generated jupyterhub_config.py (read on every start)."""
    path = path.expanduser().resolve()
    text = path.read_text()
    compile(text, str(path), "exec")  # a SyntaxError here names the file, not the generated config
    return f"\n# ---- from {path} (--config) ----\n{text}\n"


def _wait_http(url: str, proc: subprocess.Popen, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{what} did not answer at {url} within {timeout:.0f} s")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen, timeout: float = 15) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout)


def prepare_state(state: Path) -> Path:
    """Create the state directory and the hub's keys once (kept across restarts)."""
    key_dir = state / "keys"
    key_dir.mkdir(parents=True, exist_ok=True)
    state.chmod(0o700)
    for kind in ("issuer", "dask-ca", "macaroon", "condor"):
        path = key_dir / kind
        if not path.exists():
            path.write_bytes(keys.generate(kind))
            path.chmod(0o600)
    (state / "crypt_key").exists() or (state / "crypt_key").write_text(secrets.token_hex(32))
    (state / "crypt_key").chmod(0o600)
    return key_dir


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8000, help="where people open the facility (default 8000)")
    parser.add_argument("--oidc-port", type=int, default=8001, help="port of the demo OIDC provider")
    parser.add_argument(
        "--state",
        type=Path,
        default=Path(os.environ.get("CASA_FACILITY_DIR", Path.home() / ".local" / "share" / "casa-hub-facility")),
        help="keys, hub database, home directories and logs (default $CASA_FACILITY_DIR or "
        "~/.local/share/casa-hub-facility)",
    )
    parser.add_argument(
        "--gpus",
        type=int,
        default=2,
        help="GPUs the GPU profile declares to servers (CASA_GPU_COUNT; a demo has none real)",
    )
    parser.add_argument(
        "--config",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="a JupyterHub config fragment run after the generated configuration (profiles, "
        "lifetimes, Dask backends, ...); may be given more than once",
    )
    args = parser.parse_args(argv)
    try:
        extra = "".join(config_fragment(path) for path in args.config)
    except (OSError, SyntaxError) as e:
        parser.error(f"--config: {e}")

    bin_dir = Path(sys.executable).parent
    repo = Path(__file__).resolve().parent.parent
    chp = shutil.which("configurable-http-proxy") or str(repo / "node_modules" / ".bin" / "configurable-http-proxy")
    if not Path(chp).exists():
        print("configurable-http-proxy not found: run ./scripts/provision.sh first", file=sys.stderr)
        return 1
    state = args.state.resolve()
    key_dir = prepare_state(state)
    ports = [_free_port(), _free_port()]  # the hub's and the proxy's internal APIs
    (state / "jupyterhub_config.py").write_text(
        render_hub_config(
            port=args.port,
            hub_port=ports[0],
            proxy_api_port=ports[1],
            chp=chp,
            state=state,
            oidc_issuer=f"http://127.0.0.1:{args.oidc_port}",
            key_dir=key_dir,
            singleuser=str(bin_dir / "jupyterhub-singleuser"),
            gpus=args.gpus,
            extra=extra,
        )
    )
    (state / "users.json").write_text(json.dumps(DEMO_USERS))
    env = dict(
        os.environ,
        JUPYTERHUB_CRYPT_KEY=(state / "crypt_key").read_text().strip(),
        PATH=f"{bin_dir}:{os.environ.get('PATH', '')}",
    )

    procs: list[subprocess.Popen] = []
    stopping = False

    def shutdown(*_):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, shutdown)
    try:
        oidc = subprocess.Popen(
            [sys.executable, "-m", "casa_demo.oidc_provider", str(args.oidc_port), str(state / "users.json")],
            cwd=repo,
            env=env,
            start_new_session=True,
            stdout=open(state / "oidc.log", "wb"),
            stderr=subprocess.STDOUT,
        )
        procs.append(oidc)
        _wait_http(f"http://127.0.0.1:{args.oidc_port}/.well-known/openid-configuration", oidc, 30, "the OIDC provider")
        hub = subprocess.Popen(
            [sys.executable, "-m", "jupyterhub", "-f", str(state / "jupyterhub_config.py")],
            cwd=state,
            env=env,
            start_new_session=True,
            stdout=open(state / "jupyterhub.log", "wb"),
            stderr=subprocess.STDOUT,
        )
        procs.append(hub)
        _wait_http(f"http://127.0.0.1:{args.port}/hub/api", hub, 60, "JupyterHub")
        users = ", ".join(f"{u['sub']} ({', '.join(u['groups'])})" for u in DEMO_USERS)
        print(
            f"\nCasa facility ready: open http://127.0.0.1:{args.port}/ in a browser\n"
            f"  Sign in, then pick a demo user at the identity provider: {users}\n"
            f"  ('eve' is outside the allowed groups and is refused.)\n"
            + "".join(f"  Extra configuration: {path.resolve()}\n" for path in args.config)
            + f"  Logs and keys: {state}\n  Ctrl-C stops everything.\n",
            flush=True,
        )
        while not stopping and all(p.poll() is None for p in procs):
            time.sleep(0.5)
        if not stopping:
            dead = next(p for p in procs if p.poll() is not None)
            print(f"{dead.args[2]} exited with {dead.returncode}; see the logs in {state}", file=sys.stderr)
            return 1
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        print("stopping the facility...", flush=True)
        for p in reversed(procs):
            _stop(p)


if __name__ == "__main__":
    raise SystemExit(main())
