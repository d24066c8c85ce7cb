"""The immutable result of minting: files for the user's pod, the env that points at them, expiry."""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping


@dataclass(frozen=True)
class BundleFile:
    """One file of the bundle: its bytes and the permission bits it should have in the pod."""

    content: bytes
    mode: int = 0o400
    # the earliest time this file stops being useful (None: it does not expire by itself, e.g. a CA cert)
    expires_at: datetime.datetime | None = None

    def __repr__(self) -> str:  # never show credential bytes in logs or tracebacks
        return f"BundleFile(<{len(self.content)} bytes>, mode={oct(self.mode)}, expires_at={self.expires_at})"


@dataclass(frozen=True)
class CredentialBundle:
    """Everything minted for one user at one moment.

    ``files`` maps a relative path (may contain one directory level, e.g. ``condor/tokens/casa``) to a
    :class:`BundleFile`; ``env`` holds paths relative to the mount point, prefixed with ``{mount}``,
    so the spawner decides where the bundle lives (see :meth:`env_for`).
    """

    user: str
    issued_at: datetime.datetime
    files: Mapping[str, BundleFile]
    env: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "files", MappingProxyType(dict(self.files)))
        object.__setattr__(self, "env", MappingProxyType(dict(self.env)))

    @property
    def expires_at(self) -> datetime.datetime | None:
        """Earliest expiry of any expiring credential in the bundle."""
        times = [f.expires_at for f in self.files.values() if f.expires_at is not None]
        return min(times) if times else None

    def env_for(self, mount_path: str) -> dict[str, str]:
        """The env vars with ``{mount}`` replaced by where the bundle is mounted."""
        mount_path = mount_path.rstrip("/")
        return {k: v.replace("{mount}", mount_path) for k, v in self.env.items()}

    def to_dict(self) -> dict:
        """JSON-safe form (for auth_state): contents as latin-1 strings are avoided, we use base64."""
        import base64

        return {
            "user": self.user,
            "issued_at": self.issued_at.isoformat(),
            "env": dict(self.env),
            "files": {
                path: {
                    "content": base64.b64encode(f.content).decode(),
                    "mode": f.mode,
                    "expires_at": f.expires_at.isoformat() if f.expires_at else None,
                }
                for path, f in self.files.items()
            },
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> "CredentialBundle":
        import base64

        def ts(v):
            return datetime.datetime.fromisoformat(v) if v else None

        return cls(
            user=d["user"],
            issued_at=ts(d["issued_at"]),
            env=d.get("env", {}),
            files={
                path: BundleFile(base64.b64decode(f["content"]), int(f["mode"]), ts(f.get("expires_at")))
                for path, f in d["files"].items()
            },
        )

    def __repr__(self) -> str:
        return f"CredentialBundle(user={self.user!r}, files={sorted(self.files)}, expires_at={self.expires_at})"
