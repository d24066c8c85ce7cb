"""``CasaCluster`` in a notebook: a real kernel of a real Jupyter server (token auth, dask-labextension loaded)
asks its server for Casa clusters, so dask-labextension's own list (the sidebar) holds them.

One server for the module (at most 4 workers per cluster, 2 clusters, no login cluster), one kernel.
"""

from __future__ import annotations

import json
import stat

import pytest

from casa_hub_ext.notebook import CasaServer, CasaServerError, NoCasaServer
from tests.ext.jupyter_proc import Kernel, clean_log, start_jupyter, stop_jupyter
from tests.support import free_port, wait_until

KERNEL_ENV = ["CASA_SERVER_URL", "CASA_SERVER_TOKEN_FILE", "JUPYTERHUB_API_TOKEN"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from tests.ext.conftest import write_bundle
    from tests.support import make_minter

    work = tmp_path_factory.mktemp("jupyter-nb")
    bundle_dir = write_bundle(make_minter(work / "keys").mint("alice"), work / "casa")
    (work / "config").mkdir()
    settings = {"max_workers": 4, "max_clusters": 2, "default_workers": 1}
    (work / "config" / "jupyter_server_config.json").write_text(json.dumps({"CasaClusterSettings": settings}))
    env = {"CASA_CREDENTIALS_DIR": str(bundle_dir), "CASA_GPU_COUNT": "0", "CASA_DASK_BACKENDS": "local"}
    # what the kernel knows of its server must come from the server extension, not from this test's environment
    unset = KERNEL_ENV + ["DASK_SCHEDULER_ADDRESS", "DASK_DISTRIBUTED__COMM__TLS__CA_FILE"]
    unset += ["DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT", "DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY"]
    proc = start_jupyter(work, env, unset=unset)
    proc.work = work
    try:
        yield proc
    finally:
        stop_jupyter(proc)
    log = clean_log(proc)
    assert proc.token not in log  # never logged
    assert not list((work / "runtime").glob("casa-server-*.token"))  # removed when the server stopped


@pytest.fixture(scope="module")
def kernel(server):
    k = Kernel(server)
    k.run("from casa_hub_ext import CasaCluster\nfrom casa_hub_ext.errors import OptionError, LimitError\n")
    yield k
    k.close()


def lab_clusters(server) -> dict:
    """dask-labextension's own list: what its sidebar shows."""
    return {m["id"]: m for m in server.api("GET", "dask/clusters").json()}


def value(out: str, key: str) -> str:
    return next(line.split(" ", 1)[1] for line in out.splitlines() if line.startswith(key + " "))


# ------------------------------------------------------------------------------------------ finding the server
def test_kernels_are_told_the_server_url_and_a_private_token_file_not_the_token(server, kernel):
    out = kernel.run(
        "import os, stat\n"
        "print('URL', os.environ['CASA_SERVER_URL'])\n"
        "path = os.environ['CASA_SERVER_TOKEN_FILE']\n"
        "print('FILE', path)\n"
        "print('MODE', oct(stat.S_IMODE(os.stat(path).st_mode)))\n"
        f"print('LEAK', any({server.token!r} in v for v in os.environ.values()))\n"
    )
    assert value(out, "URL") == server.url and value(out, "LEAK") == "False", out
    assert value(out, "MODE") == oct(stat.S_IRUSR | stat.S_IWUSR)
    assert open(value(out, "FILE")).read() == server.token


def test_outside_a_casa_server_the_error_says_so(monkeypatch):
    from casa_hub_ext import CasaCluster

    for name in KERNEL_ENV:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(NoCasaServer, match="no Casa server to ask: CASA_SERVER_URL is not set"):
        CasaCluster(workers=1)
    with pytest.raises(NoCasaServer, match="cannot read CASA_SERVER_TOKEN_FILE"):
        CasaServer.from_env({"CASA_SERVER_URL": "http://127.0.0.1:1/", "CASA_SERVER_TOKEN_FILE": "/nonexistent"})
    nobody = CasaServer(f"http://127.0.0.1:{free_port()}/", "secret-token")
    with pytest.raises(CasaServerError, match="your Jupyter server did not answer") as e:
        CasaCluster.list(server=nobody)
    assert "secret-token" not in str(e.value)


@pytest.mark.parametrize(
    "ip, base_url, certfile, sock, url",
    [
        ("0.0.0.0", "/user/alice/", "", "", "http://127.0.0.1:8888/user/alice/"),
        ("", "/", "", "", "http://127.0.0.1:8888/"),
        ("::", "/user/bob", "/c.pem", "", "https://[::1]:8888/user/bob/"),
        ("10.1.2.3", "/", "", "", "http://10.1.2.3:8888/"),
        ("127.0.0.1", "/", "", "/tmp/j.sock", None),
    ],
)
def test_the_local_url_kernels_are_given(ip, base_url, certfile, sock, url):
    from types import SimpleNamespace

    from casa_hub_ext.notebook import local_server_url

    app = SimpleNamespace(ip=ip, port=8888, base_url=base_url, certfile=certfile, sock=sock)
    assert local_server_url(app) == url


def test_a_jupyter_server_answering_without_casa_is_no_casa_server(server):
    wrong = CasaServer(server.url + "nothing-here/", server.token)
    with pytest.raises(NoCasaServer, match="is not found"):
        wrong.request("GET", "casa/clusters")
    with pytest.raises(CasaServerError, match=r"refused this kernel's credentials \(403\)"):
        CasaServer(server.url, "not-the-token").request("GET", "casa/clusters")


# ------------------------------------------------------------------------------------------ the flow
def test_bad_options_raise_the_servers_message_and_start_nothing(server, kernel):
    out = kernel.run(
        "try:\n"
        "    CasaCluster(backend='local', workers=9)\n"
        "except OptionError as e:\n"
        "    print('ERR', type(e).__name__, e.field, e)\n"
        "try:\n"
        "    CasaCluster(backend='htcondor')\n"
        "except OptionError as e:\n"
        "    print('ERR2', type(e).__name__, e.field, e)\n"
    )
    assert value(out, "ERR") == "OptionError workers workers=9 is outside the allowed range 0..4", out
    assert value(out, "ERR2") == "OptionError backend backend='htcondor': expected one of ['local']", out
    assert lab_clusters(server) == {} and server.api("GET", "casa/clusters").json() == []


def test_a_cluster_from_code_is_in_the_sidebar_computes_over_tls_scales_and_closes(server, kernel):
    out = kernel.run(
        "cluster = CasaCluster(backend='local', workers=1, name='from-code')\n"
        "print('ID', cluster.id)\nprint('ADDRESS', cluster.scheduler_address)\n"
        "print('DASHBOARD', cluster.dashboard_link)\nprint('REPR', repr(cluster))\n"
        "client = cluster.get_client()\n"
        "client.wait_for_workers(1, timeout=60)\n"
        "print('SUM', client.submit(sum, [1, 2, 39]).result(timeout=60))\n"
        "print('COMM', client.scheduler.address)\n"
        "print('CLIENT_DASHBOARD', client.dashboard_link)\n"
    )
    cid, address = value(out, "ID"), value(out, "ADDRESS")
    assert value(out, "SUM") == "42" and address.startswith("tls://127.0.0.1:"), out
    assert value(out, "COMM") == address  # the client's connection is TLS to that scheduler
    assert value(out, "DASHBOARD") == value(out, "CLIENT_DASHBOARD") == f"/dask/dashboard/{cid}/status"
    assert value(out, "REPR") == f"CasaCluster('from-code', local, {address!r}, workers=1, status=running)"

    # dask-labextension's own list (the sidebar) and its dashboard proxy serve it; Casa's list too
    listed = lab_clusters(server)
    assert listed[cid]["name"] == "from-code" and listed[cid]["scheduler_address"] == address
    assert server.api("GET", f"dask/dashboard/{cid}/individual-plots.json").status_code == 200
    (model,) = server.api("GET", "casa/clusters").json()
    assert model["id"] == cid and model["casa"]["workers"] == 1 and model["casa"]["name"] == "from-code"

    kernel.run("cluster.scale(2)\nclient.wait_for_workers(2, timeout=60)\n")
    wait_until(lambda: lab_clusters(server)[cid]["workers"] == 2, 60, "2 workers in the sidebar")
    out = kernel.run("cluster.adapt(minimum=0, maximum=3)\nprint('ADAPT', cluster.model['adapt'])\n")
    assert value(out, "ADAPT") == "{'minimum': 0, 'maximum': 3}", out
    assert lab_clusters(server)[cid]["adapt"] == {"minimum": 0, "maximum": 3}
    out = kernel.run(
        "try:\n    cluster.adapt(minimum=0, maximum=5)\nexcept OptionError as e:\n    print('ERR', e.field, e)\n"
    )
    assert value(out, "ERR").startswith("adapt.maximum adapt.maximum=5 is outside"), out
    assert lab_clusters(server)[cid]["adapt"] == {"minimum": 0, "maximum": 3}  # unchanged

    out = kernel.run("client.close()\ncluster.close()\nprint('STATUS', cluster.status.name)\ncluster.close()\n")
    assert value(out, "STATUS") == "closed" and cid not in lab_clusters(server)
    assert server.api("GET", "casa/clusters").json() == []


def test_clusters_from_the_ui_are_found_from_code_and_limits_are_the_servers(server, kernel):
    r = server.api("POST", "casa/clusters", json={"name": "from-ui", "workers": 0})
    assert r.status_code == 201, r.text
    cid = r.json()["id"]
    out = kernel.run(
        "print('LIST', [(c.id, c.name) for c in CasaCluster.list()])\n"
        f"ui = CasaCluster.from_id({cid!r})\n"
        "print('UI', ui.name, ui.scheduler_address)\n"
        f"again = await CasaCluster.from_id({cid!r}, asynchronous=True)\n"
        "print('ASYNC', again.scheduler_address == ui.scheduler_address)\n"
        "async with CasaCluster(workers=0, name='async', asynchronous=True) as ac:\n"
        "    print('AC', ac.id)\n"
        "    try:\n"
        "        CasaCluster(workers=0)\n"
        "    except LimitError as e:\n"
        "        print('LIMIT', e)\n"
        "print('AC_STATUS', ac.status.name)\n"
        "try:\n"
        "    CasaCluster.from_id('no-such-cluster')\n"
        "except Exception as e:\n"
        "    print('MISSING', type(e).__name__, e)\n"
    )
    assert value(out, "LIST") == f"[({cid!r}, 'from-ui')]", out
    assert value(out, "UI") == f"from-ui {r.json()['scheduler_address']}" and value(out, "ASYNC") == "True"
    assert "CasaClusterSettings.max_clusters = 2" in value(out, "LIMIT"), out
    assert value(out, "AC_STATUS") == "closed" and value(out, "AC") not in lab_clusters(server)
    assert value(out, "MISSING") == "ClusterNotFound no Casa cluster with id 'no-such-cluster'"

    kernel.run("with CasaCluster.from_id(ui.id) as handle:\n    pass\n")  # leaving the block shuts it down
    assert lab_clusters(server) == {}
