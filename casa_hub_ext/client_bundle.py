"""The laptop client bundle: the user's Dask client certificate, key and CA, with a Dask config, as one zip.

``GET /casa/client-bundle`` (:class:`ClientBundleHandler`) answers a zip built by :func:`build_client_bundle`
from the mounted credential bundle (:class:`~casa_hub_ext.bundle.MountedBundle`)::

    casa-dask-<user>/README.txt   how to use it: the three lines a laptop needs, and until when it works
    casa-dask-<user>/dask.yaml    scheduler-address, require-encryption, and the TLS material itself
    casa-dask-<user>/ca.pem       the user's own Dask CA certificate
    casa-dask-<user>/client.crt   the Dask client certificate
    casa-dask-<user>/client.key   its private key (mode 0600 in the zip)

``dask.yaml`` holds the PEM text of the CA, certificate and key rather than file paths: ``distributed`` accepts a
certificate's text wherever it accepts a path (it hands it to OpenSSL through a private temporary file), so the
config works wherever the zip is unpacked, and ``export DASK_CONFIG=<that directory>`` is all the set-up there is.
The separate PEM files are for other tools (``openssl s_client``) and for people who prefer paths.

The scheduler address is the facility's SNI route to the user's scheduler, ``tls://<user host>:<port>``
(:class:`ClientBundleSettings`; the hub sets ``CASA_DASK_ADDRESS`` in the pod). The key only ever goes into the
response (``Cache-Control: no-store``), never into a log or an error message.
"""

from __future__ import annotations

import datetime
import io
import re
import zipfile
from dataclasses import dataclass
from urllib.parse import urlsplit

from jupyter_server.auth.decorator import authorized
from jupyter_server.utils import url_path_join
from tornado import web
from traitlets import Unicode, default
from traitlets.config import LoggingConfigurable

from .bundle import MountedBundle
from .errors import CasaUserError, CredentialError
from .handlers import CasaHandler

ADDRESS_ENV = "CASA_DASK_ADDRESS"
CLIENT = "dask-client"
SETTINGS_KEY = "casa_client_bundle_settings"  # web_app.settings key the extension may fill


class ClientBundleUnavailable(CasaUserError):
    """This server cannot make a laptop bundle: the facility publishes no route to the user's scheduler."""

    status_code = 404


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def check_address(address: str) -> str:
    """``address`` if it is a ``tls://host:port`` Dask address, else :class:`ClientBundleUnavailable`."""
    address = (address or "").strip()
    if not address:
        raise ClientBundleUnavailable(
            f"this facility publishes no Dask address for laptops ({ADDRESS_ENV} is not set): "
            "ask its administrators to enable the Dask route"
        )
    parts = urlsplit(address)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme != "tls" or not parts.hostname or not port or parts.path not in ("", "/") or parts.query:
        raise ClientBundleUnavailable(
            f"the facility's Dask address {address!r} ({ADDRESS_ENV}) is not of the form tls://host:port"
        )
    return f"tls://{parts.netloc}"


def require_login_scheduler(login_cluster) -> None:
    """The route to the pod's scheduler port reaches the login cluster's scheduler only: without one configured
    (``CasaClusterSettings.login_cluster``) a laptop bundle would point at a port nothing listens on."""
    if login_cluster is None:
        raise ClientBundleUnavailable(
            "your server runs no Dask scheduler for laptops (CasaClusterSettings.login_cluster is not set): "
            "ask the facility's administrators to enable the login cluster"
        )


def file_label(user: str) -> str:
    """A file-name-safe form of the user name (for the zip's name and its top directory)."""
    label = re.sub(r"[^A-Za-z0-9._-]+", "-", user).strip("-.")[:48]
    return label or "user"


class ClientBundleSettings(LoggingConfigurable):
    """Where a laptop reaches the user's Dask scheduler."""

    scheduler_address = Unicode(
        help="""The address of the user's scheduler from outside the cluster: ``tls://<host>:<port>``, the host
        being the one the hub's SNI route (``CasaSpawner.casa_dask_route_host_template``) matches and the port the
        router's entry point. Default: ``$CASA_DASK_ADDRESS``, which the hub sets in the pod; empty: no laptop
        bundle (``GET /casa/client-bundle`` answers 404).
        Example: ``c.ClientBundleSettings.scheduler_address = "tls://dask-alice.hub.example.org:8786"``""",
    ).tag(config=True)

    @default("scheduler_address")
    def _default_address(self):
        import os

        return os.environ.get(ADDRESS_ENV, "")


@dataclass(frozen=True)
class ClientBundle:
    """A built laptop bundle: the zip's bytes and what the response and the log may say about it."""

    filename: str
    content: bytes
    address: str
    expires_at: datetime.datetime
    user: str


def _read(path, what: str, kind: str = CLIENT) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CredentialError(kind, f"the {what} cannot be read ({type(e).__name__}); restart your server") from None
    if not data.strip():
        raise CredentialError(kind, f"the {what} is empty; restart your server to get fresh credentials")
    return data


def _check_pair(cert_pem: bytes, key_pem: bytes, now: datetime.datetime) -> datetime.datetime:
    """The certificate's own expiry, after checking that it is valid now and that the key is its key. Messages
    never quote the key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        raise CredentialError(CLIENT, "the Dask client certificate is not a PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise CredentialError(CLIENT, "the key of the Dask client certificate is not a PEM private key") from None
    expires_at = cert.not_valid_after_utc
    if expires_at <= now:
        raise CredentialError(
            CLIENT,
            f"the Dask client certificate expired at {expires_at.isoformat()}; "
            "restart your server to get fresh credentials, then download the bundle again",
        )
    if cert.not_valid_before_utc > now:
        raise CredentialError(
            CLIENT, f"the Dask client certificate is not valid before {cert.not_valid_before_utc.isoformat()}"
        )
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*spki) != cert.public_key().public_bytes(*spki):
        raise CredentialError(
            CLIENT, "the Dask client key does not belong to the client certificate; restart your server"
        )
    return expires_at


def dask_config(address: str, ca_pem: str, cert_pem: str, key_pem: str) -> str:
    """The Dask config YAML a laptop reads (``DASK_CONFIG``): the scheduler and the TLS material, inline."""
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    def text(dumper, value: str):
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    Dumper.add_representer(str, text)
    config = {
        "scheduler-address": address,
        "distributed": {
            "comm": {
                "require-encryption": True,
                "tls": {"ca-file": ca_pem, "client": {"cert": cert_pem, "key": key_pem}},
            }
        },
    }
    header = (
        "# Casa: your Dask client on a laptop. The values are the certificates themselves (Dask accepts the PEM\n"
        "# text wherever it accepts a path). The key is private: keep this file like a password.\n"
    )
    return header + yaml.dump(config, Dumper=Dumper, sort_keys=False, default_flow_style=False)


def readme(user: str, label: str, address: str, expires_at: datetime.datetime, dask_version: str | None) -> str:
    pin = f'"distributed=={dask_version}"' if dask_version else "distributed"
    return f"""Casa: Dask from your laptop ({user})
=====================================

Scheduler:   {address}
Valid until: {expires_at.isoformat()} (UTC; when your client certificate expires).
             After that, download a fresh bundle from JupyterLab.

Unzip this file, then in a terminal in the directory that holds casa-dask-{label}/:

    pip install {pin}
    export DASK_CONFIG="$PWD/casa-dask-{label}"
    python -c "from distributed import Client; client = Client(); print(client.submit(sum, [1, 2]).result())"

Client() with no argument connects to {address} over TLS with your client
certificate: the facility's router passes the connection, still encrypted, to your own scheduler by its host
name, and only your scheduler accepts your certificate. Start your server (and with it your scheduler) in
JupyterLab first. The Python version and the distributed version should match your server's.

Files
  dask.yaml    the Dask config (scheduler-address, require-encryption, and the certificates below, inline)
  ca.pem       your own Dask CA certificate (only your scheduler and workers have certificates under it)
  client.crt   your Dask client certificate
  client.key   its private key: anyone holding it can run code on your Dask cluster until it expires;
               keep it like a password and delete the bundle when you no longer need it

If the connection is refused
  "certificate verify failed" / "unknown ca":  the bundle is not for this scheduler (another user's bundle, or
                                               your server restarted with a new CA): download it again
  "certificate has expired":                  download a fresh bundle
  timeout or connection closed at once:        your server is not running, or the host name is not yours
"""


def build_client_bundle(
    bundle: MountedBundle,
    address: str,
    *,
    now: datetime.datetime | None = None,
    dask_version: str | None = None,
) -> ClientBundle:
    """The laptop zip for the user of ``bundle``, connecting to ``address``. Raises :class:`CredentialError` when
    the client certificate, its key or the CA is missing or expired, and :class:`ClientBundleUnavailable` when
    ``address`` is not a ``tls://host:port`` address."""
    now = now or _utcnow()
    address = check_address(address)
    bundle.require("dask-ca", CLIENT, now=now)
    cert_path, key_path = bundle.dask_paths("client")
    ca_pem = _read(bundle.dask_ca, "Dask CA certificate", "dask-ca")
    cert_pem = _read(cert_path, "Dask client certificate")
    key_pem = _read(key_path, "key of the Dask client certificate")
    expires_at = _check_pair(cert_pem, key_pem, now)
    try:
        ca_text, cert_text, key_text = (b.decode("ascii") for b in (ca_pem, cert_pem, key_pem))
    except UnicodeDecodeError:
        raise CredentialError(CLIENT, "the Dask certificates are not PEM text") from None

    label = file_label(bundle.user)
    top = f"casa-dask-{label}"
    stamp = now.astimezone(datetime.timezone.utc).timetuple()[:6]
    members = [
        ("README.txt", readme(bundle.user, label, address, expires_at, dask_version), 0o644),
        ("dask.yaml", dask_config(address, ca_text, cert_text, key_text), 0o600),
        ("ca.pem", ca_text, 0o644),
        ("client.crt", cert_text, 0o644),
        ("client.key", key_text, 0o600),
    ]
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data, mode in members:
            info = zipfile.ZipInfo(f"{top}/{name}", date_time=stamp)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = (0o100000 | mode) << 16  # a regular file with these permissions when unzipped
            z.writestr(info, data)
    return ClientBundle(f"{top}.zip", out.getvalue(), address, expires_at, bundle.user)


def _dask_version() -> str | None:
    try:
        import distributed
    except ImportError:
        return None
    return distributed.__version__


class ClientBundleHandler(CasaHandler):
    """``GET /casa/client-bundle``: the laptop zip, as an attachment nobody may cache. Refusals are JSON
    ``{"message", "error"}`` (409 for a missing or expired credential, 404 when the facility has no route)."""

    @property
    def client_bundle_settings(self) -> ClientBundleSettings:
        settings = self.settings.get(SETTINGS_KEY)
        if settings is None:
            settings = ClientBundleSettings(parent=self.settings.get("serverapp"))
        return settings

    @web.authenticated
    # the key lets its holder run code on the user's cluster: more than reading the server's state
    @authorized(action="execute")
    def get(self):
        self.set_header("Cache-Control", "no-store")
        manager = self.settings.get("casa_manager")
        require_login_scheduler(manager.settings.login_cluster if manager is not None else None)
        built = build_client_bundle(
            MountedBundle.from_env(), self.client_bundle_settings.scheduler_address, dask_version=_dask_version()
        )
        self.set_header("Content-Disposition", f'attachment; filename="{built.filename}"')
        self.set_header("X-Content-Type-Options", "nosniff")
        self.log.info(
            "casa: laptop Dask bundle for %s sent (scheduler %s, client certificate until %s)",
            built.user,
            built.address,
            built.expires_at.isoformat(),
        )
        self.finish(built.content, set_content_type="application/zip")


def handlers(base_url: str) -> list[tuple]:
    """The route to add to the server's web app (``GET <base_url>casa/client-bundle``)."""
    return [(url_path_join(base_url, "casa", "client-bundle"), ClientBundleHandler)]
