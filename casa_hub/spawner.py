"""CasaSpawner: KubeSpawner that mounts the user's Casa credentials from a per-user Secret.

The Secret is created once the pod has a UID, with an ownerReference to the pod (Kubernetes deletes it
with the pod), like KubeSpawner's own internal-SSL Secret; the pod mounts it read-only and waits for it.
Refreshed credentials replace the Secret's data; kubelet updates the mounted files in place.
"""

from __future__ import annotations

import asyncio
import copy
from functools import partial

from jupyterhub.utils import AnyTimeoutError, exponential_backoff, maybe_future
from kubernetes_asyncio.client.rest import ApiException
from kubespawner import KubeSpawner
from kubespawner.objects import make_owner_reference
from tornado import web
from traitlets import Bool, Integer, Unicode, default

from . import objects
from .credentials.bundle import CredentialBundle
from .mixin import CasaCredentialsMixin
from .profiles import (ProfileRefused, check_gpu_limits, check_profile_choice, free_gpus, offers_gpus,
                       visible_profiles)


def _refusal(status: int, message: str) -> web.HTTPError:
    """An error whose message JupyterHub shows as is: in the API answer, the spawn page and progress."""
    error = web.HTTPError(status, log_message=message.replace("%", "%%"))
    error.jupyterhub_message = message
    return error


class CasaSpawner(CasaCredentialsMixin, KubeSpawner):
    """KubeSpawner with per-user Casa credentials, group-restricted profiles and bounded GPU requests."""

    casa_mount_path = Unicode("/etc/casa", help="Where the credentials are mounted in the pod (read-only).").tag(
        config=True)

    casa_secret_name_template = Unicode(
        "casa-{user_server}",
        help="""Name of the per-user credentials Secret; KubeSpawner's name templates apply (``{user_server}``
        is the collision-free slug of the user and server names).""",
    ).tag(config=True)

    casa_file_group_readable = Bool(
        help="""Make owner-only credential files group-readable (0440) in the pod. Needed when the pod runs
        with an fsGroup and the notebook user reads files through that group (Z2JH's default). Defaults to
        True when ``fs_gid`` is set.""",
    ).tag(config=True)

    @default("casa_file_group_readable")
    def _group_readable_default(self):
        return self.fs_gid is not None

    casa_max_gpus = Integer(
        8, min=0, help="Most GPUs (whole or MIG slices, summed) one server may request, whatever the form says."
    ).tag(config=True)

    casa_dask_service_enabled = Bool(
        False, help="Create a per-user Service for the Dask scheduler (for clients outside the pod)."
    ).tag(config=True)

    casa_dask_scheduler_port = Integer(8786, help="Port of the user's Dask scheduler in the pod.").tag(config=True)

    casa_secret_wait_timeout = Integer(
        60, min=1, help="How long to wait for the pod to get a UID before giving up on the Secret (seconds)."
    ).tag(config=True)

    # ------------------------------------------------------------------ names
    @property
    def casa_secret_name(self) -> str:
        return self._expand_user_properties(self.casa_secret_name_template)

    @property
    def casa_service_name(self) -> str:
        return self._expand_user_properties("casa-dask-{user_server}")

    def _casa_labels(self) -> dict:
        return {**self._build_common_labels({}), "component": "casa-credentials"}

    # ------------------------------------------------------------------ pod
    async def get_pod_manifest(self):
        pod = await super().get_pod_manifest()
        if self.casa_bundle is None:
            return pod
        spec = pod.spec
        spec.volumes = objects.upsert_volume(spec.volumes or [], objects.make_credentials_volume(
            self.casa_secret_name, self.casa_bundle, self.casa_file_group_readable))
        container = spec.containers[0]
        container.volume_mounts = objects.upsert_volume(container.volume_mounts or [],
                                                        objects.make_credentials_mount(self.casa_mount_path))
        container.env = objects.upsert_env(container.env or [],
                                           objects.make_credentials_env(self.casa_bundle, self.casa_mount_path))
        return pod

    # ------------------------------------------------------------------ Kubernetes calls (timeouts, bounded retries)
    async def _casa_call(self, coro_fn, what: str):
        """One API call with a timeout: True on success, False to retry (timeouts, 5xx, 429); raises on
        other errors so they surface with their message."""
        try:
            await asyncio.wait_for(coro_fn(), self.k8s_api_request_timeout)
            return True
        except asyncio.TimeoutError:
            self.log.warning("Timeout while %s; retrying", what)
            return False
        except ApiException as e:
            if e.status >= 500 or e.status == 429:
                self.log.warning("Kubernetes answered %s while %s; retrying", e.status, what)
                return False
            raise

    async def _casa_retry(self, coro_fn, what: str):
        """Bounded retries (``k8s_api_request_retry_timeout``); the timeout's message is what the user sees."""
        try:
            await exponential_backoff(partial(self._casa_call, coro_fn, what),
                                      f"Kubernetes is not answering ({what}); please try again shortly",
                                      timeout=self.k8s_api_request_retry_timeout)
        except AnyTimeoutError as e:
            raise _refusal(503, str(e)) from None

    async def _casa_put_secret(self, secret) -> None:
        name = secret.metadata.name

        async def create_or_update():
            try:
                await self.api.create_namespaced_secret(self.namespace, secret)
            except ApiException as e:
                if e.status != 409:
                    raise
                # it exists (a refresh, or a leftover of an earlier server): take it over, dropping stale keys
                current = await self.api.read_namespaced_secret(name, self.namespace)
                patch = objects.secret_update_patch(secret, current.data or {})
                await self.api.patch_namespaced_secret(name, self.namespace, patch)

        await self._casa_retry(create_or_update, f"writing Secret {name}")

    async def _casa_delete(self, kind: str, name: str) -> None:
        delete = getattr(self.api, f"delete_namespaced_{kind}")

        async def gone():
            try:
                await delete(name=name, namespace=self.namespace)
            except ApiException as e:
                if e.status != 404:
                    raise

        await self._casa_retry(gone, f"deleting {kind} {name}")

    async def _casa_owner_reference(self):
        ref_key = f"{self.namespace}/{self.pod_name}"
        # KubeSpawner starts its (shared) pod reflector inside start(): wait for it, then for the uid
        await exponential_backoff(
            lambda: self.pod_reflector is not None and self.pod_has_uid(self.pod_reflector.pods.get(ref_key)),
            f"pod {ref_key} has no uid", timeout=self.casa_secret_wait_timeout)
        pod = self.pod_reflector.pods[ref_key]
        return make_owner_reference(self.pod_name, pod["metadata"]["uid"]), pod

    async def _casa_create_objects(self) -> None:
        owner, pod = await self._casa_owner_reference()
        await self._casa_put_secret(objects.make_credentials_secret(
            self.casa_secret_name, self.namespace, self.casa_bundle, self._casa_labels(), [owner]))
        self._casa_events.append("Credentials Secret ready")
        if self.casa_dask_service_enabled:
            service = objects.make_dask_scheduler_service(
                self.casa_service_name, self.namespace, self._build_pod_labels({}), self.casa_dask_scheduler_port,
                [owner], self._casa_labels())

            async def create_service():
                try:
                    await self.api.create_namespaced_service(self.namespace, service)
                except ApiException as e:
                    if e.status != 409:
                        raise

            await self._casa_retry(create_service, f"creating Service {self.casa_service_name}")

    # ------------------------------------------------------------------ lifecycle
    async def start(self):
        if self.casa_bundle is None:
            raise web.HTTPError(403, reason="No credentials for this server: please log out and in again")
        self._casa_events = ["Credentials minted"]
        # the pod waits for its Secret volume; the Secret needs the pod's uid: create it alongside
        objects_task = asyncio.ensure_future(self._casa_create_objects())
        try:
            result = await super().start()
            await objects_task
        except BaseException:
            objects_task.cancel()
            await self.casa_remove_bundle()
            raise
        self.casa_schedule_refresh(self.casa_bundle.expires_at)
        return result


    async def casa_write_bundle(self, bundle: CredentialBundle) -> None:
        owner, _ = await self._casa_owner_reference()
        await self._casa_put_secret(objects.make_credentials_secret(
            self.casa_secret_name, self.namespace, bundle, self._casa_labels(), [owner]))

    async def casa_remove_bundle(self) -> None:
        """Delete the Secret and the Dask Service (404 is fine: the pod's deletion may have taken them)."""
        await self._casa_delete("secret", self.casa_secret_name)
        if self.casa_dask_service_enabled:
            await self._casa_delete("service", self.casa_service_name)

    async def progress(self):
        """KubeSpawner's progress (pod events) merged with Casa's own steps as they happen."""
        expires = self.casa_bundle.expires_at if self.casa_bundle is not None else None
        yield {"progress": 5, "message": "Credentials minted" + (
            f" (valid until {expires:%H:%M} UTC)" if expires else "")}
        sent = 1  # _casa_events[0] is the message above
        upstream = super().progress().__aiter__()
        pending = asyncio.ensure_future(upstream.__anext__())
        try:
            while True:
                done, _ = await asyncio.wait({pending}, timeout=0.5)
                events = getattr(self, "_casa_events", [])
                for message in events[sent:]:
                    yield {"message": message}
                sent = max(sent, len(events))
                if pending in done:
                    try:
                        event = pending.result()
                    except StopAsyncIteration:
                        break
                    yield event
                    pending = asyncio.ensure_future(upstream.__anext__())
        finally:
            pending.cancel()
        for message in getattr(self, "_casa_events", [])[sent:]:
            yield {"message": message}

    # ------------------------------------------------------------------ profiles
    @default("options_form")
    def _casa_options_form_default(self):
        # always rendered per request: the profiles depend on the user's groups and on free GPUs
        return self._casa_options_form if self.profile_list else ""

    async def _casa_options_form(self, spawner):
        profile_list = self._sorted_dict_values(self.profile_list)
        if callable(profile_list):
            profile_list = await maybe_future(profile_list(spawner))
        free = await self._casa_free_gpus()
        if free is not None:
            profile_list = copy.deepcopy(profile_list)
            for profile in profile_list:
                if offers_gpus(profile):
                    profile["description"] = (profile.get("description", "") + f" ({free} GPUs free now)").strip()
        return self._render_options_form(profile_list)

    async def _casa_free_gpus(self) -> int | None:
        """Free GPUs in the cluster, or None where the hub may not list nodes (RBAC) or the API is slow."""
        try:
            nodes = await asyncio.wait_for(self.api.list_node(), self.k8s_api_request_timeout)
            pods = await asyncio.wait_for(self.api.list_pod_for_all_namespaces(), self.k8s_api_request_timeout)
        except (ApiException, asyncio.TimeoutError, OSError) as e:
            self.log.debug("No live GPU availability: %s", e)
            return None
        client = self.api.api_client
        return free_gpus([client.sanitize_for_serialization(n) for n in nodes.items],
                         [client.sanitize_for_serialization(p) for p in pods.items])

    def _get_initialized_profile_list(self, profile_list):
        return super()._get_initialized_profile_list(visible_profiles(profile_list, self.casa_groups))

    async def load_user_options(self):
        profile_list = self._sorted_dict_values(self.profile_list)
        if callable(profile_list):
            profile_list = await maybe_future(profile_list(self))
        try:
            if profile_list:
                initialized = super()._get_initialized_profile_list(profile_list)
                check_profile_choice(initialized, self._get_initialized_profile_list(profile_list),
                                     self.user_options.get("profile"))
            await super().load_user_options()
            check_gpu_limits(self.extra_resource_limits, self.casa_max_gpus)
        except ProfileRefused as e:
            raise _refusal(403, str(e)) from None
        except ValueError as e:  # KubeSpawner's refusals of unknown options
            raise _refusal(400, f"Invalid server options: {e}") from None
