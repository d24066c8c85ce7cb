"""Pure builders for the Kubernetes objects Casa adds to a user's server (no API calls here), in the style of
kubespawner.objects: values in, kubernetes_asyncio models (or plain dicts for custom resources) out.

Secret keys cannot contain ``/``, so a bundle path ``dask/ca.pem`` is stored under the key ``dask__ca.pem``
and mapped back to its path (with its mode) by the volume's ``items``.
"""

from __future__ import annotations

import base64

from kubernetes_asyncio.client.models import (
    V1EnvVar,
    V1HTTPIngressPath,
    V1HTTPIngressRuleValue,
    V1Ingress,
    V1IngressBackend,
    V1IngressRule,
    V1IngressServiceBackend,
    V1IngressSpec,
    V1IngressTLS,
    V1KeyToPath,
    V1ObjectMeta,
    V1OwnerReference,
    V1Secret,
    V1SecretVolumeSource,
    V1Service,
    V1ServiceBackendPort,
    V1ServicePort,
    V1ServiceSpec,
    V1Volume,
    V1VolumeMount,
)
from kubespawner.slugs import is_valid_label, multi_slug, safe_slug

from .credentials import layout
from .credentials.bundle import CredentialBundle

VOLUME_NAME = "casa-credentials"
EXPIRY_ANNOTATION = "casa-hub/expires-at"
SERVER_LABEL = "casa-hub/server"  # on the pod, set by Casa: what the Dask Service selects
USERNAME_LABEL = "hub.jupyter.org/username"
_SLUG_MAX_LENGTH = 48  # KubeSpawner's per-field budget, so that "jupyter-{user_server}" stays a DNS label


# ------------------------------------------------------------------ names and labels
def name_fields(username: str, servername: str = "") -> dict[str, str]:
    """The fields of KubeSpawner's documented name templates (``{username}``, ``{servername}``,
    ``{user_server}``) in its default "safe" slug scheme, built from kubespawner's public ``slugs`` module:
    lower-case DNS-safe slugs, a hash added wherever escaping could make two names collide."""
    safe_username = safe_slug(username, max_length=_SLUG_MAX_LENGTH)
    safe_servername = safe_slug(servername, max_length=_SLUG_MAX_LENGTH) if servername else ""
    if len(safe_username) + len(safe_servername) + 2 > _SLUG_MAX_LENGTH:
        user_server = multi_slug([username, servername], max_length=_SLUG_MAX_LENGTH)
    elif servername:
        user_server = f"{safe_username}--{safe_servername}"
    else:
        user_server = safe_username
    return {"username": safe_username, "servername": safe_servername, "user_server": user_server}


def label_value(value: str) -> str:
    """``value`` as a valid, collision-free label value (KubeSpawner's slug for its username label)."""
    return safe_slug(value, is_valid=is_valid_label)


def credentials_labels(username: str, common_labels: dict | None = None) -> dict[str, str]:
    """Labels of Casa's objects: the user, Casa's component, then the deployment's ``common_labels``."""
    labels = {
        USERNAME_LABEL: label_value(username),
        "component": "casa-credentials",
        "app.kubernetes.io/component": "casa-credentials",
    }
    labels.update(common_labels or {})
    return labels


# ------------------------------------------------------------------ credentials Secret
# the Secret key of a bundle path: part of the layout the hub and the user side share
secret_key = layout.secret_key


def _secret_data(bundle: CredentialBundle) -> dict[str, str]:
    data: dict[str, str] = {}
    for path, f in sorted(bundle.files.items()):
        key = secret_key(path)
        if key in data:
            raise ValueError(f"two bundle paths map to the Secret key {key!r}")
        data[key] = base64.b64encode(f.content).decode()
    return data


def make_credentials_secret(
    name: str,
    namespace: str,
    bundle: CredentialBundle,
    labels: dict | None = None,
    owner_references: list[V1OwnerReference] | None = None,
) -> V1Secret:
    """The per-user Secret holding every file of ``bundle`` (base64), owned by the pod when
    ``owner_references`` is given; the earliest expiry is an annotation (no secret there)."""
    annotations = {EXPIRY_ANNOTATION: bundle.expires_at.isoformat()} if bundle.expires_at else {}
    return V1Secret(
        api_version="v1",
        kind="Secret",
        type="Opaque",
        metadata=V1ObjectMeta(
            name=name,
            namespace=namespace,
            labels=dict(labels or {}),
            annotations=annotations,
            owner_references=list(owner_references or []),
        ),
        data=_secret_data(bundle),
    )


# ------------------------------------------------------------------ pod parts
def pod_file_mode(bundle_mode: int, group_readable: bool) -> int:
    """Mode of a credential file in the pod. Kubelet makes Secret files ``root:fsGroup``, so with an fsGroup
    the notebook user reads owner-only files through the group: 0400 becomes 0440 (never group-writable)."""
    mode = bundle_mode & 0o777
    if group_readable and mode & 0o400:
        mode |= 0o040
    return mode & ~0o022


def make_credentials_volume(secret_name: str, bundle: CredentialBundle, group_readable: bool) -> V1Volume:
    """The Secret volume: one item per bundle file, at its path, with its mode (see :func:`pod_file_mode`)."""
    items = [
        V1KeyToPath(key=secret_key(p), path=p, mode=pod_file_mode(f.mode, group_readable))
        for p, f in sorted(bundle.files.items())
    ]
    return V1Volume(
        name=VOLUME_NAME, secret=V1SecretVolumeSource(secret_name=secret_name, items=items, default_mode=0o400)
    )


def make_credentials_mount(mount_path: str) -> V1VolumeMount:
    return V1VolumeMount(name=VOLUME_NAME, mount_path=mount_path, read_only=True)


def make_credentials_env(bundle: CredentialBundle, mount_path: str) -> list[V1EnvVar]:
    """Env vars pointing at the mounted files (paths only: no secret value ever goes into the pod env)."""
    return [V1EnvVar(name=k, value=v) for k, v in sorted(bundle.env_for(mount_path).items())]


def add_credentials_to_pod(
    pod,
    secret_name: str,
    bundle: CredentialBundle,
    mount_path: str,
    group_readable: bool,
    container_name: str | None = None,
):
    """Add (or replace: respawns must not accumulate duplicates) the credentials volume, its read-only mount
    and the env to ``pod`` (a V1Pod), in the container named ``container_name`` (default: the first one)."""
    spec = pod.spec
    spec.volumes = upsert_volume(spec.volumes or [], make_credentials_volume(secret_name, bundle, group_readable))
    containers = spec.containers
    container = next((c for c in containers if c.name == container_name), None) if container_name else containers[0]
    if container is None:
        raise ValueError(f"the pod has no container {container_name!r}")
    container.volume_mounts = upsert_volume(container.volume_mounts or [], make_credentials_mount(mount_path))
    container.env = upsert_env(container.env or [], make_credentials_env(bundle, mount_path))
    return pod


# ------------------------------------------------------------------ Dask scheduler
def make_dask_scheduler_service(
    name: str,
    namespace: str,
    selector: dict,
    port: int,
    owner_references: list[V1OwnerReference],
    labels: dict | None = None,
    dashboard_port: int | None = None,
) -> V1Service:
    """A ClusterIP Service exposing the user's Dask scheduler (TLS; only holders of the user's certs get in)
    and optionally its dashboard."""
    ports = [V1ServicePort(name="dask-scheduler", port=port, target_port=port, protocol="TCP")]
    if dashboard_port:
        ports.append(
            V1ServicePort(name="dask-dashboard", port=dashboard_port, target_port=dashboard_port, protocol="TCP")
        )
    return V1Service(
        api_version="v1",
        kind="Service",
        metadata=V1ObjectMeta(
            name=name, namespace=namespace, labels=dict(labels or {}), owner_references=list(owner_references)
        ),
        spec=V1ServiceSpec(selector=dict(selector), type="ClusterIP", ports=ports),
    )


def make_dask_route(
    name: str,
    namespace: str,
    host: str,
    service_name: str,
    port: int,
    owner_references: list[V1OwnerReference],
    labels: dict | None = None,
    entry_point: str = "dask",
) -> dict:
    """A Traefik IngressRouteTCP passing TLS through by SNI to the scheduler Service (the scheduler itself
    terminates TLS with the user's certificates, so the router never sees the traffic)."""
    return {
        "apiVersion": "traefik.io/v1alpha1",
        "kind": "IngressRouteTCP",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": dict(labels or {}),
            "ownerReferences": [owner_reference_dict(o) for o in owner_references],
        },
        "spec": {
            "entryPoints": [entry_point],
            "routes": [{"match": f"HostSNI(`{host}`)", "services": [{"name": service_name, "port": port}]}],
            "tls": {"passthrough": True},
        },
    }


def make_dask_dashboard_ingress(
    name: str,
    namespace: str,
    host: str,
    service_name: str,
    port: int,
    owner_references: list[V1OwnerReference],
    labels: dict | None = None,
    ingress_class: str | None = None,
    tls_secret: str | None = None,
) -> V1Ingress:
    """A standard Ingress for the scheduler's HTTP dashboard (the scheduler's TLS port needs
    :func:`make_dask_route`: an HTTP Ingress cannot pass TLS through)."""
    return V1Ingress(
        api_version="networking.k8s.io/v1",
        kind="Ingress",
        metadata=V1ObjectMeta(
            name=name, namespace=namespace, labels=dict(labels or {}), owner_references=list(owner_references)
        ),
        spec=V1IngressSpec(
            ingress_class_name=ingress_class,
            tls=[V1IngressTLS(hosts=[host], secret_name=tls_secret)] if tls_secret else None,
            rules=[
                V1IngressRule(
                    host=host,
                    http=V1HTTPIngressRuleValue(
                        paths=[
                            V1HTTPIngressPath(
                                path="/",
                                path_type="Prefix",
                                backend=V1IngressBackend(
                                    service=V1IngressServiceBackend(
                                        name=service_name, port=V1ServiceBackendPort(number=port)
                                    )
                                ),
                            )
                        ]
                    ),
                )
            ],
        ),
    )


# ------------------------------------------------------------------ helpers
def upsert_volume(volumes: list, volume) -> list:
    """Add or replace a volume (or volume mount) by name."""
    return [v for v in volumes if _name(v) != _name(volume)] + [volume]


def upsert_env(env: list, new: list[V1EnvVar]) -> list:
    names = {e.name for e in new}
    return [e for e in env if _name(e) not in names] + new


def owner_reference_dict(o: V1OwnerReference) -> dict:
    """The API (camelCase) form of an owner reference, for patches and custom objects."""
    return {
        "apiVersion": o.api_version,
        "kind": o.kind,
        "name": o.name,
        "uid": o.uid,
        "blockOwnerDeletion": o.block_owner_deletion,
        "controller": o.controller,
    }


def _name(obj) -> str:
    return obj["name"] if isinstance(obj, dict) else obj.name
