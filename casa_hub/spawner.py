"""CasaSpawner: KubeSpawner that mounts the user's Casa credentials from a per-user Secret.

Only KubeSpawner's public API: Casa extends ``get_pod_manifest``, ``load_user_options`` and ``start``/``stop``
and reads public traits (``pod_name``, ``namespace``, ``common_labels``, ``profile_list``, the form templates);
the admin's ``modify_pod_hook``, ``after_pod_created_hook``, ``profile_list`` and ``options_form`` read back
exactly as configured and run as KubeSpawner runs them.

The Secret is written just before the pod is created (from ``get_pod_manifest``, which KubeSpawner calls once
the user's options and namespace are final), so the pod mounts it read-only at once and never waits for it. It
has no owner (the pod does not exist yet): ``stop`` deletes it, as does a failed start, and the next start
replaces a leftover. A hub that crashes while a server runs leaves at most one Secret per server, under a name
the next start of that server takes over, holding credentials that expire on their own. Refreshed credentials
replace the Secret (delete, create: the Z2JH chart's hub Role grants no patch) and kubelet updates the mounted
files in place. The optional Dask Service and route follow the same lifecycle.

Every Kubernetes call goes through KubeSpawner's async client with a timeout (``k8s_api_request_timeout``)
and bounded retries (``k8s_api_request_retry_timeout``) of timeouts, 429 and 5xx; a 409 is handled where it
means something, other errors surface.
"""

from __future__ import annotations

import asyncio
import copy
import json
from collections import OrderedDict
from functools import partial

from jinja2 import ChoiceLoader, Environment, FileSystemLoader, PackageLoader
from jupyterhub.utils import AnyTimeoutError, exponential_backoff, maybe_future
from kubernetes_asyncio.client.rest import ApiException
from kubespawner import KubeSpawner
from kubespawner.clients import shared_client
from traitlets import Bool, Dict, Float, Integer, Unicode, default

from . import metrics, objects
from .credentials.bundle import CredentialBundle
from .errors import SpawnRefused
from .mixin import CasaCredentialsMixin
from .profiles import (
    ProfileRefused,
    check_gpu_limits,
    check_user_options,
    complete_user_options,
    describe_availability,
    extend_tolerations,
    free_resources,
    gpu_limits,
    initialized_profiles,
    max_gpus_for,
    offers_gpus,
    visible_profiles,
)

TRAEFIK = ("traefik.io", "v1alpha1", "ingressroutetcps")


def _free_resources_from_json(nodes: bytes, pods: bytes) -> dict[str, int]:
    return free_resources(json.loads(nodes).get("items") or [], json.loads(pods).get("items") or [])


def _user_error(message: str, *, reason: str, status: int, log_message: str | None = None) -> SpawnRefused:
    """A spawn failure whose ``message`` JupyterHub shows as is (API answer, spawn page, progress stream)."""
    return SpawnRefused(message, reason=reason, status_code=status, log_message=log_message)


class KubernetesRefusal(SpawnRefused):
    """Kubernetes refused a step of a spawn (403 missing right, 422 invalid object, ...): the user reads a
    sentence, the hub's log what was refused and why (the API server's own message)."""

    def __init__(self, error: ApiException, what: str):
        try:
            detail = json.loads(error.body or "{}").get("message") or error.reason
        except (TypeError, ValueError):
            detail = error.reason
        if error.status == 403:
            message = (
                "The hub is not allowed to do a step of starting your server in Kubernetes. Please tell the "
                "facility administrators; the hub's log says which right its Kubernetes Role lacks."
            )
        else:
            message = (
                f"Kubernetes refused a step of starting your server ({error.status} {error.reason}). "
                "Please tell the facility administrators; the hub's log has the details."
            )
        log_message = f"Kubernetes answered {error.status} {error.reason} while {what}: {detail}"
        super().__init__(message, reason="kubernetes", status_code=500, log_message=log_message)
        self.jupyterhub_message = message
        self.kubernetes_status = error.status


class CasaSpawner(CasaCredentialsMixin, KubeSpawner):
    """KubeSpawner with per-user Casa credentials, group-restricted profiles and bounded GPU requests."""

    casa_mount_path = Unicode(
        "/etc/casa",
        help="""Where the credentials are mounted in the pod (read-only); the env points there.
        Default ``/etc/casa``; e.g. ``c.CasaSpawner.casa_mount_path = "/run/casa"``.""",
    ).tag(config=True)

    casa_secret_name_template = Unicode(
        "casa-{user_server}",
        help="""Name of the per-user credentials Secret. Fields: ``{user_server}`` (the collision-free slug of
        user and server name, as in KubeSpawner's ``pod_name_template``), ``{username}``, ``{servername}``,
        ``{pod_name}``, ``{namespace}``; two servers never share a name. Default ``casa-{user_server}``; e.g.
        ``c.CasaSpawner.casa_secret_name_template = "{pod_name}-casa"``.""",
    ).tag(config=True)

    casa_file_group_readable = Bool(
        help="""Make owner-only credential files group-readable (0440 instead of 0400) in the pod. Kubelet
        makes Secret files ``root:<fsGroup>``, so a notebook user other than root reads them through the
        fsGroup (Z2JH's default: uid 1000, fsGroup 100). Default: True when ``fs_gid`` is set; e.g.
        ``c.CasaSpawner.casa_file_group_readable = False`` for pods running as root.""",
    ).tag(config=True)

    @default("casa_file_group_readable")
    def _group_readable_default(self):
        return self.fs_gid is not None

    casa_max_gpus = Integer(
        8,
        min=0,
        help="""Most GPUs (whole GPUs and MIG slices, summed) one server may request, whatever the form or the
        API request says. Default 8; e.g. ``c.CasaSpawner.casa_max_gpus = 4``.""",
    ).tag(config=True)

    casa_max_gpus_by_group = Dict(
        key_trait=Unicode(),
        value_trait=Integer(min=0),
        help="""Per-group GPU caps replacing ``casa_max_gpus`` for members (the largest of a user's groups
        wins). Default empty; e.g. ``c.CasaSpawner.casa_max_gpus_by_group = {"gpu-users": 2, "gpu-power": 8}``.""",
    ).tag(config=True)

    casa_gpu_availability = Bool(
        True,
        help="""Show the free GPUs (node allocatable minus pod requests) on GPU profiles of the spawn form. Needs
        ``list`` on nodes and pods cluster-wide; without that right the form simply shows no count.""",
    ).tag(config=True)

    casa_gpu_availability_ttl = Float(
        10,
        min=0,
        help="""Seconds one listing of nodes and pods serves the free-GPU counts of every spawn form. Default 10;
        0 lists on every form.""",
    ).tag(config=True)

    # shared by all servers of the hub: jinja environments, rendered forms (bounded LRU), the last GPU listing
    _casa_form_environments: dict = {}
    _casa_rendered_forms: OrderedDict = OrderedDict()
    _casa_gpu_cache: tuple | None = None
    _casa_gpu_refusal_logged = False

    casa_dask_service_enabled = Bool(
        False,
        help="""Create a per-user ClusterIP Service for the user's Dask scheduler (TLS with the user's
        certificates), created with the pod and deleted on stop, like the credentials Secret. Default False.""",
    ).tag(config=True)

    casa_dask_scheduler_port = Integer(8786, help="Port of the user's Dask scheduler in the pod.").tag(config=True)

    casa_dask_service_name_template = Unicode(
        "casa-dask-{user_server}",
        help="Name of the Dask scheduler Service (fields as in ``casa_secret_name_template``).",
    ).tag(config=True)

    casa_dask_route_host_template = Unicode(
        "",
        help="""With the Dask Service enabled, also create a Traefik IngressRouteTCP passing TLS through by SNI
        from this host to the scheduler (clients outside the cluster). Empty (default): no route. Fields as in
        ``casa_secret_name_template``, e.g. ``"dask-{user_server}.hub.example.org"``.""",
    ).tag(config=True)

    casa_dask_route_entry_point = Unicode("dask", help="Traefik entry point of the Dask route.").tag(config=True)

    casa_dask_route_port = Integer(
        8786,
        min=1,
        max=65535,
        help="""The port of the Dask route's entry point as clients outside the cluster reach it (the router's
        LoadBalancer port). With ``casa_dask_route_host_template`` set, the user's server gets
        ``CASA_DASK_ADDRESS=tls://<route host>:<this port>``: the address its laptop bundle (``casa/client-bundle``)
        points at. Default 8786.""",
    ).tag(config=True)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # what the deployment configured, before any profile: profiles extend it (see load_user_options)
        self._casa_configured_tolerations = copy.deepcopy(self.tolerations)

    # ------------------------------------------------------------------ names and labels
    def template_namespace(self) -> dict:
        """JupyterHub's format fields (``format_string``) plus KubeSpawner's documented name fields."""
        ns = super().template_namespace()
        ns.update(objects.name_fields(self.user.name, self.name or ""))
        ns.update(pod_name=self.pod_name, namespace=self.namespace)
        return ns

    @property
    def casa_secret_name(self) -> str:
        return self.format_string(self.casa_secret_name_template)

    @property
    def casa_service_name(self) -> str:
        return self.format_string(self.casa_dask_service_name_template)

    def casa_labels(self) -> dict:
        """Labels of the Secret, Service and route: the user, Casa's component, the deployment's common labels."""
        return objects.credentials_labels(self.user.name, self.common_labels)

    def casa_server_selector(self) -> dict:
        """The label Casa puts on this server's pod (and only on it: pod names are unique in a namespace)."""
        return {objects.SERVER_LABEL: objects.label_value(self.pod_name)}

    # ------------------------------------------------------------------ pod
    def get_env(self):
        """The Spawner's env, plus the GPUs this server's profile grants and the address laptops reach this
        server's Dask scheduler at (when routed)."""
        env = super().get_env()
        # the user side's cap on the GPUs NVML shows it: a CPU-profile pod on a GPU node, from an image that sets
        # NVIDIA_VISIBLE_DEVICES=all, sees every GPU of the node. A profile's own "environment" value stays.
        env.setdefault("CASA_GPU_COUNT", str(sum(gpu_limits(self.extra_resource_limits).values())))
        if self.casa_dask_service_enabled and self.casa_dask_route_host_template:
            host = self.format_string(self.casa_dask_route_host_template)
            env["CASA_DASK_ADDRESS"] = f"tls://{host}:{self.casa_dask_route_port}"
        return env

    # set while start() runs: only then does making the pod manifest write the objects the pod needs
    _casa_starting = False

    async def get_pod_manifest(self):
        """KubeSpawner's pod with the credentials volume, mount and env and Casa's server label. During a start,
        also the Secret (and the Dask objects) the pod mounts, written first so that the pod never waits for
        them: KubeSpawner makes the manifest once per start, after the user's options and namespace are final,
        just before the admin's ``modify_pod_hook`` and the pod's creation. Outside a start it only builds."""
        pod = await super().get_pod_manifest()
        pod.metadata.labels = {**(pod.metadata.labels or {}), **self.casa_server_selector()}
        if self.casa_bundle is not None:
            objects.add_credentials_to_pod(
                pod, self.casa_secret_name, self.casa_bundle, self.casa_mount_path, self.casa_file_group_readable
            )
            if self._casa_starting:
                await self._casa_create_objects()
        return pod

    async def _casa_create_objects(self) -> None:
        # under the delivery lock: a refresh arriving meanwhile writes before or after, never in between, and
        # self.casa_bundle is the freshest either way
        async with self._casa_delivery_lock:
            await self._casa_put_secret(self.casa_bundle)
        self.casa_progress("Credentials secret ready", 40)
        if self.casa_dask_service_enabled:
            await self._casa_create_dask_objects()

    # ------------------------------------------------------------------ Kubernetes calls
    async def _casa_attempt(self, call, what: str) -> bool:
        """One API call with a timeout, for exponential_backoff: True done, False retry (timeout, 429, 5xx);
        any other error surfaces."""
        try:
            async with asyncio.timeout(self.k8s_api_request_timeout):
                await call()
            return True
        except TimeoutError:
            self.log.warning("Kubernetes did not answer in %ss while %s; retrying", self.k8s_api_request_timeout, what)
            return False
        except ApiException as e:
            if e.status == 429 or e.status >= 500:
                self.log.warning("Kubernetes answered %s while %s; retrying", e.status, what)
                return False
            raise

    async def _casa_request(self, call, what: str) -> None:
        """``call`` with bounded retries; once ``k8s_api_request_retry_timeout`` is spent, or when Kubernetes
        refuses (403, 422, ...), an error whose message is a sentence for the user; the log keeps the details."""
        try:
            await exponential_backoff(
                partial(self._casa_attempt, call, what),
                f"Kubernetes kept failing while {what}",
                timeout=self.k8s_api_request_retry_timeout,
            )
        except AnyTimeoutError:
            raise _user_error(
                "The cluster's Kubernetes is not answering (while preparing your credentials); "
                "please try again in a few minutes.",
                reason="kubernetes",
                status=503,
                log_message=f"Kubernetes kept failing for {self.k8s_api_request_retry_timeout}s while {what}",
            ) from None
        except ApiException as e:
            raise KubernetesRefusal(e, what) from None

    async def _casa_replace(self, kind: str, name: str, create, delete) -> None:
        """Create an object; if one of that name exists (a leftover of an earlier server, a create of ours
        answered too late, or the previous credentials), delete it and create it again. Only ``create`` and
        ``delete``: the rights the Z2JH chart's hub Role grants (no ``update`` or ``patch``)."""

        async def attempt():
            try:
                await create()
                return
            except ApiException as e:
                if e.status != 409:
                    raise
            self.log.info("%s %s exists; replacing it", kind, name)
            try:
                await delete()
            except ApiException as e:
                if e.status != 404:
                    raise
            if self._casa_stopped:  # the server is stopping: its objects go, nothing is created again
                return
            await create()  # a 409 here (created meanwhile) is retried by _casa_attempt's caller as an error

        await self._casa_request(attempt, f"writing {kind} {name}")

    async def _casa_put_secret(self, bundle: CredentialBundle) -> None:
        """Create the credentials Secret (replacing a leftover of an earlier server)."""
        secret = objects.make_credentials_secret(self.casa_secret_name, self.namespace, bundle, self.casa_labels())
        name = secret.metadata.name
        with metrics.secret_write("create"):
            await self._casa_replace(
                "Secret",
                name,
                partial(self.api.create_namespaced_secret, self.namespace, secret),
                partial(self.api.delete_namespaced_secret, name, self.namespace),
            )

    async def casa_write_bundle(self, bundle: CredentialBundle) -> None:
        """Refresh: replace the Secret (delete, create) with the fresh credentials; kubelet updates the mounted
        files in place. No ``patch``: the Z2JH chart's hub Role does not grant it. A server still starting gets
        them too: its own write, after this one, writes ``casa_bundle``, which is already this bundle."""
        secret = objects.make_credentials_secret(self.casa_secret_name, self.namespace, bundle, self.casa_labels())
        name = secret.metadata.name

        async def delete_then_create():
            try:
                await self.api.delete_namespaced_secret(name, self.namespace)
            except ApiException as e:
                if e.status != 404:
                    raise
            if self._casa_stopped:  # the server is stopping: nothing to deliver to
                self.log.info("Secret %s goes with the stopping server; not creating it again", name)
                return
            try:
                await self.api.create_namespaced_secret(self.namespace, secret)
            except ApiException as e:
                if e.status != 409:  # 409: an earlier attempt's create went through after all
                    raise

        with metrics.secret_write("replace"):
            await self._casa_request(delete_then_create, f"refreshing Secret {name}")

    async def _casa_create_dask_objects(self) -> None:
        """The Dask scheduler Service and, if configured, its Traefik route: optional features, so a refusal
        (missing rights) is one clear log line and the server starts without them."""
        service = objects.make_dask_scheduler_service(
            self.casa_service_name,
            self.namespace,
            self.casa_server_selector(),
            self.casa_dask_scheduler_port,
            [],
            self.casa_labels(),
        )
        name = service.metadata.name
        try:
            await self._casa_replace(
                "Service",
                name,
                partial(self.api.create_namespaced_service, self.namespace, service),
                partial(self.api.delete_namespaced_service, name, self.namespace),
            )
        except KubernetesRefusal as e:
            self.log.warning("No Dask scheduler Service for %s: %s", self.casa_log_name, e.log_message)
            return
        if not self.casa_dask_route_host_template:
            return
        route = objects.make_dask_route(
            self.casa_service_name,
            self.namespace,
            self.format_string(self.casa_dask_route_host_template),
            self.casa_service_name,
            self.casa_dask_scheduler_port,
            [],
            self.casa_labels(),
            self.casa_dask_route_entry_point,
        )
        custom = shared_client("CustomObjectsApi")
        route_name = route["metadata"]["name"]
        try:
            await self._casa_replace(
                "route",
                route_name,
                partial(custom.create_namespaced_custom_object, *TRAEFIK[:2], self.namespace, TRAEFIK[2], route),
                partial(custom.delete_namespaced_custom_object, *TRAEFIK[:2], self.namespace, TRAEFIK[2], route_name),
            )
        except KubernetesRefusal as e:
            self.log.warning(
                "No Dask route for %s (grant the casa-dask-route Role of helm-values/extra-rbac.yaml): %s",
                self.casa_log_name,
                e.log_message,
            )

    async def _casa_delete(self, delete, what: str) -> None:
        async def gone():
            try:
                await delete()
            except ApiException as e:
                if e.status != 404:
                    raise

        await self._casa_request(gone, f"deleting {what}")

    async def casa_remove_bundle(self) -> None:
        """Delete the Secret and the Dask Service/route (404 is fine: never created, or already gone)."""
        name = self.casa_secret_name
        with metrics.secret_write("delete"):
            await self._casa_delete(partial(self.api.delete_namespaced_secret, name, self.namespace), f"Secret {name}")
        if self.casa_dask_service_enabled:
            service = self.casa_service_name
            await self._casa_delete(
                partial(self.api.delete_namespaced_service, service, self.namespace), f"Service {service}"
            )
            if self.casa_dask_route_host_template:
                custom = shared_client("CustomObjectsApi")
                try:
                    await self._casa_delete(
                        partial(
                            custom.delete_namespaced_custom_object, *TRAEFIK[:2], self.namespace, TRAEFIK[2], service
                        ),
                        f"route {service}",
                    )
                except KubernetesRefusal as e:  # never created without the right
                    self.log.info("Dask route of %s not deleted: %s", self.casa_log_name, e.log_message)

    # ------------------------------------------------------------------ lifecycle
    async def start(self):
        if self.casa_bundle is None:
            raise _user_error(
                "No credentials for this server: please log out and log in again.",
                reason="casa-credentials",
                status=403,
            )
        self.casa_reset_progress()
        expires = self.casa_bundle.expires_at
        self.casa_progress("Minting credentials", 5)
        if expires is not None:
            self.casa_progress(f"Credentials minted (valid until {expires:%H:%M} UTC)", 10)
        self._casa_starting = True
        try:
            result = await super().start()
        except Exception as e:
            await self._casa_clean_up_failed_start()
            if isinstance(e, ApiException):  # KubeSpawner's own calls (pod, PVC): a sentence, not a client dump
                raise KubernetesRefusal(e, f"starting pod {self.pod_name}") from None
            raise
        finally:
            self._casa_starting = False
        return result

    async def _casa_clean_up_failed_start(self) -> None:
        """The Secret and Dask objects were written before the pod: a start that failed takes them back (the
        hub's stop after a failed spawn would too, but not every caller stops)."""
        try:
            async with self._casa_delivery_lock:
                await self.casa_remove_bundle()
        except Exception as e:  # never hide why the start failed; the next start replaces what is left
            self.log.warning(
                "Could not remove the credentials of %s after a failed start: %s",
                self.casa_log_name,
                getattr(e, "log_message", None) or type(e).__name__,
            )

    async def progress(self):
        """KubeSpawner's progress (pod events) with Casa's steps interleaved as they happen."""
        async for event in self.casa_merge_progress(super().progress()):
            yield event

    # ------------------------------------------------------------------ profiles
    @default("options_form")
    def _casa_options_form_default(self):
        # JupyterHub documents options_form as a callable: rendered per request, as the profiles depend on the
        # user's groups and on free GPUs (an admin's own options_form replaces it)
        return self._casa_options_form if self.profile_list else ""

    async def _casa_profile_list(self) -> list[dict]:
        """The configured profiles: KubeSpawner documents ``profile_list`` as a list, a dict (values sorted by
        key) or a callable of the spawner returning one."""
        profile_list = self.profile_list
        if callable(profile_list):
            profile_list = await maybe_future(profile_list(self))
        if isinstance(profile_list, dict):
            profile_list = [profile_list[key] for key in sorted(profile_list)]
        return profile_list or []

    async def _casa_options_form(self, spawner):
        profile_list = await self._casa_profile_list()
        visible = visible_profiles(profile_list, self.casa_groups)
        if self.casa_gpu_availability and any(offers_gpus(p) for p in visible):
            note = describe_availability(await self.casa_free_gpus() or {})
            if note:
                visible = copy.deepcopy(visible)
                for profile in visible:
                    if offers_gpus(profile):
                        profile["description"] = f"{profile.get('description', '')} ({note})".strip()
        return self.casa_render_form(initialized_profiles(visible), profile_list)

    def casa_render_form(self, visible: list[dict], profile_list: list[dict]) -> str:
        """KubeSpawner's documented profile form (``profile_form_template``, else ``form.html`` from
        ``additional_profile_form_template_paths`` or KubeSpawner's own) with the user's profiles only. One jinja
        environment per template path list, and the rendered forms kept: a login storm renders the same few
        forms hundreds of times, and compiling the template costs ~7 ms of the hub's event loop each time."""
        user_options = self.user_options or {}
        if user_options:  # saved options pre-select the form only while they are still valid for this user
            try:
                check_user_options(initialized_profiles(profile_list), visible, user_options)
            except ProfileRefused:
                user_options = {}
        key = json.dumps(
            [self.profile_form_template, self.additional_profile_form_template_paths, visible, user_options],
            sort_keys=True,
            default=str,
        )
        forms = CasaSpawner._casa_rendered_forms
        html = forms.get(key)
        if html is not None:
            forms.move_to_end(key)
            return html
        paths = tuple(self.additional_profile_form_template_paths)
        env = CasaSpawner._casa_form_environments.get(paths)
        if env is None:
            env = Environment(
                loader=ChoiceLoader([FileSystemLoader(list(paths)), PackageLoader("kubespawner", "templates")])
            )
            env.policies["json.dumps_kwargs"] = {"sort_keys": False}  # profiles in the admin's order
            CasaSpawner._casa_form_environments[paths] = env
        template = env.from_string(self.profile_form_template) if self.profile_form_template else None
        html = forms[key] = (template or env.get_template("form.html")).render(
            profile_list=visible, user_options=user_options
        )
        while len(forms) > 64:
            forms.popitem(last=False)
        return html

    async def casa_free_gpus(self) -> dict[str, int] | None:
        """Free GPU resources in the cluster, or None where the hub may not list nodes and pods (RBAC) or the
        API is slow: the form then shows no count. One listing serves every form for
        ``casa_gpu_availability_ttl`` seconds (a lecture opening the form at once lists the cluster once)."""
        loop = asyncio.get_running_loop()
        cached = CasaSpawner._casa_gpu_cache
        if cached is not None and cached[0] is loop and loop.time() - cached[1] < self.casa_gpu_availability_ttl:
            return await asyncio.shield(cached[2])
        future = asyncio.ensure_future(self._casa_list_free_gpus())
        CasaSpawner._casa_gpu_cache = (loop, loop.time(), future)
        return await asyncio.shield(future)

    async def _casa_list_free_gpus(self) -> dict[str, int] | None:
        async def raw_list(call, **kwargs) -> bytes:
            # the API's JSON as is: building client models of every pod, then serialising them back, is slow;
            # unparsed, the client does not check the status itself
            async with asyncio.timeout(self.k8s_api_request_timeout):
                response = await call(_preload_content=False, **kwargs)
            try:
                async with asyncio.timeout(self.k8s_api_request_timeout):
                    body = await response.read()
            finally:
                response.release()
            if response.status >= 400:
                raise ApiException(status=response.status, reason=response.reason)
            return body

        try:
            nodes = await raw_list(self.api.list_node)
            pods = await raw_list(
                self.api.list_pod_for_all_namespaces, field_selector="status.phase!=Succeeded,status.phase!=Failed"
            )
        except ApiException as e:
            if e.status == 403 and not CasaSpawner._casa_gpu_refusal_logged:
                CasaSpawner._casa_gpu_refusal_logged = True  # once per hub: every form would say it again
                self.log.warning(
                    "The hub may not list nodes and pods cluster-wide (Kubernetes answered 403): spawn "
                    "forms show no free-GPU count. Grant the casa-gpu-availability ClusterRole of "
                    "helm-values/extra-rbac.yaml, or set CasaSpawner.casa_gpu_availability = False."
                )
            elif e.status != 403:
                self.log.info(
                    "No live GPU availability for the spawn form: Kubernetes answered %s %s", e.status, e.reason
                )
            return None
        except (asyncio.TimeoutError, OSError) as e:
            self.log.info("No live GPU availability for the spawn form: %s", type(e).__name__)
            return None
        return await asyncio.to_thread(_free_resources_from_json, nodes, pods)

    def casa_max_gpus_for_user(self) -> int:
        return max_gpus_for(self.casa_groups, self.casa_max_gpus, self.casa_max_gpus_by_group)

    async def load_user_options(self):
        """Refuse what this user may not have (a tampered form or API request), make the user's defaults
        explicit (KubeSpawner applies the configured ``profile_list``, whose defaults may be profiles or choices
        this user does not see), let KubeSpawner apply them, then bound the GPUs the result asks for."""
        profile_list = await self._casa_profile_list()
        try:
            if profile_list:
                visible = initialized_profiles(visible_profiles(profile_list, self.casa_groups))
                check_user_options(initialized_profiles(profile_list), visible, self.user_options or {})
                self.user_options = complete_user_options(visible, self.user_options or {})
            self.tolerations = copy.deepcopy(self._casa_configured_tolerations)  # no earlier profile's leftovers
            try:
                await super().load_user_options()
            except (ValueError, KeyError) as e:  # KubeSpawner's own refusals of unknown options
                raise ProfileRefused(f"Invalid server options: {e}") from None
            self.tolerations = extend_tolerations(self._casa_configured_tolerations, self.tolerations)
            check_gpu_limits(self.extra_resource_limits, self.casa_max_gpus_for_user())
        except ProfileRefused as e:
            self.log.warning("Refused server options of %s: %s", self.casa_log_name, e)
            raise _user_error(str(e), reason="casa-profile", status=403) from None
