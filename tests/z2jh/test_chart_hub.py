"""Casa under Z2JH's own hub configuration: helm-values/values.yaml merged over the chart's defaults as Helm
does, the hub pod laid out as the chart's templates lay it out, and the chart's unmodified
``jupyterhub_config.py`` run by ``jupyterhub --config /usr/local/etc/jupyterhub/jupyterhub_config.py``
(tests/z2jh/pod.py), with the chart's proxy beside it, the demo OIDC provider, and KubeSpawner reaching the
Kubernetes emulator over TLS through in-cluster config, under the chart's hub Role."""

from __future__ import annotations

import base64
import json

import pytest
import yaml

from casa_hub.credentials.bundle import CredentialBundle
from casa_hub.credentials.kind import kind_class
from casa_hub.objects import secret_key
from tests import helm
from tests.hub import hub as H
from tests.hub.kube import assert_credentials_mounted
from tests.support import wait_until
from tests.z2jh import pod as P
from tests.z2jh.conftest import KEY_FILES, KEY_SECRET, NAMESPACE, key_secret


# ------------------------------------------------------------------ cheap checks of the emulation itself
def test_helm_merge_maps_merge_lists_replace_null_removes():
    base = {"a": {"b": 1, "c": [1, 2], "d": {"e": 1}}, "f": 1}
    assert helm.merge(base, {"a": {"c": [3], "d": {"g": 2}}, "f": None, "h": None}) == {
        "a": {"b": 1, "c": [3], "d": {"e": 1, "g": 2}},
        "h": None,
    }
    assert base["a"]["c"] == [1, 2]  # the defaults are not changed


def test_the_chart_deployment_still_mounts_and_sets_what_pod_py_emulates():
    """Re-vendoring a newer chart: the hub container's mounts, env and args that pod.py reproduces are
    still those of the chart's deployment.yaml and the paths its jupyterhub_config.py / z2jh.py read."""
    deployment = (P.CHART_HUB / "deployment.yaml").read_text()
    for text in (
        f"mountPath: {P.ETC}/jupyterhub_config.py",
        f"mountPath: {P.ETC}/z2jh.py",
        f"mountPath: {P.ETC}/config/",
        f"mountPath: {P.ETC}/secret/",
        "mountPath: /srv/jupyterhub",
        "- jupyterhub\n",
        f"- {P.HUB_ARGS_CONFIG}\n",
        "- --upgrade-db",
        "name: POD_NAMESPACE",
        "name: CONFIGPROXY_AUTH_TOKEN",
        "key: hub.config.ConfigurableHTTPProxy.auth_token",
        "name: HELM_RELEASE_NAME",
        "name: PYTHONUNBUFFERED",
        ".Values.hub.extraVolumeMounts",
    ):
        assert text in deployment, text
    z2jh = (P.CHART_HUB / "z2jh.py").read_text()
    assert '"secret/values.yaml", "existing-secret/values.yaml"' in z2jh and f"{P.ETC}/config/{{key}}" in z2jh
    secret = (P.CHART_HUB / "secret.yaml").read_text()
    for key in (
        "values.yaml:",
        "hub.config.ConfigurableHTTPProxy.auth_token:",
        "hub.config.JupyterHub.cookie_secret:",
        "hub.config.CryptKeeper.keys:",
        "hub.services.{{ $key }}.apiToken:",
    ):
        assert key in secret, key
    assert '(.Files.Glob "files/hub/*").AsConfig' in (P.CHART_HUB / "configmap.yaml").read_text()
    config = (P.CHART_HUB / "jupyterhub_config.py").read_text()
    assert 'get_name_env("proxy-api", "_SERVICE_PORT")' in config and 'os.environ.get("POD_NAMESPACE"' in config


def test_casa_values_line_up_with_the_chart():
    """helm-values/values.yaml as Helm renders it: valid for the chart's schema, every hub mount has its
    volume, and the key files hub.config.CasaMinter names lie in the mounted key Secret."""
    values = helm.values(helm.CASA_VALUES)
    assert helm.schema_errors(values) == []
    volumes = {v["name"]: v for v in values["hub"]["extraVolumes"]}
    (mount,) = [
        m
        for m in values["hub"]["extraVolumeMounts"]
        if volumes[m["name"]].get("secret", {}).get("secretName") == KEY_SECRET
    ]
    config = values["hub"]["config"]
    # every key file the configuration names, as "Section.trait" (CasaMinter's and each credential kind's)
    files = {
        f"{section}.{trait}": value
        for section, traits in config.items()
        for trait, value in traits.items()
        if trait.endswith("_file")
    }
    assert files and all(v.startswith(mount["mountPath"] + "/") for v in files.values()), files
    kinds = [kind_class(name) for name in config["CasaMinter"]["kinds"]]
    needed = {"CasaMinter.issuer_key_file"} | {  # the key files of every enabled kind
        f"{cls.__name__}.{trait}"
        for cls in kinds
        for trait in cls.class_trait_names(config=True)
        if trait.endswith("_file")
    }
    assert "DaskTLS.ca_secret_file" in needed and set(files) >= needed, needed - set(files)
    offered = set(KEY_FILES.values())  # what the test's casa-hub-keys Secret holds (admin guide §1)
    assert {files[k].rsplit("/", 1)[1] for k in needed} <= offered


def test_a_mount_without_its_volume_stops_the_pod(tmp_path):
    values = helm.values(helm.CASA_VALUES)
    values["hub"]["extraVolumes"][0]["name"] = "casa-keys"
    with pytest.raises(P.ChartError, match="no volume named 'casa-hub-keys' in hub.extraVolumes"):
        P.extra_volume_dirs(values, {KEY_SECRET: {}}, tmp_path)
    values = helm.values(helm.CASA_VALUES)
    with pytest.raises(P.ChartError, match="Secret 'casa-hub-keys' not found"):
        P.extra_volume_dirs(values, {}, tmp_path)


# ------------------------------------------------------------------ the hub under the chart's config
def _user(hub, name):
    with hub.api() as api:
        return api.get(f"/users/{name}").json()


def _pod(cluster, name):
    return next((p for p in cluster.objects("pods") if p["metadata"]["name"] == f"jupyter-{name}"), None)


def _secret(cluster, name):
    return next((s for s in cluster.objects("secrets") if s["metadata"]["name"] == f"casa-{name}"), None)


def test_login_gpu_spawn_and_stop_under_the_chart_config(cluster, tmp_path):
    with cluster.deploy(tmp_path) as deployment:
        hub = deployment.hub
        log = deployment.hub_proc.log()
        # the chart's own config ran, with Casa's values passed through it
        assert "Loading pass-through config section hub.config.CasaMinter" in log
        assert "Loading extra config: casa-sqlite-wal" in log
        assert "Using Authenticator: casa_hub.authenticator.CasaAuthenticator" in log
        assert "Using Spawner: casa_hub.spawner.CasaSpawner" in log
        # helm-values sets CasaAuthenticator.freeze_startup_heap: done once the hub serves
        frozen = "start-up objects out of full garbage collections"
        wait_until(lambda: frozen in deployment.hub_proc.log(), timeout=10, what=f"the log line {frozen!r}")

        # the JupyterHub and Python this run is meant to run the chart's config on
        H.check_runtime(hub, "chart hub process")

        # in a pod: no kubeconfig, the API server over TLS as in-cluster config finds it, no crypt key in the env
        # (CryptKeeper.keys come from the chart's Secret)
        env = deployment.pod.env
        assert "KUBECONFIG" not in env and "JUPYTERHUB_CRYPT_KEY" not in env
        assert cluster.kube.tls_url == f"https://{env['KUBERNETES_SERVICE_HOST']}:{env['KUBERNETES_SERVICE_PORT']}"

        alice = H.oauth_login(hub, "alice")
        assert alice.last_callback.status_code == 302, alice.last_callback.text
        form = H.follow(alice, alice.get(hub.url + "/hub/spawn"))
        assert form.status_code == 200
        text = H.page_message(form.text)
        assert "GPU" in text and "2 × A100" in text and "MIG" in text
        r = alice.post(
            hub.url + "/hub/spawn", data={"_xsrf": H.xsrf(alice), "profile": "gpu", "profile-option-gpu--gpus": "two"}
        )
        assert r.status_code == 302, (r.status_code, H.page_message(r.text)[:2000])
        wait_until(
            lambda: (_user(hub, "alice")["servers"].get("") or {}).get("ready"),
            timeout=30,
            what=f"alice's server ready\n{deployment.hub_proc.log()[-4000:]}",
        )

        pod, secret = _pod(cluster, "alice"), _secret(cluster, "alice")
        bundle = CredentialBundle.from_dict(_user(hub, "alice")["auth_state"]["casa"])
        container, _ = assert_credentials_mounted(pod, secret, bundle, "alice")
        # the profile and option alice picked, from helm-values' singleuser.profileList
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"
        assert pod["spec"]["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        assert any(t["key"] == "nvidia.com/gpu" for t in pod["spec"]["tolerations"])
        # ... and what only the chart's config sets: its labels, image, user storage, scheduler, fsGroup
        labels = pod["metadata"]["labels"]
        assert labels["app.kubernetes.io/managed-by"] == "kubespawner" and labels["release"] == "jhub"
        assert labels["helm.sh/chart"] == f"jupyterhub-{P.CHART['Version']}"
        assert container["image"] == "registry.example.org/casa/notebook:0.1.0"
        assert any(v.get("persistentVolumeClaim") for v in pod["spec"]["volumes"])
        assert pod["spec"]["schedulerName"] == P.name_templates(deployment.values)["user-scheduler"]
        assert pod["spec"]["schedulerName"] == "jhub-user-scheduler"  # the chart's name for release jhub
        assert pod["spec"]["securityContext"]["fsGroup"] == 100
        assert pod["metadata"]["namespace"] == NAMESPACE
        # the user extension's settings (singleuser.extraFiles): the chart's Secret, mounted where Jupyter reads it
        singleuser = P.name_templates(deployment.values)["singleuser"]
        (files,) = [v for v in pod["spec"]["volumes"] if v.get("secret", {}).get("secretName") == singleuser]
        (mount,) = [m for m in container["volumeMounts"] if m["name"] == files["name"]]
        assert mount["mountPath"] == "/etc/jupyter/jupyter_casa_hub_ext_config.json"
        (chart_files,) = [s for s in cluster.objects("secrets") if s["metadata"]["name"] == singleuser]
        settings = json.loads(base64.b64decode(chart_files["data"][mount["subPath"]]))
        assert settings["CasaClusterSettings"]["login_cluster"]["backend"] == "local"  # a scheduler at login

        # through the chart's proxy (routes added over the proxy-api Service) to alice's server
        served = alice.get(hub.url + "/user/alice/api/status")
        assert served.status_code == 200 and served.json()["pod"] == "jupyter-alice", served.text

        # the chart's user-pod tolerations stay beside the GPU profile's (scheduling.userPods.tolerations)
        chart_tolerations = deployment.values["scheduling"]["userPods"]["tolerations"]
        assert chart_tolerations and pod["spec"]["tolerations"][: len(chart_tolerations)] == chart_tolerations

        # the refresh reaches the running pod with the chart's Role alone (no patch, no update: delete + create)
        token_key = secret_key("xcache.token")
        refreshed = wait_until(
            lambda: (lambda s: s if s and s["data"][token_key] != secret["data"][token_key] else None)(
                _secret(cluster, "alice")
            ),
            timeout=40,
            what=f"Secret refreshed\n{deployment.hub_proc.log()[-4000:]}",
        )
        [audience] = deployment.values["hub"]["config"]["XCacheToken"]["audience"]  # the facility's XCache
        H.assert_renewed_for(
            hub,
            "alice",
            base64.b64decode(refreshed["data"][token_key]),
            base64.b64decode(secret["data"][token_key]),
            audience=audience,
        )
        assert refreshed["metadata"]["labels"] == secret["metadata"]["labels"]
        assert len([s for s in cluster.objects("secrets") if s["metadata"]["name"] == "casa-alice"]) == 1
        assert "Delivered fresh credentials to alice" in deployment.hub_proc.log()

        with hub.api() as api:
            assert api.delete("/users/alice/server").status_code in (202, 204)
        wait_until(lambda: not _user(hub, "alice")["servers"], timeout=30, what="alice's server stopped")
        wait_until(
            lambda: _pod(cluster, "alice") is None and _secret(cluster, "alice") is None,
            timeout=15,
            what="pod and Secret removed",
        )
        log = deployment.hub_proc.log()
    assert "Traceback" not in log, log[-6000:]
    for token in (bundle.files["xcache.token"].content.decode().strip(),):
        assert token[:40] not in log


# ------------------------------------------------------------------ what an admin sees for a wrong value
def _failed_start(cluster, work, *, values_text=None, secret_data=None, timeout=60) -> tuple[int, str]:
    pod, _, _ = cluster.prepare(work, values_text, secret_data=secret_data)
    proc = pod.start()
    try:
        rc = proc.proc.wait(timeout)
    finally:
        proc.stop()
    return rc, proc.log()


def test_misspelled_casa_setting_is_named_with_its_right_spelling(cluster, tmp_path):
    """``hub.config.CasaMinter.issuer_key_fil``: Z2JH's schema lets hub.config.<Class> through untouched, so
    Casa's startup reports it: the unknown name, its right spelling, and what is missing."""
    text = helm.CASA_VALUES.read_text()
    typo = text.replace("      issuer_key_file:", "      issuer_key_fil:")
    assert typo != text
    assert helm.schema_errors(helm.values(typo)) == []  # Helm takes it
    rc, log = _failed_start(cluster, tmp_path, values_text=typo)
    assert rc != 0, log[-4000:]
    (warning,) = [line for line in log.splitlines() if "`issuer_key_fil` not recognized by `CasaMinter`" in line]
    assert "Did you mean" in warning and "`issuer_key_file" in warning, warning
    assert "Casa cannot start: CasaMinter.issuer_key_file is not set" in log
    assert "Traceback" not in log and "JupyterHub is now running" not in log


def test_missing_key_file_in_the_secret_names_the_file(cluster, tmp_path):
    keys = key_secret(tmp_path / "admin-keys")
    del keys["issuer.pem"]
    rc, log = _failed_start(cluster, tmp_path, secret_data={KEY_SECRET: keys})
    assert rc != 0, log[-4000:]
    assert (
        "Casa cannot start: cannot read the issuer signing key at '/etc/casa-hub/keys/issuer.pem': No such file "
        "or directory"
    ) in log
    assert "Traceback" not in log and "JupyterHub is now running" not in log


def test_misplaced_section_is_refused_by_the_chart_schema():
    """A lower-case hub.config section (a misplaced key) never reaches the hub: Helm refuses the values."""
    values = yaml.safe_load(helm.CASA_VALUES.read_text())
    values["hub"]["config"]["casaMinter"] = values["hub"]["config"].pop("CasaMinter")
    errors = helm.schema_errors(helm.values(values))
    assert any(e.startswith("hub.config:") and "'casaMinter'" in e for e in errors), errors
