"""Pure Kubernetes builders and profile gating, compared with exact expected objects (kubespawner style)."""

from __future__ import annotations

import base64
import datetime

import pytest
from kubernetes_asyncio.client import ApiClient
from kubespawner.objects import make_owner_reference

from casa_hub import objects, profiles
from casa_hub.credentials.bundle import BundleFile, CredentialBundle

EXP = datetime.datetime(2026, 11, 23, 18, 0, tzinfo=datetime.timezone.utc)
BUNDLE = CredentialBundle(
    user="alice",
    issued_at=EXP - datetime.timedelta(hours=6),
    files={"xcache.token": BundleFile(b"tok\n", 0o400, EXP), "dask/ca.pem": BundleFile(b"CA", 0o444)},
    env={"BEARER_TOKEN_FILE": "{mount}/xcache.token"},
)


async def _api(obj):
    """The JSON the Kubernetes API would receive (kubernetes_asyncio's own serializer)."""
    async with ApiClient() as client:
        return client.sanitize_for_serialization(obj)


async def test_secret_exact():
    owner = make_owner_reference("jupyter-alice", "uid-1")
    secret = objects.make_credentials_secret("casa-alice", "jhub", BUNDLE, {"app": "jupyterhub"}, [owner])
    assert await _api(secret) == {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": "casa-alice",
            "namespace": "jhub",
            "labels": {"app": "jupyterhub"},
            "annotations": {"casa-hub/expires-at": "2026-11-23T18:00:00+00:00"},
            "ownerReferences": [
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": "jupyter-alice",
                    "uid": "uid-1",
                    "blockOwnerDeletion": True,
                    "controller": False,
                }
            ],
        },
        "data": {"dask__ca.pem": base64.b64encode(b"CA").decode(), "xcache.token": base64.b64encode(b"tok\n").decode()},
    }


@pytest.mark.parametrize("group_readable,token_mode", [(True, 0o440), (False, 0o400)])
async def test_volume_items_and_modes(group_readable, token_mode):
    volume = await _api(objects.make_credentials_volume("casa-alice", BUNDLE, group_readable))
    assert volume == {
        "name": "casa-credentials",
        "secret": {
            "secretName": "casa-alice",
            "defaultMode": 0o400,
            "items": [
                {"key": "dask__ca.pem", "path": "dask/ca.pem", "mode": 0o444},
                {"key": "xcache.token", "path": "xcache.token", "mode": token_mode},
            ],
        },
    }


async def test_mount_and_env():
    assert await _api(objects.make_credentials_mount("/etc/casa")) == {
        "name": "casa-credentials",
        "mountPath": "/etc/casa",
        "readOnly": True,
    }
    assert await _api(objects.make_credentials_env(BUNDLE, "/etc/casa")) == [
        {"name": "BEARER_TOKEN_FILE", "value": "/etc/casa/xcache.token"}
    ]


def test_upserts_replace_by_name():
    vols = objects.upsert_volume(
        [{"name": "casa-credentials", "old": True}, {"name": "home"}], objects.make_credentials_mount("/x")
    )
    assert [objects._name(v) for v in vols] == ["home", "casa-credentials"]


async def test_dask_service_and_route():
    owner = make_owner_reference("jupyter-alice", "uid-1")
    svc = await _api(
        objects.make_dask_scheduler_service(
            "casa-dask-alice", "jhub", {"hub.jupyter.org/username": "alice"}, 8786, [owner]
        )
    )
    assert svc["spec"] == {
        "selector": {"hub.jupyter.org/username": "alice"},
        "type": "ClusterIP",
        "ports": [{"name": "dask-scheduler", "port": 8786, "targetPort": 8786, "protocol": "TCP"}],
    }
    route = objects.make_dask_route("r", "jhub", "dask-alice.example.org", "casa-dask-alice", 8786, [owner])
    assert route["spec"]["tls"] == {"passthrough": True}
    assert route["spec"]["routes"][0]["match"] == "HostSNI(`dask-alice.example.org`)"


PROFILES = [
    {"display_name": "CPU", "slug": "cpu"},
    {
        "display_name": "GPU",
        "slug": "gpu",
        "casa_allowed_groups": ["gpu-users"],
        "profile_options": {
            "n": {"choices": {"one": {"kubespawner_override": {"extra_resource_limits": {"nvidia.com/gpu": "1"}}}}}
        },
    },
]


def test_visible_profiles_by_group():
    assert [p["slug"] for p in profiles.visible_profiles(PROFILES, ["cms"])] == ["cpu"]
    visible = profiles.visible_profiles(PROFILES, ["gpu-users"])
    assert [p["slug"] for p in visible] == ["cpu", "gpu"]
    assert "casa_allowed_groups" not in visible[1] and "casa_allowed_groups" in PROFILES[1]  # input untouched


def test_profile_choice_refusals():
    visible = profiles.visible_profiles(PROFILES, ["cms"])
    profiles.check_profile_choice(PROFILES, visible, "cpu")
    with pytest.raises(profiles.ProfileRefused, match="not available to your account"):
        profiles.check_profile_choice(PROFILES, visible, "gpu")
    with pytest.raises(profiles.ProfileRefused, match="no profile"):
        profiles.check_profile_choice(PROFILES, visible, "../etc")


@pytest.mark.parametrize(
    "limits,ok",
    [
        ({"nvidia.com/gpu": "2"}, True),
        ({"nvidia.com/gpu": "2", "nvidia.com/mig-1g.10gb": "3"}, False),
        ({"nvidia.com/gpu": "-1"}, False),
        ({"cpu": "64"}, True),
        ({"nvidia.com/gpu": "many"}, False),
    ],
)
def test_gpu_limits_bounded(limits, ok):
    if ok:
        profiles.check_gpu_limits(limits, 4)
    else:
        with pytest.raises(profiles.ProfileRefused):
            profiles.check_gpu_limits(limits, 4)


def test_offers_gpus_and_free_count():
    assert profiles.offers_gpus(PROFILES[1]) and not profiles.offers_gpus(PROFILES[0])
    nodes = [
        {"metadata": {"name": "a"}, "status": {"allocatable": {"nvidia.com/gpu": "4"}}},
        {
            "metadata": {"name": "b"},
            "spec": {"unschedulable": True},
            "status": {"allocatable": {"nvidia.com/gpu": "8"}},
        },
    ]
    pods = [
        {
            "spec": {"nodeName": "a", "containers": [{"resources": {"limits": {"nvidia.com/gpu": "1"}}}]},
            "status": {"phase": "Running"},
        },
        {
            "spec": {"nodeName": "a", "containers": [{"resources": {"limits": {"nvidia.com/gpu": "2"}}}]},
            "status": {"phase": "Succeeded"},
        },
    ]
    assert profiles.free_gpus(nodes, pods) == 3
