"""CasaMinter: which credential kinds a facility mints, the facility issuer they share, and the per-user pipeline
that puts their output together into one CredentialBundle.

Each credential kind is one module behind one interface (:mod:`casa_hub.credentials.kind`), found through the
``casa_hub.credentials`` entry point group and configured in its own section (``c.XCacheToken.lifetime``); this
module knows none of them by name. The delivery (Kubernetes Secret, local directory) is the spawners'.
"""

from __future__ import annotations

import datetime
import time
from functools import cached_property

from traitlets import List, TraitError, Unicode, validate
from traitlets.config import LoggingConfigurable

from . import metrics
from .credentials import layout
from .credentials.bundle import BundleFile, CredentialBundle
from .credentials.issuer import IssuerKey, jwks_document, load_issuer_key, openid_configuration
from .credentials.kind import CredentialKind, FacilityIssuer, MintRequest, check_layout, kind_class, read_secret_file


class CasaMinter(LoggingConfigurable):
    """Mints every per-user credential of the facility.

    Signing keys are read from files the hub holds (Kubernetes Secrets mounted into the hub pod) once, at hub
    start, and never leave the hub: the bundle contains only tokens, the user's public CA certificate and the
    user's own leaf keys.
    """

    kinds = List(
        Unicode(),
        ["xcache", "dask-tls"],
        help="""The credential kinds minted for every user, by name: ``xcache`` (WLCG storage token, section
        ``XCacheToken``), ``macaroon`` (``XCacheMacaroon``), ``htcondor`` (``HTCondorToken``), ``servicex``
        (``ServiceXToken``), ``dask-tls`` (``DaskTLS``), ``mlflow`` (``MLflowToken``), or any kind a site package
        installs in the ``casa_hub.credentials`` entry point group. Each kind is configured in its own section,
        e.g. ``c.XCacheToken.lifetime``. An unknown name, or two kinds that would write the same file or env
        variable, stop the hub at start with a message saying so. Default ``["xcache", "dask-tls"]``.
        Example: ``c.CasaMinter.kinds = ["xcache", "htcondor", "dask-tls"]``""",
    ).tag(config=True)

    @validate("kinds")
    def _check_kinds(self, proposal):
        seen = set()
        for name in proposal.value:
            if not name or name in seen:
                raise TraitError(f"CasaMinter.kinds={proposal.value!r}: {name!r} is empty or listed twice")
            seen.add(name)
        return proposal.value

    # ---- the facility issuer, shared by the kinds that sign with it and served at /hub/casa-issuer
    issuer_url = Unicode(
        "",
        help="""URL of the facility token issuer (the ``iss`` of storage tokens).

        Token consumers fetch ``<issuer_url>/.well-known/openid-configuration`` and the JWKS it names;
        CasaAuthenticator serves both at ``<hub public url>/hub/casa-issuer``, so point this there.
        XRootD only fetches keys over https.
        Example: ``c.CasaMinter.issuer_url = "https://hub.example.org/hub/casa-issuer"``""",
    ).tag(config=True)

    issuer_key_file = Unicode(
        "",
        help="""PEM file with the issuer's private signing key (EC P-256 -> ES256, or RSA >= 2048 -> RS256).

        Create one with ``python -m casa_hub.keys issuer > issuer.pem`` and store it as a hub Secret.
        Example: ``c.CasaMinter.issuer_key_file = "/etc/casa-hub/keys/issuer.pem"``""",
    ).tag(config=True)

    issuer_retired_key_files = List(
        Unicode(),
        help="""PEM files of retired issuer keys still published in the JWKS so tokens they signed stay
        valid until they expire (key rotation). They never sign.
        Example: ``c.CasaMinter.issuer_retired_key_files = ["/etc/casa-hub/keys/issuer-2025.pem"]``""",
    ).tag(config=True)

    # ---------------------------------------------------------------- keys (loaded once, hub only)
    @cached_property
    def issuer_keys(self) -> tuple[IssuerKey, ...]:
        if not self.issuer_key_file:
            raise RuntimeError("CasaMinter.issuer_key_file is not set")
        current = load_issuer_key(read_secret_file(self.issuer_key_file, "issuer signing key"))
        retired = [load_issuer_key(read_secret_file(p, "retired issuer key")) for p in self.issuer_retired_key_files]
        return (current, *retired)

    @cached_property
    def enabled_kinds(self) -> tuple[CredentialKind, ...]:
        """The kinds of :attr:`kinds`, configured (``parent=self``) and checked against each other."""
        enabled = []
        for name in self.kinds:
            cls = kind_class(name)
            try:
                enabled.append(cls(parent=self))
            except TraitError as e:  # one line naming Class.trait, as for every other bad setting
                raise RuntimeError(str(e)) from None
        check_layout(enabled)
        return tuple(enabled)

    def kind(self, name: str) -> CredentialKind:
        """The enabled kind called ``name`` (KeyError if it is not enabled)."""
        for kind in self.enabled_kinds:
            if kind.name == name:
                return kind
        raise KeyError(f"credential kind {name!r} is not enabled (CasaMinter.kinds={list(self.kinds)!r})")

    @cached_property
    def _uses_issuer(self) -> bool:
        return any(kind.uses_issuer for kind in self.enabled_kinds)

    def load_keys(self) -> None:
        """Resolve the enabled kinds and read and check every key they need now, so that a misconfiguration fails
        at hub start with one message naming the setting (a RuntimeError), not at login or as a traceback."""
        kinds = self.enabled_kinds
        if self._uses_issuer:
            try:
                self.issuer_keys
            except (ValueError, TypeError) as e:  # unreadable files are RuntimeErrors already
                raise RuntimeError(f"CasaMinter.issuer_key_file={self.issuer_key_file!r} is not usable: {e}") from None
        for kind in kinds:
            kind.load_keys()

    # ---------------------------------------------------------------- issuer documents
    def jwks(self) -> dict:
        return jwks_document(self.issuer_keys)

    def openid_configuration(self, jwks_uri: str) -> dict:
        return openid_configuration(self.issuer_url, jwks_uri)

    # ---------------------------------------------------------------- per user
    def mint(self, user: str, *, email: str | None = None, now: datetime.datetime | None = None) -> CredentialBundle:
        """Mint the full bundle for ``user`` (CPU only, well under 1 ms; no I/O once keys are loaded).

        ``email``: an address the identity provider marked verified, or None. ``now``: the hub's clock."""
        if not user:
            raise ValueError("cannot mint credentials for an empty user name")
        now = now or datetime.datetime.now(datetime.timezone.utc)
        kinds = self.enabled_kinds
        issuer = FacilityIssuer(self.issuer_url, self.issuer_keys[0]) if self._uses_issuer else None
        request = MintRequest(user, email, now, issuer)
        files: dict[str, BundleFile] = {}
        env: dict[str, str] = {}
        env_defaults: dict[str, str] = {}
        manifest = []
        for kind in kinds:
            started = time.perf_counter()
            minted = kind.mint(request)
            metrics.observe_mint(time.perf_counter() - started, kind.name)
            n_files, n_env = len(files), len(env)
            files.update(minted.files)
            env.update(minted.env)
            if len(files) != n_files + len(minted.files) or len(env) != n_env + len(minted.env):
                raise RuntimeError(f"credential kind {kind.name!r} minted a file or env variable another kind did")
            manifest.extend(minted.manifest)
            for name, value in minted.env_defaults.items():
                env_defaults.setdefault(name, value)
        for name, value in env_defaults.items():
            env.setdefault(name, value)
        if len({entry.name for entry, _ in manifest}) != len(manifest):
            raise RuntimeError(f"two credential kinds named the same manifest entry: {[e.name for e, _ in manifest]}")
        files[layout.MANIFEST] = BundleFile(layout.manifest_bytes(user, now, manifest), 0o444)
        env[layout.CREDENTIALS_DIR_ENV] = layout.MOUNT
        return CredentialBundle(user=user, issued_at=now, files=files, env=env)
