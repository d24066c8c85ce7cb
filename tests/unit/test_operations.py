"""Operating the facility, in-process: Prometheus metrics (casa_hub/metrics.py), the audit log (audit.py), the
revocation state and list (revoke.py) and the admin page's row model (admin.py). The real-hub side (scrape of
/hub/metrics, the page, the API, a revocation end to end) is tests/hub/test_operations_hub.py."""

from __future__ import annotations

import base64
import datetime
import importlib
import json
import logging

import jwt
import pytest
from cryptography import x509
from prometheus_client import CollectorRegistry, generate_latest

from casa_hub import audit, metrics, revocation
from casa_hub.revoke import CasaRevocations, mark_revoked, revocation_refusal, revoke_user, revoked_at

UTC = datetime.timezone.utc
NOW = datetime.datetime(2026, 11, 3, 10, 0, tzinfo=UTC)


def _value(registry, name, **labels) -> float | None:
    return registry.get_sample_value(name, labels)


# ------------------------------------------------------------------ metrics
def test_metrics_are_created_once_per_registry_and_every_series_starts_at_zero():
    reg = CollectorRegistry()
    assert metrics.casa_metrics(reg) is metrics.casa_metrics(reg)
    for outcome in metrics.REFRESH_OUTCOMES:
        assert _value(reg, "casa_refreshes_total", outcome=outcome) == 0
    for cause in metrics.DELIVERY_CAUSES:
        assert _value(reg, "casa_delivery_failures_total", cause=cause) == 0
    assert _value(reg, "casa_secret_writes_total", operation="create", outcome="error") == 0
    assert _value(reg, "casa_mint_duration_seconds_count", kind="bundle") == 0
    assert _value(reg, "casa_revocations_total") == 0


def test_a_second_import_of_the_module_registers_nothing_twice():
    reg = CollectorRegistry()
    first = metrics.casa_metrics(reg)
    metrics.count_revocation(reg)
    reloaded = importlib.reload(metrics)  # a fresh module: its cache is empty, the registry is not
    try:
        again = reloaded.casa_metrics(reg)  # would raise "Duplicated timeseries" if it created new objects
        assert again.revocations is first.revocations
        reloaded.count_revocation(reg)
        assert _value(reg, "casa_revocations_total") == 2
    finally:
        importlib.reload(metrics)


def test_labels_stay_bounded_whatever_the_callers_pass():
    reg = CollectorRegistry()
    metrics.count_refresh("alice@cern.ch", reg)  # never a user name as a label value
    metrics.count_mint("weird", reg)
    metrics.count_secret_write("patch", True, reg)
    metrics.observe_mint(0.002, "x" * 200, reg)
    metrics.observe_mint(0.002, "bob/../", reg)
    metrics.observe_mint(0.001, "htcondor", reg)
    assert _value(reg, "casa_refreshes_total", outcome="error") == 1
    assert _value(reg, "casa_mints_total", outcome="error") == 1
    assert _value(reg, "casa_secret_writes_total", operation="replace", outcome="success") == 1
    assert _value(reg, "casa_mint_duration_seconds_count", kind="other") == 2
    assert _value(reg, "casa_mint_duration_seconds_count", kind="htcondor") == 1
    text = generate_latest(reg).decode()
    assert "alice" not in text and "bob" not in text and "patch" not in text


class _ApiError(Exception):
    def __init__(self, status):
        self.status = status


class _Refusal(Exception):
    def __init__(self, status_code):
        self.status_code = status_code


@pytest.mark.parametrize(
    "error, cause",
    [
        (TimeoutError(), "kubernetes_unavailable"),
        (_Refusal(503), "kubernetes_unavailable"),
        (_ApiError(403), "kubernetes_refused"),
        (_ApiError(422), "kubernetes_refused"),
        (_ApiError(500), "kubernetes_error"),
        (ValueError("x"), "other"),
    ],
)
def test_delivery_failures_are_counted_by_a_bounded_cause(error, cause):
    reg = CollectorRegistry()
    assert metrics.count_delivery_failure(error, reg) == cause
    assert _value(reg, "casa_delivery_failures_total", cause=cause) == 1


def test_expiry_gauges_are_computed_at_scrape_time_from_the_running_servers():
    reg = CollectorRegistry()
    servers = [NOW + datetime.timedelta(hours=5), NOW + datetime.timedelta(minutes=10), None]
    metrics.watch_servers(lambda: servers, lambda: NOW, lambda: 1800, reg)
    assert _value(reg, "casa_servers_with_credentials") == 3
    assert _value(reg, "casa_credentials_expiring_soon") == 1
    servers.append(NOW - datetime.timedelta(seconds=1))  # already expired: counts as expiring
    assert _value(reg, "casa_credentials_expiring_soon") == 2
    servers.clear()
    assert _value(reg, "casa_servers_with_credentials") == 0


# ------------------------------------------------------------------ audit
def _jwt_claims(token: bytes) -> dict:
    return jwt.decode(token.strip(), options={"verify_signature": False})


def test_describe_names_each_credential_by_its_public_id_only(minter):
    bundle = minter.mint("alice", email="alice@example.org", now=NOW)
    found = {c.name: c for c in audit.describe(bundle)}
    manifest = json.loads(bundle.files["casa.json"].content)["credentials"]
    assert set(found) == set(manifest)
    xcache = manifest["xcache"]["file"]
    assert found["xcache"].id == _jwt_claims(bundle.files[xcache].content)["jti"]
    condor = manifest["htcondor"]["file"]
    assert found["htcondor"].id == _jwt_claims(bundle.files[condor].content)["jti"]
    cert = x509.load_pem_x509_certificate(bundle.files[manifest["dask-client"]["file"]].content)
    assert found["dask-client"].id == format(cert.serial_number, "x")
    assert found["macaroon"].id and len(found["macaroon"].id) == 36  # the macaroon's uuid identifier
    assert found["xcache"].expires_at == bundle.files[xcache].expires_at


def test_a_bundle_is_described_once_and_its_delivery_reuses_that(minter, monkeypatch):
    # the mint describes a bundle in its worker thread; its delivery, on the hub's loop, must not parse it again
    bundle = minter.mint("alice", email="alice@example.org", now=NOW)
    parsed = []
    real = audit.credential_id
    monkeypatch.setattr(audit, "credential_id", lambda content: parsed.append(content) or real(content))
    first = audit.describe(bundle)
    assert len(parsed) == len(first) > 0
    first.clear()  # a caller's list is its own
    again = audit.describe(bundle)
    assert len(parsed) == len(again) and again == audit.describe(bundle)
    other = minter.mint("bob", email="bob@example.org", now=NOW)
    assert {c.id for c in audit.describe(other)}.isdisjoint(c.id for c in again if c.id)  # per bundle, not shared


def test_an_audit_line_is_one_json_object_without_any_secret_bytes(minter, caplog):
    bundle = minter.mint("alice", email="alice@example.org", now=NOW)
    audit.log.addHandler(caplog.handler)  # the audit logger does not propagate: its lines are its own
    try:
        with caplog.at_level(logging.INFO, logger=audit.LOGGER_NAME):
            line = audit.record("mint", "alice", bundle=bundle, trigger="login", seconds=0.001, now=NOW)
    finally:
        audit.log.removeHandler(caplog.handler)
    logged = [r.getMessage() for r in caplog.records if r.name == audit.LOGGER_NAME][-1]
    assert json.loads(logged) == line
    assert line["casa_audit"] == 1 and line["event"] == "mint" and line["user"] == "alice"
    assert line["time"] == NOW.isoformat() and line["trigger"] == "login"
    assert "xcache" in line["kinds"] and line["credentials"]["xcache"]["id"]
    for path, f in bundle.files.items():
        if path == "casa.json":
            continue
        for chunk in _secret_chunks(f.content):
            assert chunk not in logged, path


def _secret_chunks(content: bytes) -> list[str]:
    """Pieces of a credential file that must never appear in a log: a JWT's signature and payload, a PEM body
    line, a macaroon's serialisation."""
    text = content.decode(errors="replace").strip()
    if text.count(".") == 2 and "\n" not in text:
        return [text.split(".")[2], text.split(".")[1]]
    lines = [ln for ln in text.splitlines() if ln and not ln.startswith("-----")]
    return [ln for ln in lines if len(ln) >= 40] or [text[:40]]


def test_unknown_audit_events_are_a_programming_error():
    with pytest.raises(ValueError, match="unknown audit event 'minted'"):
        audit.record("minted", "alice")


def test_credential_id_of_files_without_one_is_none():
    assert audit.credential_id(b"endpoint: x\n") is None
    assert audit.credential_id(b"a.b.c") is None  # three parts but no JSON payload
    payload = base64.urlsafe_b64encode(b'{"sub": "x"}').rstrip(b"=")
    assert audit.credential_id(b"e30." + payload + b".sig") is None  # a JWT without jti


# ------------------------------------------------------------------ revocation state
def test_a_revocation_mark_refuses_minting_and_drops_the_stored_bundle():
    state = {"casa": {"user": "alice"}, "refresh_token": "r", "casa_identity": {"iss": "i", "sub": "s"}}
    marked = mark_revoked(state, NOW, "user:admin")
    assert "casa" not in marked and marked["refresh_token"] == "r" and "casa" in state  # the input is unchanged
    assert revoked_at(marked) == NOW
    assert revocation_refusal(marked) == "its credentials were revoked by an administrator at 2026-11-03T10:00:00+00:00"
    assert revocation_refusal(state) is None and revocation_refusal(None) is None
    # a damaged mark still refuses (fail closed)
    assert revocation_refusal({"casa_revoked": {"at": "yesterday"}}) is not None


async def test_the_revocation_list_survives_and_is_what_the_pool_generator_reads(tmp_path):
    store = CasaRevocations(list_file=str(tmp_path / "state" / "casa-revocations.json"))
    assert await store.load() == []
    await store.add("alice", NOW)
    await store.add("bob", NOW + datetime.timedelta(minutes=1))
    await store.add("alice", NOW + datetime.timedelta(hours=1))  # the later one is kept
    again = CasaRevocations(list_file=store.list_file)  # a restarted hub reads the file
    listed = await again.load()
    assert [(r.user, r.revoked_at) for r in listed] == [
        ("alice", NOW + datetime.timedelta(hours=1)),
        ("bob", NOW + datetime.timedelta(minutes=1)),
    ]
    assert revocation.loads(store.path.read_text()) == listed
    config = revocation.condor_revocation_config(listed)
    assert 'sub =?= "alice@$(TRUST_DOMAIN)"' in config
    assert not list(store.path.parent.glob(".casa-revocations.*"))  # no temporary file left behind


async def test_a_damaged_revocation_list_is_an_error_not_an_empty_list(tmp_path):
    store = CasaRevocations(list_file=str(tmp_path / "casa-revocations.json"))
    store.path.write_text("{not json")
    with pytest.raises(RuntimeError, match="is damaged"):
        await store.load()
    with pytest.raises(RuntimeError, match="is damaged"):
        await store.add("alice", NOW)
    assert store.path.read_text() == "{not json"  # nothing lost


class _Spawner:
    def __init__(self, active=True, pending=None):
        self.active, self.pending = active, pending


class _User:
    def __init__(self, name, state, spawners):
        self.name, self.state, self.spawners, self.saved = name, state, spawners, []

    async def get_auth_state(self):
        return self.state

    async def save_auth_state(self, state):
        self.saved.append(state)
        self.state = state


async def test_revoke_marks_first_then_stops_every_server_and_reports_what_it_could_not(tmp_path, minter):
    bundle = minter.mint("alice", email="alice@example.org", now=NOW)
    user = _User(
        "alice",
        {"casa": bundle.to_dict(), "refresh_token": "r"},
        {"": _Spawner(), "gpu": _Spawner(), "old": _Spawner(active=False)},
    )
    store = CasaRevocations(list_file=str(tmp_path / "revoked.json"))
    events = []

    async def stop(u, name):
        assert u.saved and "casa" not in u.state, "the mark is saved before any server stops"
        events.append(("stop", name))
        if name == "gpu":
            raise RuntimeError("Kubernetes is not answering")

    result = await revoke_user(
        user, actor="user:admin", now=NOW, store=store, stop_server=stop,
        stop_refreshing=lambda u: events.append(("stop_refreshing", u.name)),
    )  # fmt: skip
    assert events == [("stop_refreshing", "alice"), ("stop", ""), ("stop", "gpu")]
    assert result.servers_stopped == [""]
    assert result.errors == ["server 'gpu' did not stop: Kubernetes is not answering"]
    assert revoked_at(user.state) == NOW and user.state["casa_revoked"]["by"] == "user:admin"
    assert [r.user for r in await store.load()] == ["alice"]
    answer = result.to_dict()
    assert set(answer["credentials"]) == {c.name for c in audit.describe(bundle)}
    assert "installed" in answer["at_consumers"]["htcondor"]
    assert answer["at_consumers"]["xcache"].startswith("XRootD/XCache bearer tokens cannot be revoked")
    assert bundle.files["xcache.token"].content.decode().strip() not in json.dumps(answer)


# ------------------------------------------------------------------ the admin page's rows
def test_a_server_row_shows_kinds_ids_and_refresh_status_never_bytes(minter):
    from casa_hub.admin import server_row
    from casa_hub.refresher import RefreshStatus

    bundle = minter.mint("alice", email="alice@example.org", now=NOW)

    class Spawner:
        casa_bundle, casa_expires_at, ready, pending = bundle, bundle.expires_at, True, None

    class User:
        name = "alice"

    status = RefreshStatus("alice", "", bundle.expires_at, due_at=NOW, last_outcome="outage", last_error="down")
    row = server_row(User(), "", Spawner(), None, status)
    assert row["source"] == "server" and row["expires_at"] == bundle.expires_at.isoformat()
    assert {c["name"] for c in row["credentials"]} >= {"xcache", "htcondor", "servicex"}
    assert row["refresh"]["last_error"] == "down" and row["refresh"]["due_at"] == NOW.isoformat()
    text = json.dumps(row)
    assert bundle.files["xcache.token"].content.decode().strip() not in text
    # after a hub restart the server holds no bundle in memory: the stored copy is shown, and says so
    Spawner.casa_bundle = None
    assert server_row(User(), "", Spawner(), bundle, None)["source"] == "stored"


def test_minting_observes_its_duration_per_credential_kind(minter):
    from prometheus_client import REGISTRY

    def count(kind):
        return REGISTRY.get_sample_value("casa_mint_duration_seconds_count", {"kind": kind}) or 0

    before = {k.name: count(k.name) for k in minter.enabled_kinds}
    minter.mint("alice", email="alice@example.org", now=NOW)
    assert {"xcache", "htcondor"} <= set(before)
    assert all(count(name) == n + 1 for name, n in before.items())
