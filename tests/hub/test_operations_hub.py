"""Operating the facility with a real hub: Prometheus metrics at /hub/metrics, the admin credentials page and its
REST API, renew now, revoke, and the audit log.

JupyterHub + configurable-http-proxy + CasaAuthenticator + CasaSpawner against the Kubernetes emulator
(tests/hub/kube.py, a subprocess) and the demo OIDC provider behind a proxy that can take it down
(tests/hub/slow_proxy.py). Users log in through the real OAuth flow and start servers; an admin renews and
revokes through the API and the page; faults are injected in Kubernetes (Secret writes refused) and at the
provider (down). After each step the test scrapes /hub/metrics and checks that the values moved as they should.
The tests of this module run in order on one hub.
"""

from __future__ import annotations

import base64
import json
import re

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.hub import hub as H
from tests.hub.kube import start_kube, stop_kube
from tests.hub.oidc import start_provider, stop_provider
from tests.hub.slow_proxy import SlowProxy
from tests.support import free_port, need, wait_until

EXTRA = """
c.JupyterHub.load_roles.append({{"name": "casa-metrics", "scopes": ["read:metrics"], "services": ["casa-test"]}})
c.KubeSpawner.k8s_api_request_timeout = 2
c.KubeSpawner.k8s_api_request_retry_timeout = 4
c.CasaAuthenticator.discovery_timeout = 2
c.CasaRevocations.list_file = {revocations!r}
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    need(H.CHP.exists(), "configurable-http-proxy (npm ci)")
    tmp = tmp_path_factory.mktemp("ops")
    kube = start_kube(tmp)
    provider = start_provider(tmp)
    try:
        with SlowProxy(provider.port) as proxy:  # the hub knows the provider by the proxy's address
            config = H.KUBE_SPAWNER_CONFIG.format(pod_port=free_port()) + EXTRA.format(
                revocations=str(tmp / "casa-revocations.json")
            )
            hub = H.start_hub(tmp / "hub", proxy, extra_config=config, env={"KUBECONFIG": str(kube.kubeconfig)})
            try:
                yield hub, kube, proxy
            finally:
                H.stop_hub(hub)
    finally:
        stop_provider(provider)
        stop_kube(kube)


# ------------------------------------------------------------------ helpers
def scrape(hub) -> dict[tuple, float]:
    """``{(sample name, ((label, value), ...)): value}`` of every casa_* sample at /hub/metrics."""
    r = httpx.get(hub.url + "/hub/metrics", headers={"Authorization": f"token {hub.api_token}"}, timeout=10)
    assert r.status_code == 200, r.text
    samples = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            if s.name.startswith("casa_"):
                samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples, name, **labels) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def moved(before, after, name, **labels) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def api(hub, method, path, token=None, **kwargs) -> httpx.Response:
    headers = {"Authorization": f"token {token or hub.api_token}"}
    return httpx.request(method, hub.url + "/hub/api" + path, headers=headers, timeout=90, **kwargs)


def spawn(hub, name):
    r = api(hub, "POST", f"/users/{name}/server")
    assert r.status_code in (201, 202), r.text
    wait_until(lambda: (api(hub, "GET", f"/users/{name}").json()["servers"].get("") or {}).get("ready"), what=name)


def spawn_failure(hub, name) -> str:
    """The message of a refused spawn: the API's answer if it failed at once, else the progress stream's."""
    r = api(hub, "POST", f"/users/{name}/server")
    if r.status_code >= 400:
        return r.json().get("message", "")
    with httpx.stream("GET", f"{hub.url}/hub/api/users/{name}/server/progress", timeout=60,
                      headers={"Authorization": f"token {hub.api_token}"}) as progress:  # fmt: skip
        for line in progress.iter_lines():
            if line.startswith("data:") and json.loads(line[5:]).get("failed"):
                return json.loads(line[5:]).get("message", "")
    return ""


def secret(kube, name):
    return next((s for s in kube.objects("secrets") if s["metadata"]["name"] == f"casa-{name}"), None)


def audit_lines(hub) -> list[dict]:
    return [json.loads(line) for line in hub.log().splitlines() if line.startswith('{"casa_audit"')]


def user_token(hub, name) -> str:
    r = api(hub, "POST", f"/users/{name}/tokens", json={"note": "ops test"})
    assert r.status_code == 201, r.text
    return r.json()["token"]


# ------------------------------------------------------------------ the tests, in order
def test_logins_spawns_and_a_renewal_move_the_metrics(site):
    hub, kube, _ = site
    before = scrape(hub)
    assert value(before, "casa_servers_with_credentials") == 0
    for name in ("alice", "bob", "admin"):
        H.oauth_login(hub, name)
    for name in ("alice", "bob"):
        spawn(hub, name)
    after = scrape(hub)
    assert moved(before, after, "casa_mints_total", outcome="success") >= 3  # one per login at least
    assert moved(before, after, "casa_mint_duration_seconds_count", kind="bundle") >= 3
    assert moved(before, after, "casa_secret_writes_total", operation="create", outcome="success") == 2
    assert value(after, "casa_servers_with_credentials") == 2

    r = api(hub, "POST", "/casa/credentials/alice/renew")
    assert r.status_code == 200, r.text
    assert r.json()["renewed"] is True and r.json()["server"]["refresh"]["last_outcome"] == "renewed"
    renewed = scrape(hub)
    assert moved(after, renewed, "casa_refreshes_total", outcome="success") >= 1
    assert moved(after, renewed, "casa_secret_writes_total", operation="replace", outcome="success") >= 1
    assert moved(after, renewed, "casa_mints_total", outcome="success") >= 1


def test_a_refused_secret_write_is_a_delivery_failure_and_the_next_renewal_repairs_it(site):
    hub, kube, _ = site
    before = scrape(hub)
    kube.fault("POST", "secrets", 500, count=1000)
    try:
        r = api(hub, "POST", "/casa/credentials/alice/renew")
    finally:
        kube.clear_faults()
    assert r.status_code == 502, r.text
    assert "Kubernetes" in r.json()["error"]
    after = scrape(hub)
    assert moved(before, after, "casa_delivery_failures_total", cause="kubernetes_unavailable") == 1
    assert moved(before, after, "casa_refreshes_total", outcome="error") == 1
    assert moved(before, after, "casa_secret_writes_total", operation="replace", outcome="error") == 1
    r = api(hub, "POST", "/casa/credentials/alice/renew")
    assert r.status_code == 200, r.text
    assert secret(kube, "alice") is not None


def test_provider_down_is_an_outage_and_the_page_shows_the_last_error(site):
    hub, kube, proxy = site
    before = scrape(hub)
    proxy.drop = True
    try:
        r = api(hub, "POST", "/casa/credentials/bob/renew")
    finally:
        proxy.drop = False
    assert r.status_code == 503, r.text
    after = scrape(hub)
    assert moved(before, after, "casa_provider_outages_total", during="refresh") >= 1
    assert moved(before, after, "casa_refreshes_total", outcome="provider_unavailable") == 1
    model = api(hub, "GET", "/casa/credentials/bob").json()
    (row,) = model["servers"]
    assert row["refresh"]["last_outcome"] == "outage" and "provider" in row["refresh"]["last_error"]
    assert value(after, "casa_credentials_expiring_soon") == 0
    # the provider stays down past the servers' due renewals (90 s credentials, renewed 60 s before expiry):
    # the gauge shows servers whose credentials are inside the margin, and goes back once renewals work again
    proxy.drop = True
    try:
        wait_until(lambda: value(scrape(hub), "casa_credentials_expiring_soon") >= 1, timeout=60, what="gauge up")
    finally:
        proxy.drop = False
    for name in ("alice", "bob"):
        assert api(hub, "POST", f"/casa/credentials/{name}/renew").status_code == 200
    assert value(scrape(hub), "casa_credentials_expiring_soon") == 0


def test_the_admin_page_answers_who_holds_what_until_when(site):
    hub, kube, _ = site
    admin = H.oauth_login(hub, "admin")
    page = admin.get(hub.url + "/hub/casa/credentials")
    assert page.status_code == 200, page.text
    listed = api(hub, "GET", "/casa/credentials").json()["servers"]
    assert {(s["user"], s["server"]) for s in listed} == {("alice", ""), ("bob", "")}
    for row in listed:
        assert f'data-user="{row["user"]}"' in page.text
        kinds = {c["name"] for c in row["credentials"]}
        assert {"xcache", "htcondor"} <= kinds, kinds
        for c in row["credentials"]:
            assert f'data-kind="{c["name"]}"' in page.text
            if c["expires_at"]:
                assert c["expires_at"] in page.text
        assert row["expires_at"] and row["refresh"]["due_at"]
    # the holder of each credential, by its id: the same id the Secret's token carries
    alice = next(r for r in listed if r["user"] == "alice")
    token = base64.b64decode(secret(kube, "alice")["data"]["xcache.token"]).decode().strip()
    payload = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    assert {c["name"]: c["id"] for c in alice["credentials"]}["xcache"] == payload["jti"]
    assert token not in page.text and token not in json.dumps(listed)

    # a user is not an admin: 403 on the page and on the API; nobody logged in: to the login page
    alice_browser = H.oauth_login(hub, "alice")
    assert alice_browser.get(hub.url + "/hub/casa/credentials").status_code == 403
    alice_token = user_token(hub, "alice")
    for method, path in [("GET", "/casa/credentials"), ("GET", "/casa/credentials/bob"),
                         ("POST", "/casa/credentials/bob/renew"), ("POST", "/casa/credentials/bob/revoke"),
                         ("GET", "/casa/revocations")]:  # fmt: skip
        r = api(hub, method, path, token=alice_token)
        assert r.status_code in (403, 404), (method, path, r.status_code)
        assert "bob" not in r.text or r.status_code == 404
    anonymous = httpx.get(hub.url + "/hub/casa/credentials", timeout=10)
    assert anonymous.status_code == 302 and "/hub/login" in anonymous.headers["location"]


def test_bad_requests_get_clear_4xx(site):
    hub, kube, _ = site
    r = api(hub, "POST", "/casa/credentials/nobody/revoke")
    assert r.status_code == 404 and "No such user: 'nobody'" in r.json()["message"]
    r = api(hub, "POST", "/casa/credentials/nobody/renew")
    assert r.status_code == 404
    r = api(hub, "POST", "/casa/credentials/admin/renew")  # admin logged in but runs no server
    assert r.status_code == 409 and "has no running server" in r.json()["message"]
    r = api(hub, "GET", "/casa/revocations?format=xml")
    assert r.status_code == 400 and "expected 'json'" in r.json()["message"]


def test_the_page_renews_with_its_button_and_refuses_a_form_without_xsrf(site):
    hub, kube, _ = site
    admin = H.oauth_login(hub, "admin")
    page = admin.get(hub.url + "/hub/casa/credentials")
    token = re.search(r'name="_xsrf" value="([^"]+)"', page.text).group(1)
    before = scrape(hub)
    r = admin.post(hub.url + "/hub/casa/credentials/alice/renew", data={"_xsrf": token, "server": ""})
    assert r.status_code == 302 and "Renewed+the+credentials+of+alice" in r.headers["location"], r.text
    assert moved(before, scrape(hub), "casa_refreshes_total", outcome="success") == 1
    r = admin.post(hub.url + "/hub/casa/credentials/alice/renew", data={"server": ""})
    assert r.status_code == 403


def test_revoke_stops_deletes_lists_and_refuses_until_a_new_login(site):
    hub, kube, _ = site
    before = scrape(hub)
    held = {k: base64.b64decode(v) for k, v in secret(kube, "bob")["data"].items()}
    r = api(hub, "POST", "/casa/credentials/bob/revoke")
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["servers_stopped"] == [""] and answer["errors"] == []
    assert "bearer tokens cannot be revoked" in answer["at_consumers"]["xcache"]
    assert "condor-revocations" in answer["at_consumers"]["htcondor"]
    # the server is stopped and its Secret gone
    assert not api(hub, "GET", "/users/bob").json()["servers"]
    wait_until(lambda: secret(kube, "bob") is None, what="bob's Secret deleted")
    assert moved(before, scrape(hub), "casa_revocations_total") == 1
    # listed for the pool (the JSON the keys command reads, and its HTCondor configuration)
    listed = api(hub, "GET", "/casa/revocations").json()
    assert [e["user"] for e in listed["revoked"]] == ["bob"]
    assert 'sub =?= "bob@$(TRUST_DOMAIN)"' in api(hub, "GET", "/casa/revocations?format=condor").text
    # no re-minting until bob logs in again: a spawn is refused with a clear message, a renewal is a 409
    message = spawn_failure(hub, "bob")
    # Casa's sentence, or JupyterHub 5's own for a refresh that said no ("auth has expired ..., login again")
    assert "revoked" in message or re.search(r"log ?in again", message.lower()), message
    assert api(hub, "GET", "/casa/credentials/bob").json()["revoked_at"] == answer["revoked_at"]
    # a new login lifts it
    H.oauth_login(hub, "bob")
    assert api(hub, "GET", "/casa/credentials/bob").json()["revoked_at"] is None
    spawn(hub, "bob")
    fresh = {k: base64.b64decode(v) for k, v in secret(kube, "bob")["data"].items()}
    assert fresh["xcache.token"] != held["xcache.token"]
    api(hub, "DELETE", "/users/bob/server")


def test_the_audit_log_has_a_line_per_event_and_no_secret(site):
    hub, kube, _ = site
    r = httpx.get(hub.url + "/hub/metrics", headers={"Authorization": f"token {hub.api_token}"}, timeout=10)
    print("".join(line + "\n" for line in r.text.splitlines() if line.startswith("casa_")))  # for the run's log
    lines = audit_lines(hub)
    events = {(a["event"], a["user"], a["outcome"]) for a in lines}
    assert ("mint", "alice", "success") in events
    assert ("refresh", "alice", "success") in events and ("refresh", "alice", "error") in events
    assert ("delivery", "alice", "success") in events
    assert ("renew", "alice", "success") in events
    assert ("revoke", "bob", "success") in events
    revoke = next(a for a in lines if a["event"] == "revoke")
    assert revoke["actor"] == "service:casa-test" and revoke["credentials"]["htcondor"]["id"]
    for a in lines:
        assert set(a) >= {"casa_audit", "time", "event", "user", "outcome", "kinds", "credentials"}
    # nothing of what the servers held appears anywhere in the hub's log
    log = hub.log()
    held = {k: base64.b64decode(v) for k, v in secret(kube, "alice")["data"].items()}
    for key, content in held.items():
        text = content.decode(errors="replace").strip()
        if key == "casa.json" or key.endswith(".crt") or key.endswith(".pem") or key == "servicex.yaml":
            continue  # public: the manifest, certificates, the client configuration
        for chunk in _secret_parts(text):
            assert chunk not in log, key


def _secret_parts(text: str) -> list[str]:
    if text.count(".") == 2 and "\n" not in text:  # a JWT: its payload and signature
        return text.split(".")[1:]
    lines = [ln for ln in text.splitlines() if ln and not ln.startswith("-----")]
    return [ln for ln in lines if len(ln) >= 24] or [text]
