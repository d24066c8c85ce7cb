"""Identity and admission through a real hub while servers run, across a hub restart: JupyterHub +
configurable-http-proxy + CasaAuthenticator + CasaSpawner (Kubernetes emulator) + the demo OIDC provider.

Four users log in, three start servers. Then, at the provider, alice is renamed and dave loses his allowed
group; the admin blocks frank and restarts the hub. When the restored refresh timers fire, grace (nothing
changed) gets fresh credentials in her Secret, and alice and dave get none: their Secrets keep what they had
and nothing is minted or stored for the new name. Frank can neither start a server nor log in again, nor can
dave. Mallory, who set her user-editable name to "alice" at the provider, cannot take alice's hub account.
(A blocked user's running server is stopped by JupyterHub itself when the hub starts, JupyterHub >= 5.)
"""

from __future__ import annotations

import time

from casa_hub.credentials.bundle import CredentialBundle
from casa_hub.objects import secret_key
from tests.hub import hub as H
from tests.hub.kube import start_kube, stop_kube
from tests.hub.oidc import start_provider, stop_provider
from tests.support import free_port, need, wait_until


def _person(sub, name, groups=("cms",)):
    return {
        "sub": sub,
        "preferred_username": name,
        "email": f"{name}@casa.test",
        "email_verified": True,
        "groups": list(groups),
    }


USERS = [
    _person("sub-alice", "alice"),
    _person("sub-dave", "dave"),
    _person("sub-frank", "frank"),
    _person("sub-grace", "grace"),
    _person("sub-mallory", "mallory"),
]

TOKEN = secret_key("xcache.token")


def _users(hub) -> dict[str, dict]:
    with hub.api() as api:
        return {u["name"]: u for u in api.get("/users", params={"include_stopped_servers": "1"}).json()}


def _user(hub, name) -> dict:
    with hub.api() as api:
        return api.get(f"/users/{name}").json()


def _secret_token(kube, name) -> str:
    (secret,) = [
        s
        for s in kube.objects("secrets")
        if (s["metadata"].get("labels") or {}).get("hub.jupyter.org/username") == name
    ]
    return secret["data"][TOKEN]


def test_rename_lost_group_and_block_across_a_hub_restart(tmp_path):
    need(H.CHP.exists(), "configurable-http-proxy (npm ci)")
    kube = start_kube(tmp_path)
    provider = hub = None
    try:
        provider = start_provider(tmp_path, users=USERS)
        config = H.KUBE_SPAWNER_CONFIG.format(pod_port=free_port())  # refreshes ~30 s after login
        env = {"KUBECONFIG": str(kube.kubeconfig)}
        hub = H.start_hub(tmp_path / "hub", provider, extra_config=config, env=env)
        running = ("alice", "dave", "grace")
        assert H.oauth_login(hub, "sub-frank").last_callback.status_code == 302
        for name in running:
            assert H.oauth_login(hub, f"sub-{name}").last_callback.status_code == 302
            with hub.api() as api:
                assert api.post(f"/users/{name}/server", json={}).status_code in (201, 202)
        for name in running:
            wait_until(lambda: (_user(hub, name)["servers"].get("") or {}).get("ready"), 40, f"{name} ready")
        first = {name: _secret_token(kube, name) for name in running}

        # the provider renames alice and drops dave's group; mallory names herself alice
        provider.set_user("sub-alice", _person("sub-alice", "alice-renamed"))
        provider.set_user("sub-dave", _person("sub-dave", "dave", groups=["visitors"]))
        provider.set_user("sub-mallory", _person("sub-mallory", "alice"))
        # the admin blocks frank and restarts the hub (servers keep running)
        H.stop_hub(hub)
        (tmp_path / "hub" / "hub.log").rename(tmp_path / "hub" / "hub-before-restart.log")
        assert {name: _secret_token(kube, name) for name in running} == first, "refreshed before the restart"
        blocked = config + 'c.Authenticator.blocked_users = {"frank"}\n'
        hub = H.start_hub(tmp_path / "hub", provider, extra_config=blocked, env=env)

        # the control: grace's restored timer fires and her Secret gets fresh credentials
        wait_until(
            lambda: _secret_token(kube, "grace") != first["grace"],
            60,
            f"grace refreshed after the restart\n{hub.log()[-3000:]}",
        )
        wait_until(
            lambda: all(f"No fresh credentials for {n}" in hub.log() for n in ("alice", "dave")),
            20,
            f"refusals logged\n{hub.log()[-3000:]}",
        )
        time.sleep(1)
        log = hub.log()
        assert "No fresh credentials for alice: the provider now gives this identity another user name" in log
        assert "No fresh credentials for dave: it is no longer allowed" in log
        for name in ("alice", "dave"):
            assert _secret_token(kube, name) == first[name], f"{name} got fresh credentials"
            state = _user(hub, name)["auth_state"]
            assert CredentialBundle.from_dict(state["casa"]).user == name
            assert state["casa_identity"]["sub"] == f"sub-{name}"
        assert "alice-renamed" not in _users(hub)  # nothing minted or stored for the new name
        assert "Traceback" not in log
        with hub.api() as api:  # frank, blocked, gets no server (and so no credentials)
            assert api.post("/users/frank/server", json={}).status_code >= 400
        assert not [
            s
            for s in kube.objects("secrets")
            if (s["metadata"].get("labels") or {}).get("hub.jupyter.org/username") == "frank"
        ]

        # none of them gets back in, nor does mallory as alice
        for sub, message in (
            ("sub-dave", "not in a group allowed"),
            ("sub-frank", ""),
            ("sub-mallory", "belongs to another identity"),
        ):
            callback = H.oauth_login(hub, sub).last_callback
            assert callback.status_code == 403, (sub, callback.status_code)
            assert message in H.page_message(callback.text)
        assert _user(hub, "alice")["auth_state"]["casa_identity"]["sub"] == "sub-alice"
    finally:
        if hub is not None:
            H.stop_hub(hub)
        if provider is not None:
            stop_provider(provider)
        stop_kube(kube)
