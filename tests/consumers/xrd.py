"""Real XRootD 5.5 servers for the XCache credential tests: an origin with SciTokens + macaroons and an
XCache (XrdPss + XrdPfc) in front of a plain backend, all on 127.0.0.1.

scitokens-cpp fetches issuer keys over https trusting only /etc/ssl/certs/ca-certificates.crt, so each
server runs in a private mount namespace (``unshare -m``) where a bundle with our test CA is bind-mounted
over that file; nothing outside the process sees it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.support import free_port, stop_process, wait_for_port

SITE_NAME = "CASA_TEST"
AUDIENCE = "https://127.0.0.1:xcache"
EXPORT = "/store"
TEST_FILE = "/store/data/run1.root"
TEST_BYTES = b"casa-hub xrootd test payload\n" * 64

_TLS = """
xrd.tls {work}/hostcert.pem {work}/hostkey.pem
xrd.tlsca certdir {work}/certs
xrootd.tls capable all
"""

_TOKEN_AUTHZ = """
xrootd.seclib libXrdSec.so
sec.protocol ztn
sec.protocol unix
sec.protbind * ztn unix
ofs.authorize 1
acc.authdb {work}/authdb
acc.audit deny grant
ofs.authlib ++ libXrdAccSciTokens.so config={work}/scitokens.cfg
"""

ORIGIN_CFG = """
all.role server
all.export {export}
all.sitename {site}
oss.localroot {work}/ns
all.adminpath {work}/admin-{name}
all.pidpath {work}/run-{name}
xrd.port {port}
""" + _TLS + _TOKEN_AUTHZ + """
ofs.authlib ++ libXrdMacaroons.so
macaroons.secretkey {work}/macaroon-secret
xrd.protocol XrdHttp:{http_port} libXrdHttp.so
http.header2cgi Authorization authz
http.exthandler xrdmacaroons libXrdMacaroons.so
"""

# the cache's backend: a trusted origin without authorization; the cache itself enforces tokens
BACKEND_CFG = """
all.role server
all.export {export}
oss.localroot {work}/ns
all.adminpath {work}/admin-{name}
all.pidpath {work}/run-{name}
xrd.port {port}
xrootd.seclib libXrdSec.so
sec.protocol unix
"""

CACHE_CFG = """
all.role server
all.export {export}
all.sitename {site}
oss.localroot {work}/cache-ns
all.adminpath {work}/admin-{name}
all.pidpath {work}/run-{name}
ofs.osslib libXrdPss.so
pss.cachelib libXrdPfc.so
pss.origin 127.0.0.1:{backend_port}
pfc.ram 1g
xrd.port {port}
""" + _TLS + _TOKEN_AUTHZ + """
xrd.protocol XrdHttp:{http_port} libXrdHttp.so
http.header2cgi Authorization authz
"""

SCITOKENS_CFG = """
[Global]
audience = {audience}
onmissing = passthrough

[Issuer casa]
issuer = {issuer}
base_path = /
default_user = xrootd
"""


@dataclass
class XrootdServer:
    name: str
    port: int
    http_port: int | None
    proc: subprocess.Popen
    log: Path

    @property
    def root_url(self) -> str:
        return f"roots://127.0.0.1:{self.port}/"

    @property
    def https_url(self) -> str:
        return f"https://127.0.0.1:{self.http_port}"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def prepare_workdir(work: Path, *, pki, issuer_url: str, macaroon_secret: bytes) -> None:
    """Host cert, CA dir, namespace with a test file, SciTokens and macaroon config, owned by xrootd."""
    cert, key = pki.server_cert()
    (work / "hostcert.pem").write_bytes(cert)
    (work / "hostkey.pem").write_bytes(key)
    (work / "hostkey.pem").chmod(0o400)
    pki.write_cert_dir(work / "certs")
    pki.bundle_with_system_cas(work / "ca-bundle.crt")
    data = work / "ns" / TEST_FILE.lstrip("/")
    data.parent.mkdir(parents=True, exist_ok=True)
    data.write_bytes(TEST_BYTES)
    (work / "ns" / "store" / "user").mkdir(parents=True, exist_ok=True)
    (work / "cache-ns").mkdir(exist_ok=True)
    (work / "authdb").write_text("")  # no static grants: only tokens authorize
    (work / "scitokens.cfg").write_text(SCITOKENS_CFG.format(audience=AUDIENCE, issuer=issuer_url))
    (work / "macaroon-secret").write_bytes(macaroon_secret)
    (work / "macaroon-secret").chmod(0o400)
    (work / "xdg-cache").mkdir(exist_ok=True)
    shutil.chown(work, "xrootd", "xrootd")
    for p in work.rglob("*"):
        shutil.chown(p, "xrootd", "xrootd")


def start_server(work: Path, name: str, template: str, **fields) -> XrootdServer:
    port = free_port()
    http_port = free_port() if "{http_port}" in template else None
    cfg = work / f"{name}.cfg"
    cfg.write_text(template.format(work=work, name=name, port=port, http_port=http_port, export=EXPORT,
                                   site=SITE_NAME, **fields))
    log = work / f"{name}.log"  # xrootd's -n inserts the name: the file ends up in work/<name>/
    bundle = work / "ca-bundle.crt"
    # private mount namespace: our CA bundle replaces the system one for this process only
    script = ('mount --bind "$1" /etc/ssl/certs/ca-certificates.crt || exit 99; shift; exec "$@"')
    env = dict(os.environ, XDG_CACHE_HOME=str(work / "xdg-cache"), HOME=str(work))
    proc = subprocess.Popen(
        ["unshare", "-m", "sh", "-c", script, "sh", str(bundle),
         "xrootd", "-R", "xrootd", "-c", str(cfg), "-l", str(log), "-n", name],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    server = XrootdServer(name, port, http_port, proc, work / name / log.name)
    try:
        wait_for_port(port, proc=proc, timeout=20)
        if http_port:
            wait_for_port(http_port, proc=proc, timeout=20)
    except Exception as e:
        stop_process(proc)
        raise RuntimeError(f"xrootd {name} did not start: {e}\n{server.log_text()[-3000:]}") from None
    return server


def stop_server(server: XrootdServer) -> None:
    stop_process(server.proc)
