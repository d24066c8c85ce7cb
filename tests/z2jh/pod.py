"""The Z2JH chart's hub pod, on this machine: what the chart's Helm templates (tests/data/z2jh/hub/
configmap.yaml, secret.yaml, deployment.yaml) put into the hub container, laid out in a work directory and
mounted where the chart mounts it, in a private mount namespace of the hub process only (``unshare -m``;
nothing on the machine changes), then ``jupyterhub --config /usr/local/etc/jupyterhub/jupyterhub_config.py``
with the chart's own (vendored, unmodified) config, and the chart's proxy (configurable-http-proxy) beside it.

What a cluster provides and this stands in for:

- Service DNS names (``hub``, ``proxy-api``, ``proxy-public``): an ``/etc/hosts`` mapping them to 127.0.0.1,
  bind-mounted in the hub's and the proxy's namespaces; Service ports: the ``<NAME>_SERVICE_HOST/PORT``
  variables Kubernetes sets, with free ports;
- the API server: the Kubernetes emulator over TLS (``start_kube(tls=True)``), found as in-cluster config
  finds it (``KUBERNETES_SERVICE_HOST/PORT``, the service account's ``token``, ``ca.crt``, ``namespace``);
- Secret volumes (``hub.extraVolumes``): directories with the Secret's files and the volume's ``defaultMode``;
- the hub's PVC (``hub.db.type: sqlite-pvc``): a directory mounted on ``/srv/jupyterhub``, the working directory.

The hub runs as root here (the chart runs it as uid 1000 with fsGroup 1000): the test venv's interpreter is
not reachable by another user on this machine.

Which JupyterHub: the test venv's, or with ``CASA_HUB_PYTHON`` set (scripts/test.sh's second run:
scripts/z2jh-hub-python) the chart image's (JupyterHub 5.5.0 on Python 3.14 in a Debian sid root), as
``python -m jupyterhub``; that command then makes the pod's mounts itself, in the same private mount namespace,
on the root's filesystem view (its ``--bind`` / ``--ro-bind`` / ``--chdir``), before it enters the root.
"""

from __future__ import annotations

import os
import secrets
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import yaml

from tests.support import REPO, VENV_BIN, chart_proxy_command, stop_process, wait_for_port

CHART_HUB = REPO / "tests" / "data" / "z2jh" / "hub"
ETC = "/usr/local/etc/jupyterhub"
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
HUB_ARGS_CONFIG = f"{ETC}/jupyterhub_config.py"
# helm install jhub jupyterhub/jupyterhub --namespace jhub: what secret.yaml passes through of .Chart/.Release
RELEASE = {"Name": "jhub", "Namespace": "jhub", "Service": "Helm"}
CHART = {"Name": "jupyterhub", "Version": "4.3.1", "AppVersion": "5.5.0"}  # images/Dockerfile.hub's k8s-hub
# the bearer token the Kubernetes emulator knows as the hub's service account (tests/hub/kube.py applies the
# chart's hub Role, tests/hub/rbac.py, to requests bearing it)
SERVICE_ACCOUNT_TOKEN = "test"
# the command of the chart image's hub Python (scripts/z2jh-hub-python), or none: the hub runs from the test venv
HUB_PYTHON = shlex.split(os.environ.get("CASA_HUB_PYTHON", ""))
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PATH = SYSTEM_PATH if HUB_PYTHON else f"{VENV_BIN}:{SYSTEM_PATH}"  # where the container's ``jupyterhub`` is found


class ChartError(RuntimeError):
    """What Kubernetes / Helm would refuse or get stuck on before the hub process runs."""


# ------------------------------------------------------------------ names (the chart's _helpers-names.tpl)
def fullname(values: dict, release: str = RELEASE["Name"]) -> str:
    override = values.get("fullnameOverride")
    if isinstance(override, str):
        return override
    name = values.get("nameOverride") or CHART["Name"]
    return release if name in release else f"{release}-{name}"


def name_templates(values: dict, release: str = RELEASE["Name"]) -> dict[str, str]:
    """``jupyterhub.name-templates``: the resource names the hub's ConfigMap exposes (``get_name``)."""
    full = fullname(values, release)
    dash = f"{full}-" if full else ""
    hub, proxy = f"{dash}hub", f"{dash}proxy"
    existing = values["hub"].get("existingSecret") or ""
    names = {
        "fullname": full,
        "fullname-dash": dash,
        "hub": hub,
        "hub-existing-secret": existing,
        "hub-existing-secret-or-default": existing or hub,
        "hub-pvc": f"{hub}-db-dir",
        "proxy": proxy,
        "proxy-api": f"{proxy}-api",
        "proxy-http": f"{proxy}-http",
        "proxy-public": f"{proxy}-public",
        "proxy-public-tls": f"{proxy}-public-tls-acme",
        "proxy-public-manual-tls": f"{proxy}-public-manual-tls",
        "autohttps": f"{dash}autohttps",
        "user-scheduler-deploy": f"{dash}user-scheduler",
        "user-scheduler-lock": f"{dash}user-scheduler-lock",
        "user-placeholder": f"{dash}user-placeholder",
        "image-puller-priority": f"{dash}image-puller" if full else f"{release}-image-puller-priority",
        "hook-image-awaiter": f"{dash}hook-image-awaiter",
        "hook-image-puller": f"{dash}hook-image-puller",
        "continuous-image-puller": f"{dash}continuous-image-puller",
        "singleuser": f"{dash}singleuser",
        "image-pull-secret": f"{dash}image-pull-secret",
        "ingress": full or "jupyterhub",
        "priority": full or f"{release}-default-priority",
        "user-placeholder-priority": f"{dash}user-placeholder" if full else f"{release}-user-placeholder-priority",
        "user-scheduler": f"{dash}user-scheduler" if full else f"{release}-user-scheduler",
    }
    return names


def service_env(name: str, host: str, port: int) -> dict[str, str]:
    """The variables Kubernetes sets in every pod for a Service of its namespace."""
    key = name.upper().replace("-", "_")
    return {f"{key}_SERVICE_HOST": host, f"{key}_SERVICE_PORT": str(port), f"{key}_PORT": f"tcp://{host}:{port}"}


# ------------------------------------------------------------------ what the templates render
@dataclass
class ChartSecrets:
    """The values the chart's secret.yaml generates once and keeps (``randHex 64`` each)."""

    proxy_token: str = field(default_factory=lambda: secrets.token_hex(32))
    cookie_secret: str = field(default_factory=lambda: secrets.token_hex(32))
    crypt_key: str = field(default_factory=lambda: secrets.token_hex(32))
    service_tokens: dict[str, str] = field(default_factory=dict)


def config_map(values: dict) -> dict[str, bytes]:
    """configmap.yaml: the name templates, ``files/hub/*`` and the image puller's checksum."""
    data = {k: v.encode() for k, v in name_templates(values).items()}
    for f in ("jupyterhub_config.py", "z2jh.py"):
        data[f] = (CHART_HUB / f).read_bytes()
    data["checksum_hook-image-puller"] = b"0" * 64
    return data


def singleuser_secret(values: dict) -> dict[str, bytes] | None:
    """templates/singleuser/secret.yaml: ``singleuser.extraFiles`` as the chart renders them into the Secret every
    user pod mounts them from (``data`` as JSON, YAML or TOML by the mount path's extension, ``stringData`` as
    it is, ``binaryData`` decoded); None without extra files (the chart renders no Secret then)."""
    import base64
    import json

    import yaml

    files = values.get("singleuser", {}).get("extraFiles") or {}
    if not files:
        return None
    out = {}
    for key, spec in files.items():
        if "binaryData" in spec:
            out[key] = base64.b64decode(spec["binaryData"])
        elif "stringData" in spec:
            out[key] = spec["stringData"].encode()
        else:
            path = spec["mountPath"]
            if path.endswith(".json"):
                out[key] = json.dumps(spec["data"]).encode()
            elif path.endswith((".yaml", ".yml")):
                out[key] = yaml.safe_dump(spec["data"]).encode()
            else:  # .toml is the chart's only other choice; nothing in Casa's values uses it
                raise ChartError(f"singleuser.extraFiles.{key}: {path!r} is not emulated here (only .json/.yaml)")
    return out


def secret(values: dict, generated: ChartSecrets) -> dict[str, bytes]:
    """secret.yaml: every value passed through as ``values.yaml`` (plus .Chart, .Release), services' API
    tokens and the three generated secrets."""
    passed = dict(values, Chart=CHART, Release=RELEASE)
    data = {"values.yaml": yaml.safe_dump(passed).encode()}
    if values["hub"]["db"].get("password"):
        data["hub.db.password"] = str(values["hub"]["db"]["password"]).encode()
    for key, service in (values["hub"].get("services") or {}).items():
        token = service.get("apiToken") or generated.service_tokens.setdefault(key, secrets.token_hex(32))
        data[f"hub.services.{key}.apiToken"] = token.encode()
    hub_config = values["hub"].get("config") or {}
    data["hub.config.ConfigurableHTTPProxy.auth_token"] = (
        hub_config.get("ConfigurableHTTPProxy", {}).get("auth_token") or generated.proxy_token
    ).encode()
    data["hub.config.JupyterHub.cookie_secret"] = (
        hub_config.get("JupyterHub", {}).get("cookie_secret") or generated.cookie_secret
    ).encode()
    keys = hub_config.get("CryptKeeper", {}).get("keys") or [generated.crypt_key]
    data["hub.config.CryptKeeper.keys"] = ";".join(keys).encode()
    return data


def hub_args(values: dict) -> list[str]:
    """deployment.yaml's container args (the image's entrypoint runs them)."""
    hub = values["hub"]
    if hub.get("command"):
        raise ChartError("hub.command is not emulated here")
    if hub.get("args"):
        return [str(a) for a in hub["args"]]
    args = ["jupyterhub", "--config", HUB_ARGS_CONFIG]
    if (values.get("debug") or {}).get("enabled"):
        args.append("--debug")
    upgrade = hub["db"].get("upgrade")
    if upgrade is True or (upgrade is None and hub["db"]["type"] == "sqlite-pvc"):
        args.append("--upgrade-db")
    return args


def extra_env(entries) -> dict[str, str]:
    """``jupyterhub.extraEnv``: a dict (name: value or name: {valueFrom...}) or a list of EnvVars."""
    out = {}
    items = entries.items() if isinstance(entries, dict) else [(e["name"], e) for e in entries or []]
    for name, value in items:
        if isinstance(value, dict):
            if "value" not in value:
                raise ChartError(f"hub.extraEnv.{name}: valueFrom is not emulated here")
            value = value["value"]
        out[name] = str(value)
    return out


def _write_dir(directory: Path, files: dict[str, bytes], mode: int, gid: int | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        path = directory / name
        path.write_bytes(content)
        path.chmod(mode)
        if gid is not None:
            os.chown(path, 0, gid)
    return directory


def extra_volume_dirs(values: dict, secret_data: dict[str, dict[str, bytes]], work: Path) -> list[tuple[Path, str]]:
    """hub.extraVolumes / hub.extraVolumeMounts as the kubelet mounts them: (directory, mountPath) for each
    mount; a mount without its volume, or a volume whose Secret does not exist, stops the pod as it would in
    a cluster (the API refuses the Deployment; the pod stays in ContainerCreating)."""
    volumes = {v["name"]: v for v in values["hub"].get("extraVolumes") or []}
    fs_group = (values["hub"].get("podSecurityContext") or {}).get("fsGroup")
    mounts = []
    for mount in values["hub"].get("extraVolumeMounts") or []:
        volume = volumes.get(mount["name"])
        if volume is None:
            raise ChartError(
                f"hub.extraVolumeMounts: no volume named {mount['name']!r} in hub.extraVolumes "
                "(Kubernetes refuses the hub Deployment)"
            )
        if "secret" in volume:
            name = volume["secret"]["secretName"]
            if name not in secret_data:
                raise ChartError(f"Secret {name!r} not found: the hub pod cannot mount volume {mount['name']!r}")
            files = secret_data[name]
            items = volume["secret"].get("items")
            if items:
                files = {i["path"]: files[i["key"]] for i in items}
            directory = _write_dir(
                work / "volumes" / mount["name"], files, volume["secret"].get("defaultMode", 0o644), fs_group
            )
        elif "emptyDir" in volume:
            directory = work / "volumes" / mount["name"]
            directory.mkdir(parents=True, exist_ok=True)
        else:
            raise ChartError(f"hub.extraVolumes.{mount['name']}: only secret and emptyDir volumes are emulated")
        if mount.get("subPath"):
            directory = directory / mount["subPath"]
        mounts.append((directory, mount["mountPath"]))
    return mounts


# ------------------------------------------------------------------ a private mount namespace
def in_mount_namespace(
    mounts: list[tuple[Path, str]],
    argv: list[str],
    *,
    scratch: Path,
    workdir: str = "/",
    read_only: frozenset[str] = frozenset(),
) -> list[str]:
    """``argv`` run by root in a private mount namespace where each (source, target) is bind-mounted.

    A target whose parent directory does not exist on this machine (``/usr/local/etc/jupyterhub``,
    ``/run/secrets``, ``/etc/casa-hub``) is created inside an overlay of its nearest existing ancestor, whose
    upper layer lives in ``scratch``: the machine's directories never change."""
    lines = ["set -e"]
    overlays: list[str] = []
    for _, target in mounts:
        real = os.path.realpath(target)
        if os.path.exists(real):
            continue  # mounted over as it is
        ancestor = os.path.dirname(real)
        while not os.path.isdir(ancestor):
            ancestor = os.path.dirname(ancestor)
        if ancestor == "/":
            raise ValueError(f"will not overlay / for {target}")
        if any(ancestor == o or ancestor.startswith(o + "/") for o in overlays):
            continue
        overlays = [o for o in overlays if not o.startswith(ancestor + "/")] + [ancestor]
    for i, lower in enumerate(sorted(overlays)):
        upper, work = scratch / f"overlay{i}" / "upper", scratch / f"overlay{i}" / "work"
        upper.mkdir(parents=True, exist_ok=True)
        work.mkdir(parents=True, exist_ok=True)
        lines.append(f"mount -t overlay overlay -o lowerdir={lower},upperdir={upper},workdir={work} {lower}")
    for source, target in sorted(mounts, key=lambda m: m[1].count("/")):
        s, t = shlex.quote(str(source)), shlex.quote(target)
        if source.is_dir():
            lines.append(f"mkdir -p {t}")
        else:
            lines.append(f'mkdir -p "$(dirname {t})"; [ -e {t} ] || : > {t}')
        lines.append(f"mount --bind {s} {t}")
        if target in read_only:
            lines.append(f"mount -o remount,bind,ro {t}")
    lines.append(f"cd {shlex.quote(workdir)}")
    lines.append('exec "$@"')
    return ["unshare", "-m", "--propagation", "private", "sh", "-c", "\n".join(lines), "sh", *argv]


def in_hub_root(
    mounts: list[tuple[Path, str]], args: list[str], *, workdir: str, read_only: frozenset[str] = frozenset()
) -> list[str]:
    """``args`` (``jupyterhub ...``) run as ``HUB_PYTHON -m jupyterhub ...`` in the chart image's hub
    environment, with each (source, target) bind-mounted in its root, in the command's own private mount
    namespace (scripts/z2jh-hub-python: a target the root lacks is made in an overlay there, as above)."""
    if args[:1] != ["jupyterhub"]:
        raise ChartError(f"hub.args {args!r}: only `jupyterhub ...` is run in the chart's hub environment here")
    options = []
    for source, target in sorted(mounts, key=lambda m: m[1].count("/")):
        options += ["--ro-bind" if target in read_only else "--bind", str(source), target]
    return [*HUB_PYTHON, *options, "--chdir", workdir, "-m", "jupyterhub", *args[1:]]


def hosts_file(path: Path, names: list[str]) -> Path:
    """Cluster DNS for the Services the hub and the proxy reach by name."""
    path.write_text("127.0.0.1 localhost\n::1 localhost ip6-localhost\n127.0.0.1 " + " ".join(names) + "\n")
    return path


# ------------------------------------------------------------------ the running pods
@dataclass
class Proc:
    proc: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        stop_process(self.proc, timeout=20)


def start_proxy(
    work: Path, *, hosts: Path, token: str, public_port: int, api_port: int, hub_port: int, hub_name: str = "hub"
) -> Proc:
    """The chart's proxy Deployment: ``configurable-http-proxy --ip= --api-ip= --api-port=8001
    --default-target=http://hub:$(HUB_SERVICE_PORT) --error-target=.../hub/error --port=8000`` with
    CONFIGPROXY_AUTH_TOKEN from the hub's Secret; here on 127.0.0.1 and free ports, resolving ``hub`` as
    cluster DNS would."""
    argv = chart_proxy_command(f"{hub_name}:{hub_port}", public_port, api_port)
    log = work / "proxy.log"
    proc = subprocess.Popen(
        in_mount_namespace([(hosts, "/etc/hosts")], argv, scratch=work / "proxy-ns"),
        env=dict(os.environ, CONFIGPROXY_AUTH_TOKEN=token),
        stdout=open(log, "wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_for_port(public_port, proc=proc, timeout=30)
        wait_for_port(api_port, proc=proc, timeout=30)
    except Exception as e:
        stop_process(proc)
        raise RuntimeError(f"configurable-http-proxy did not start: {e}\n{log.read_text(errors='replace')}") from None
    return Proc(proc, log)


@dataclass
class HubPod:
    """The hub container's files and environment, laid out under ``work`` (see :func:`lay_out`)."""

    work: Path
    mounts: list[tuple[Path, str]]
    read_only: frozenset[str]
    env: dict[str, str]
    args: list[str]
    generated: ChartSecrets

    def start(self) -> Proc:
        log = self.work / "hub.log"
        if HUB_PYTHON:
            argv = in_hub_root(self.mounts, self.args, workdir="/srv/jupyterhub", read_only=self.read_only)
        else:
            argv = in_mount_namespace(
                self.mounts,
                self.args,
                scratch=self.work / "hub-ns",
                workdir="/srv/jupyterhub",
                read_only=self.read_only,
            )
        proc = subprocess.Popen(
            argv, env=self.env, stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True
        )
        return Proc(proc, log)


def lay_out(
    work: Path,
    values: dict,
    *,
    secret_data: dict[str, dict[str, bytes]],
    hosts: Path,
    kube_host: str,
    kube_port: int,
    ca_file: Path,
    namespace: str,
    ports: dict[str, int],
    generated: ChartSecrets | None = None,
) -> HubPod:
    """Everything the chart's templates give the hub container, for ``values`` (already merged):
    ``ports``: the Services' ports by short name (``hub``, ``proxy-api``, ``proxy-public``)."""
    generated = generated or ChartSecrets()
    hub = values["hub"]
    for unsupported in ("existingSecret", "extraFiles"):
        if hub.get(unsupported):
            raise ChartError(f"hub.{unsupported} is not emulated here")
    if hub["db"]["type"] not in ("sqlite-pvc", "sqlite-memory"):
        raise ChartError(f"hub.db.type {hub['db']['type']!r} is not emulated here")
    work.mkdir(parents=True, exist_ok=True)
    config = _write_dir(work / "configmap", config_map(values), 0o644)
    secret_dir = _write_dir(work / "secret", secret(values, generated), 0o644)
    service_account = _write_dir(
        work / "serviceaccount",
        {"token": SERVICE_ACCOUNT_TOKEN.encode(), "ca.crt": ca_file.read_bytes(), "namespace": namespace.encode()},
        0o644,
    )
    pvc = work / "pvc"
    pvc.mkdir(exist_ok=True)
    mounts = [
        (config / "jupyterhub_config.py", f"{ETC}/jupyterhub_config.py"),
        (config / "z2jh.py", f"{ETC}/z2jh.py"),
        (config, f"{ETC}/config"),
        (secret_dir, f"{ETC}/secret"),
        (service_account, SERVICE_ACCOUNT_DIR),
        (pvc, "/srv/jupyterhub"),
        (hosts, "/etc/hosts"),
        *extra_volume_dirs(values, secret_data, work),
    ]
    read_only = frozenset(t for s, t in mounts if t not in ("/srv/jupyterhub", "/etc/hosts"))
    names = name_templates(values)
    env = {
        "PATH": PATH,
        "HOME": "/srv/jupyterhub",
        "LANG": "C.UTF-8",
        "KUBERNETES_SERVICE_HOST": kube_host,
        "KUBERNETES_SERVICE_PORT": str(kube_port),
        "KUBERNETES_SERVICE_PORT_HTTPS": str(kube_port),
    }
    for short in ("hub", "proxy-api", "proxy-public"):
        env.update(service_env(names[short], "127.0.0.1", ports[short]))
    # deployment.yaml's env
    env.update(
        {
            "PYTHONUNBUFFERED": "1",
            "HELM_RELEASE_NAME": RELEASE["Name"],
            "POD_NAMESPACE": namespace,
            "CONFIGPROXY_AUTH_TOKEN": generated.proxy_token,
        }
    )
    env.update(extra_env(hub.get("extraEnv")))
    return HubPod(work, mounts, read_only, env, hub_args(values), generated)


def wait_ready(url: str, proc: Proc, timeout: float = 60) -> None:
    """Until the hub answers through the proxy (it routes /hub/ once it is up)."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.proc.poll() is not None:
            raise RuntimeError(f"the hub exited with {proc.proc.returncode}:\n{proc.log()[-6000:]}")
        try:
            if httpx.get(url + "/hub/api", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"the hub did not answer at {url} within {timeout:.0f} s:\n{proc.log()[-6000:]}")
