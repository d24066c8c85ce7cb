"""A real SNI router for tests: HAProxy (Debian's ``haproxy``) in ``mode tcp``, passing TLS through by SNI, configured
from the Traefik ``IngressRouteTCP`` objects the hub builds (:func:`casa_hub.objects.make_dask_route`).

:func:`haproxy_config` is pure: it reads what a Traefik router would read from each route (entry point, the
``HostSNI`` rule, TLS passthrough, the target Service and port) and refuses what it cannot express faithfully, so a
test through it checks the hub's routes rather than a hand-written config. Kubernetes' part (Service → pod) is the
``endpoints`` mapping the caller passes: ``(namespace, service, port) -> (host, port)``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

from tests.support import free_port, stop_process, wait_for_port

_HOST_SNI = re.compile(r"HostSNI\(`([^`]+)`\)")
_DNS_NAME = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$")


@dataclass(frozen=True)
class Backend:
    name: str  # HAProxy backend name (from the route's name)
    hosts: tuple[str, ...]  # the SNI names routed to it
    target: tuple[str, int]  # where the Service's port leads


def _sni_hosts(match: str) -> tuple[str, ...]:
    """The host names of a Traefik ``HostSNI(`a`)`` rule (v3: ``HostSNI(`a`) || HostSNI(`b`)``)."""
    parts = [p.strip() for p in match.split("||")]
    hosts = []
    for part in parts:
        m = _HOST_SNI.fullmatch(part)
        if not m:
            raise ValueError(f"route rule {match!r} is not a HostSNI rule this router can express")
        host = m.group(1)
        if host == "*" or not _DNS_NAME.match(host.lower()):
            raise ValueError(f"HostSNI name {host!r} is not a single DNS name")
        hosts.append(host.lower())
    return tuple(hosts)


def backends(
    routes: Iterable[Mapping], endpoints: Mapping[tuple[str, str, int], tuple[str, int]], entry_point: str
) -> list[Backend]:
    """The backends the routes on ``entry_point`` define; a route on another entry point is not this router's."""
    found: list[Backend] = []
    seen: dict[str, str] = {}
    for route in routes:
        if route.get("kind") != "IngressRouteTCP" or not str(route.get("apiVersion", "")).startswith("traefik."):
            raise ValueError(f"not a Traefik IngressRouteTCP: {route.get('apiVersion')}/{route.get('kind')}")
        meta, spec = route["metadata"], route["spec"]
        if entry_point not in spec.get("entryPoints", []):
            continue
        if spec.get("tls", {}).get("passthrough") is not True:
            raise ValueError(f"route {meta['name']}: without TLS passthrough the router would terminate TLS")
        for i, rule in enumerate(spec["routes"]):
            hosts = _sni_hosts(rule["match"])
            (service,) = rule["services"]  # one target per rule: no weighted load balancing here
            key = (meta["namespace"], service["name"], int(service["port"]))
            if key not in endpoints:
                raise ValueError(f"route {meta['name']}: no endpoint for Service {key}")
            name = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{meta['namespace']}_{meta['name']}_{i}")
            for host in hosts:
                if host in seen:
                    raise ValueError(f"SNI name {host} is routed twice ({seen[host]} and {name})")
                seen[host] = name
            found.append(Backend(name, hosts, endpoints[key]))
    return found


def haproxy_config(
    routes: Iterable[Mapping],
    endpoints: Mapping[tuple[str, str, int], tuple[str, int]],
    *,
    entry_point: str,
    bind: tuple[str, int],
    inspect_delay_s: float = 5,
) -> str:
    """An HAProxy configuration routing TLS connections by SNI, without decrypting them. A ClientHello with no
    SNI or an SNI no route names gets no backend: HAProxy closes the connection (logged as ``<NOSRV>``)."""
    lines = [
        "global",
        "    log stdout format raw local0 info",
        "    maxconn 256",
        "defaults",
        "    mode tcp",
        "    log global",
        "    option tcplog",
        "    timeout connect 5s",
        "    timeout client 60s",
        "    timeout server 60s",
        f"frontend {entry_point}",
        f"    bind {bind[0]}:{bind[1]}",
        # wait (bounded) for the ClientHello, then route on its server_name extension
        f"    tcp-request inspect-delay {int(inspect_delay_s * 1000)}ms",
        "    tcp-request content accept if { req_ssl_hello_type 1 }",
    ]
    found = backends(routes, endpoints, entry_point)
    for b in found:
        names = " ".join(b.hosts)
        lines.append(f"    use_backend {b.name} if {{ req_ssl_sni -i {names} }}")
    for b in found:
        lines += [f"backend {b.name}", f"    server {b.name} {b.target[0]}:{b.target[1]}"]
    return "\n".join(lines) + "\n"


@dataclass
class Router:
    port: int
    proc: subprocess.Popen
    config: Path
    log: Path
    version: str

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def haproxy_binary() -> str | None:
    return shutil.which("haproxy") or ("/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None)


def start_router(work: Path, config_for_port, timeout: float = 15) -> Router:
    """Start ``haproxy -db`` (foreground) with ``config_for_port(port)`` on a free 127.0.0.1 port, checked first."""
    binary = haproxy_binary()
    assert binary, "haproxy is not installed"
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = work / "haproxy.cfg"
    config.write_text(config_for_port(port))
    check = subprocess.run([binary, "-c", "-f", str(config)], capture_output=True, text=True, timeout=timeout)
    assert check.returncode == 0, f"haproxy refused its config:\n{check.stdout}{check.stderr}\n{config.read_text()}"
    version = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=timeout).stdout.splitlines()[0]
    log = work / "haproxy.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [binary, "-db", "-f", str(config)], stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        wait_for_port(port, timeout=timeout, proc=proc)
    except Exception:
        stop_process(proc)
        raise
    return Router(port, proc, config, log, version)
