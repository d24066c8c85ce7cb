"""Dask from a laptop through a REAL SNI router: HAProxy passing TLS through by SNI, configured from the Traefik
routes the hub builds, in front of two users' real TLS schedulers, reached by a "laptop" that has nothing but the
unpacked client bundle (GET /casa/client-bundle).

* Routes: :func:`casa_hub.objects.make_dask_route` for alice and ali, a prefix of her name (the spawner's
  arguments: host from the route host template, the Service and port it builds with
  :func:`make_dask_scheduler_service`), turned into HAProxy's
  config by ``tests/consumers/haproxy.py`` (``mode tcp``, ``tcp-request inspect-delay``, ``req_ssl_sni`` ACLs).
* Schedulers: ``dask scheduler`` and one ``dask worker`` per user, as in the pod: TLS settings only from the
  minted bundle's ``DASK_DISTRIBUTED__COMM__TLS__*`` variables, on 127.0.0.1 ports (the Service's endpoints).
* Laptop: a fresh process whose environment is only ``PATH``, ``HOME`` (empty) and what the README says
  (``DASK_CONFIG``). The SNI name is the host in ``scheduler-address``: distributed's TLS connector hands the
  address's host to tornado, which sends it as ``server_hostname`` (SNI) and resolves it with the platform's
  resolver. To make ``dask-alice.casa.test`` resolve to 127.0.0.1 for the laptop alone, the laptop runs in a
  private mount namespace (``unshare -m``) with a hosts file bind-mounted over ``/etc/hosts``: the machine's
  ``/etc/hosts`` is untouched, the resolution is glibc's own (nothing patched in Python), and other tests are not
  affected. (``*.localhost`` names do not resolve here: Debian's glibc has no nss-myhostname;
  ``HOSTALIASES`` only rewrites single-label names.)

Refusals are checked where they happen: in the scheduler's own log (distributed logs "TLS handshake failed ... :
<OpenSSL's reason>"), and in HAProxy's log for which backend, if any, a connection went to.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from casa_hub import objects
from casa_hub_ext.bundle import MountedBundle
from casa_hub_ext.client_bundle import build_client_bundle
from casa_hub_ext.errors import CredentialError
from tests.consumers import haproxy, laptop
from tests.support import VENV_BIN, free_port, make_minter, need, stop_process, wait_until, write_bundle

NAMESPACE = "casa"
ROUTE_HOST_TEMPLATE = "dask-{username}.casa.test"  # CasaSpawner.casa_dask_route_host_template
ENTRY_POINT = "dask"
SCHEDULER_PORT = 8786  # CasaSpawner.casa_dask_scheduler_port: the Service's port
USERS = ("alice", "ali")  # one name a prefix of the other: routes and CAs must still never mix
UNKNOWN_HOST = "nobody.casa.test"
TIMEOUT = 40
REFUSED_WITHIN = 6  # the laptop's Client(timeout=...) when a refusal is expected

PROBE = laptop.client_probe(
    """
def where():
    return get_worker().name


def result(client):
    info = client.scheduler_info()
    return {
        "scheduler": info["address"],
        "workers": sorted(str(w.get("name")) for w in info["workers"].values()),
        "ran_on": client.submit(where, pure=False).result(),
        "sum": client.submit(sum, [1, 2]).result(),
    }
"""
)


@dataclass
class UserSite:
    user: str
    host: str  # the SNI name of the user's route
    bundle_dir: Path
    port: int = 0  # the scheduler's real port (the Service's endpoint)
    procs: list = field(default_factory=list)
    log: Path | None = None
    worker_log: Path | None = None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@dataclass
class Facility:
    work: Path
    minter: object
    sites: dict
    routes: list
    services: list
    router: haproxy.Router | None = None
    hosts_file: Path | None = None


def _pod_env(bundle, directory: Path) -> dict[str, str]:
    """What the pod's container gets: the bundle's env with the mount point replaced; nothing else of Dask."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DASK_", "CASA_"))}
    return {**base, **bundle.env_for(str(directory))}


def _start_user(site: UserSite, bundle, work: Path) -> None:
    env = _pod_env(bundle, site.bundle_dir)
    assert env["DASK_DISTRIBUTED__COMM__TLS__CA_FILE"].startswith(str(site.bundle_dir))
    site.port = free_port()
    site.log, site.worker_log = work / f"{site.user}-scheduler.log", work / f"{site.user}-worker.log"
    address = f"tls://127.0.0.1:{site.port}"
    with open(site.log, "wb") as out:
        site.procs.append(
            subprocess.Popen(
                [str(VENV_BIN / "dask"), "scheduler", "--protocol", "tls", "--host", "127.0.0.1"]
                + ["--port", str(site.port), "--no-dashboard"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
    up = re.compile(rf"Scheduler at:\s+{re.escape(address)}$", re.M)
    wait_until(lambda: up.search(site.log_text()) or _died(site), TIMEOUT, "scheduler up")
    assert not _died(site), site.log_text()
    with open(site.worker_log, "wb") as out:
        site.procs.append(
            subprocess.Popen(
                [str(VENV_BIN / "dask"), "worker", address, "--name", f"{site.user}-worker", "--nthreads", "1"]
                + ["--no-nanny", "--no-dashboard", "--host", "127.0.0.1", "--death-timeout", str(TIMEOUT)],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )


def _died(site: UserSite) -> bool:
    return any(p.poll() is not None for p in site.procs)


def _route_objects(user: str) -> tuple[dict, object]:
    """The Service and route the spawner creates for ``user`` (same builders, same arguments)."""
    name = f"jupyter-{user}-dask"
    labels = {"app": "jupyterhub", "component": "singleuser-server"}
    service = objects.make_dask_scheduler_service(
        name, NAMESPACE, {"casa-hub/server": name}, SCHEDULER_PORT, [], labels
    )
    route = objects.make_dask_route(
        name, NAMESPACE, ROUTE_HOST_TEMPLATE.format(username=user), name, SCHEDULER_PORT, [], labels, ENTRY_POINT
    )
    return route, service


def _endpoints(fac: Facility) -> dict:
    """Kubernetes' part: each Service port → the pod's (here: the user's scheduler on 127.0.0.1)."""
    out = {}
    for service in fac.services:
        user = next(u for u, s in fac.sites.items() if service.metadata.name == f"jupyter-{u}-dask")
        (port,) = [p for p in service.spec.ports if p.name == "dask-scheduler"]
        out[service.metadata.namespace, service.metadata.name, port.port] = ("127.0.0.1", fac.sites[user].port)
    return out


@pytest.fixture(scope="module")
def facility(tmp_path_factory):
    need(haproxy.haproxy_binary() is not None, "HAProxy (Debian package haproxy)")
    laptop.need_private_hosts()
    work = tmp_path_factory.mktemp("sni-router")
    minter = make_minter(work / "keys")
    fac = Facility(work, minter, {}, [], [])
    started = time.monotonic()
    try:
        for i, user in enumerate(USERS):
            bundle = minter.mint(user)
            site = UserSite(user, ROUTE_HOST_TEMPLATE.format(username=user), write_bundle(bundle, work / f"pod{i}"))
            fac.sites[user] = site
            _start_user(site, bundle, work)
            route, service = _route_objects(user)
            fac.routes.append(route)
            fac.services.append(service)
        for site in fac.sites.values():
            wait_until(
                lambda s=site: "Register worker" in s.log_text() or _died(s), TIMEOUT, f"{site.user}'s worker joined"
            )
            assert not _died(site), site.log_text() + site.worker_log.read_text()
        endpoints = _endpoints(fac)
        fac.router = haproxy.start_router(
            work / "haproxy",
            lambda port: haproxy.haproxy_config(
                fac.routes, endpoints, entry_point=ENTRY_POINT, bind=("127.0.0.1", port)
            ),
        )
        fac.hosts_file = work / "laptop-hosts"
        names = " ".join([*(s.host for s in fac.sites.values()), UNKNOWN_HOST])
        fac.hosts_file.write_text(f"127.0.0.1 localhost\n127.0.0.1 {names}\n")
        up = time.monotonic() - started
        print(f"\n{fac.router.version}; two schedulers + workers and the router up in {up:.1f} s")
        yield fac
    finally:
        procs = [p for s in fac.sites.values() for p in s.procs] + ([fac.router.proc] if fac.router else [])
        for p in procs:
            stop_process(p)
        assert all(p.poll() is not None for p in procs)


# ------------------------------------------------------------------ the laptop
def laptop_unpack(fac: Facility, name: str, content: bytes) -> Path:
    return laptop.unpack(fac.work / "laptops" / name, content)


def laptop_run(fac: Facility, home: Path, script: str, extra_env: dict | None = None, timeout: float = 60):
    return laptop.run(fac.hosts_file, home, script, extra_env, timeout)


def download(fac: Facility, user: str, now: datetime.datetime | None = None) -> bytes:
    """What GET /casa/client-bundle answers in the user's server (the handler calls the same builder)."""
    address = f"tls://{fac.sites[user].host}:{fac.router.port}"
    return build_client_bundle(MountedBundle.from_directory(fac.sites[user].bundle_dir), address, now=now).content


def probe(fac: Facility, home: Path, user: str, *, address: str | None = None, timeout: float = TIMEOUT, env=None):
    script = f'export DASK_CONFIG="$PWD/casa-dask-{user}"\npython -c "$PROBE" {timeout} {address or ""}'
    result = laptop_run(fac, home, script, {"PROBE": PROBE, **(env or {})}, timeout=timeout + 30)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def wait_log(read, pattern: str, since: int, what: str, timeout: float = 15) -> str:
    """The new log text (after offset ``since``) once it matches ``pattern`` (bounded wait)."""
    return wait_until(
        lambda: (lambda t: t if re.search(pattern, t, re.I) else None)(read()[since:]), timeout, what, 0.05
    )


def router_line(router: haproxy.Router, port: int) -> str:
    """HAProxy's log line for the connection from local ``port`` (written when it closes; bounded wait)."""
    pattern = re.compile(rf"^127\.0\.0\.1:{port} .*$", re.M)
    return wait_until(lambda: (lambda m: m.group(0) if m else None)(pattern.search(router.log_text())), 15, "log")


def _handshake_failures(site: UserSite, since: int) -> list[str]:
    return [line for line in site.log_text()[since:].splitlines() if "TLS handshake failed" in line]


# ------------------------------------------------------------------ the config is the hub's routes
def test_router_config_comes_from_the_hubs_routes(facility):
    config = facility.router.config.read_text()
    for user, site in facility.sites.items():
        backend = f"{NAMESPACE}_jupyter-{user}-dask_0"
        assert f"use_backend {backend} if {{ req_ssl_sni -i {site.host} }}" in config
        assert f"server {backend} 127.0.0.1:{site.port}" in config
    assert "tcp-request inspect-delay" in config and "mode tcp" in config
    assert "ssl" not in config.replace("req_ssl_", "")  # HAProxy holds no certificate: passthrough only
    assert "default_backend" not in config


def test_the_router_refuses_routes_it_cannot_express(facility):
    endpoints = _endpoints(facility)
    route, _ = _route_objects("alice")
    assert haproxy.backends([route], endpoints, "websecure") == []  # another entry point: not this router's
    for change, message in (
        (lambda r: r["spec"].update(tls={}), "passthrough"),
        (lambda r: r["spec"]["routes"][0].update(match="HostSNI(`*`)"), "single DNS name"),
        (lambda r: r["spec"]["routes"][0].update(match="HostSNIRegexp(`^.+$`)"), "HostSNI rule"),
        (lambda r: r["spec"]["routes"][0]["services"][0].update(port=1), "no endpoint"),
    ):
        bad = json.loads(json.dumps(route))
        change(bad)
        with pytest.raises(ValueError, match=message):
            haproxy.backends([bad], endpoints, ENTRY_POINT)
    with pytest.raises(ValueError, match="routed twice"):
        haproxy.backends([route, route], endpoints, ENTRY_POINT)


# ------------------------------------------------------------------ the laptop computes, on its own scheduler only
@pytest.mark.parametrize("user", USERS)
def test_laptop_runs_the_readme_lines_through_the_router(facility, user):
    site = facility.sites[user]
    (other,) = [s for u, s in facility.sites.items() if u != user]
    home = laptop_unpack(facility, f"{user}-laptop", download(facility, user))
    assert sorted(p.name for p in (home / f"casa-dask-{user}").iterdir()) == sorted(
        ["README.txt", "dask.yaml", "ca.pem", "client.crt", "client.key"]
    )
    readme = (home / f"casa-dask-{user}" / "README.txt").read_text()
    lines = [line.strip() for line in readme.splitlines() if re.match(r"    \S", line)]
    assert lines[0].startswith("pip install") and len(lines) == 3
    router_before, other_before = len(facility.router.log_text()), len(other.log_text())

    # the README's lines, as written (pip is already done: the laptop has this distributed)
    result = laptop_run(facility, home, "\n".join(lines[1:]), timeout=TIMEOUT + 30)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "3"

    # the scheduler that answered is the user's own, and the task ran on the user's own worker
    out = probe(facility, home, user)
    assert out["ok"], out
    assert out["scheduler"] == f"tls://127.0.0.1:{site.port}"
    assert out["workers"] == [f"{user}-worker"] and out["ran_on"] == f"{user}-worker" and out["sum"] == 3
    # the router sent the connections to this user's backend, never the other's; the other scheduler saw nothing
    routed = wait_log(facility.router.log_text, rf"jupyter-{user}-dask_0/", router_before, "router log")
    assert f"jupyter-{other.user}-dask" not in routed and "<NOSRV>" not in routed.replace("127.0.0.1:", "")
    assert "Receive client connection" in site.log_text()
    assert "Receive client connection" not in other.log_text()[other_before:]
    assert not _handshake_failures(other, other_before)


# ------------------------------------------------------------------ refusals
def test_other_users_bundle_through_a_route_is_refused_at_that_scheduler(facility):
    alice, ali = facility.sites["alice"], facility.sites["ali"]
    home = laptop_unpack(facility, "ali-attacks", download(facility, "ali"))
    alice_route = f"tls://{alice.host}:{facility.router.port}"
    since, bob_since = len(alice.log_text()), len(ali.log_text())

    # ali's bundle as is, pointed at alice's route: ali's client does not trust alice's scheduler (other CA)
    out = probe(facility, home, "ali", address=alice_route, timeout=REFUSED_WITHIN)
    assert not out["ok"] and "certificate verify failed" in out["error"], out
    reason = wait_log(alice.log_text, r"TLS handshake failed.*unknown.ca", since, "alice's scheduler log")
    assert "TLSV1_ALERT_UNKNOWN_CA" in reason

    # with alice's CA certificate (public), alice's scheduler itself refuses ali's client certificate
    since = len(alice.log_text())
    shutil.copy(alice.bundle_dir / "dask" / "ca.pem", home / "alice-ca.pem")
    out = probe(
        facility,
        home,
        "ali",
        address=alice_route,
        timeout=REFUSED_WITHIN,
        env={"DASK_DISTRIBUTED__COMM__TLS__CA_FILE": str(home / "alice-ca.pem")},
    )
    assert not out["ok"], out
    reason = wait_log(alice.log_text, r"TLS handshake failed.*certificate verify failed", since, "alice's log")
    assert "unable to get local issuer certificate" in reason, reason
    assert "Receive client connection" not in alice.log_text()[since:]
    assert not _handshake_failures(ali, bob_since) and "Receive client connection" not in ali.log_text()[bob_since:]


def test_expired_bundle_is_refused_with_the_reason_in_the_scheduler_log(facility):
    alice = facility.sites["alice"]
    then = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=2)
    old = write_bundle(facility.minter.mint("alice", now=then), facility.work / "alice-two-days-ago")
    with pytest.raises(CredentialError, match="expired"):  # the server no longer hands it out ...
        build_client_bundle(MountedBundle.from_directory(old), f"tls://{alice.host}:{facility.router.port}")
    # ... but a laptop kept the one it downloaded then
    content = build_client_bundle(
        MountedBundle.from_directory(old),
        f"tls://{alice.host}:{facility.router.port}",
        now=then + datetime.timedelta(minutes=1),
    ).content
    home = laptop_unpack(facility, "alice-old-laptop", content)
    since = len(alice.log_text())
    out = probe(facility, home, "alice", timeout=REFUSED_WITHIN)
    assert not out["ok"], out
    reason = wait_log(alice.log_text, r"TLS handshake failed.*certificate has expired", since, "alice's log")
    assert "CERTIFICATE_VERIFY_FAILED" in reason
    assert "Receive client connection" not in alice.log_text()[since:]


def test_client_without_certificate_is_refused(facility):
    alice = facility.sites["alice"]
    since = len(alice.log_text())
    port, what = laptop.raw_tls(facility.router.port, alice.host, alice.bundle_dir / "dask" / "ca.pem")
    assert "CERTIFICATE_REQUIRED" in what.upper() or "EOF" in what.upper() or what == "read b''", what
    wait_log(alice.log_text, r"TLS handshake failed.*peer did not return a certificate", since, "alice's log")
    assert "jupyter-alice-dask_0/" in router_line(facility.router, port)


@pytest.mark.parametrize("name", [UNKNOWN_HOST, None], ids=["unknown-sni", "no-sni"])
def test_unknown_sni_reaches_nothing(facility, name):
    alice, ali = facility.sites["alice"], facility.sites["ali"]
    before = {u: len(s.log_text()) for u, s in facility.sites.items()}
    # alice's complete, valid credentials: the name alone decides, and it names no route
    d = alice.bundle_dir / "dask"
    port, what = laptop.raw_tls(facility.router.port, name, d / "ca.pem", d / "client.crt", d / "client.key")
    assert "EOF" in what.upper() or "RESET" in what.upper(), what
    line = router_line(facility.router, port)
    assert f"{ENTRY_POINT}/<NOSRV>" in line, line
    time.sleep(0.3)  # nothing may arrive late either
    for site in (alice, ali):
        assert site.log_text()[before[site.user] :].strip() == "", site.log_text()[before[site.user] :]
