"""The credential bundle the hub mounts into the user's server, read back on the user side.

Layout (docs/dev/contracts.md): ``$CASA_CREDENTIALS_DIR/casa.json`` is a manifest with, per credential kind,
its file and ``expires_at``; ``dask/`` holds the per-user CA and role certificates, ``condor-tokens/`` the
HTCondor IDTOKEN. Nothing here reads secrets into memory except to check that a file is non-empty.
"""

from __future__ import annotations

import datetime
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from .errors import CredentialError

MANIFEST = "casa.json"
DASK_CA = "dask/ca.pem"
DASK_ROLES = ("scheduler", "worker", "client")
CONDOR_TOKEN_DIR = "condor-tokens"

# user-facing names of the manifest's credential kinds
LABELS = {
    "xcache": "XCache storage token",
    "macaroon": "XCache macaroon",
    "htcondor": "HTCondor IDTOKEN",
    "servicex": "ServiceX token",
    "dask-scheduler": "Dask scheduler certificate",
    "dask-worker": "Dask worker certificate",
    "dask-client": "Dask client certificate",
    "dask-ca": "Dask CA certificate",
}


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _label(kind: str) -> str:
    return LABELS.get(kind, kind)


@dataclass(frozen=True)
class Credential:
    """One entry of the manifest, checked against the disk."""

    kind: str
    path: Path
    expires_at: datetime.datetime | None

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
        return {
            "name": self.kind,
            "label": _label(self.kind),
            "file": str(self.path),
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
            manifest = json.loads(manifest_path.read_text())
        except FileNotFoundError:
            raise CredentialError("manifest", f"no Casa credentials: {manifest_path} does not exist") from None
        except (OSError, ValueError) as e:
            raise CredentialError(
                "manifest", f"the Casa credential manifest {manifest_path} is unreadable: {e}"
            ) from None

        def ts(value):
            return datetime.datetime.fromisoformat(value) if value else None

        credentials = {
            kind: Credential(kind, directory / entry["file"], ts(entry.get("expires_at")))
            for kind, entry in manifest.get("credentials", {}).items()
        }
        # the CA certificate is not in the manifest (it does not expire with the bundle) but is needed for TLS
        credentials.setdefault("dask-ca", Credential("dask-ca", directory / DASK_CA, None))
        condor_user = (manifest.get("credentials", {}).get("htcondor") or {}).get("user")
        return cls(directory, manifest.get("user", ""), ts(manifest.get("issued_at")), credentials, condor_user)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "MountedBundle":
        environ = os.environ if environ is None else environ
        directory = environ.get("CASA_CREDENTIALS_DIR")
        if not directory:
            raise CredentialError("manifest", "CASA_CREDENTIALS_DIR is not set: this server has no Casa credentials")
        return cls.from_directory(directory)

    # ------------------------------------------------------------------ checks
    def require(self, *kinds: str, now: datetime.datetime | None = None, margin: float = 0) -> None:
        """Raise :class:`CredentialError` naming the first of ``kinds`` that is missing or expires within
        ``margin`` seconds."""
        now = now or _utcnow()
        for kind in kinds:
            cred = self.credentials.get(kind)
            if cred is None:
                raise CredentialError(kind, f"the {_label(kind)} ({kind}) is not part of your Casa credentials")
            if not cred.present:
                raise CredentialError(
                    kind,
                    f"the {_label(kind)} ({kind}) is missing: {cred.path} does not exist "
                    "or is empty; restart your server to get fresh credentials",
                )
            left = cred.seconds_left(now)
            if left is not None and left <= margin:
                when = "expired" if left <= 0 else f"expires in {int(left)} s"
                raise CredentialError(
                    kind,
                    f"the {_label(kind)} ({kind}) {when} (at {cred.expires_at.isoformat()}); "
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
        return self.directory / f"dask/{role}.crt", self.directory / f"dask/{role}.key"

    def security(self, roles=DASK_ROLES, now: datetime.datetime | None = None):
        """A ``distributed.Security`` (``require_encryption``) from the bundle's files, after checking that the
        CA and the certificate of every role in ``roles`` are there and valid."""
        from distributed.security import Security

        self.require("dask-ca", *(f"dask-{r}" for r in roles), now=now)
        kwargs = {"require_encryption": True, "tls_ca_file": str(self.directory / DASK_CA)}
        for role in roles:
            cert, key = self.dask_paths(role)
            if not key.is_file():
                raise CredentialError(f"dask-{role}", f"the key of the {_label('dask-' + role)} is missing: {key}")
            kwargs[f"tls_{role}_cert"], kwargs[f"tls_{role}_key"] = str(cert), str(key)
        return Security(**kwargs)

    @property
    def condor_token_dir(self) -> Path:
        cred = self.credentials.get("htcondor")
        return cred.path.parent if cred else self.directory / CONDOR_TOKEN_DIR
