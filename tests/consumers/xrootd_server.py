"""A real XRootD 5.5 site for the XCache credential tests, all on 127.0.0.1.

* a throw-away CA and a host certificate (``tests.pki``), hashed into an ``X509_CERT_DIR``;
* an HTTPS server publishing the minter's own issuer documents (``tests.issuer_server``);
* an ORIGIN: SciTokens (issuer ``base_path`` /store) and macaroons, over ``roots://`` (ztn) and https;
* an XCACHE (XrdPss + XrdPfc) in front of that origin, enforcing SciTokens itself and reading from the
  origin with its own service token, as a production cache does.

scitokens-cpp fetches issuer keys over https trusting only the compiled-in
/etc/ssl/certs/ca-certificates.crt, so each xrootd runs in a private mount namespace (``unshare -m``) where
a bundle with our CA is bind-mounted over that file: nothing outside the process sees it.
"""

from __future__ import annotations

import base64
import datetime
import glob
import http.client
import os
import pwd
import re
import shutil
import ssl
import subprocess
import tempfile
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from casa_hub.credentials import xcache
from casa_hub.credentials.issuer import IssuerKey
from casa_hub.minter import CasaMinter
from tests.issuer_server import IssuerServer, issuer_documents
from tests.pki import TestPKI
from tests.support import free_port, make_minter, stop_process, wait_for_port

SITE_NAME = "CASA_XRD_TEST"  # all.sitename == the macaroon location
AUDIENCE = "https://xcache.casa.test"
BASE_PATH = "/store"  # token scope paths are relative to it
TEST_FILE = "/store/data/run1.root"
TEST_BYTES = b"casa-hub xrootd test payload\n" * 512
CACHE_FILE = "/store/data/run2.root"  # read through the cache by one test only: its first read is a miss
CACHE_BYTES = b"casa-hub xcache miss payload\n" * 512
SERVICE_SUBJECT = "xcache-service"
HOUR = datetime.timedelta(hours=1)
XRD_LIBS = (
    "libXrdAccSciTokens-5.so",
    "libXrdMacaroons-5.so",
    "libXrdPss-5.so",
    "libXrdPfc-5.so",
    "libXrdSecztn-5.so",
    "libXrdHttp-5.so",
)

# TLS is needed by ztn and https; tokens (ztn or the http Authorization header) are the only grants:
# the authdb is empty, so a request without a valid token falls through to "deny".
_COMMON = """
all.role server
all.export /store
all.sitename {site}
all.adminpath {work}/admin-{name}
all.pidpath {work}/run-{name}
xrd.port {port}
xrd.tls {work}/hostcert.pem {work}/hostkey.pem
xrd.tlsca certdir {work}/certs
xrootd.tls capable all
xrootd.seclib libXrdSec.so
sec.protocol ztn
sec.protocol unix
sec.protbind * ztn unix
ofs.authorize 1
acc.authdb {work}/authdb
acc.audit deny grant
ofs.authlib ++ libXrdAccSciTokens.so config={work}/scitokens.cfg
scitokens.trace all
xrd.protocol XrdHttp:{http_port} libXrdHttp.so
http.header2cgi Authorization authz
"""

ORIGIN_CFG = (
    _COMMON
    + """
oss.localroot {work}/origin-ns
ofs.authlib ++ libXrdMacaroons.so
macaroons.secretkey {work}/macaroon-secret
macaroons.trace all
http.exthandler xrdmacaroons libXrdMacaroons.so
"""
)

CACHE_CFG = (
    _COMMON
    + """
oss.localroot {work}/cache-ns
ofs.osslib libXrdPss.so
pss.cachelib libXrdPfc.so
pss.origin 127.0.0.1:{origin_port}
pfc.ram 1g  # the minimum XrdPfc accepts (a cap, not an allocation)
"""
)

SCITOKENS_CFG = """
[Global]
audience = {audience}
onmissing = passthrough

[Issuer casa]
issuer = {issuer}
base_path = {base_path}
default_user = xrootd
"""


@dataclass
class XrootdServer:
    name: str
    port: int
    http_port: int
    proc: subprocess.Popen | None  # None until start()
    log: Path
    command: list[str] = field(default_factory=list)  # how it was started (for restart())
    env: dict[str, str] = field(default_factory=dict)

    @property
    def root_url(self) -> str:
        return f"roots://127.0.0.1:{self.port}/"

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)

    def start(self, timeout: float = 20) -> None:
        """(Re)start the server with its original command, configuration and ports; bounded wait until it
        listens on both. A restarted xrootd appends to the same log."""
        assert self.proc is None or self.proc.poll() is not None, f"xrootd {self.name} is still running"
        self.proc = subprocess.Popen(
            self.command,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_for_port(self.port, proc=self.proc, timeout=timeout)
            wait_for_port(self.http_port, proc=self.proc, timeout=timeout)
        except Exception as e:
            stop_process(self.proc)
            tail = self.log_since(max(0, self.log_size() - 3000)) if self.log.exists() else "(no log)"
            raise RuntimeError(f"xrootd {self.name} did not start: {e}\n{tail}") from None

    def restart(self, timeout: float = 20) -> float:
        """Stop (SIGTERM, as a service manager would) and start again on the same ports; the seconds it took."""
        t0 = time.monotonic()
        self.stop()
        self.start(timeout)
        return time.monotonic() - t0

    def log_size(self) -> int:
        return self.log.stat().st_size if self.log.exists() else 0

    def log_since(self, offset: int) -> str:
        with self.log.open("rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")

    def wait_for_log(self, pattern: str, since: int, timeout: float = 5.0) -> str:
        """The log written since ``since``, once it matches ``pattern`` (or the timeout passed).

        xrootd writes a request's authorization lines before it answers, so this rarely waits; the
        bound only guards against a slow disk."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.log_since(since)
            if re.search(pattern, text) or time.monotonic() > deadline:
                return text
            time.sleep(0.05)


@dataclass
class Site:
    minter: CasaMinter
    pki: TestPKI
    work: Path
    issuer_url: str
    origin: XrootdServer
    cache: XrootdServer
    client_dir: Path
    ssl: ssl.SSLContext = field(init=False)
    issuer: IssuerServer | None = None  # the https server publishing the issuer documents

    def __post_init__(self):
        self.ssl = ssl.create_default_context(cadata=self.pki.ca_pem.decode())

    @property
    def macaroon_secret(self) -> bytes:
        return base64.b64decode(Path(self.minter.kind("macaroon").secret_file).read_bytes())

    def token(self, key: IssuerKey | None = None, **overrides) -> bytes:
        """A WLCG token from the hub's pure functions; ``overrides`` replace single claims inputs."""
        return sign_token(key or self.minter.issuer_keys[0], **{"issuer": self.issuer_url, **overrides})

    def macaroon(
        self, *, secret: bytes | None = None, path: str = "/store", now: datetime.datetime | None = None, lifetime=HOUR
    ) -> bytes:
        mac, _ = xcache.mint_macaroon(
            secret=self.macaroon_secret if secret is None else secret,
            location=SITE_NAME,
            user="alice",
            path=path,
            now=now or _now(),
            lifetime=lifetime,
        )
        return mac

    def https(
        self, server: XrootdServer, method: str, path: str, token: bytes | None = None, body: bytes | None = None
    ) -> tuple[int, bytes]:
        conn = http.client.HTTPSConnection("127.0.0.1", server.http_port, context=self.ssl, timeout=20)
        headers = {"Authorization": f"Bearer {token.decode().strip()}"} if token is not None else {}
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def xrdcp(self, src: str, dest: str, token: bytes | None) -> subprocess.CompletedProcess:
        """The real xrootd client; the token goes through BEARER_TOKEN_FILE (ztn), as in a user's session."""
        env = _clean_env(
            X509_CERT_DIR=str(self.work / "certs"),
            XRD_CONNECTIONRETRY="1",
            XRD_REQUESTTIMEOUT="20",
            XRD_STREAMERRORWINDOW="0",
            XDG_RUNTIME_DIR=str(self.client_dir),
        )  # ztn also looks for $XDG_RUNTIME_DIR/bt_u<uid>
        if token is not None:
            fd, name = tempfile.mkstemp(dir=self.client_dir, prefix="token-")  # 0600 and ours, as ztn insists
            with os.fdopen(fd, "wb") as f:
                f.write(token)
            env["BEARER_TOKEN_FILE"] = name
        return subprocess.run(
            ["xrdcp", "-f", "-s", "-p", src, dest], env=env, capture_output=True, text=True, timeout=60
        )


def _clean_env(**extra: str) -> dict[str, str]:
    """Our environment without credentials or client settings that would leak into a server or client."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BEARER_TOKEN", "XRD_", "X509_"))}
    env.update(extra)
    return env


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def sign_token(
    key: IssuerKey,
    *,
    issuer: str,
    subject: str = "alice",
    scopes=("storage.read:/",),
    audience: str = AUDIENCE,
    now: datetime.datetime | None = None,
    lifetime=HOUR,
) -> bytes:
    claims = xcache.wlcg_token_claims(
        issuer=issuer, subject=subject, scopes=list(scopes), audience=audience, now=now or _now(), lifetime=lifetime
    )
    return key.sign(claims).encode() + b"\n"


def have_xrootd() -> bool:
    """The binaries, plugins and service user this site needs (Debian: xrootd-{server,client,*-plugins})."""
    try:
        pwd.getpwnam("xrootd")
    except KeyError:
        return False
    tools = all(shutil.which(t) for t in ("xrootd", "xrdcp", "unshare", "openssl"))
    return tools and all(glob.glob(f"/usr/lib*/{lib}") + glob.glob(f"/usr/lib/*/{lib}") for lib in XRD_LIBS)


def _prepare_workdir(work: Path, *, pki: TestPKI, minter, issuer_url: str) -> None:
    """Certificates, namespaces, SciTokens config and secrets, all owned by the xrootd user."""
    cert, key = pki.server_cert()
    (work / "hostcert.pem").write_bytes(cert)
    (work / "hostkey.pem").write_bytes(key)
    (work / "hostkey.pem").chmod(0o400)
    pki.write_cert_dir(work / "certs")
    pki.bundle_with_system_cas(work / "ca-bundle.crt")
    data = work / "origin-ns" / TEST_FILE.lstrip("/")
    data.parent.mkdir(parents=True)
    data.write_bytes(TEST_BYTES)
    data.with_name(Path(CACHE_FILE).name).write_bytes(CACHE_BYTES)
    (work / "origin-ns/store/user").mkdir()
    (work / "cache-ns").mkdir()
    (work / "authdb").write_text("")  # no static grants
    (work / "scitokens.cfg").write_text(SCITOKENS_CFG.format(audience=AUDIENCE, issuer=issuer_url, base_path=BASE_PATH))
    shutil.copyfile(minter.kind("macaroon").secret_file, work / "macaroon-secret")
    (work / "macaroon-secret").chmod(0o400)
    # the cache's own credential towards the origin (ztn reads it from BEARER_TOKEN_FILE)
    (work / "cache.token").write_bytes(
        sign_token(minter.issuer_keys[0], issuer=issuer_url, subject=SERVICE_SUBJECT, lifetime=2 * HOUR)
    )
    (work / "cache.token").chmod(0o600)
    (work / "xdg-cache").mkdir()  # fresh scitokens key cache per run
    for p in (work, *work.rglob("*")):
        shutil.chown(p, "xrootd", "xrootd")


def _start_xrootd(work: Path, name: str, template: str, env: dict[str, str], **fields) -> XrootdServer:
    port, http_port = free_port(), free_port()
    cfg = work / f"{name}.cfg"
    cfg.write_text(template.format(work=work, name=name, port=port, http_port=http_port, site=SITE_NAME, **fields))
    # our CA bundle replaces the system one for this process tree only
    script = 'mount --bind "$1" /etc/ssl/certs/ca-certificates.crt || exit 99; shift; exec "$@"'
    command = [
        "unshare",
        "-m",
        "sh",
        "-c",
        script,
        "sh",
        str(work / "ca-bundle.crt"),
        "xrootd",
        "-R",
        "xrootd",
        "-c",
        str(cfg),
        "-l",
        str(work / "xrootd.log"),
        "-n",
        name,
    ]
    server = XrootdServer(name, port, http_port, None, work / name / "xrootd.log", command, env)  # -n: log in <name>/
    server.start()
    return server


def _server_env(work: Path, **extra: str) -> dict[str, str]:
    return _clean_env(
        XDG_CACHE_HOME=str(work / "xdg-cache"), HOME=str(work), X509_CERT_DIR=str(work / "certs"), **extra
    )


@contextmanager
def xrootd_site(tmp: Path):
    """Issuer + origin + cache, stopped (and the work directory removed) on exit."""
    # xrootd drops to the xrootd user: its files cannot live below pytest's 0700 temp directories
    work = Path(tempfile.mkdtemp(prefix="casa-xrootd-"))
    work.chmod(0o755)
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, work, ignore_errors=True)
        pki = TestPKI.create()
        cert, key = pki.server_cert()
        (tmp / "issuer.crt").write_bytes(cert)
        (tmp / "issuer.key").write_bytes(key)
        issuer = stack.enter_context(IssuerServer(tmp / "issuer.crt", tmp / "issuer.key"))
        issuer_url = f"https://127.0.0.1:{issuer.port}/hub/casa-issuer"  # the hub's path layout
        # scopes are relative to the site's base_path (/store): "storage.read:/store" would mean /store/store
        minter = make_minter(
            tmp / "keys",
            CasaMinter={"issuer_url": issuer_url},
            XCacheToken={"audience": [AUDIENCE], "scopes": ["storage.read:/"]},
            XCacheMacaroon={"location": SITE_NAME},
        )
        issuer.documents.update(issuer_documents(minter, issuer_url))
        _prepare_workdir(work, pki=pki, minter=minter, issuer_url=issuer_url)
        origin = _start_xrootd(work, "origin", ORIGIN_CFG, _server_env(work))
        stack.callback(origin.stop)  # whichever process is current (the server may have been restarted)
        cache = _start_xrootd(
            work,
            "cache",
            CACHE_CFG,
            _server_env(work, BEARER_TOKEN_FILE=str(work / "cache.token")),
            origin_port=origin.port,
        )
        stack.callback(cache.stop)
        client_dir = tmp / "client"
        client_dir.mkdir()
        yield Site(minter, pki, work, issuer_url, origin, cache, client_dir, issuer=issuer)
