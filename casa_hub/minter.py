"""CasaMinter: configuration (traitlets) + the per-user minting pipeline that builds a CredentialBundle.

This is the only place that knows which credential goes to which file and which env var; the crypto lives
in :mod:`casa_hub.credentials` (pure), the Kubernetes / local-disk delivery in the spawners.
"""

from __future__ import annotations

import base64
import datetime
import json
import threading
from collections import OrderedDict
from functools import cached_property
from pathlib import Path

from traitlets import Bool, Enum, Integer, List, TraitError, Unicode, validate
from traitlets.config import LoggingConfigurable

from .credentials import dask_tls, htcondor, servicex, storage, xcache
from .credentials.bundle import BundleFile, CredentialBundle
from .credentials.issuer import IssuerKey, jwks_document, load_issuer_key, openid_configuration

# file layout inside the mounted bundle (relative paths; the spawner picks the mount point)
XCACHE_TOKEN = "xcache.token"
XCACHE_MACAROON = "xcache.macaroon"
CONDOR_TOKEN = "condor-tokens/casa"
SERVICEX_CONFIG = "servicex.yaml"
SERVICEX_TOKEN = "servicex.token"
DASK_CA = "dask/ca.pem"
MANIFEST = "casa.json"


def _dask_files(role: str) -> tuple[str, str]:
    return f"dask/{role}.crt", f"dask/{role}.key"


def _dask_hostname(template: str, user: str) -> str:
    """``template`` with ``{username}`` replaced by the user's DNS label, short enough that the DNS label holding
    it (``dask-{username}``) stays within 63 characters."""
    label = next((part for part in template.split(".") if "{username}" in part), "")
    budget = 63 - len(label.replace("{username}", ""))
    return template.format(username=dask_tls.dns_label(user, max_length=budget))


def _read_secret_file(path: str, what: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise RuntimeError(f"cannot read the {what} at {path!r}: {e.strerror}") from None
    if not data.strip(b"\0\n "):
        raise RuntimeError(f"the {what} at {path!r} is empty")
    return data


def _seconds(help_text: str, default_value: int, **kw):
    return Integer(default_value, min=1, help=help_text + " (seconds)", **kw).tag(config=True)


class CasaMinter(LoggingConfigurable):
    """Mints every per-user credential of the facility.

    Signing keys are read from files the hub holds (Kubernetes Secrets mounted into the hub pod) the first
    time they are needed and never leave the hub: the bundle contains only tokens, the user's public CA
    certificate and the user's own leaf keys.
    """

    # ---- facility issuer (XCache / WLCG token) ----
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

        Create one with ``python -m casa_hub.keys issuer > issuer.pem`` and store it as a hub Secret.""",
    ).tag(config=True)

    issuer_retired_key_files = List(
        Unicode(),
        help="""PEM files of retired issuer keys still published in the JWKS so tokens they signed stay
        valid until they expire (key rotation). They never sign.""",
    ).tag(config=True)

    # ---- XCache / XRootD ----
    xcache_enabled = Bool(True, help="Mint a WLCG bearer token for XCache/XRootD.").tag(config=True)
    xcache_scopes = List(
        Unicode(),
        ["storage.read:/store"],
        help="""WLCG storage scopes of the XCache token (``storage.read|create|modify|stage:PATH``, or SciTokens'
        ``read:PATH`` / ``write:PATH``). ``{userdir}`` in a path is replaced by the user's storage directory name:
        a prefix-free escape of the user name ending in ``~`` (``alice`` -> ``alice~``; ``python -m
        casa_hub.credentials.storage NAME`` prints it), so that XRootD < 5.7, which matches scope paths as plain
        string prefixes, cannot let ``ali`` into ``alice``'s area. ``{username}`` is refused, as are paths that
        are relative, end with ``/``, contain ``//``, ``.``, ``..`` or ``%``, use ``{userdir}`` inside a path
        component, and scopes without ``{userdir}`` that cover the per-user areas (e.g. ``storage.create:/store/user``).
        The first per-user path is put in the user's environment as ``CASA_STORAGE_AREA``.
        Example: ``["storage.read:/store", "storage.create:/store/user/{userdir}"]``""",
    ).tag(config=True)
    xcache_audience = List(
        Unicode(),
        ["https://wlcg.cern.ch/jwt/v1/any"],
        help="Audience(s) of the XCache token: the XCache/XRootD endpoints that must accept it.",
    ).tag(config=True)
    xcache_lifetime = _seconds("Lifetime of the XCache token", 6 * 3600)

    macaroon_enabled = Bool(False, help="Also mint a macaroon for legacy XCache servers.").tag(config=True)
    macaroon_secret_file = Unicode(
        "", help="XRootD's ``macaroons.secretkey`` file (base64 of the raw key), shared with the cache."
    ).tag(config=True)
    macaroon_location = Unicode("", help="The cache's ``all.sitename``: the macaroon's location.").tag(config=True)
    macaroon_path = Unicode(
        "/store",
        help="""Path prefix the macaroon grants read access to; ``{userdir}`` is replaced by the user's storage
        directory name, as in ``xcache_scopes`` (``{username}`` is refused: XRootD matches macaroon paths as
        plain string prefixes). Example: ``"/store/user/{userdir}"``""",
    ).tag(config=True)
    macaroon_lifetime = _seconds("Lifetime of the macaroon, at most 24 h", 6 * 3600)

    @validate("xcache_scopes", "macaroon_path")
    def _check_storage_templates(self, proposal):
        check = storage.check_scopes if proposal.trait.name == "xcache_scopes" else storage.check_path_template
        try:
            check(proposal.value)
        except ValueError as e:
            raise TraitError(f"CasaMinter.{proposal.trait.name}: {e}") from None
        return proposal.value

    @validate("macaroon_lifetime")
    def _check_macaroon_lifetime(self, proposal):
        if proposal.value > 86400:
            raise TraitError(f"CasaMinter.macaroon_lifetime={proposal.value}: XRootD caps macaroons at 86400 s")
        return proposal.value

    # ---- HTCondor ----
    condor_enabled = Bool(False, help="Mint an HTCondor IDTOKEN for the user.").tag(config=True)
    condor_signing_key_file = Unicode(
        "", help="The pool signing key file (e.g. ``/etc/condor/passwords.d/POOL``) mounted into the hub only."
    ).tag(config=True)
    condor_key_id = Unicode("POOL", help="Name of the signing key (its file name in passwords.d).").tag(config=True)
    condor_trust_domain = Unicode(
        "",
        help="""The pool's ``TRUST_DOMAIN`` (token ``iss``). The identity is ``<account>@<trust domain>``,
        where ``<account>`` is the hub user name when it is a portable POSIX account name without ``--``, and
        otherwise a readable prefix + ``--`` + 16 hex digits of its SHA-256 (``python -m
        casa_hub.credentials.htcondor NAME`` prints it). The pool needs a local account of that name.""",
    ).tag(config=True)
    condor_scopes = List(
        Unicode(), list(htcondor.DEFAULT_SCOPES), help="Authorization scopes of the IDTOKEN (empty list: unrestricted)."
    ).tag(config=True)
    condor_lifetime = _seconds("Lifetime of the IDTOKEN", 6 * 3600)

    @validate("condor_trust_domain")
    def _check_condor_trust_domain(self, proposal):
        value = proposal.value
        if "@" in value or any(c.isspace() for c in value):
            raise TraitError(
                f"CasaMinter.condor_trust_domain={value!r}: a TRUST_DOMAIN cannot contain '@' or white "
                "space (HTCondor splits the identity <account>@<trust domain> at its first '@')"
            )
        return value

    # ---- ServiceX ----
    servicex_enabled = Bool(False, help="Mint a ServiceX token and client configuration.").tag(config=True)
    servicex_endpoint = Unicode("", help="ServiceX endpoint URL written into servicex.yaml.").tag(config=True)
    servicex_name = Unicode("casa", help="Endpoint name in servicex.yaml (also its default-endpoint).").tag(config=True)
    servicex_secret_file = Unicode("", help="File with the ServiceX deployment's JWT_SECRET_KEY.").tag(config=True)
    servicex_identity = Enum(
        ["username", "email"],
        "username",
        help="""Identity ServiceX knows users by: the hub user name (older ServiceX, ``sub``) or e-mail.
        ``email`` uses only an e-mail the identity provider marked verified (``email_verified: true``); a user
        without one gets no credentials: minting refuses with an error saying so.""",
    ).tag(config=True)
    servicex_identity_claim = Unicode("sub", help="flask-jwt-extended ``JWT_IDENTITY_CLAIM``.").tag(config=True)
    servicex_lifetime = _seconds("Lifetime of the ServiceX access token in ``servicex.token``", 6 * 3600)

    # ---- Dask TLS ----
    dask_tls_enabled = Bool(True, help="Issue a per-user CA and Dask TLS certificates.").tag(config=True)
    dask_ca_secret_file = Unicode(
        "",
        help="""File with >= 32 random bytes from which every user's CA key is derived (HKDF).
        Keep it as stable as the hub's cookie secret: changing it changes every user's CA.""",
    ).tag(config=True)
    dask_ca_generation = Integer(
        0, min=0, help="Bump to rotate every user's Dask CA (e.g. after a suspected key exposure)."
    ).tag(config=True)
    dask_hostnames = List(
        Unicode(),
        ["localhost", "127.0.0.1", "dask-{username}"],
        help="""Subject alternative names of the scheduler and worker certificates; ``{username}`` is replaced
        by a DNS-safe form of the user name (unchanged when it already is one).""",
    ).tag(config=True)
    dask_cert_lifetime = _seconds("Lifetime of the Dask leaf certificates", 24 * 3600)

    ca_cache_size = Integer(4096, min=1, help="How many users' CA keys to keep in memory.").tag(config=True)

    # ---------------------------------------------------------------- keys (loaded once, hub only)
    @cached_property
    def issuer_keys(self) -> tuple[IssuerKey, ...]:
        if not self.issuer_key_file:
            raise RuntimeError("CasaMinter.issuer_key_file is not set")
        current = load_issuer_key(_read_secret_file(self.issuer_key_file, "issuer signing key"))
        retired = [load_issuer_key(_read_secret_file(p, "retired issuer key")) for p in self.issuer_retired_key_files]
        return (current, *retired)

    @cached_property
    def _condor_key(self) -> bytes:
        raw = _read_secret_file(self.condor_signing_key_file, "HTCondor signing key")
        return htcondor.signing_key_from_file(raw, self.condor_key_id)

    @cached_property
    def _macaroon_secret(self) -> bytes:
        return base64.b64decode(_read_secret_file(self.macaroon_secret_file, "macaroon secret"))

    @cached_property
    def _servicex_secret(self) -> bytes:
        return _read_secret_file(self.servicex_secret_file, "ServiceX JWT secret").strip()

    @cached_property
    def _dask_ca_secret(self) -> bytes:
        secret = _read_secret_file(self.dask_ca_secret_file, "Dask CA secret")
        if len(secret) < 32:
            raise ValueError("the Dask CA secret must be at least 32 bytes (python -m casa_hub.keys dask-ca)")
        return secret

    @cached_property
    def _ca_cache(self) -> "OrderedDict[tuple[str, int], dask_tls.UserCA]":
        return OrderedDict()

    @cached_property
    def _ca_lock(self) -> threading.Lock:
        return threading.Lock()

    def load_keys(self) -> None:
        """Read and check every enabled signing key now, so a misconfiguration fails at hub start with one
        message naming the trait, not at login (or as a traceback)."""
        checks = [
            (self.xcache_enabled, "issuer_key_file", lambda: self.issuer_keys),
            (self.macaroon_enabled, "macaroon_secret_file", lambda: self._macaroon_secret),
            (self.condor_enabled, "condor_signing_key_file", lambda: self._condor_key),
            (self.servicex_enabled, "servicex_secret_file", lambda: self._servicex_secret),
            (self.dask_tls_enabled, "dask_ca_secret_file", lambda: self._dask_ca_secret),
        ]
        for enabled, trait, load in checks:
            if not enabled:
                continue
            try:
                load()
            except (ValueError, TypeError) as e:  # unreadable files are RuntimeErrors already
                raise RuntimeError(f"CasaMinter.{trait}={getattr(self, trait)!r} is not usable: {e}") from None

    # ---------------------------------------------------------------- issuer documents
    def jwks(self) -> dict:
        return jwks_document(self.issuer_keys)

    def openid_configuration(self, jwks_uri: str) -> dict:
        return openid_configuration(self.issuer_url, jwks_uri)

    # ---------------------------------------------------------------- per user
    def user_ca(self, user: str) -> dask_tls.UserCA:
        """A user's CA, cached; its key is re-derivable from the hub secret at any time."""
        cache_key = (user, self.dask_ca_generation)
        with self._ca_lock:
            hit = self._ca_cache.get(cache_key)
            if hit is not None:
                self._ca_cache.move_to_end(cache_key)
                return hit
        entry = dask_tls.user_ca(self._dask_ca_secret, user, self.dask_ca_generation)
        with self._ca_lock:
            self._ca_cache[cache_key] = entry
            while len(self._ca_cache) > self.ca_cache_size:
                self._ca_cache.popitem(last=False)
        return entry

    def mint(self, user: str, *, email: str | None = None, now: datetime.datetime | None = None) -> CredentialBundle:
        """Mint the full bundle for ``user`` (CPU only, ~1 ms; no I/O once keys are loaded)."""
        if not user:
            raise ValueError("cannot mint credentials for an empty user name")
        now = now or datetime.datetime.now(datetime.timezone.utc)
        files: dict[str, BundleFile] = {}
        env: dict[str, str] = {}
        manifest: dict[str, dict] = {}

        def add(path, content, expires_at=None, mode=0o400, kind=None):
            files[path] = BundleFile(content, mode, expires_at)
            if kind:
                manifest[kind] = {"file": path, "expires_at": expires_at.isoformat() if expires_at else None}

        area = None  # the user's own storage area (first per-user storage path)
        if self.xcache_enabled:
            area = storage.storage_area(self.xcache_scopes, user)
            token, exp = xcache.mint_wlcg_token(
                self.issuer_keys[0],
                issuer=self.issuer_url,
                subject=user,
                scopes=storage.render_scopes(self.xcache_scopes, user),
                audience=self.xcache_audience[0] if len(self.xcache_audience) == 1 else self.xcache_audience,
                now=now,
                lifetime=datetime.timedelta(seconds=self.xcache_lifetime),
            )
            add(XCACHE_TOKEN, token, exp, kind="xcache")
            env["BEARER_TOKEN_FILE"] = "{mount}/" + XCACHE_TOKEN
        if self.macaroon_enabled:
            mac, exp = xcache.mint_macaroon(
                secret=self._macaroon_secret,
                location=self.macaroon_location,
                user=user,
                path=storage.render_path(self.macaroon_path, user),
                now=now,
                lifetime=datetime.timedelta(seconds=self.macaroon_lifetime),
            )
            add(XCACHE_MACAROON, mac, exp, kind="macaroon")
            env["CASA_MACAROON_FILE"] = "{mount}/" + XCACHE_MACAROON
            if area is None and storage.is_per_user(self.macaroon_path):
                area = storage.render_path(self.macaroon_path, user)
        if area is not None:
            env["CASA_STORAGE_AREA"] = area
        if self.condor_enabled:
            tok, exp = htcondor.mint_idtoken(
                signing_key=self._condor_key,
                key_id=self.condor_key_id,
                trust_domain=self.condor_trust_domain,
                user=user,
                now=now,
                lifetime=datetime.timedelta(seconds=self.condor_lifetime),
                scopes=self.condor_scopes,
            )
            add(CONDOR_TOKEN, tok, exp, kind="htcondor")
            # the pool account (Owner of the user's jobs) the token names; not a secret
            manifest["htcondor"]["user"] = env["CASA_CONDOR_USER"] = htcondor.condor_user(user)
            env["_CONDOR_SEC_TOKEN_DIRECTORY"] = "{mount}/" + CONDOR_TOKEN.rsplit("/", 1)[0]
        if self.servicex_enabled:
            self._mint_servicex(user, email, now, add, env)
        if self.dask_tls_enabled:
            self._mint_dask(user, now, add, env)
        add(
            MANIFEST,
            json.dumps({"user": user, "issued_at": now.isoformat(), "credentials": manifest}).encode(),
            mode=0o444,
        )
        env["CASA_CREDENTIALS_DIR"] = "{mount}"
        return CredentialBundle(user=user, issued_at=now, files=files, env=env)

    def _mint_servicex(self, user, email, now, add, env):
        # ``email`` is only ever a provider-verified address: CasaAuthenticator passes None otherwise
        identity = user if self.servicex_identity == "username" else email
        if not identity:
            raise ValueError(
                f"ServiceX needs an e-mail address of user {user!r} that is present and verified by "
                "the identity provider (email_verified: true), because "
                "CasaMinter.servicex_identity='email'; the provider gave none"
            )
        lifetime = datetime.timedelta(seconds=self.servicex_lifetime)
        token, claims = servicex.mint_servicex_token(
            secret=self._servicex_secret,
            identity=identity,
            identity_claim=self.servicex_identity_claim,
            now=now,
            lifetime=lifetime,
        )
        exp = datetime.datetime.fromtimestamp(claims["exp"], datetime.timezone.utc)
        add(SERVICEX_TOKEN, token.encode() + b"\n", exp, kind="servicex")
        add(
            SERVICEX_CONFIG,
            servicex.servicex_yaml(endpoint=self.servicex_endpoint, name=self.servicex_name),
            mode=0o444,
        )
        env["CASA_SERVICEX_TOKEN_FILE"] = "{mount}/" + SERVICEX_TOKEN
        env["CASA_SERVICEX_CONFIG"] = "{mount}/" + SERVICEX_CONFIG

    def _mint_dask(self, user, now, add, env):
        ca = self.user_ca(user)
        add(DASK_CA, ca.cert_pem, mode=0o444)
        hostnames = [_dask_hostname(h, user) for h in self.dask_hostnames]
        lifetime = datetime.timedelta(seconds=self.dask_cert_lifetime)
        env["DASK_DISTRIBUTED__COMM__TLS__CA_FILE"] = "{mount}/" + DASK_CA
        env["DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION"] = "True"
        for role in dask_tls.ROLES:
            leaf = dask_tls.issue_leaf(
                ca=ca, user=user, role=role, hostnames=hostnames if role != "client" else (), now=now, lifetime=lifetime
            )
            cert_path, key_path = _dask_files(role)
            add(cert_path, leaf.cert_pem, leaf.expires_at, mode=0o444, kind=f"dask-{role}")
            add(key_path, leaf.key_pem, leaf.expires_at)
            env[f"DASK_DISTRIBUTED__COMM__TLS__{role.upper()}__CERT"] = "{mount}/" + cert_path
            env[f"DASK_DISTRIBUTED__COMM__TLS__{role.upper()}__KEY"] = "{mount}/" + key_path
