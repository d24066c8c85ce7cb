"""Casa's pure Kubernetes builders, compared with exact expected objects in the API's JSON form (like
kubespawner's tests/test_objects.py): no cluster, bytes in, bytes out."""

from __future__ import annotations

import base64
import datetime

import pytest
from kubernetes_asyncio.client import ApiClient
from kubernetes_asyncio.client.models import V1Container, V1EnvVar, V1ObjectMeta, V1Pod, V1PodSpec, V1Volume
from kubespawner.objects import make_owner_reference

from casa_hub import objects
from casa_hub.credentials.bundle import BundleFile, CredentialBundle

EXP = datetime.datetime(2026, 11, 23, 18, 0, tzinfo=datetime.timezone.utc)
BUNDLE = CredentialBundle(
    user="alice",
    issued_at=EXP - datetime.timedelta(hours=6),
    files={
        "xcache.token": BundleFile(b"tok\n", 0o400, EXP),
        "dask/ca.pem": BundleFile(b"CA", 0o444),
        "condor-tokens/casa": BundleFile(b"\x00\xffbin", 0o400, EXP + datetime.timedelta(hours=1)),
    },
    env={
        "BEARER_TOKEN_FILE": "{mount}/xcache.token",
        "CASA_CREDENTIALS_DIR": "{mount}",
        "_CONDOR_SEC_TOKEN_DIRECTORY": "{mount}/condor-tokens",
    },
)
OWNER = make_owner_reference("jupyter-alice", "uid-1")
OWNER_JSON = {
    "apiVersion": "v1",
    "kind": "Pod",
    "name": "jupyter-alice",
    "uid": "uid-1",
    "blockOwnerDeletion": True,
    "controller": False,
}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def api(obj):
    """The JSON the Kubernetes API receives (kubernetes_asyncio's own serializer)."""
    return _SERIALIZER.sanitize_for_serialization(obj)


_SERIALIZER = object.__new__(ApiClient)  # its serializer needs no connection


def test_credentials_secret():
    secret = objects.make_credentials_secret("casa-alice", "jhub", BUNDLE, {"app": "jupyterhub"}, [OWNER])
    assert api(secret) == {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": "casa-alice",
            "namespace": "jhub",
            "labels": {"app": "jupyterhub"},
            "annotations": {"casa-hub/expires-at": "2026-11-23T18:00:00+00:00"},
            "ownerReferences": [OWNER_JSON],
        },
        "data": {"condor-tokens__casa": b64(b"\x00\xffbin"), "dask__ca.pem": b64(b"CA"), "xcache.token": b64(b"tok\n")},
    }


def test_credentials_secret_without_owner_or_expiry():
    bundle = CredentialBundle(user="alice", issued_at=EXP, files={"dask/ca.pem": BundleFile(b"CA", 0o444)})
    assert api(objects.make_credentials_secret("casa-alice", "jhub", bundle)) == {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {"name": "casa-alice", "namespace": "jhub", "labels": {}, "annotations": {}, "ownerReferences": []},
        "data": {"dask__ca.pem": b64(b"CA")},
    }


@pytest.mark.parametrize("path", ["../x", "a b", "sp@ce", "a/../../b"])
def test_paths_that_cannot_be_secret_keys_are_refused(path):
    bundle = CredentialBundle(user="alice", issued_at=EXP, files={path: BundleFile(b"x")})
    with pytest.raises(ValueError):
        objects.make_credentials_secret("casa-alice", "jhub", bundle)


def test_two_paths_mapping_to_one_key_are_refused():
    bundle = CredentialBundle(user="alice", issued_at=EXP, files={"a/b": BundleFile(b"1"), "a__b": BundleFile(b"2")})
    with pytest.raises(ValueError, match="two bundle paths map to the Secret key 'a__b'"):
        objects.make_credentials_secret("casa-alice", "jhub", bundle)


@pytest.mark.parametrize("group_readable,owner_only", [(True, 0o440), (False, 0o400)])
def test_volume_items_carry_each_files_mode(group_readable, owner_only):
    assert api(objects.make_credentials_volume("casa-alice", BUNDLE, group_readable)) == {
        "name": "casa-credentials",
        "secret": {
            "secretName": "casa-alice",
            "defaultMode": 0o400,
            "items": [
                {"key": "condor-tokens__casa", "path": "condor-tokens/casa", "mode": owner_only},
                {"key": "dask__ca.pem", "path": "dask/ca.pem", "mode": 0o444},
                {"key": "xcache.token", "path": "xcache.token", "mode": owner_only},
            ],
        },
    }


@pytest.mark.parametrize(
    "mode,group_readable,expected",
    [
        (0o400, True, 0o440),
        (0o400, False, 0o400),
        (0o444, True, 0o444),
        (0o600, True, 0o640),
        (0o666, False, 0o644),
        (0o000, True, 0o000),
    ],
)
def test_pod_file_mode_never_group_or_world_writable(mode, group_readable, expected):
    assert objects.pod_file_mode(mode, group_readable) == expected


def test_mount_and_env():
    assert api(objects.make_credentials_mount("/etc/casa")) == {
        "name": "casa-credentials",
        "mountPath": "/etc/casa",
        "readOnly": True,
    }
    # with or without a trailing "/", the same paths
    assert api(objects.make_credentials_env(BUNDLE, "/etc/casa")) == api(
        objects.make_credentials_env(BUNDLE, "/etc/casa/")
    )
    assert api(objects.make_credentials_env(BUNDLE, "/etc/casa/")) == [
        {"name": "BEARER_TOKEN_FILE", "value": "/etc/casa/xcache.token"},
        {"name": "CASA_CREDENTIALS_DIR", "value": "/etc/casa"},
        {"name": "_CONDOR_SEC_TOKEN_DIRECTORY", "value": "/etc/casa/condor-tokens"},
    ]


def test_upserts_replace_by_name():
    vols = objects.upsert_volume(
        [{"name": "casa-credentials", "old": True}, {"name": "home"}], objects.make_credentials_mount("/x")
    )
    assert [objects._name(v) for v in vols] == ["home", "casa-credentials"]


def _pod(**container):
    return V1Pod(
        metadata=V1ObjectMeta(name="jupyter-alice"),
        spec=V1PodSpec(
            volumes=[V1Volume(name="home")],
            containers=[V1Container(name="notebook", image="nb", **container), V1Container(name="sidecar", image="s")],
        ),
    )


def test_add_credentials_to_pod_is_idempotent():
    pod = _pod(env=[V1EnvVar(name="BEARER_TOKEN_FILE", value="/old"), V1EnvVar(name="KEEP", value="1")])
    for _ in range(3):  # respawns and repeated hooks never duplicate anything
        objects.add_credentials_to_pod(pod, "casa-alice", BUNDLE, "/etc/casa", True)
    spec = api(pod)["spec"]
    assert [v["name"] for v in spec["volumes"]] == ["home", "casa-credentials"]
    notebook, sidecar = spec["containers"]
    assert notebook["volumeMounts"] == [{"name": "casa-credentials", "mountPath": "/etc/casa", "readOnly": True}]
    assert notebook["env"] == [
        {"name": "KEEP", "value": "1"},
        {"name": "BEARER_TOKEN_FILE", "value": "/etc/casa/xcache.token"},
        {"name": "CASA_CREDENTIALS_DIR", "value": "/etc/casa"},
        {"name": "_CONDOR_SEC_TOKEN_DIRECTORY", "value": "/etc/casa/condor-tokens"},
    ]
    assert "env" not in sidecar and "volumeMounts" not in sidecar


def test_add_credentials_to_a_named_container():
    pod = objects.add_credentials_to_pod(_pod(), "casa-alice", BUNDLE, "/etc/casa", False, container_name="sidecar")
    notebook, sidecar = api(pod)["spec"]["containers"]
    assert "volumeMounts" not in notebook and sidecar["volumeMounts"][0]["name"] == "casa-credentials"
    with pytest.raises(ValueError, match="no container 'missing'"):
        objects.add_credentials_to_pod(_pod(), "casa-alice", BUNDLE, "/etc/casa", False, container_name="missing")


def test_dask_scheduler_service():
    service = objects.make_dask_scheduler_service(
        "casa-dask-alice",
        "jhub",
        {"hub.jupyter.org/username": "alice"},
        8786,
        [OWNER],
        {"component": "casa-credentials"},
        dashboard_port=8787,
    )
    assert api(service) == {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": "casa-dask-alice",
            "namespace": "jhub",
            "labels": {"component": "casa-credentials"},
            "ownerReferences": [OWNER_JSON],
        },
        "spec": {
            "type": "ClusterIP",
            "selector": {"hub.jupyter.org/username": "alice"},
            "ports": [
                {"name": "dask-scheduler", "port": 8786, "targetPort": 8786, "protocol": "TCP"},
                {"name": "dask-dashboard", "port": 8787, "targetPort": 8787, "protocol": "TCP"},
            ],
        },
    }


def test_dask_scheduler_service_without_a_dashboard_port_has_the_scheduler_port_only():
    service = objects.make_dask_scheduler_service(
        "casa-dask-alice", "jhub", {"hub.jupyter.org/username": "alice"}, 8786, [OWNER]
    )
    assert api(service)["spec"] == {
        "selector": {"hub.jupyter.org/username": "alice"},
        "type": "ClusterIP",
        "ports": [{"name": "dask-scheduler", "port": 8786, "targetPort": 8786, "protocol": "TCP"}],
    }


def test_dask_route_passes_tls_through_by_sni():
    assert objects.make_dask_route(
        "casa-dask-alice",
        "jhub",
        "dask-alice.hub.example.org",
        "casa-dask-alice",
        8786,
        [OWNER],
        {"component": "casa-credentials"},
    ) == {
        "apiVersion": "traefik.io/v1alpha1",
        "kind": "IngressRouteTCP",
        "metadata": {
            "name": "casa-dask-alice",
            "namespace": "jhub",
            "labels": {"component": "casa-credentials"},
            "ownerReferences": [OWNER_JSON],
        },
        "spec": {
            "entryPoints": ["dask"],
            "tls": {"passthrough": True},
            "routes": [
                {
                    "match": "HostSNI(`dask-alice.hub.example.org`)",
                    "services": [{"name": "casa-dask-alice", "port": 8786}],
                }
            ],
        },
    }


def test_dask_dashboard_ingress():
    ingress = objects.make_dask_dashboard_ingress(
        "casa-dask-alice",
        "jhub",
        "dask-alice.hub.example.org",
        "casa-dask-alice",
        8787,
        [OWNER],
        ingress_class="nginx",
        tls_secret="hub-tls",
    )
    assert api(ingress) == {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": "casa-dask-alice", "namespace": "jhub", "labels": {}, "ownerReferences": [OWNER_JSON]},
        "spec": {
            "ingressClassName": "nginx",
            "tls": [{"hosts": ["dask-alice.hub.example.org"], "secretName": "hub-tls"}],
            "rules": [
                {
                    "host": "dask-alice.hub.example.org",
                    "http": {
                        "paths": [
                            {
                                "path": "/",
                                "pathType": "Prefix",
                                "backend": {"service": {"name": "casa-dask-alice", "port": {"number": 8787}}},
                            }
                        ]
                    },
                }
            ],
        },
    }


# ------------------------------------------------------------------ names and labels from public values
@pytest.mark.parametrize(
    "user,server",
    [("alice", ""), ("Alice.B", ""), ("alice", "gpu box"), ("a" * 60, ""), ("bob", "s" * 40), ("al/ice", "x")],
)
def test_name_fields_are_kubespawners_template_fields(user, server):
    """The same ``{username}``/``{servername}``/``{user_server}`` as KubeSpawner's pod names use (a drift
    check against its private expansion, in the test only)."""
    from types import SimpleNamespace

    from kubespawner import KubeSpawner

    fake = SimpleNamespace(
        slug_scheme="safe",
        name=server,
        user=SimpleNamespace(name=user, id=1),
        _namespace_default=lambda: "default",
        pod_name="p",
        pvc_name="c",
        namespace="default",
    )
    fields = objects.name_fields(user, server)
    for field in ("username", "servername", "user_server"):
        assert fields[field] == KubeSpawner._expand_user_properties(fake, "{%s}" % field), field


def test_credentials_labels():
    assert objects.credentials_labels("Alice.B", {"app": "jupyterhub", "component": "site"}) == {
        "hub.jupyter.org/username": objects.label_value("Alice.B"),
        "component": "site",  # the deployment's common_labels win, as on KubeSpawner's own objects
        "app.kubernetes.io/component": "casa-credentials",
        "app": "jupyterhub",
    }
    assert objects.label_value("alice") == "alice" and objects.label_value("Alice.B") != "alice-b"
