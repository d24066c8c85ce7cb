"""A credential kind: one module behind one interface, registered through the ``casa_hub.credentials`` entry
point group.

A kind is a :class:`CredentialKind` subclass (a traitlets ``LoggingConfigurable``, configured as
``c.<ClassName>.<trait>``) that says

* its ``name`` (the entry point name, listed in ``CasaMinter.kinds``) and ``label`` (what users read);
* which bundle files and env variables it owns (:meth:`~CredentialKind.files`, :meth:`~CredentialKind.env_names`):
  two enabled kinds that claim the same one are refused when the hub starts;
* how it loads its keys (:meth:`~CredentialKind.load_keys`: read and check them once, at hub start; a failure is a
  ``RuntimeError`` naming ``Class.trait``);
* how it mints (:meth:`~CredentialKind.mint`: pure CPU work from a :class:`MintRequest`, the admitted identity,
  to a :class:`Minted`: files, env variables, manifest entries).

The user's server reads what a kind minted from the manifest (:mod:`casa_hub.credentials.layout`): a new kind is
one file and one entry point, e.g. in a site package's ``pyproject.toml``::

    [project.entry-points."casa_hub.credentials"]
    mlflow = "casa_hub.credentials.kinds.mlflow:MLflowToken"

Kinds never depend on each other. ``casa_hub.credentials.kinds.mlflow`` is the documented example.
"""

from __future__ import annotations

import datetime
import functools
import importlib.metadata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Mapping, Sequence

from traitlets import All, Integer, TraitError, observe
from traitlets.config import LoggingConfigurable

from . import layout
from .bundle import BundleFile
from .issuer import IssuerKey

ENTRY_POINT_GROUP = "casa_hub.credentials"

# WLCG Common JWT Profiles 1.0, "Token lifetime guidance": access tokens live minutes to hours, at most 6 h
ACCESS_TOKEN_MAX_LIFETIME = 6 * 3600
ACCESS_TOKEN_WHY = (
    "an access token is a bearer credential that cannot be revoked, and the WLCG Common JWT Profile caps access "
    "tokens at 21600 s (6 h); the hub renews credentials before they expire, so a short lifetime costs users nothing"
)


# ------------------------------------------------------------------ what a kind gets and gives
@dataclass(frozen=True)
class FacilityIssuer:
    """The facility's token issuer: its URL (the ``iss`` of its JWTs) and its current signing key (JWKS at
    ``<url>/jwks.json``, served by the hub)."""

    url: str
    key: IssuerKey


@dataclass(frozen=True, slots=True)
class MintRequest:
    """The admitted identity a bundle is minted for, at ``now`` (the hub's clock).

    ``email`` is only ever an address the identity provider marked verified (else None). ``issuer`` is None
    when no enabled kind signs with the facility issuer (:attr:`CredentialKind.uses_issuer`)."""

    user: str
    email: str | None
    now: datetime.datetime
    issuer: FacilityIssuer | None = None

    @property
    def iat(self) -> int:
        """``now`` as JWT seconds (``iat``/``nbf``)."""
        return int(self.now.timestamp())


@dataclass(frozen=True, slots=True)
class Minted:
    """What one kind minted for one user.

    ``files``: bundle path -> :class:`BundleFile` (bytes, mode, expiry). ``env``: variables whose values may
    start with ``{mount}`` (the bundle's mount point); never secret values, the files hold those. ``manifest``:
    (entry, expiry) pairs for ``casa.json``. ``env_defaults``: variables set only when no enabled kind sets
    them (e.g. the storage area, which the storage token and the macaroon both know)."""

    files: Mapping[str, BundleFile]
    env: Mapping[str, str]
    manifest: Sequence[tuple[layout.ManifestEntry, datetime.datetime | None]] = ()
    env_defaults: Mapping[str, str] = field(default_factory=dict)


class Seconds(Integer):
    """A lifetime in seconds, at least 1; above ``maximum`` it is refused with ``why``."""

    def __init__(self, default_value: int, *, maximum: int | None = None, why: str = "", **kwargs):
        super().__init__(default_value, min=1, **kwargs)
        self.maximum, self.why = maximum, why

    def validate(self, obj, value):
        value = super().validate(obj, value)
        if self.maximum is not None and value > self.maximum:
            raise TraitError(f"{type(obj).__name__}.{self.name}={value}: {self.why}")
        return value


def read_secret_file(path: str, what: str) -> bytes:
    """The bytes of a key file; RuntimeError if it cannot be read or holds nothing."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise RuntimeError(f"cannot read the {what} at {path!r}: {e.strerror}") from None
    if not data.strip(b"\0\n "):
        raise RuntimeError(f"the {what} at {path!r} is empty")
    return data


# ------------------------------------------------------------------ the interface
class CredentialKind(LoggingConfigurable):
    """Base class of every credential kind (see the module documentation)."""

    name: ClassVar[str] = ""  # the entry point name, e.g. "xcache"
    label: ClassVar[str] = ""  # what users read, e.g. "XCache storage token"
    uses_issuer: ClassVar[bool] = False  # signs with the facility issuer key (request.issuer is then set)

    def files(self) -> tuple[str, ...]:
        """Every bundle path this kind may write (relative, ``/``-separated)."""
        raise NotImplementedError

    def env_names(self) -> tuple[str, ...]:
        """Every env variable this kind may set (its own: no other enabled kind may set it)."""
        raise NotImplementedError

    def env_default_names(self) -> tuple[str, ...]:
        """Env variables this kind sets only when no other kind does (:attr:`Minted.env_defaults`)."""
        return ()

    def load_keys(self) -> None:
        """Read and check this kind's secrets (once, at hub start). Raise RuntimeError naming ``Class.trait``."""

    def mint(self, request: MintRequest) -> Minted:
        """Mint for ``request`` (pure CPU work: no I/O, no shared mutable state but caches)."""
        raise NotImplementedError

    # ---- helpers for subclasses
    def where(self, trait: str) -> str:
        """``Class.trait``, as error messages name a setting."""
        return f"{type(self).__name__}.{trait}"

    def load_secret(self, trait: str, what: str, parse: Callable[[bytes], Any] = bytes) -> Any:
        """Read the file named by ``trait`` and ``parse`` it; any failure is a RuntimeError naming the trait."""
        path = getattr(self, trait)
        if not path:
            raise RuntimeError(f"{self.where(trait)} is not set: {type(self).__name__} needs the {what}")
        try:
            return parse(read_secret_file(path, what))
        except RuntimeError as e:
            raise RuntimeError(f"{self.where(trait)}: {e}") from None
        except (ValueError, TypeError) as e:
            raise RuntimeError(f"{self.where(trait)}={path!r} is not usable: {e}") from None

    def derived(self, key: str, build: Callable[[], Any]) -> Any:
        """A value computed from this kind's configuration once, recomputed after any trait changes (static env
        variables, manifest entries, parsed settings)."""
        cache = self.__dict__.setdefault("_casa_derived", {})
        try:
            return cache[key]
        except KeyError:
            value = cache[key] = build()
            return value

    @observe(All)
    def _forget_derived(self, change) -> None:
        self.__dict__.pop("_casa_derived", None)


# ------------------------------------------------------------------ the registry
@functools.lru_cache(maxsize=1)
def installed_kinds() -> Mapping[str, Sequence[importlib.metadata.EntryPoint]]:
    """Every kind installed in this environment: entry point name -> its entry points (more than one is a
    conflict between packages, refused when that kind is enabled). Read once per process."""
    found: dict[str, list[importlib.metadata.EntryPoint]] = {}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if all(ep.value != other.value for other in found.get(ep.name, ())):
            found.setdefault(ep.name, []).append(ep)
    return found


def kind_class(name: str) -> type[CredentialKind]:
    """The class of the installed kind ``name``; RuntimeError saying what is installed otherwise."""
    installed = installed_kinds()
    if name not in installed:
        raise RuntimeError(
            f"CasaMinter.kinds: no credential kind {name!r} is installed; installed kinds: "
            f"{', '.join(sorted(installed)) or 'none (is the casa-hub package installed?)'} "
            f"(entry point group {ENTRY_POINT_GROUP!r})"
        )
    eps = installed[name]
    if len(eps) > 1:
        raise RuntimeError(
            f"CasaMinter.kinds: the credential kind {name!r} is installed more than once "
            f"({', '.join(ep.value for ep in eps)}); uninstall all but one"
        )
    try:
        cls = eps[0].load()
    except Exception as e:  # a broken plugin must name itself, not end the hub with a traceback
        raise RuntimeError(f"CasaMinter.kinds: cannot load credential kind {name!r} ({eps[0].value}): {e}") from None
    if not (isinstance(cls, type) and issubclass(cls, CredentialKind)):
        raise RuntimeError(f"CasaMinter.kinds: {eps[0].value} (kind {name!r}) is not a CredentialKind subclass")
    if cls.name != name:
        raise RuntimeError(
            f"CasaMinter.kinds: {eps[0].value} calls itself {cls.name!r} but is installed as {name!r}; "
            "make the entry point name and the class's name equal"
        )
    return cls


def check_layout(kinds: Iterable[CredentialKind]) -> None:
    """Refuse kinds that would write the same file or set the same env variable (or write a path the bundle
    cannot hold), naming both kinds."""
    file_owner = {layout.MANIFEST: "the manifest"}
    env_owner = {layout.CREDENTIALS_DIR_ENV: "the manifest"}
    for kind in kinds:
        for path in kind.files():
            try:
                layout.secret_key(path)
            except ValueError as e:
                raise RuntimeError(f"credential kind {kind.name!r}: {e}") from None
            clash = file_owner.get(path) or next(
                (owner for other, owner in file_owner.items() if _nested(path, other)), None
            )
            if clash:
                raise RuntimeError(
                    f"credential kinds {clash!r} and {kind.name!r} would both write {path!r} (or a directory of "
                    "it) in the bundle; enable only one of them in CasaMinter.kinds"
                )
            file_owner[path] = kind.name
        for env in kind.env_names():
            if env in env_owner:
                raise RuntimeError(
                    f"credential kinds {env_owner[env]!r} and {kind.name!r} would both set the env variable "
                    f"{env}; enable only one of them in CasaMinter.kinds"
                )
            env_owner[env] = kind.name


def _nested(a: str, b: str) -> bool:
    return a.startswith(b + "/") or b.startswith(a + "/")
