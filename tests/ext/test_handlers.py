"""The REST API through a real jupyter_server subprocess (token auth) with dask-labextension loaded: Casa's
clusters are dask-labextension's, backed by real TLS LocalClusters, and its own handlers (``dask/clusters``,
``dask/dashboard``) are bounded by Casa's limits too. A kernel started by the server checks the Dask client
configuration kernels inherit (TLS, and ``Client()`` reaching the login cluster on its fixed port).

One server for the module (2 declared GPUs, at most 1 per worker, 4 workers per cluster, 3 clusters, a
CPU-only login cluster holding one of the 3 places).
"""

from __future__ import annotations

import json
import re
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.ext.jupyter_proc import Kernel, clean_log, start_jupyter, stop_jupyter
from tests.support import free_port

TIMEOUT = 60
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from tests.ext.conftest import write_bundle
    from tests.support import make_minter

    work = tmp_path_factory.mktemp("jupyter")
    bundle_dir = write_bundle(make_minter(work / "keys").mint("alice"), work / "casa")
    port = free_port()
    (work / "config").mkdir()
    (work / "config" / "jupyter_server_config.json").write_text(
        json.dumps(
            {
                "CasaClusterSettings": {
                    "max_workers": 4,
                    "max_clusters": 3,
                    "default_workers": 1,
                    "login_cluster": {"workers": 1},
                    "scheduler_port": port,
                    "scheduler_host": "127.0.0.1",
                }
            }
        )
    )
    env = {
        "CASA_CREDENTIALS_DIR": str(bundle_dir),
        "CASA_GPU_COUNT": "2",
        "CASA_GPU_MAX_PER_WORKER": "1",
        "CASA_DASK_BACKENDS": "local",
    }
    # the kernel's Dask configuration must come from the server extension, not from this test's environment
    clear = [v for v in ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "DASK_SCHEDULER_ADDRESS")]
    clear += ["DASK_DISTRIBUTED__COMM__TLS__CA_FILE", "DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT"]
    clear += ["DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY", "DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION"]
    proc = start_jupyter(work, env, unset=clear)
    proc.bundle_dir, proc.scheduler_port, proc.work = bundle_dir, port, work
    try:
        wait_for(lambda: login_cluster(proc), "the login cluster")
        yield proc
    finally:
        stop_jupyter(proc)
    log = clean_log(proc)
    assert "casa: started a local cluster" in log


def wait_for(predicate, what, timeout=TIMEOUT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def api(server, method, path, **kw):
    return requests.request(method, server.url + path, headers=server.headers(), timeout=TIMEOUT, **kw)


def casa(server, method, path, **kw):
    return api(server, method, "casa/" + path, **kw)


def login_cluster(server):
    return next((m for m in api(server, "GET", "dask/clusters").json() if m["name"] == "Casa (login)"), None)


def limits(server):
    return casa(server, "GET", "options").json()["limits"]


@pytest.fixture(scope="module")
def kernel(server):
    k = Kernel(server)
    yield k
    k.close()


# ------------------------------------------------------------------------------------------ read-only
def test_unauthenticated_is_refused(server):
    assert requests.get(server.url + "casa/options", timeout=10).status_code == 403


def test_options(server):
    body = casa(server, "GET", "options").json()
    assert body["backends"] == ["local"]
    fields = {f["name"]: f for f in body["fields"]}
    assert (fields["workers"]["min"], fields["workers"]["max"], fields["workers"]["default"]) == (0, 4, 1)
    assert (fields["gpus_per_worker"]["max"], fields["adapt"]["type"]) == (1, "range")
    assert fields["backend"]["choices"] == ["local"]
    # the login cluster holds one of the 3 places; no GPU booked
    assert body["limits"] == {
        "max_clusters": 3,
        "clusters": 1,
        "gpus": {"local": {"max": 2, "booked": 0, "per_worker": 1}},
    }
    assert body["gpu"]["available"] is True and body["gpu"]["reason"] is None
    assert body["gpu"]["inventory"]["count"] == 2


def test_gpus_kept_for_compatibility(server):
    body = casa(server, "GET", "gpus").json()
    assert body["inventory"]["count"] == 2 and body["inventory"]["source"] == "CASA_GPU_COUNT"
    assert body["options"]["gpus_per_worker_max"] == {"local": 1}


def test_credentials(server):
    body = casa(server, "GET", "credentials").json()
    assert body["user"] == "alice" and 3600 - 120 < body["seconds_left"] <= 3600  # the 1 h storage token first
    by_name = {c["name"]: c for c in body["credentials"]}
    assert {name for name, c in by_name.items() if c["present"]} >= {"xcache", "htcondor", "dask-client"}
    xcache = by_name["xcache"]
    assert (xcache["label"], xcache["env"], xcache["audience"], xcache["scopes"]) == (
        "XCache storage token",
        "BEARER_TOKEN_FILE",
        "https://wlcg.cern.ch/jwt/v1/any",
        ["storage.read:/store"],
    )
    assert xcache["file"].endswith("/casa/xcache.token") and xcache["expires_at"]
    condor = by_name["htcondor"]
    assert (condor["label"], condor["env"], condor["audience"]) == (
        "HTCondor IDTOKEN",
        "_CONDOR_SEC_TOKEN_DIRECTORY",
        None,
    )
    assert condor["scopes"] == ["condor:/READ", "condor:/WRITE"] and condor["seconds_left"] > 6 * 3600 - 120
    assert by_name["dask-ca"]["expires_at"] is None and by_name["dask-ca"]["seconds_left"] is None


# ------------------------------------------------------------------------------------------ refusals
@pytest.mark.parametrize(
    "body, status, field, message",
    [
        ({"gpus_per_worker": 2}, 422, "gpus_per_worker", "gpus_per_worker=2 is outside the allowed range 0..1"),
        ({"workers": 3, "gpus_per_worker": 1}, 422, "workers", "need 3 GPUs; this server has 2"),
        ({"workers": "two"}, 422, "workers", "workers='two': expected a whole number"),
        ({"workers": 1.5}, 422, "workers", "expected a whole number"),
        ({"adapt": {"minimum": 2, "maximum": 1}}, 422, "adapt", "minimum=2 is more than maximum=1"),
        ({"adapt": {"minimum": 0, "maximum": 9}}, 422, "adapt.maximum", "adapt.maximum=9 is outside"),
        ({"backend": "htcondor"}, 422, "backend", "backend='htcondor': expected one of ['local']"),
        ({"name": ""}, 422, "name", "name='': expected a non-empty text"),
        ("[1]", 400, None, "must be a JSON object"),
        ("{", 400, None, "not JSON"),
    ],
)
def test_bad_requests_are_4xx_naming_the_field(server, body, status, field, message):
    r = casa(server, "POST", "clusters", **({"data": body} if isinstance(body, str) else {"json": body}))
    assert r.status_code == status and message in r.json()["message"], r.text
    assert r.json()["field"] == field and r.json()["error"]
    assert [m["name"] for m in casa(server, "GET", "clusters").json()] == ["Casa (login)"]  # nothing started


# ------------------------------------------------------------------------------------------ the flow
def test_one_list_dashboard_proxy_and_bounded_sidebar_scaling(server, kernel):
    r = casa(server, "POST", "clusters", json={"name": "gpu", "workers": 1, "gpus_per_worker": 1})
    assert r.status_code == 201, r.text
    model = r.json()
    cid = model["id"]
    assert UUID.match(cid) and model["name"] == "gpu" and model["scheduler_address"].startswith("tls://127.0.0.1:")
    assert model["casa"] == {
        "backend": "local",
        "workers": 1,
        "adapt": None,
        "cores": 1,
        "memory": 2 * 2**30,
        "gpus_per_worker": 1,
        "name": "gpu",
        "gpus_booked": 1,
    }
    assert model["dashboard_proxy"] == f"/dask/dashboard/{cid}/status"

    # dask-labextension's own list and dashboard proxy serve it
    listed = {m["id"]: m for m in api(server, "GET", "dask/clusters").json()}
    assert listed[cid]["scheduler_address"] == model["scheduler_address"]
    plots = api(server, "GET", f"dask/dashboard/{cid}/individual-plots.json")
    assert plots.status_code == 200 and "Task Stream" in " ".join(plots.json())

    # the sidebar's "<>" code, in a kernel of this server: Client("tls://...") with nothing but the kernel's env
    code = (
        "from distributed import Client\n"
        "def devices():\n"
        "    import os\n"
        "    return os.environ.get('CUDA_VISIBLE_DEVICES')\n"
        f"with Client({model['scheduler_address']!r}, timeout=60) as c:\n"
        "    c.wait_for_workers(1, timeout=60)\n"
        "    print('SUM', c.submit(sum, [1, 2, 39]).result(timeout=60))\n"
        "    print('GPU', c.submit(devices, resources={'GPU': 1}).result(60))\n"
    )
    out = kernel.run(code)
    assert "SUM 42" in out and re.search(r"GPU [01]\b", out), out

    # a second GPU cluster takes the other device; a third GPU worker anywhere is refused
    r = casa(server, "POST", "clusters", json={"workers": 1, "gpus_per_worker": 1})
    assert r.status_code == 201, r.text
    other = r.json()["id"]
    assert limits(server)["gpus"]["local"] == {"max": 2, "booked": 2, "per_worker": 1}
    r = api(server, "PATCH", f"dask/clusters/{cid}", json={"workers": 2})  # dask-labextension's own handler
    assert r.status_code == 500 and "your other clusters hold 1 of the 2 allowed" in r.json()["message"], r.text
    r = casa(server, "PATCH", f"clusters/{cid}", json={"workers": 2})
    assert r.status_code == 409 and r.json()["field"] == "workers", r.text
    r = api(server, "PATCH", f"dask/clusters/{cid}", json={"adapt": {"minimum": 0, "maximum": 2}})
    assert r.status_code == 500 and "GPUs on the local backend" in r.json()["message"], r.text
    r = casa(server, "PATCH", f"clusters/{cid}", json={"workers": "many"})
    assert r.status_code == 422 and r.json()["field"] == "workers"

    # shut down from the sidebar (dask-labextension's DELETE): the booking goes with it
    assert api(server, "DELETE", f"dask/clusters/{other}").status_code == 204
    assert limits(server)["gpus"]["local"]["booked"] == 1
    assert other not in {m["id"] for m in casa(server, "GET", "clusters").json()}
    r = casa(server, "PATCH", f"clusters/{cid}", json={"adapt": {"minimum": 0, "maximum": 2}})
    assert r.status_code == 200 and r.json()["adapt"] == {"minimum": 0, "maximum": 2}, r.text
    assert r.json()["casa"]["gpus_booked"] == 2
    r = api(server, "PATCH", f"dask/clusters/{cid}", json={"workers": 1})
    assert r.status_code == 200 and limits(server)["gpus"]["local"]["booked"] == 1

    assert casa(server, "DELETE", f"clusters/{cid}").status_code == 204
    r = casa(server, "GET", f"clusters/{cid}")
    assert r.status_code == 404 and "no Casa cluster" in r.json()["message"]
    assert limits(server) == {
        "max_clusters": 3,
        "clusters": 1,
        "gpus": {"local": {"max": 2, "booked": 0, "per_worker": 1}},
    }


def test_sidebar_new_makes_a_bounded_casa_cluster(server):
    r = api(server, "PUT", "dask/clusters")  # the sidebar's "+NEW": no body
    assert r.status_code == 200, r.text
    model = r.json()
    assert model["scheduler_address"].startswith("tls://") and model["name"].startswith("CasaLocalCluster")
    (casa_model,) = [m for m in casa(server, "GET", "clusters").json() if m["id"] == model["id"]]
    assert casa_model["casa"]["workers"] == 1 and casa_model["casa"]["gpus_per_worker"] == 0  # the defaults
    r = api(server, "PATCH", f"dask/clusters/{model['id']}", json={"workers": 5})
    assert r.status_code == 500 and "workers=5 is outside the allowed range 0..4" in r.json()["message"]
    assert api(server, "DELETE", f"dask/clusters/{model['id']}").status_code == 204
    assert limits(server)["clusters"] == 1


def test_concurrent_creates_stop_at_max_clusters(server):
    """Three quick clicks with two places left (the login cluster holds the third): exactly two clusters."""
    with ThreadPoolExecutor(3) as pool:
        replies = list(pool.map(lambda _: casa(server, "POST", "clusters", json={"workers": 0}), range(3)))
    codes = sorted(r.status_code for r in replies)
    assert codes == [201, 201, 409], [r.text for r in replies]
    (refused,) = [r for r in replies if r.status_code == 409]
    assert "CasaClusterSettings.max_clusters = 3" in refused.json()["message"]
    r = api(server, "PUT", "dask/clusters")  # the sidebar is bounded by the same count
    assert r.status_code == 500 and "max_clusters" in r.json()["message"]
    for reply in replies:
        if reply.status_code == 201:
            assert casa(server, "DELETE", f"clusters/{reply.json()['id']}").status_code == 204
    assert limits(server)["clusters"] == 1


def test_login_cluster_on_its_fixed_port_answers_a_bare_client(server, kernel):
    model = login_cluster(server)
    assert model["scheduler_address"] == f"tls://127.0.0.1:{server.scheduler_port}"
    out = kernel.run(
        "import os\nfrom distributed import Client\n"
        "print('ADDRESS', os.environ['DASK_SCHEDULER_ADDRESS'])\n"
        "with Client(timeout=60) as c:\n"
        "    print('SUM', c.submit(sum, [40, 2]).result(timeout=60))\n"
    )
    assert f"ADDRESS tls://localhost:{server.scheduler_port}" in out and "SUM 42" in out, out
    (listed,) = [m for m in casa(server, "GET", "clusters").json() if m["id"] == model["id"]]
    assert listed["casa"]["workers"] == 1


def test_missing_certificate_is_named(server):
    cert = server.bundle_dir / "dask" / "scheduler.crt"
    saved = cert.read_bytes()
    cert.chmod(0o600)
    cert.unlink()
    try:
        r = casa(server, "POST", "clusters", json={"workers": 1})
        assert r.status_code == 409
        assert "Dask scheduler certificate (dask-scheduler) is missing" in r.json()["message"]
        creds = casa(server, "GET", "credentials").json()["credentials"]
        assert [c["present"] for c in creds if c["name"] == "dask-scheduler"] == [False]
        assert limits(server)["clusters"] == 1  # nothing reserved
    finally:
        cert.write_bytes(saved)
