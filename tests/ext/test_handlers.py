"""The REST API through a real jupyter_server subprocess (token auth), backed by real TLS LocalClusters."""

from __future__ import annotations

import time

import pytest
import requests
from distributed import Client

from casa_hub_ext.bundle import MountedBundle
from tests.ext.jupyter_proc import start_jupyter, stop_jupyter

TIMEOUT = 60


def gpu_task():
    import os

    return os.environ.get("CUDA_VISIBLE_DEVICES")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from tests.ext.conftest import write_bundle
    from tests.support import make_minter

    work = tmp_path_factory.mktemp("jupyter")
    bundle_dir = write_bundle(make_minter(work / "keys").mint("alice"), work / "casa")
    env = {
        "CASA_CREDENTIALS_DIR": str(bundle_dir),
        "CASA_GPU_COUNT": "2",
        "CASA_GPU_MAX_PER_WORKER": "1",
        "CASA_DASK_BACKENDS": "local",
    }
    for var in ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES"):
        env[var] = ""
    proc = start_jupyter(work, {k: v for k, v in env.items() if v})
    proc.bundle_dir = bundle_dir
    yield proc
    stop_jupyter(proc)
    assert "Traceback" not in proc.log.read_text(), proc.log.read_text()[-4000:]


def api(server, method, path, **kw):
    return requests.request(method, server.url + "casa/" + path, headers=server.headers(), timeout=TIMEOUT, **kw)


def test_unauthenticated_is_refused(server):
    r = requests.get(server.url + "casa/gpus", timeout=10)
    assert r.status_code == 403


def test_gpus(server):
    r = api(server, "GET", "gpus")
    assert r.status_code == 200
    body = r.json()
    assert body["inventory"]["count"] == 2 and body["inventory"]["source"] == "CASA_GPU_COUNT"
    assert body["options"]["gpus_per_worker_max"] == {"local": 1}


def test_credentials(server):
    body = api(server, "GET", "credentials").json()
    assert body["user"] == "alice" and 3600 - 120 < body["seconds_left"] <= 3600  # the 1 h storage token first
    by_name = {c["name"]: c for c in body["credentials"]}
    assert {name for name, c in by_name.items() if c["present"]} >= {"xcache", "htcondor", "dask-client"}
    # what the hub's manifest says of each credential: label, file, env variable, audience/scopes, expiry
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


@pytest.mark.parametrize(
    "body, status, message",
    [
        ({"gpus_per_worker": 2}, 422, "gpus_per_worker=2 is outside the allowed range 0..1"),
        ({"workers": 3, "gpus_per_worker": 1}, 422, "need 3 GPUs; this server has 2"),
        ({"backend": "htcondor"}, 422, "backend='htcondor': expected one of ['local']"),
        ("[1]", 400, "must be a JSON object"),
    ],
)
def test_bad_requests_are_4xx_with_message(server, body, status, message):
    r = api(server, "POST", "clusters", **({"data": body} if isinstance(body, str) else {"json": body}))
    assert r.status_code == status and message in r.json()["message"]
    assert api(server, "GET", "clusters").json() == []


def test_cluster_lifecycle(server):
    r = api(server, "POST", "clusters", json={"workers": 2, "gpus_per_worker": 1})
    assert r.status_code == 201, r.text
    model = r.json()
    cid = model["id"]
    assert model["scheduler_address"].startswith("tls://") and model["options"]["gpus_per_worker"] == 1
    assert model["dashboard_proxy"].startswith("/proxy/") and model["dashboard_proxy"].endswith("/status")

    deadline = time.monotonic() + TIMEOUT
    while len(model["workers"]) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
        model = api(server, "GET", f"clusters/{cid}").json()
    assert [w["resources"] for w in model["workers"]] == [{"GPU": 1}, {"GPU": 1}]
    assert [m["id"] for m in api(server, "GET", "clusters").json()] == [cid]

    security = MountedBundle.from_directory(server.bundle_dir).security()
    with Client(model["scheduler_address"], security=security, timeout=TIMEOUT) as client:
        assert client.submit(gpu_task, resources={"GPU": 1}).result(TIMEOUT) in {"0", "1"}

    r = api(server, "PATCH", f"clusters/{cid}", json={"workers": 3})
    assert r.status_code == 422 and "need 3 GPUs" in r.json()["message"]
    r = api(server, "PATCH", f"clusters/{cid}", json={"workers": 1})
    assert r.status_code == 200 and r.json()["requested_workers"] == 1

    assert api(server, "DELETE", f"clusters/{cid}").status_code == 204
    r = api(server, "GET", f"clusters/{cid}")
    assert r.status_code == 404 and "no cluster" in r.json()["message"]


def test_missing_certificate_is_named(server):
    cert = server.bundle_dir / "dask" / "scheduler.crt"
    saved = cert.read_bytes()
    cert.chmod(0o600)
    cert.unlink()
    try:
        r = api(server, "POST", "clusters", json={"workers": 1})
        assert r.status_code == 409
        assert "Dask scheduler certificate (dask-scheduler) is missing" in r.json()["message"]
        creds = api(server, "GET", "credentials").json()["credentials"]
        assert [c["present"] for c in creds if c["name"] == "dask-scheduler"] == [False]
    finally:
        cert.write_bytes(saved)
