"""The credential bundle's layout, shared by the hub (which writes it) and the user's server (which reads it).

Standard library only: ``casa_hub_ext`` imports this module in the user's server, where nothing of the hub side
is needed. It defines

* the manifest ``casa.json`` (:data:`MANIFEST`): ``{"user", "issued_at", "credentials": {name: entry}}``, one
  :class:`ManifestEntry` per credential (name, label, file, env variable, audience/scopes, expiry, and
  kind-specific fields such as the HTCondor ``user``); never secret bytes;
* the Dask TLS file names (:data:`DASK_CA`, :func:`dask_files`), which HTCondor jobs also name;
* how a bundle path becomes a Kubernetes Secret key (:func:`secret_key`).

Each credential kind (``casa_hub.credentials.kind``) says which files and env variables it puts in the bundle;
the user side learns them from the manifest, so a new kind needs no change here or in ``casa_hub_ext``.
"""

from __future__ import annotations

import datetime
import json
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

MANIFEST = "casa.json"
CREDENTIALS_DIR_ENV = "CASA_CREDENTIALS_DIR"  # env variable naming where the bundle is mounted
MOUNT = "{mount}"  # env values start with it; the spawner replaces it by the mount point

DASK_DIR = "dask"
DASK_CA = f"{DASK_DIR}/ca.pem"
DASK_ROLES = ("scheduler", "worker", "client")


def dask_files(role: str) -> tuple[str, str]:
    """The certificate and key paths of a Dask TLS role inside the bundle."""
    return f"{DASK_DIR}/{role}.crt", f"{DASK_DIR}/{role}.key"


def dask_credential(role: str) -> str:
    """The manifest name of a Dask role's certificate (``dask-worker``); the CA is ``dask-ca``."""
    return f"dask-{role}"


# ------------------------------------------------------------------ Kubernetes Secret keys
_SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")


def secret_key(path: str) -> str:
    """The Secret key of a bundle path (``/`` → ``__``); refuses what a Secret key cannot hold."""
    key = path.replace("/", "__")
    if (
        not _SECRET_KEY.match(key)
        or len(key) > 253
        or key.startswith("..")
        or key == "."
        or any(part in ("", ".", "..") for part in path.split("/"))
    ):
        raise ValueError(f"bundle path {path!r} cannot be a Secret key (or a path in the volume)")
    return key


# ------------------------------------------------------------------ the manifest
@dataclass(frozen=True)
class ManifestEntry:
    """What the user's server learns about one credential: no secret, only where it is and what it is for.

    ``file`` is relative to the bundle; ``env`` the variable that points at it (or at its directory);
    ``key_file`` the private key beside a certificate; ``extra`` kind-specific public values (HTCondor's pool
    ``user``), written at the entry's top level."""

    name: str
    label: str
    file: str
    env: str | None = None
    audience: str | tuple[str, ...] | None = None
    scopes: tuple[str, ...] | None = None
    key_file: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"name": self.name, "label": self.label, "file": self.file, "env": self.env}
        if self.audience is not None:
            d["audience"] = self.audience if isinstance(self.audience, str) else list(self.audience)
        if self.scopes is not None:
            d["scopes"] = list(self.scopes)
        if self.key_file is not None:
            d["key_file"] = self.key_file
        d.update(self.extra)
        return d

    @property
    def json_head(self) -> str:
        """The entry as JSON without its closing brace: the minter appends ``expires_at`` per mint (a manifest
        is then a join of strings instead of an encoding of nested dicts on every login)."""
        head = self.__dict__.get("_json_head")
        if head is None:
            head = json.dumps(self.to_dict())[:-1]
            object.__setattr__(self, "_json_head", head)
        return head

    @classmethod
    def from_dict(cls, name: str, d: Mapping[str, Any]) -> "ManifestEntry":
        known = {"name", "label", "file", "env", "audience", "scopes", "key_file", "expires_at"}
        audience = d.get("audience")
        return cls(
            name=name,
            label=d.get("label") or name,  # manifests of older hubs had no labels
            file=d["file"],
            env=d.get("env"),
            audience=audience if audience is None or isinstance(audience, str) else tuple(audience),
            scopes=tuple(d["scopes"]) if d.get("scopes") is not None else None,
            key_file=d.get("key_file"),
            extra={k: v for k, v in d.items() if k not in known},
        )


def manifest_bytes(
    user: str, issued_at: datetime.datetime, entries: Iterable[tuple[ManifestEntry, datetime.datetime | None]]
) -> bytes:
    """The manifest of a bundle: every entry with its expiry (ISO 8601, or null for what does not expire)."""
    parts = []
    for entry, expires_at in entries:
        parts.append(
            f'{json.dumps(entry.name)}:{entry.json_head},"expires_at":'
            + (f'"{expires_at.isoformat()}"}}' if expires_at is not None else "null}")
        )
    return (
        f'{{"user":{json.dumps(user)},"issued_at":"{issued_at.isoformat()}","credentials":{{{",".join(parts)}}}}}'
    ).encode()


@dataclass(frozen=True)
class Manifest:
    user: str
    issued_at: datetime.datetime | None
    entries: Mapping[str, ManifestEntry]
    expires_at: Mapping[str, datetime.datetime | None]


def parse_manifest(text: str | bytes) -> Manifest:
    """Read a manifest (ValueError if it is not one)."""
    doc = json.loads(text)
    if not isinstance(doc, dict) or not isinstance(doc.get("credentials", {}), dict):
        raise ValueError("not a Casa credential manifest (expected an object with 'credentials')")

    def ts(value):
        return datetime.datetime.fromisoformat(value) if value else None

    entries, expiry = {}, {}
    for name, d in doc.get("credentials", {}).items():
        if not isinstance(d, dict) or not isinstance(d.get("file"), str):
            raise ValueError(f"credential {name!r} of the manifest names no file")
        entries[name] = ManifestEntry.from_dict(name, d)
        expiry[name] = ts(d.get("expires_at"))
    return Manifest(str(doc.get("user", "")), ts(doc.get("issued_at")), entries, expiry)
