"""Casa's HTCondor IDTOKENs against real HTCondor 23.9 daemons (a personal pool in a Debian trixie root,
see condor_pool.py), and a dask-jobqueue GPU worker job submitted with them, talking Dask TLS back.

Clients here authenticate with IDTOKENS only: the pool key is invisible outside the pool's namespace and
the client token directory is empty, so every success below comes from the token under test.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import secrets
import time
from pathlib import Path

import pytest

from casa_hub.credentials.kinds.htcondor import TOKEN_FILE as CONDOR_TOKEN
from casa_hub.credentials.layout import DASK_CA
from tests.consumers import condor_pool
from tests.consumers.htcondor_client import AUTH_FAILED, HOUR, TD, _ping, _refused, _token

pytestmark = pytest.mark.consumer("htcondor")


# ---------------------------------------------------------------- the pool and its client
def test_client_cannot_read_the_pool_key_and_has_no_fallback(htc, pool):
    # the pool's passwords.d is a tmpfs inside its namespace: empty from here, although we are root
    assert os.listdir(pool.work / "passwords.d") == []
    assert not (pool.work / "passwords.d" / "POOL").exists()
    # ... but the daemons read it from there (their own view)
    assert "reading " + str(pool.work / "passwords.d" / "POOL") in pool.log("SchedLog")
    # without a token the client has no way to authenticate: no key to self-issue a condor@password token
    # with, no FS; it drops IDTOKENS and gives up before talking to the schedd
    client0 = len(pool.log("ClientLog"))
    with pytest.raises(htc.HTCondorException, match="Failed to start command"):
        htc.ping(pool.address("schedd"), "READ", htc.SecurityContext())
    client_log = pool.log("ClientLog")[client0:]
    assert f"Looking for tokens in directory {pool.work / 'no-tokens.d'}" in client_log
    assert "no auth methods, but auth was required" in client_log


# ---------------------------------------------------------------- positive
def test_minted_token_authenticates_as_the_user(htc, pool, pool_minter):
    token = pool_minter.mint("alice").files[CONDOR_TOKEN].content
    ad = _ping(htc, pool, token, "WRITE")
    assert ad["AuthorizationSucceeded"] is True
    assert ad["AuthMethods"] == "IDTOKENS"
    assert ad["MyRemoteUserName"] == f"alice@{TD}"
    assert ad["TrustDomain"] == TD
    # the collector agrees
    ad = htc.ping(pool.collector, "WRITE", htc.SecurityContext(token=token.decode().strip()))
    assert ad["MyRemoteUserName"] == f"alice@{TD}"


def test_minted_token_submits_and_queries_as_the_user(pool, pool_minter, tmp_path):
    bundle = pool_minter.mint("alice")
    home = pool.user_dir("alice")
    mount = home / "casa-plain"
    for rel, f in bundle.files.items():
        pool.give("alice", mount / rel, f.content, f.mode)
    token_dir = bundle.env_for(str(mount))["_CONDOR_SEC_TOKEN_DIRECTORY"]
    assert os.listdir(token_dir) == ["casa"]
    env = {"_CONDOR_SEC_TOKEN_DIRECTORY": token_dir}
    # held at submission: it is only queued and queried, never run
    description = b"executable = /bin/true\nhold = true\nqueue\n"

    sub = pool.run("alice", ["/usr/bin/condor_submit", "-terse"], env=env, cwd=home, input=description)
    assert sub.returncode == 0, sub.stderr.decode()
    cluster = int(sub.stdout.decode().split(".")[0])
    try:
        q = pool.run(
            "alice",
            ["/usr/bin/condor_q", "-json", "-attributes", "ClusterId,Owner,User,JobStatus", str(cluster)],
            env=env,
            cwd=home,
        )
        assert q.returncode == 0, q.stderr.decode()
        (job,) = json.loads(q.stdout)
        assert job["Owner"] == "alice" and job["User"] == f"alice@{TD}"
        assert job["JobStatus"] == 5  # held
    finally:
        rm = pool.run("alice", ["/usr/bin/condor_rm", str(cluster)], env=env, cwd=home)
        assert rm.returncode == 0, rm.stderr.decode()

    # control: the same Unix user without the token is refused, so it was the token that authenticated
    empty = home / "no-tokens"
    empty.mkdir(exist_ok=True)
    sub = pool.run(
        "alice",
        ["/usr/bin/condor_submit", "-terse"],
        env={"_CONDOR_SEC_TOKEN_DIRECTORY": str(empty)},
        cwd=home,
        input=description,
    )
    assert sub.returncode != 0
    assert b"AUTHENTICATE" in sub.stderr or b"authenticat" in sub.stderr.lower(), sub.stderr.decode()


# ---------------------------------------------------------------- negative
def test_expired_token_is_refused(htc, pool):
    past = datetime.datetime.now(datetime.timezone.utc) - 3 * HOUR
    schedd_log, _ = _refused(htc, pool, _token(pool, now=past))  # exp = 2 h ago
    assert "User token has been expired for" in schedd_log
    assert AUTH_FAILED in schedd_log


def test_token_signed_with_a_wrong_key_is_refused(htc, pool):
    now = datetime.datetime.now(datetime.timezone.utc)
    claims = dict(now=now, jti="casa-wrong-key-" + secrets.token_hex(4))
    # control: the very same claims signed with the pool key are accepted
    assert _ping(htc, pool, _token(pool, **claims))["MyRemoteUserName"] == f"alice@{TD}"
    forged = _token(pool, signing_key=secrets.token_bytes(32), **claims)
    schedd_log, client_log = _refused(htc, pool, forged)
    # the schedd derived its key from the pool key and the exchange keyed by the signature did not match
    assert "getTokenSigningKey(): for id=POOL" in schedd_log
    assert "Error from client" in schedd_log and AUTH_FAILED in schedd_log
    assert "Authentication was a Success" not in schedd_log
    assert "PW: Client checking T" in client_log and AUTH_FAILED in client_log


def test_token_with_a_wrong_issuer_is_refused(htc, pool):
    other = _token(pool, trust_domain="other.example.org")  # right key, iss != TRUST_DOMAIN
    schedd_log, client_log = _refused(htc, pool, other)
    assert f"Ignoring token as it is from trust domain other.example.org (server trust domain is {TD})" in client_log
    assert AUTH_FAILED in schedd_log
    assert "Authentication was a Success" not in schedd_log


def test_read_only_scope_is_refused_at_write(htc, pool):
    token = _token(pool, scopes=["condor:/READ"])
    assert _ping(htc, pool, token, "READ")["AuthorizationSucceeded"] is True  # control: READ is allowed
    schedd_log, _ = _refused(htc, pool, token, "WRITE")
    assert "Authentication was a Success" in schedd_log  # authenticated as alice ...
    assert "resulted in a limited authorization which did not include this command" in schedd_log  # ... not WRITE
    assert "DC_NOP_WRITE" in schedd_log


# ---------------------------------------------------------------- a GPU Dask worker job
def _cluster_class(tools: Path):
    from dask_jobqueue import HTCondorCluster
    from dask_jobqueue.htcondor import HTCondorJob

    class CasaCondorJob(HTCondorJob):
        """Submits with the root's condor tools (as the user, with the bundle's token directory); the worker
        takes its TLS settings from the bundle's env vars (files transferred with the job), not the CLI."""

        def __init__(self, *args, security=None, **kwargs):
            super().__init__(*args, security=None, **kwargs)
            self.submit_command = str(tools / "condor_submit")
            self.cancel_command = str(tools / "condor_rm")

    class CasaCondorCluster(HTCondorCluster):
        job_cls = CasaCondorJob

    return CasaCondorCluster


async def test_gpu_dask_worker_job_runs_as_the_user_over_tls(pool, pool_minter):
    from dask_jobqueue.htcondor import quote_environment
    from distributed import Client
    from distributed.security import Security

    bundle = pool_minter.mint("alice")
    home = pool.user_dir("alice")
    mount = home / "casa"
    for rel, f in bundle.files.items():
        pool.give("alice", mount / rel, f.content, f.mode)
    env = bundle.env_for(str(mount))
    tls = "DASK_DISTRIBUTED__COMM__TLS__"
    tools = pool.tools(
        home / "bin", "alice", env={"_CONDOR_SEC_TOKEN_DIRECTORY": env["_CONDOR_SEC_TOKEN_DIRECTORY"]}, cwd=home
    )
    # the worker's files travel with the job; in the job they are in the scratch dir (its cwd)
    shipped = [env[tls + "CA_FILE"], env[tls + "WORKER__CERT"], env[tls + "WORKER__KEY"]]
    worker_env = {k: os.path.basename(env[k]) for k in (tls + "CA_FILE", tls + "WORKER__CERT", tls + "WORKER__KEY")}
    worker_env["DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION"] = env["DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION"]
    assert env[tls + "CA_FILE"] == str(mount / DASK_CA)

    security = Security(
        tls_ca_file=env[tls + "CA_FILE"],
        tls_scheduler_cert=env[tls + "SCHEDULER__CERT"],
        tls_scheduler_key=env[tls + "SCHEDULER__KEY"],
        tls_client_cert=env[tls + "CLIENT__CERT"],
        tls_client_key=env[tls + "CLIENT__KEY"],
        require_encryption=True,
    )
    cluster_cls = _cluster_class(tools)
    logs = home / "logs"
    logs.mkdir(exist_ok=True)
    os.chown(logs, pool.users["alice"].uid, pool.users["alice"].gid)

    def job_view():  # runs in the worker, i.e. inside the HTCondor job
        import os
        import pwd

        import dask
        from cryptography import x509

        cert = x509.load_pem_x509_certificate(open(dask.config.get("distributed.comm.tls.worker.cert"), "rb").read())
        return {
            "gpus": os.environ.get("_CONDOR_AssignedGPUs"),
            "uid": os.getuid(),
            "user": pwd.getpwuid(os.getuid()).pw_name,
            "cwd": os.getcwd(),
            "files": sorted(os.listdir(".")),
            "scratch": os.environ.get("_CONDOR_SCRATCH_DIR"),
            "ad": open(os.environ["_CONDOR_JOB_AD"]).read(),
            "ca": dask.config.get("distributed.comm.tls.ca-file"),
            "cert_subject": cert.subject.rfc4514_string(),
        }

    t0 = time.monotonic()
    async with cluster_cls(
        cores=1,
        processes=1,
        memory="512MiB",
        disk="200MiB",
        nanny=False,
        python=str(condor_pool.VENV / "bin" / "python"),
        protocol="tls://",
        security=security,
        scheduler_options={"host": "127.0.0.1", "dashboard_address": "127.0.0.1:0"},
        worker_extra_args=["--resources", "GPU=1", "--host", "127.0.0.1"],
        log_directory=str(logs),
        job_extra_directives={
            "request_gpus": "1",
            "should_transfer_files": "YES",
            "when_to_transfer_output": "ON_EXIT_OR_EVICT",
            "transfer_input_files": ",".join(shipped),
            "environment": f'"{quote_environment(worker_env)}"',
        },
        asynchronous=True,
    ) as cluster:
        assert cluster.scheduler_address.startswith("tls://127.0.0.1:")
        script = cluster.job_script()
        assert "request_gpus = 1" in script and "--resources GPU=1" in script
        cluster.scale(1)
        async with Client(cluster, security=security, asynchronous=True) as client:
            try:
                await asyncio.wait_for(client.wait_for_workers(1), timeout=90)
            except (asyncio.TimeoutError, TimeoutError):
                pytest.fail("no worker after 90 s\n" + _diagnose(pool, logs))
            first_worker = time.monotonic() - t0
            print(f"\nfirst Dask worker (HTCondor job) connected after {first_worker:.1f} s")
            info = await client.scheduler.identity()
            ((addr, worker),) = info["workers"].items()
            assert addr.startswith("tls://127.0.0.1:")
            assert worker["resources"] == {"GPU": 1}
            view = await asyncio.wait_for(client.submit(job_view, resources={"GPU": 1}, pure=False), timeout=30)

        job_id = next(iter(cluster.workers.values())).job_id
    ad = _parse_job_ad(view["ad"])
    assert view["gpus"] == condor_pool.GPU_NAME  # the declared GPU, assigned by the startd
    assert ad["Owner"] == "alice" and ad["User"] == f"alice@{TD}"
    assert ad["RequestGPUs"] == "1"
    assert f"{ad['ClusterId']}.{ad['ProcId']}" == job_id
    assert view["user"] == "alice" and view["uid"] == pool.users["alice"].uid
    assert view["cwd"] == view["scratch"] and view["scratch"].startswith(str(pool.work / "execute"))
    # the worker's TLS identity is the minted worker certificate, transferred with the job (and nothing more)
    assert {"ca.pem", "worker.crt", "worker.key"} <= set(view["files"])
    assert not {"scheduler.key", "client.key", "casa"} & set(view["files"])
    assert view["ca"] == "ca.pem" and view["cert_subject"] == "CN=worker.alice,O=Casa Hub"

    # closing the cluster ended the job (dask-jobqueue retires the worker and runs condor_rm with alice's token)
    deadline = time.monotonic() + 15
    while True:
        q = pool.run(
            "alice",
            ["/usr/bin/condor_q", "-json", "-attributes", "JobStatus", job_id],
            env={"_CONDOR_SEC_TOKEN_DIRECTORY": env["_CONDOR_SEC_TOKEN_DIRECTORY"]},
            cwd=home,
        )
        assert q.returncode == 0, q.stderr.decode()
        statuses = [j["JobStatus"] for j in json.loads(q.stdout or b"[]")]
        if all(s in (3, 4) for s in statuses):  # removed / completed, or already gone from the queue
            break
        assert time.monotonic() < deadline, f"job {job_id} still in the queue: {statuses}"
        time.sleep(0.2)


def _parse_job_ad(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        if " = " in line:
            k, v = line.split(" = ", 1)
            out[k] = v.strip('"')
    return out


def _diagnose(pool, logs: Path) -> str:
    parts = [f"--- {p.name}\n{p.read_text(errors='replace')[-1500:]}" for p in sorted(logs.glob("*"))]
    for name in ("SchedLog", "StartLog", "NegotiatorLog", "ShadowLog"):
        parts.append(f"--- {name}\n{pool.log(name)[-1500:]}")
    return "\n".join(parts)
