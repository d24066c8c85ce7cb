"""The laptop client bundle (casa_hub_ext/client_bundle.py): the builder on minted bundles, and
``GET /casa/client-bundle`` through a real jupyter_server subprocess.

The bundle really working from a laptop, through a real SNI router, is tests/consumers/test_sni_router.py."""

from __future__ import annotations

import datetime
import io
import re
import stat
import zipfile

import pytest
import requests
from cryptography import x509

from casa_hub_ext.bundle import MountedBundle
from casa_hub_ext.client_bundle import (
    ClientBundleSettings,
    ClientBundleUnavailable,
    build_client_bundle,
    check_address,
    file_label,
    require_login_scheduler,
)
from casa_hub_ext.errors import CredentialError
from tests.support import write_bundle

ADDRESS = "tls://dask-alice.hub.example.org:8786"
FILES = ("README.txt", "dask.yaml", "ca.pem", "client.crt", "client.key")


def _members(content: bytes) -> dict[str, zipfile.ZipInfo]:
    with zipfile.ZipFile(io.BytesIO(content)) as z:
        assert z.testzip() is None
        return {i.filename: i for i in z.infolist()}


def _read(content: bytes, name: str) -> str:
    with zipfile.ZipFile(io.BytesIO(content)) as z:
        return z.read(name).decode()


def _key_body(key_pem: bytes) -> list[str]:
    """The base64 lines of a PEM key: what must never appear in a log or a message."""
    return [line for line in key_pem.decode().splitlines() if line and not line.startswith("-----")]


# ------------------------------------------------------------------ the builder
def test_zip_holds_the_client_material_and_a_dask_config(mounted, bundle_dir):
    built = build_client_bundle(mounted, ADDRESS, dask_version="2026.8.0")
    assert built.filename == "casa-dask-alice.zip" and built.user == "alice" and built.address == ADDRESS
    members = _members(built.content)
    assert sorted(members) == sorted(f"casa-dask-alice/{f}" for f in FILES)
    dask_dir = bundle_dir / "dask"
    for name, source in (("ca.pem", "ca.pem"), ("client.crt", "client.crt"), ("client.key", "client.key")):
        assert _read(built.content, f"casa-dask-alice/{name}") == (dask_dir / source).read_text()
    # the private parts unzip private
    for name, mode in (("client.key", 0o600), ("dask.yaml", 0o600), ("client.crt", 0o644), ("README.txt", 0o644)):
        assert stat.S_IMODE(members[f"casa-dask-alice/{name}"].external_attr >> 16) == mode, name
    # no scheduler or worker key, no other credential
    everything = b"".join(
        zipfile.ZipFile(io.BytesIO(built.content)).read(n) for n in members if not n.endswith("README.txt")
    )
    for other in ("scheduler.key", "worker.key"):
        assert not set(_key_body((dask_dir / other).read_bytes())) & set(everything.decode().splitlines())
    assert (bundle_dir / "xcache.token").read_bytes().strip() not in everything


def test_expiry_is_the_client_certificates_own(mounted, bundle_dir):
    now = datetime.datetime.now(datetime.timezone.utc)
    built = build_client_bundle(mounted, ADDRESS, now=now)
    cert = x509.load_pem_x509_certificate((bundle_dir / "dask" / "client.crt").read_bytes())
    assert built.expires_at == cert.not_valid_after_utc
    # what the hub's manifest says, to the second (X.509 times have no fractions)
    assert abs((built.expires_at - mounted.credentials["dask-client"].expires_at).total_seconds()) < 1
    readme = _read(built.content, "casa-dask-alice/README.txt")
    assert f"Valid until: {cert.not_valid_after_utc.isoformat()}" in readme
    assert ADDRESS in readme


def test_dask_reads_the_config_as_a_laptop_would(mounted, tmp_path):
    """Unzipped and named by DASK_CONFIG, the config gives Dask the address, require-encryption and a client
    TLS context built from the bundle's certificate (inline PEM, as distributed accepts it)."""
    import ssl

    import dask.config
    from distributed.security import Security

    built = build_client_bundle(mounted, ADDRESS)
    with zipfile.ZipFile(io.BytesIO(built.content)) as z:
        z.extractall(tmp_path)
    config = dask.config.collect(paths=[str(tmp_path / "casa-dask-alice")], env={})
    assert config["scheduler-address"] == ADDRESS
    assert config["distributed"]["comm"]["require-encryption"] is True
    tls = config["distributed"]["comm"]["tls"]
    flat = {
        "distributed.comm.require-encryption": config["distributed"]["comm"]["require-encryption"],
        "distributed.comm.tls.ca-file": tls["ca-file"],
        "distributed.comm.tls.client.cert": tls["client"]["cert"],
        "distributed.comm.tls.client.key": tls["client"]["key"],
    }
    assert len(tls) == 2 and len(tls["client"]) == 2  # nothing else in it
    with dask.config.set(flat):
        security = Security()
        assert security.require_encryption is True
        ctx = security.get_connection_args("client")["ssl_context"]
    assert isinstance(ctx, ssl.SSLContext) and ctx.verify_mode == ssl.CERT_REQUIRED
    ca = x509.load_pem_x509_certificate(mounted.dask_ca.read_bytes())
    assert [int(c["serialNumber"], 16) for c in ctx.get_ca_certs()] == [ca.serial_number]  # hex, maybe 0-padded


def test_the_three_lines(mounted):
    readme = _read(build_client_bundle(mounted, ADDRESS, dask_version="2026.8.0").content, "casa-dask-alice/README.txt")
    lines = [line.strip() for line in readme.splitlines() if re.match(r"    \S", line)]
    assert lines == [
        'pip install "distributed==2026.8.0"',
        'export DASK_CONFIG="$PWD/casa-dask-alice"',
        'python -c "from distributed import Client; client = Client(); print(client.submit(sum, [1, 2]).result())"',
    ]


def test_expired_client_certificate_is_refused(expired_bundle_dir):
    mounted = MountedBundle.from_directory(expired_bundle_dir)
    with pytest.raises(CredentialError) as info:
        build_client_bundle(mounted, ADDRESS)
    assert info.value.credential == "dask-client" and info.value.status_code == 409
    assert "expired" in str(info.value)
    for line in _key_body((expired_bundle_dir / "dask" / "client.key").read_bytes()):
        assert line not in str(info.value)


def test_the_certificate_itself_is_checked_not_only_the_manifest(mounted, bundle_dir, expired_bundle_dir):
    """A client certificate that expired while the manifest says otherwise (a half-replaced bundle) is refused."""
    for name in ("client.crt", "client.key"):
        target = bundle_dir / "dask" / name
        target.chmod(0o600)
        target.write_bytes((expired_bundle_dir / "dask" / name).read_bytes())
    with pytest.raises(CredentialError, match="expired at"):
        build_client_bundle(mounted, ADDRESS)


@pytest.mark.parametrize("missing", ["client.crt", "client.key", "ca.pem"])
def test_missing_file_is_refused(mounted, bundle_dir, missing):
    (bundle_dir / "dask" / missing).unlink()
    with pytest.raises(CredentialError) as info:
        build_client_bundle(mounted, ADDRESS)
    assert info.value.credential == ("dask-ca" if missing == "ca.pem" else "dask-client")


def test_key_of_another_certificate_is_refused(mounted, bundle_dir):
    key = bundle_dir / "dask" / "client.key"
    key.chmod(0o600)
    key.write_bytes((bundle_dir / "dask" / "worker.key").read_bytes())
    with pytest.raises(CredentialError, match="does not belong") as info:
        build_client_bundle(mounted, ADDRESS)
    for line in _key_body(key.read_bytes()):
        assert line not in str(info.value)


@pytest.mark.parametrize(
    "address", ["", "  ", "tcp://dask-alice.example.org:8786", "tls://dask-alice.example.org", "tls://:8786", "x"]
)
def test_no_usable_address_is_refused(mounted, address):
    with pytest.raises(ClientBundleUnavailable) as info:
        build_client_bundle(mounted, address)
    assert info.value.status_code == 404 and "CASA_DASK_ADDRESS" in str(info.value)


def test_address_forms():
    assert check_address(" tls://dask-alice.example.org:443 ") == "tls://dask-alice.example.org:443"
    assert check_address("tls://[::1]:8786") == "tls://[::1]:8786"


def test_address_from_env_or_config(monkeypatch):
    monkeypatch.setenv("CASA_DASK_ADDRESS", ADDRESS)
    assert ClientBundleSettings().scheduler_address == ADDRESS
    assert ClientBundleSettings(scheduler_address="tls://h:1").scheduler_address == "tls://h:1"
    monkeypatch.delenv("CASA_DASK_ADDRESS")
    assert ClientBundleSettings().scheduler_address == ""


def test_file_label():
    assert file_label("alice") == "alice"
    assert file_label("ünïcode user@example.org/../x") == "n-code-user-example.org-..-x"
    assert file_label("///") == "user"
    assert len(file_label("a" * 300)) == 48


def test_no_bundle_without_a_login_scheduler():
    """The route leads to the pod's scheduler port, where only the login cluster listens."""
    with pytest.raises(ClientBundleUnavailable, match="no Dask scheduler for laptops.*login_cluster"):
        require_login_scheduler(None)
    require_login_scheduler({"backend": "local", "workers": 0})


# ------------------------------------------------------------------ GET /casa/client-bundle, real server
@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from tests.ext.jupyter_proc import clean_log, login_cluster_args, start_jupyter, stop_jupyter
    from tests.support import make_minter

    work = tmp_path_factory.mktemp("jupyter-client-bundle")
    minter = make_minter(work / "keys")
    bundle_dir = write_bundle(minter.mint("alice"), work / "casa")
    env = {"CASA_CREDENTIALS_DIR": str(bundle_dir), "CASA_DASK_ADDRESS": ADDRESS, "CASA_DASK_BACKENDS": "local"}
    # the laptop route leads to the login cluster's scheduler: the bundle is offered only with one configured
    proc = start_jupyter(work, env, args=login_cluster_args())
    proc.bundle_dir, proc.minter = bundle_dir, minter
    try:
        yield proc
    finally:
        stop_jupyter(proc)
    clean_log(proc)


def _get(server, **kw):
    return requests.get(server.url + "casa/client-bundle", timeout=30, **kw)


def test_handler_serves_the_zip(server):
    r = _get(server, headers=server.headers())
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"] == "application/zip"
    assert r.headers["Cache-Control"] == "no-store"
    assert r.headers["Content-Disposition"] == 'attachment; filename="casa-dask-alice.zip"'
    assert _read(r.content, "casa-dask-alice/client.key") == (server.bundle_dir / "dask" / "client.key").read_text()
    import distributed

    readme = _read(r.content, "casa-dask-alice/README.txt")
    assert f'pip install "distributed=={distributed.__version__}"' in readme and ADDRESS in readme


def test_handler_needs_authentication(server):
    r = _get(server)
    assert r.status_code == 403 and b"PRIVATE KEY" not in r.content


def test_handler_refuses_an_expired_bundle_and_logs_no_key(server):
    then = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=2)
    write_bundle(server.minter.mint("alice", now=then), server.bundle_dir)  # replaced in place, as on a refresh
    try:
        r = _get(server, headers=server.headers())
        assert r.status_code == 409
        body = r.json()
        assert body["error"] == "CredentialError" and "expired" in body["message"]
        assert "Cache-Control" not in r.headers or r.headers["Cache-Control"] == "no-store"
    finally:
        write_bundle(server.minter.mint("alice"), server.bundle_dir)
    assert _get(server, headers=server.headers()).status_code == 200  # a refreshed bundle downloads again
    log = server.log.read_text()
    assert "laptop Dask bundle for alice sent" in log
    assert "PRIVATE KEY" not in log
    for line in _key_body((server.bundle_dir / "dask" / "client.key").read_bytes()):
        assert line not in log
