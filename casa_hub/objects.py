"""Pure builders for the Kubernetes objects Casa adds to a user's server (no API calls here).

Secret keys cannot contain ``/``, so a bundle path ``dask/ca.pem`` is stored under the key ``dask__ca.pem``
and mapped back to its path by the volume's ``items``.
"""

from __future__ import annotations

import base64

from kubernetes_asyncio.client.models import (
    V1EnvVar,
    V1KeyToPath,
    V1ObjectMeta,
    V1OwnerReference,
    V1Secret,
    V1SecretVolumeSource,
    V1Service,
    V1ServicePort,
    V1ServiceSpec,
    V1Volume,
    V1VolumeMount,
)

from .credentials.bundle import CredentialBundle

VOLUME_NAME = "casa-credentials"


def secret_key(path: str) -> str:
    return path.replace("/", "__")


def pod_file_mode(bundle_mode: int, group_readable: bool) -> int:
    """Mode of a credential file in the pod: owner-only files become group-readable when the pod runs with an
    fsGroup (kubelet makes the files root:fsGroup, so the notebook user reads them through its group)."""
    if group_readable and bundle_mode & 0o400:
        return bundle_mode | 0o040
    return bundle_mode


def make_credentials_secret(name: str, namespace: str, bundle: CredentialBundle, labels: dict | None = None,
                            owner_references: list[V1OwnerReference] | None = None) -> V1Secret:
    return V1Secret(
        api_version="v1", kind="Secret", type="Opaque",
        metadata=V1ObjectMeta(name=name, namespace=namespace, labels=dict(labels or {}),
                              annotations={"casa-hub/expires-at": bundle.expires_at.isoformat()
                                           if bundle.expires_at else ""},
                              owner_references=list(owner_references or [])),
        data={secret_key(p): base64.b64encode(f.content).decode() for p, f in sorted(bundle.files.items())},
    )


def secret_update_patch(secret: V1Secret, current_data: dict) -> dict:
    """A JSON merge patch turning an existing Secret into ``secret``: new data, stale keys removed (null),
    and the new owner, labels and expiry annotation."""
    data = {k: None for k in current_data if k not in secret.data}
    data.update(secret.data)
    meta = secret.metadata
    return {
        "metadata": {"labels": meta.labels, "annotations": meta.annotations,
                     "ownerReferences": [owner_reference_dict(o) for o in meta.owner_references] or None},
        "data": data,
    }


def make_credentials_volume(secret_name: str, bundle: CredentialBundle, group_readable: bool) -> V1Volume:
    items = [V1KeyToPath(key=secret_key(p), path=p, mode=pod_file_mode(f.mode, group_readable))
             for p, f in sorted(bundle.files.items())]
    return V1Volume(name=VOLUME_NAME, secret=V1SecretVolumeSource(secret_name=secret_name, items=items,
                                                                  default_mode=0o400))


def make_credentials_mount(mount_path: str) -> V1VolumeMount:
    return V1VolumeMount(name=VOLUME_NAME, mount_path=mount_path, read_only=True)


def make_credentials_env(bundle: CredentialBundle, mount_path: str) -> list[V1EnvVar]:
    """Env vars pointing at the mounted files (paths only: no secret value ever goes into the pod env)."""
    return [V1EnvVar(name=k, value=v) for k, v in sorted(bundle.env_for(mount_path).items())]


def make_dask_scheduler_service(name: str, namespace: str, selector: dict, port: int,
                                owner_references: list[V1OwnerReference], labels: dict | None = None) -> V1Service:
    """A ClusterIP Service exposing the user's Dask scheduler (TLS; only holders of the user's certs get in)."""
    return V1Service(
        api_version="v1", kind="Service",
        metadata=V1ObjectMeta(name=name, namespace=namespace, labels=dict(labels or {}),
                              owner_references=list(owner_references)),
        spec=V1ServiceSpec(selector=dict(selector), type="ClusterIP",
                           ports=[V1ServicePort(name="dask-scheduler", port=port, target_port=port,
                                                protocol="TCP")]),
    )


def make_dask_route(name: str, namespace: str, host: str, service_name: str, port: int,
                    owner_references: list[V1OwnerReference], labels: dict | None = None) -> dict:
    """A Traefik IngressRouteTCP passing TLS through by SNI to the scheduler Service (the scheduler itself
    terminates TLS with the user's certificates, so the router never sees the traffic)."""
    return {
        "apiVersion": "traefik.io/v1alpha1",
        "kind": "IngressRouteTCP",
        "metadata": {"name": name, "namespace": namespace, "labels": dict(labels or {}),
                     "ownerReferences": [owner_reference_dict(o) for o in owner_references]},
        "spec": {
            "entryPoints": ["dask"],
            "routes": [{"match": f"HostSNI(`{host}`)", "services": [{"name": service_name, "port": port}]}],
            "tls": {"passthrough": True},
        },
    }


def upsert_volume(volumes: list, volume) -> list:
    """Add or replace a volume by name (respawns must not accumulate duplicates)."""
    return [v for v in volumes if _name(v) != _name(volume)] + [volume]


def upsert_env(env: list, new: list[V1EnvVar]) -> list:
    names = {e.name for e in new}
    return [e for e in env if _name(e) not in names] + new


def owner_reference_dict(o: V1OwnerReference) -> dict:
    """The API (camelCase) form of an owner reference, for patches and custom objects."""
    return {"apiVersion": o.api_version, "kind": o.kind, "name": o.name, "uid": o.uid,
            "blockOwnerDeletion": o.block_owner_deletion, "controller": o.controller}


def _name(obj) -> str:
    return obj["name"] if isinstance(obj, dict) else obj.name
