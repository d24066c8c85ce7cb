"""``dask-tls``: the user's own Dask CA certificate (its key stays in the hub) and fresh scheduler, worker and
client certificates under it (``DASK_DISTRIBUTED__COMM__TLS__*``); see :mod:`casa_hub.credentials.dask_tls`."""

from __future__ import annotations

import datetime
import threading
from collections import OrderedDict

from traitlets import Integer, List, Unicode

from .. import dask_tls
from ..bundle import BundleFile
from ..kind import CredentialKind, Minted, MintRequest, Seconds
from ..layout import DASK_CA, DASK_ROLES, MOUNT, ManifestEntry, dask_credential, dask_files

CA_ENV = "DASK_DISTRIBUTED__COMM__TLS__CA_FILE"
ENCRYPTION_ENV = "DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION"
ROLE_LABELS = {"scheduler": "Dask scheduler certificate", "worker": "Dask worker certificate"}


def role_env(role: str) -> tuple[str, str]:
    """The Dask config variables naming a role's certificate and key."""
    prefix = f"DASK_DISTRIBUTED__COMM__TLS__{role.upper()}"
    return f"{prefix}__CERT", f"{prefix}__KEY"


def dask_hostname(template: str, user: str) -> str:
    """``template`` with ``{username}`` replaced by the user's DNS label, short enough that the DNS label holding
    it (``dask-{username}``) stays within 63 characters."""
    label = next((part for part in template.split(".") if "{username}" in part), "")
    budget = 63 - len(label.replace("{username}", ""))
    return template.format(username=dask_tls.dns_label(user, max_length=budget))


class DaskTLS(CredentialKind):
    """Per-user TLS for Dask: only the user's own clients, schedulers and workers trust each other."""

    name = "dask-tls"
    label = "Dask TLS certificates"

    ca_secret_file = Unicode(
        "",
        help="""File with >= 32 random bytes from which every user's CA key is derived (HKDF).
        Keep it as stable as the hub's cookie secret: changing it changes every user's CA.
        Example: ``c.DaskTLS.ca_secret_file = "/etc/casa-hub/keys/dask-ca.secret"``""",
    ).tag(config=True)

    ca_generation = Integer(
        0,
        min=0,
        help="""Bump to rotate every user's Dask CA (e.g. after a suspected key exposure). Default 0.
        Example: ``c.DaskTLS.ca_generation = 1``""",
    ).tag(config=True)

    hostnames = List(
        Unicode(),
        ["localhost", "127.0.0.1", "dask-{username}"],
        help="""Subject alternative names of the scheduler and worker certificates; ``{username}`` is replaced
        by a DNS-safe form of the user name (unchanged when it already is one).
        Example: ``c.DaskTLS.hostnames = ["localhost", "dask-{username}.dask.svc.cluster.local"]``""",
    ).tag(config=True)

    cert_lifetime = Seconds(
        24 * 3600,
        help="""Lifetime of the Dask leaf certificates (seconds). Default 86400 (24 h), as before: they only
        open the user's own Dask cluster (the CA is per user), and a running cluster keeps the certificates it
        started with, so they should cover a day's work. Example: ``c.DaskTLS.cert_lifetime = 43200``""",
    ).tag(config=True)

    ca_cache_size = Integer(
        4096, min=1, help="How many users' CA keys to keep in memory. Example: ``c.DaskTLS.ca_cache_size = 1024``"
    ).tag(config=True)

    def files(self) -> tuple[str, ...]:
        return (DASK_CA, *(path for role in DASK_ROLES for path in dask_files(role)))

    def env_names(self) -> tuple[str, ...]:
        return (CA_ENV, ENCRYPTION_ENV, *(name for role in DASK_ROLES for name in role_env(role)))

    def _secret(self) -> bytes:
        def load():
            def check(secret: bytes) -> bytes:
                if len(secret) < 32:
                    raise ValueError("the Dask CA secret must be at least 32 bytes (python -m casa_hub.keys dask-ca)")
                return secret

            return self.load_secret("ca_secret_file", "Dask CA secret", check)

        return self.derived("secret", load)

    def load_keys(self) -> None:
        self._secret()

    def _settings(self):
        env = {CA_ENV: f"{MOUNT}/{DASK_CA}", ENCRYPTION_ENV: "True"}
        entries = {"ca": ManifestEntry("dask-ca", "Dask CA certificate", DASK_CA, CA_ENV)}
        for role in DASK_ROLES:
            cert, key = dask_files(role)
            cert_env, key_env = role_env(role)
            env[cert_env], env[key_env] = f"{MOUNT}/{cert}", f"{MOUNT}/{key}"
            label = ROLE_LABELS.get(role, f"Dask {role} certificate")
            entries[role] = ManifestEntry(dask_credential(role), label, cert, cert_env, key_file=key)
        # user -> LeafIssuer (the user's CA, key included: bounded, never written anywhere)
        cache: OrderedDict[str, dask_tls.LeafIssuer] = OrderedDict()
        return datetime.timedelta(seconds=self.cert_lifetime), env, entries, cache, threading.Lock()

    def leaf_issuer(self, user: str) -> dask_tls.LeafIssuer:
        """The user's CA and certificate templates, cached; the CA key is re-derivable from the hub secret."""
        _, _, _, cache, lock = self.derived("settings", self._settings)
        with lock:
            hit = cache.get(user)
            if hit is not None:
                cache.move_to_end(user)
                return hit
        ca = dask_tls.user_ca(self._secret(), user, self.ca_generation)
        issuer = dask_tls.LeafIssuer(ca, user, [dask_hostname(h, user) for h in self.hostnames])
        with lock:
            cache[user] = issuer
            while len(cache) > self.ca_cache_size:
                cache.popitem(last=False)
        return issuer

    def user_ca(self, user: str) -> dask_tls.UserCA:
        return self.leaf_issuer(user).ca

    def mint(self, request: MintRequest) -> Minted:
        lifetime, env, entries, _, _ = self.derived("settings", self._settings)
        issuer = self.leaf_issuer(request.user)
        files = {DASK_CA: BundleFile(issuer.ca.cert_pem, 0o444)}
        manifest = [(entries["ca"], None)]
        for role in DASK_ROLES:
            leaf = issuer.issue(role, request.now, lifetime)
            cert, key = dask_files(role)
            files[cert] = BundleFile(leaf.cert_pem, 0o444, leaf.expires_at)
            files[key] = BundleFile(leaf.key_pem, 0o400, leaf.expires_at)
            manifest.append((entries[role], leaf.expires_at))
        return Minted(files, env, manifest)
