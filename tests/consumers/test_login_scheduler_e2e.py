"""End to end: the login scheduler a user's server starts, used as Coffea-Casa users use it and from a laptop.

One scenario, real everything, in order:

1. alice's server: a real ``jupyter server`` with the Casa extension and dask-labextension, her minted credentials
   mounted (``CASA_CREDENTIALS_DIR``), ``CasaClusterSettings.login_cluster`` set and the scheduler on
   ``127.0.0.1:8786`` -- literally 8786, the port Coffea-Casa's notebooks name -- and ``CASA_DASK_ADDRESS`` set
   as the hub sets it (``tls://<route host>:<router port>``).
2. "Casa (login)" appears in dask-labextension's own ``GET dask/clusters``.
3. In a kernel of that server, the Coffea-Casa cell runs unchanged (``Client("tls://localhost:8786")``), then a
   computation; a bare ``Client()`` reaches the same scheduler.
4. The laptop: the zip from ``GET casa/client-bundle`` (over HTTP, with the server's token), unzipped in an empty
   home; a process with a bare environment (no ``CASA_*``/``DASK_*``) runs the README's lines and the same
   computation through a real HAProxy configured from the hub's own route (``casa_hub.objects.make_dask_route``,
   TLS passthrough by SNI) and gets the same result from the same scheduler (its id, its workers). The route host
   resolves to 127.0.0.1 only for the laptop (``unshare -m`` with a private ``/etc/hosts``, as in
   ``test_sni_router.py``).
5. Refusals: bob's bundle goes nowhere on his own name (no server, no route) and is refused at alice's scheduler
   on her route, the reason in her server's log; an unknown SNI name reaches nothing; alice's kernel computes on.
6. Stopping the server (SIGTERM to the server alone, as the hub stops it) closes the login cluster: port 8786 is
   closed and its worker processes are gone.

A transcript of both runs is printed, and written to ``$CASA_E2E_TRANSCRIPT`` when set (else the module's tmp dir).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from casa_hub import objects
from casa_hub_ext.bundle import MountedBundle
from casa_hub_ext.client_bundle import build_client_bundle
from tests.consumers import haproxy, laptop
from tests.ext.jupyter_proc import JupyterProc, Kernel, start_jupyter
from tests.support import make_minter, need, stop_process, wait_until, write_bundle

LOGIN_PORT = 8786  # Coffea-Casa's Client("tls://localhost:8786"): fixed, so the notebooks run unchanged
NAMESPACE = "casa"
DOMAIN = "casa.test"
ENTRY_POINT = "dask"
ROUTE_HOST = "dask-{user}." + DOMAIN  # CasaSpawner.casa_dask_route_host_template
UNKNOWN_HOST = "nobody." + DOMAIN
TIMEOUT = 60
REFUSED_WITHIN = 6  # a laptop Client's timeout where a refusal is expected

# the notebook, as written for Coffea-Casa (cell 1 verbatim from its docs); cell 2 is the computation
CONNECT_CELL = 'from dask.distributed import Client\nclient = Client("tls://localhost:8786")'
COMPUTE_CELL = textwrap.dedent(
    """\
    import dask.array as da
    print("sum of squares below 1000:", int((da.arange(1000, chunks=100) ** 2).sum().compute()))
    info = client.scheduler_info()
    print("scheduler:", info["id"], "at", info["address"])
    print("workers:", sorted(str(w["name"]) for w in info["workers"].values()))"""
)
EXPECTED_SUM = sum(i * i for i in range(1000))
BARE_CELL = (
    "import os\nfrom dask.distributed import Client\n"
    "print('DASK_SCHEDULER_ADDRESS =', os.environ['DASK_SCHEDULER_ADDRESS'])\n"
    "with Client() as c:\n"
    "    print('sum([1, 2]) =', c.submit(sum, [1, 2]).result(), 'on', c.scheduler_info()['id'])"
)
# the laptop's computation: the same cell, with Client() reading the bundle's dask.yaml (and its client's id)
LAPTOP_CELL = (
    "from dask.distributed import Client\nclient = Client()\n" + COMPUTE_CELL + '\nprint("client:", client.id)'
)
# in the kernel: the clients the scheduler has registered (its "add-client" events), as JSON
CLIENTS_SEEN = (
    "import json\nprint(json.dumps(sorted({e['client'] for _, e in client.get_events('all') "
    "if isinstance(e, dict) and e.get('action') == 'add-client'})))"
)

PROBE = laptop.client_probe(
    """
def result(client):
    return {"scheduler": client.scheduler_info()["id"]}
"""
)


@dataclass
class Scenario:
    work: Path
    server: JupyterProc
    router: haproxy.Router
    hosts_file: Path
    minter: object
    address: str  # CASA_DASK_ADDRESS: alice's route
    alice_dir: Path  # alice's mounted credentials (CASA_CREDENTIALS_DIR)
    transcript: list = field(default_factory=list)
    seen: dict = field(default_factory=dict)  # what the kernel saw, compared with what the laptop sees

    def server_log(self) -> str:
        return self.server.log.read_text(errors="replace")

    def api(self, method: str, path: str, **kw) -> requests.Response:
        return requests.request(method, self.server.url + path, headers=self.server.headers(), timeout=30, **kw)

    def note(self, text: str = "") -> None:
        self.transcript.append(text)


def _port_free(port: int) -> bool:
    """Nothing listens on 127.0.0.1:``port`` (nor on 0.0.0.0:``port``, which would conflict too)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as tornado: TIME_WAIT leftovers are no conflict
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _alice_route() -> tuple[dict, tuple]:
    """The Service and route the spawner creates for alice (same builders, same arguments), and the endpoint
    key of the Service's port (Kubernetes maps it to the pod: here, the login scheduler on 127.0.0.1:8786)."""
    name = "jupyter-alice-dask"
    labels = {"app": "jupyterhub", "component": "singleuser-server"}
    service = objects.make_dask_scheduler_service(name, NAMESPACE, {"casa-hub/server": name}, LOGIN_PORT, [], labels)
    route = objects.make_dask_route(
        name, NAMESPACE, ROUTE_HOST.format(user="alice"), name, LOGIN_PORT, [], labels, ENTRY_POINT
    )
    (port,) = [p for p in service.spec.ports if p.name == "dask-scheduler"]
    return route, (service.metadata.namespace, service.metadata.name, port.port)


def _login_model(sc_server: JupyterProc):
    r = requests.get(sc_server.url + "dask/clusters", headers=sc_server.headers(), timeout=10)
    return next((m for m in r.json() if m["name"] == "Casa (login)"), None) if r.ok else None


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    need(haproxy.haproxy_binary() is not None, "HAProxy (Debian package haproxy)")
    laptop.need_private_hosts()
    need(_port_free(LOGIN_PORT), f"a free 127.0.0.1:{LOGIN_PORT} (the login scheduler's fixed port)")
    work = tmp_path_factory.mktemp("login-e2e")
    minter = make_minter(work / "keys")
    alice_dir = write_bundle(minter.mint("alice"), work / "alice-pod" / "casa")
    started = time.monotonic()

    # the router first: its port goes into the address the hub gives the pod
    route, endpoint = _alice_route()
    router = haproxy.start_router(
        work / "haproxy",
        lambda port: haproxy.haproxy_config(
            [route], {endpoint: ("127.0.0.1", LOGIN_PORT)}, entry_point=ENTRY_POINT, bind=("127.0.0.1", port)
        ),
    )
    server = sc = None
    try:
        address = f"tls://{ROUTE_HOST.format(user='alice')}:{router.port}"
        (work / "jupyter" / "config").mkdir(parents=True)
        (work / "jupyter" / "config" / "jupyter_server_config.json").write_text(
            json.dumps(
                {
                    "CasaClusterSettings": {
                        "login_cluster": {"backend": "local", "workers": 1},
                        "scheduler_host": "127.0.0.1",
                        "scheduler_port": LOGIN_PORT,
                    }
                }
            )
        )
        env = {"CASA_CREDENTIALS_DIR": str(alice_dir), "CASA_DASK_BACKENDS": "local", "CASA_DASK_ADDRESS": address}
        # everything Dask and Casa the server and its kernels have comes from the extension and the pod's env
        unset = [k for k in os.environ if k.startswith(("DASK_", "CASA_")) and k not in env]
        server = start_jupyter(work / "jupyter", env, unset=unset)
        hosts_file = work / "laptop-hosts"
        names = " ".join(ROUTE_HOST.format(user=u) for u in ("alice", "bob"))
        hosts_file.write_text(f"127.0.0.1 localhost\n127.0.0.1 {names} {UNKNOWN_HOST}\n")
        sc = Scenario(work, server, router, hosts_file, minter, address, alice_dir)
        sc.note(f"({router.version} and alice's Jupyter server up in {time.monotonic() - started:.1f} s)")
        yield sc
    finally:
        if sc is not None and len(sc.transcript) > 1:
            text = "\n".join(sc.transcript) + "\n"
            out = Path(os.environ.get("CASA_E2E_TRANSCRIPT") or work / "transcript.txt")
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(text)
            print(f"\n---- transcript ({out}) ----\n{text}")
        procs = [router.proc] + ([server.proc] if server else [])
        for proc in procs:
            stop_process(proc, timeout=30)
        if server is not None:  # the server's children (kernels, cluster workers) too, if any outlived it
            try:
                os.killpg(server.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        assert all(p.poll() is not None for p in procs)
        assert wait_until(lambda: _port_free(LOGIN_PORT), 30, f"port {LOGIN_PORT} released")


# ------------------------------------------------------------------ a kernel of the server
@pytest.fixture(scope="module")
def kernel(scenario):
    k = Kernel(scenario.server, timeout=TIMEOUT)
    yield k
    k.close()


def _parse(out: str) -> dict:
    m = re.search(r"sum of squares below 1000: (\d+)\nscheduler: (Scheduler-\S+) at (\S+)\nworkers: (\[.*\])", out)
    assert m, out
    return {"sum": int(m.group(1)), "id": m.group(2), "address": m.group(3), "workers": m.group(4)}


def _cell(code: str, out: str, n: int) -> list[str]:
    lines = [f"In [{n}]: " + code.splitlines()[0]] + ["        " + line for line in code.splitlines()[1:]]
    out_lines = out.strip().splitlines()
    return lines + [f"Out[{n}]: " + line for line in out_lines[:1]] + ["        " + line for line in out_lines[1:]]


def clients_seen(kernel: Kernel) -> set[str]:
    """The client ids the login scheduler has registered, asked from the kernel."""
    return set(json.loads(kernel.run(CLIENTS_SEEN).strip().splitlines()[-1]))


# ------------------------------------------------------------------ the laptop
def laptop_run(sc: Scenario, home: Path, script: str, extra_env: dict | None = None, timeout: float = TIMEOUT):
    return laptop.run(sc.hosts_file, home, script, extra_env, timeout)


def laptop_unpack(sc: Scenario, name: str, content: bytes) -> Path:
    return laptop.unpack(sc.work / "laptops" / name, content)


def probe(sc: Scenario, home: Path, label: str, address: str | None = None, env: dict | None = None) -> dict:
    script = f'export DASK_CONFIG="$PWD/casa-dask-{label}"\npython -c "$PROBE" {REFUSED_WITHIN} {address or ""}'
    result = laptop_run(sc, home, script, {"PROBE": PROBE, **(env or {})}, timeout=REFUSED_WITHIN + 40)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


ALICE_BACKEND = f"{NAMESPACE}_jupyter-alice-dask_0/"  # HAProxy's backend/server for alice's route
NO_BACKEND = f"{ENTRY_POINT}/<NOSRV>"  # no route named the SNI: the frontend closed the connection


def router_lines(sc: Scenario, since: int, target: str, count: int = 1) -> list[str]:
    """HAProxy's log lines after offset ``since`` for connections to ``target`` (``ALICE_BACKEND``,
    ``NO_BACKEND``); written when the connections close, so a bounded wait."""

    def found():
        lines = [ln for ln in sc.router.log_text()[since:].splitlines() if f" {ENTRY_POINT} {target}" in ln]
        return lines if len(lines) >= count else None

    return wait_until(found, 15, f"router log lines for {target}", 0.05)


def wait_log(sc: Scenario, pattern: str, since: int, what: str) -> str:
    """The server log's first line after offset ``since`` matching ``pattern`` (bounded wait)."""

    def found():
        m = re.search(rf"^.*(?:{pattern}).*$", sc.server_log()[since:], re.M | re.I)
        return m.group(0) if m else None

    return wait_until(found, 15, what, 0.05)


def _handshake_failures(sc: Scenario, since: int) -> list[str]:
    return [ln for ln in sc.server_log()[since:].splitlines() if "TLS handshake failed" in ln]


# ------------------------------------------------------------------ 2. the login cluster is dask-labextension's
def test_login_cluster_is_listed_by_dask_labextension(scenario):
    try:
        model = wait_until(lambda: _login_model(scenario.server), TIMEOUT, "Casa (login) in GET dask/clusters", 0.5)
    except TimeoutError:
        pytest.fail(f"no login cluster after {TIMEOUT} s; server log:\n{scenario.server_log()[-4000:]}")
    assert model["scheduler_address"] == f"tls://127.0.0.1:{LOGIN_PORT}", model
    assert re.search(rf"casa: login cluster \S+ at tls://127\.0\.0\.1:{LOGIN_PORT}", scenario.server_log())
    scenario.note(f"GET dask/clusters: 'Casa (login)' at {model['scheduler_address']}")


# ------------------------------------------------------------------ 3. the Coffea-Casa notebook, unchanged
def test_coffea_casa_cell_runs_unchanged_in_a_kernel(scenario, kernel):
    out1 = kernel.run(CONNECT_CELL)
    out2 = kernel.run(COMPUTE_CELL)
    seen = _parse(out2)
    assert seen["sum"] == EXPECTED_SUM
    assert seen["address"] == f"tls://127.0.0.1:{LOGIN_PORT}"
    assert seen["workers"] != "[]", out2
    out3 = kernel.run(BARE_CELL)
    assert f"DASK_SCHEDULER_ADDRESS = tls://localhost:{LOGIN_PORT}" in out3, out3
    assert f"sum([1, 2]) = 3 on {seen['id']}" in out3, out3  # a bare Client() reaches the same scheduler
    scenario.seen.update(seen)
    scenario.note("")
    scenario.note("== At login: a notebook written for Coffea-Casa, unchanged, in a kernel of alice's server ==")
    for n, (code, out) in enumerate(((CONNECT_CELL, out1), (COMPUTE_CELL, out2), (BARE_CELL, out3)), 1):
        scenario.transcript += _cell(code, out, n)


# ------------------------------------------------------------------ 4. the same computation from a laptop
def test_laptop_with_only_the_bundle_reaches_the_same_scheduler_through_the_router(scenario, kernel):
    assert scenario.seen, "the kernel's run comes first"
    r = scenario.api("GET", "casa/client-bundle")
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"] == "application/zip" and r.headers["Cache-Control"] == "no-store"
    assert r.headers["Content-Disposition"] == 'attachment; filename="casa-dask-alice.zip"'
    home = laptop_unpack(scenario, "alice", r.content)
    top = home / "casa-dask-alice"
    assert [p.name for p in home.iterdir()] == ["casa-dask-alice"]
    assert sorted(p.name for p in top.iterdir()) == ["README.txt", "ca.pem", "client.crt", "client.key", "dask.yaml"]
    assert f"scheduler-address: {scenario.address}" in (top / "dask.yaml").read_text()
    readme = (top / "README.txt").read_text()
    lines = [line.strip() for line in readme.splitlines() if re.match(r"    \S", line)]
    assert len(lines) == 3 and lines[0].startswith("pip install") and lines[1].startswith("export DASK_CONFIG=")
    router_since, log_since = len(scenario.router.log_text()), len(scenario.server_log())

    # the README's lines as written (pip is done: the laptop's python has this distributed), then the same cell
    script = "\n".join(lines[1:]) + "\npython - <<'EOF'\n" + LAPTOP_CELL + "\nEOF\n"
    started = time.monotonic()
    result = laptop_run(scenario, home, script)
    took = time.monotonic() - started
    assert result.returncode == 0, result.stderr[-3000:]
    readme_out, *cell_out, client_line = result.stdout.strip().splitlines()
    assert readme_out == "3", result.stdout
    seen = _parse("\n".join(cell_out))
    assert seen == scenario.seen  # same sum, same scheduler (its id), same workers
    # and the scheduler the kernel uses registered the laptop's client
    laptop_client = client_line.removeprefix("client: ")
    assert client_line.startswith("client: Client-") and laptop_client in clients_seen(kernel), client_line
    # both connections went through alice's route to the login scheduler, and were accepted there
    routed = router_lines(scenario, router_since, ALICE_BACKEND, 2)
    assert NO_BACKEND not in scenario.router.log_text()[router_since:]
    assert not _handshake_failures(scenario, log_since), scenario.server_log()[log_since:]

    scenario.note("")
    scenario.note(
        "== From a laptop: only the unzipped casa-dask-alice.zip (GET casa/client-bundle), a bare environment, "
        f"through HAProxy by SNI ({scenario.address}) =="
    )
    scenario.transcript += [f"$ {line}" for line in lines]
    scenario.note("  (pip: the laptop already has this distributed)")
    scenario.note(readme_out)
    scenario.note("$ python - <<'EOF'   # the same cell, with Client() reading dask.yaml")
    scenario.transcript += [f"  {line}" for line in LAPTOP_CELL.splitlines()] + ["EOF"] + cell_out + [client_line]
    scenario.note(f"  ({took:.1f} s; router: {len(routed)} connections to backend casa_jupyter-alice-dask_0)")
    scenario.note(
        f"same scheduler as the kernel's: {seen['id'] == scenario.seen['id']}, same workers, same result; "
        f"the kernel's client.get_events('all') lists {laptop_client} (add-client)"
    )


# ------------------------------------------------------------------ 5. refusals
def test_bobs_bundle_goes_nowhere_and_is_refused_at_alices_scheduler(scenario, kernel):
    bob_dir = write_bundle(scenario.minter.mint("bob"), scenario.work / "bob-pod" / "casa")
    bob_address = f"tls://{ROUTE_HOST.format(user='bob')}:{scenario.router.port}"
    # what bob's own server hands him (the handler's builder): his name, his CA, his certificate
    content = build_client_bundle(MountedBundle.from_directory(bob_dir), bob_address).content
    home = laptop_unpack(scenario, "bob", content)
    scenario.note("")
    scenario.note("== Refusals ==")

    clients_before = clients_seen(kernel)
    # his own name: bob has no server, so no route: the router closes the connection, nobody sees it
    since, log_since = len(scenario.router.log_text()), len(scenario.server_log())
    out = probe(scenario, home, "bob")
    assert not out["ok"], out
    router_lines(scenario, since, NO_BACKEND)
    assert "jupyter-alice-dask" not in scenario.router.log_text()[since:]
    scenario.note(f"bob's bundle, his own name (no server, no route): client: {out['error'][:100]}; router: <NOSRV>")

    # alice's route: bob's client does not trust alice's scheduler (another CA); her scheduler logs why
    alice_route = scenario.address
    out = probe(scenario, home, "bob", address=alice_route)
    assert not out["ok"] and "certificate verify failed" in out["error"], out
    reason = wait_log(scenario, r"TLS handshake failed.*unknown.ca", log_since, "alice's scheduler log")
    assert "TLSV1_ALERT_UNKNOWN_CA" in reason, reason
    scenario.note(f"bob's bundle at alice's route: client: certificate verify failed; alice's server log: {reason}")

    # with alice's (public) CA certificate, alice's scheduler itself refuses bob's client certificate
    since = len(scenario.server_log())
    shutil.copy(scenario.alice_dir / "dask" / "ca.pem", home / "alice-ca.pem")
    env = {"DASK_DISTRIBUTED__COMM__TLS__CA_FILE": str(home / "alice-ca.pem")}
    out = probe(scenario, home, "bob", address=alice_route, env=env)
    assert not out["ok"], out
    reason = wait_log(scenario, r"TLS handshake failed.*certificate verify failed", since, "alice's scheduler log")
    assert "unable to get local issuer certificate" in reason, reason
    scenario.note(f"bob's bundle + alice's CA at alice's route: alice's server log: {reason}")
    assert clients_seen(kernel) == clients_before  # none of bob's tries became a client of alice's scheduler

    # alice's server is unaffected
    out = kernel.run("print('still', client.submit(sum, [1, 2, 3]).result())")
    assert out.strip() == "still 6", out


def test_an_unknown_name_reaches_nothing(scenario, kernel):
    d = scenario.alice_dir / "dask"
    clients_before = clients_seen(kernel)
    since, log_since = len(scenario.router.log_text()), len(scenario.server_log())
    # alice's complete, valid credentials: the name alone decides, and it names no route
    port, what = laptop.raw_tls(scenario.router.port, UNKNOWN_HOST, d / "ca.pem", d / "client.crt", d / "client.key")
    assert "EOF" in what.upper() or "RESET" in what.upper(), what
    assert [ln for ln in router_lines(scenario, since, NO_BACKEND) if ln.startswith(f"127.0.0.1:{port} ")]
    time.sleep(0.3)  # nothing may arrive late either
    assert not _handshake_failures(scenario, log_since)  # alice's scheduler never saw the connection
    assert clients_seen(kernel) == clients_before
    scenario.note(f"TLS with alice's valid certificate but SNI {UNKNOWN_HOST}: {what}; router: <NOSRV>")


# ------------------------------------------------------------------ 6. the login scheduler lives with the server
def test_stopping_the_server_stops_the_login_scheduler(scenario, kernel):
    import psutil

    assert not _port_free(LOGIN_PORT)  # (a bind test: a plain connection would make the scheduler log a failure)
    kernel.close()
    server = psutil.Process(scenario.server.proc.pid)
    children = [p for p in server.children(recursive=True) if p.is_running()]
    assert children, "the login cluster's worker processes"
    started = time.monotonic()
    os.kill(scenario.server.proc.pid, signal.SIGTERM)  # the server alone, as the hub's spawner stops it
    scenario.server.proc.wait(timeout=TIMEOUT)
    wait_until(lambda: _port_free(LOGIN_PORT), 15, f"port {LOGIN_PORT} closed")
    gone, alive = psutil.wait_procs(children, timeout=15)
    took = time.monotonic() - started
    assert not alive, [p.pid for p in alive]
    log = scenario.server_log()
    assert "casa: closed 1 Casa cluster(s)" in log, log[-3000:]
    assert "Traceback" not in log, log[-4000:]
    assert "BEGIN" not in log and "PRIVATE KEY" not in log  # no key material in the server's log
    scenario.note("")
    scenario.note(
        f"== SIGTERM to alice's server: exited, port {LOGIN_PORT} closed, {len(gone)} child process(es) gone, "
        f"in {took:.1f} s =="
    )
