"""The credential bundle the hub mounts into the user's server, read back on the user side.

Everything about a credential (its label, file, env variable, audience, scopes, expiry) comes from the bundle's
manifest ``$CASA_CREDENTIALS_DIR/casa.json``, written by the hub with the layout both sides share
(:mod:`casa_hub.credentials.layout`): a credential kind the hub adds shows up here without a change. Nothing here
reads secrets into memory except to check that a file is non-empty.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from casa_hub.credentials import layout

from .errors import CredentialError

MANIFEST = layout.MANIFEST
DASK_ROLES = layout.DASK_ROLES


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


@dataclass(frozen=True)
class Credential:
    """One entry of the manifest, checked against the disk."""

    kind: str
    path: Path
    expires_at: datetime.datetime | None
    label: str = ""
    env: str | None = None
    audience: str | tuple[str, ...] | None = None
    scopes: tuple[str, ...] | None = None
    key_path: Path | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_entry(
        cls, directory: Path, entry: layout.ManifestEntry, expires_at: datetime.datetime | None
    ) -> "Credential":
        return cls(
            entry.name,
            directory / entry.file,
            expires_at,
            entry.label,
            entry.env,
            entry.audience,
            entry.scopes,
            directory / entry.key_file if entry.key_file else None,
            entry.extra,
        )

    @property
    def name(self) -> str:
        return self.kind

    @property
    def title(self) -> str:
        """What users read: the label the hub gave, else the name."""
        return self.label or self.kind

    @property
    def present(self) -> bool:
        try:
            return self.path.is_file() and self.path.stat().st_size > 0
        except OSError:
            return False

    def seconds_left(self, now: datetime.datetime | None = None) -> float | None:
        if self.expires_at is None:
            return None
        return (self.expires_at - (now or _utcnow())).total_seconds()

    def status(self, now: datetime.datetime | None = None) -> dict:
        left = self.seconds_left(now)
        audience = self.audience if self.audience is None or isinstance(self.audience, str) else list(self.audience)
        return {
            "name": self.kind,
            "label": self.title,
            "file": str(self.path),
            "env": self.env,
            "audience": audience,
            "scopes": list(self.scopes) if self.scopes is not None else None,
            "present": self.present,
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
            "seconds_left": None if left is None else int(left),
            "expired": left is not None and left <= 0,
        }


@dataclass(frozen=True)
class MountedBundle:
    """The bundle as mounted at ``directory``; build it with :meth:`from_directory` or :meth:`from_env`."""

    directory: Path
    user: str
    issued_at: datetime.datetime | None
    credentials: Mapping[str, Credential]
    # the HTCondor account the IDTOKEN names (the Owner of the user's jobs; not the hub name for e-mail-like ones)
    condor_user: str | None = None

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_directory(cls, directory: str | os.PathLike) -> "MountedBundle":
        directory = Path(directory)
        manifest_path = directory / MANIFEST
        try:
            manifest = layout.parse_manifest(manifest_path.read_bytes())
        except FileNotFoundError:
            raise CredentialError("manifest", f"no Casa credentials: {manifest_path} does not exist") from None
        except (OSError, ValueError, KeyError) as e:
            raise CredentialError(
                "manifest", f"the Casa credential manifest {manifest_path} is unreadable: {e}"
            ) from None
        credentials = {
            name: Credential.from_entry(directory, entry, manifest.expires_at[name])
            for name, entry in manifest.entries.items()
        }
        # manifests of hubs before the credential kinds named neither the CA nor the role keys
        credentials.setdefault(
            "dask-ca", Credential("dask-ca", directory / layout.DASK_CA, None, "Dask CA certificate")
        )
        condor = credentials.get("htcondor")
        condor_user = condor.extra.get("user") if condor else None
        return cls(directory, manifest.user, manifest.issued_at, credentials, condor_user)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "MountedBundle":
        environ = os.environ if environ is None else environ
        directory = environ.get(layout.CREDENTIALS_DIR_ENV)
        if not directory:
            raise CredentialError("manifest", "CASA_CREDENTIALS_DIR is not set: this server has no Casa credentials")
        return cls.from_directory(directory)

    # ------------------------------------------------------------------ checks
    def label(self, kind: str) -> str:
        cred = self.credentials.get(kind)
        return cred.title if cred else kind

    def require(self, *kinds: str, now: datetime.datetime | None = None, margin: float = 0) -> None:
        """Raise :class:`CredentialError` naming the first of ``kinds`` that is missing or expires within
        ``margin`` seconds."""
        now = now or _utcnow()
        for kind in kinds:
            cred = self.credentials.get(kind)
            if cred is None:
                raise CredentialError(kind, f"the {kind} credential is not part of your Casa credentials")
            if not cred.present:
                raise CredentialError(
                    kind,
                    f"the {cred.title} ({kind}) is missing: {cred.path} does not exist "
                    "or is empty; restart your server to get fresh credentials",
                )
            left = cred.seconds_left(now)
            if left is not None and left <= margin:
                when = "expired" if left <= 0 else f"expires in {int(left)} s"
                raise CredentialError(
                    kind,
                    f"the {cred.title} ({kind}) {when} (at {cred.expires_at.isoformat()}); "
                    "restart your server to get fresh credentials",
                )

    def status(self, now: datetime.datetime | None = None) -> dict:
        """JSON for ``GET /casa/credentials``: every credential, present or not, with seconds to expiry."""
        now = now or _utcnow()
        items = [c.status(now) for c in self.credentials.values()]
        lefts = [i["seconds_left"] for i in items if i["seconds_left"] is not None]
        return {
            "user": self.user,
            "directory": str(self.directory),
            "issued_at": self.issued_at.isoformat() if self.issued_at else None,
            "seconds_left": min(lefts) if lefts else None,
            "credentials": items,
        }

    # ------------------------------------------------------------------ consumers
    def dask_paths(self, role: str) -> tuple[Path, Path]:
        """A Dask role's certificate and key, as the manifest names them."""
        cred = self.credentials.get(layout.dask_credential(role))
        if cred is not None and cred.key_path is not None:
            return cred.path, cred.key_path
        cert, key = layout.dask_files(role)  # manifests of older hubs: the shared layout's names
        return self.directory / cert, self.directory / key

    @property
    def dask_ca(self) -> Path:
        return self.credentials["dask-ca"].path

    def security(self, roles=DASK_ROLES, now: datetime.datetime | None = None):
        """A ``distributed.Security`` (``require_encryption``) from the bundle's files, after checking that the
        CA and the certificate of every role in ``roles`` are there and valid."""
        from distributed.security import Security

        self.require("dask-ca", *(layout.dask_credential(r) for r in roles), now=now)
        kwargs = {"require_encryption": True, "tls_ca_file": str(self.dask_ca)}
        for role in roles:
            cert, key = self.dask_paths(role)
            if not key.is_file():
                name = layout.dask_credential(role)
                raise CredentialError(name, f"the key of the {self.label(name)} is missing: {key}")
            kwargs[f"tls_{role}_cert"], kwargs[f"tls_{role}_key"] = str(cert), str(key)
        return Security(**kwargs)

    @property
    def condor_token_dir(self) -> Path:
        """The directory ``_CONDOR_SEC_TOKEN_DIRECTORY`` names: the one holding the IDTOKEN."""
        cred = self.credentials.get("htcondor")
        if cred is None:
            raise CredentialError("htcondor", "the htcondor credential is not part of your Casa credentials")
        return cred.path.parent
