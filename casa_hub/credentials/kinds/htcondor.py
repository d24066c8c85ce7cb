"""``htcondor``: an HTCondor IDTOKEN, bit-compatible with ``condor_token_create``, for the user's pool account
(``_CONDOR_SEC_TOKEN_DIRECTORY``, ``CASA_CONDOR_USER``)."""

from __future__ import annotations

import datetime

from traitlets import List, TraitError, Unicode, validate

from .. import htcondor
from ..bundle import BundleFile
from ..jws import JWSSigner
from ..kind import CredentialKind, Minted, MintRequest, Seconds
from ..layout import MOUNT, ManifestEntry
from .per_user import PerUserCache

TOKEN_DIR = "condor-tokens"
TOKEN_FILE = f"{TOKEN_DIR}/casa"
TOKEN_DIR_ENV = "_CONDOR_SEC_TOKEN_DIRECTORY"  # HTCondor's tools read every token in this directory
USER_ENV = "CASA_CONDOR_USER"  # the pool account the token names (Owner of the user's jobs); not a secret


class HTCondorToken(CredentialKind):
    """The user's IDTOKEN for the facility's HTCondor pool (Dask workers as batch jobs)."""

    name = "htcondor"
    label = "HTCondor IDTOKEN"

    signing_key_file = Unicode(
        "",
        help="""The pool signing key file (e.g. ``/etc/condor/passwords.d/POOL``) mounted into the hub only.
        Example: ``c.HTCondorToken.signing_key_file = "/etc/casa-hub/keys/POOL"``""",
    ).tag(config=True)

    key_id = Unicode(
        "POOL",
        help="""Name of the signing key (its file name in passwords.d). Default ``"POOL"``.
        Example: ``c.HTCondorToken.key_id = "casa"``""",
    ).tag(config=True)

    trust_domain = Unicode(
        "",
        help="""The pool's ``TRUST_DOMAIN`` (token ``iss``). The identity is ``<account>@<trust domain>``,
        where ``<account>`` is the hub user name when it is a portable POSIX account name without ``--``, and
        otherwise a readable prefix + ``--`` + 16 hex digits of its SHA-256 (``python -m
        casa_hub.credentials.htcondor NAME`` prints it). The pool needs a local account of that name.
        Example: ``c.HTCondorToken.trust_domain = "pool.example.org"``""",
    ).tag(config=True)

    scopes = List(
        Unicode(),
        list(htcondor.DEFAULT_SCOPES),
        help="""Authorization scopes of the IDTOKEN (empty list: unrestricted). Default
        ``["condor:/READ", "condor:/WRITE"]``: enough to submit and manage the user's own jobs.
        Example: ``c.HTCondorToken.scopes = ["condor:/READ"]``""",
    ).tag(config=True)

    lifetime = Seconds(
        6 * 3600,
        help="""Lifetime of the IDTOKEN (seconds). Default 21600 (6 h), as before: HTCondor checks the token when
        a job is submitted or managed, jobs outlive it, and the hub renews it before it expires.
        Example: ``c.HTCondorToken.lifetime = 3600``""",
    ).tag(config=True)

    @validate("trust_domain")
    def _check_trust_domain(self, proposal):
        value = proposal.value
        if "@" in value or any(c.isspace() for c in value):
            raise TraitError(
                f"HTCondorToken.trust_domain={value!r}: a TRUST_DOMAIN cannot contain '@' or white "
                "space (HTCondor splits the identity <account>@<trust domain> at its first '@')"
            )
        return value

    def files(self) -> tuple[str, ...]:
        return (TOKEN_FILE,)

    def env_names(self) -> tuple[str, ...]:
        return (TOKEN_DIR_ENV, USER_ENV)

    def _signer(self) -> JWSSigner:
        def load():
            key = self.load_secret(
                "signing_key_file",
                "HTCondor signing key",
                lambda raw: htcondor.signing_key_from_file(raw, self.key_id),
            )
            return JWSSigner("HS256", key, {"kid": self.key_id})

        return self.derived("signer", load)

    def load_keys(self) -> None:
        self._signer()

    def _for_user(self, user: str) -> tuple[dict[str, str], ManifestEntry]:
        account = htcondor.condor_user(user)
        env = {TOKEN_DIR_ENV: f"{MOUNT}/{TOKEN_DIR}", USER_ENV: account}
        entry = ManifestEntry(
            self.name, self.label, TOKEN_FILE, TOKEN_DIR_ENV, scopes=tuple(self.scopes), extra={"user": account}
        )
        return env, entry

    def mint(self, request: MintRequest) -> Minted:
        lifetime, per_user = self.derived(
            "settings", lambda: (datetime.timedelta(seconds=self.lifetime), PerUserCache())
        )
        env, entry = per_user.get(request.user, self._for_user)
        claims = htcondor.idtoken_claims(
            trust_domain=self.trust_domain, user=request.user, now=request.now, lifetime=lifetime, scopes=self.scopes
        )
        token = self._signer().encode(claims).encode() + b"\n"
        expires_at = datetime.datetime.fromtimestamp(claims["exp"], datetime.timezone.utc)
        return Minted({TOKEN_FILE: BundleFile(token, 0o400, expires_at)}, env, ((entry, expires_at),))
