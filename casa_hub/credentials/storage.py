"""Per-user storage areas whose paths no user name can widen (pure: strings in, strings out).

XRootD before 5.7 (SciTokens) and its macaroon plugin (until 2025) authorise a request when the scope path is
a plain *string* prefix of the requested path, after stripping a trailing ``/`` from the scope: a token for
``/store/user/ali`` also opens ``/store/user/alice/...``. A user name must therefore never land in a scope
path verbatim. :func:`user_dir` maps every user name to a directory name that is

* injective: two different names never share a directory;
* prefix-free: no user's directory name is a string prefix of another's, because every one ends with the
  terminator ``~`` and ``~`` occurs nowhere else (a ``~`` in a name is escaped);
* plain: only ``[a-z0-9._=~-]``, no ``%``, ``/``, upper case or non-ASCII, no leading ``.``, so nothing a
  server may percent-decode, case-fold or normalise;
* short: at most 121 characters.

Storage path templates (``XCacheToken.scopes``, ``XCacheMacaroon.path``) use the placeholder
``{userdir}``; :func:`check_scopes` / :func:`check_path_template` refuse templates that would still let one
user's credential reach another user's area. Find a user's directory with
``python -m casa_hub.credentials.storage NAME``.
"""

from __future__ import annotations

import hashlib
import string
import sys

PLACEHOLDER = "userdir"
AREA_ENV = "CASA_STORAGE_AREA"  # the env variable naming the user's own storage area (not a path in the bundle)
TERMINATOR = "~"
_KEEP = frozenset(string.ascii_lowercase + string.digits + "._-")
MAX_ESCAPED = 120  # longer escaped forms are shortened: head + "==" + hash
HEAD = 80
HASH_HEX = 32  # 128 bits of sha256

# WLCG storage scopes and their SciTokens equivalents: "<kind>:<path>"
STORAGE_KINDS = frozenset({"storage.read", "storage.create", "storage.modify", "storage.stage", "read", "write"})
WRITE_KINDS = frozenset({"storage.create", "storage.modify", "write"})

_WHY = (
    "XRootD before 5.7 (SciTokens) and its macaroons match scope paths as plain string prefixes, so "
    "a scope for /store/user/ali would also cover /store/user/alice"
)


# ---------------------------------------------------------------- user directory names


def _escape_units(name: str) -> list[str]:
    units = []
    for i, ch in enumerate(name):
        if ch in _KEEP and not (i == 0 and ch == "."):
            units.append(ch)
        else:
            units.extend(f"={b:02x}" for b in ch.encode("utf-8"))
    return units


def user_dir(name: str) -> str:
    """The storage directory name of hub user ``name`` (see the module doc).

    ``alice`` -> ``alice~``; ``alice.smith@cern.ch`` -> ``alice.smith=40cern.ch~``; ``ali~`` -> ``ali=7e~``.
    Names whose escaped form is longer than 120 characters become the first (at most) 80 escaped characters,
    ``==`` (which no escape produces), the first 32 hex digits of sha256(name) and ``~``.
    """
    if not isinstance(name, str) or not name:
        raise ValueError("a storage directory needs a non-empty user name")
    units = _escape_units(name)
    escaped = "".join(units)
    if len(escaped) <= MAX_ESCAPED:
        return escaped + TERMINATOR
    head, size = [], 0
    for unit in units:  # never cut inside an =xx escape
        if size + len(unit) > HEAD:
            break
        head.append(unit)
        size += len(unit)
    digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:HASH_HEX]
    return "".join(head) + "==" + digest + TERMINATOR


# ---------------------------------------------------------------- templates


def _parse(template: str) -> list[tuple[str, bool]]:
    """``template`` as (text, is_placeholder) pieces; ValueError unless the only field is a bare ``{userdir}``."""
    pieces: list[tuple[str, bool]] = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        raise ValueError(f"{template!r} is not a valid template ({e}); the only placeholder is {{userdir}}") from None
    for literal, field, spec, conversion in parsed:
        if literal:
            if "{" in literal or "}" in literal:
                raise ValueError(f"{template!r}: literal braces ({{{{ or }}}}) are not allowed in a storage path")
            pieces.append((literal, False))
        if field is None:
            continue
        if field == "username":
            raise ValueError(
                f"{template!r}: use {{userdir}}, not {{username}}: {_WHY}; {{userdir}} is a "
                "prefix-free encoding of the user name (python -m casa_hub.credentials.storage NAME)"
            )
        if field != PLACEHOLDER or spec or conversion:
            shown = "{" + field + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
            raise ValueError(
                f"{template!r}: {shown} is not allowed; the only placeholder is a bare {{userdir}} "
                "(no conversion, format spec, attribute or index)"
            )
        pieces.append(("", True))
    return pieces


def _skeleton(pieces: list[tuple[str, bool]]) -> str:
    return "".join("\0" if is_field else text for text, is_field in pieces)


def check_path_template(template: str) -> str | None:
    """Validate a storage path template; return its static part before ``{userdir}`` (e.g. ``/store/user/``),
    or None when it has no placeholder. Raises ValueError with the reason."""
    pieces = _parse(template)
    skeleton = _skeleton(pieces)
    bad = sorted({c for c in skeleton if c != "\0" and (c.isspace() or not c.isprintable())})
    if bad:
        raise ValueError(f"{template!r}: storage paths may not contain whitespace or control characters {bad!r}")
    if not skeleton.startswith("/"):
        raise ValueError(f"{template!r}: storage paths must be absolute (start with /)")
    if "%" in skeleton:
        raise ValueError(f"{template!r}: storage paths may not contain '%' (servers percent-decode paths)")
    if "//" in skeleton:
        raise ValueError(f"{template!r}: storage paths may not contain '//'")
    if skeleton != "/" and skeleton.endswith("/"):
        raise ValueError(
            f"{template!r}: storage paths may not end with '/' (XRootD strips it, and the rest "
            "matches as a plain string prefix)"
        )
    components = skeleton.split("/")[1:] if skeleton != "/" else []
    for comp in components:
        if comp in (".", ".."):
            raise ValueError(f"{template!r}: storage paths may not contain '.' or '..' components")
        if "\0" in comp and comp != "\0":
            raise ValueError(
                f"{template!r}: {{userdir}} must be a whole path component (/.../{{userdir}} or "
                "/.../{userdir}/...), not part of one: " + _WHY
            )
    if "\0" not in skeleton:
        return None
    return skeleton[: skeleton.index("\0")]


def render_path(template: str, name: str) -> str:
    """``template`` with ``{userdir}`` replaced by :func:`user_dir` of ``name`` (the template is checked)."""
    check_path_template(template)
    d = user_dir(name)
    return "".join(d if is_field else text for text, is_field in _parse(template))


def _split_scope(scope: str) -> tuple[str, str] | None:
    kind, sep, path = scope.partition(":")
    return (kind, path) if sep and kind in STORAGE_KINDS else None


def check_scopes(scopes) -> None:
    """Validate a list of scope templates (WLCG ``storage.read|create|modify|stage:PATH``, SciTokens
    ``read:PATH`` / ``write:PATH``; other scopes such as ``openid`` pass unless they hold a placeholder).

    Besides :func:`check_path_template` on every storage path, a scope without ``{userdir}`` may not cover the
    per-user areas: a write scope whose path is a prefix of (or equal to) the static part before ``{userdir}``
    of a per-user scope gives every user write access to everyone's area, and any scope whose path lies inside
    that static part (``/store/user/alice`` next to ``/store/user/{userdir}``) covers other users' areas."""
    per_user: list[tuple[str, str]] = []  # (scope, static prefix)
    static: list[tuple[str, str, str]] = []  # (scope, kind, path)
    for scope in scopes:
        if not isinstance(scope, str) or not scope:
            raise ValueError(f"{scope!r} is not a scope")
        if any(c.isspace() for c in scope):
            raise ValueError(
                f"{scope!r}: one scope per entry, without whitespace (the token's scope claim is space-separated)"
            )
        split = _split_scope(scope)
        if split is None:
            if "{" in scope or "}" in scope:
                _parse(scope)  # {username} and friends get their specific message
                raise ValueError(
                    f"{scope!r}: {{userdir}} is only allowed in the path of a storage scope "
                    f"({', '.join(sorted(STORAGE_KINDS))})"
                )
            continue
        kind, path = split
        try:
            prefix = check_path_template(path)
        except ValueError as e:
            raise ValueError(f"scope {scope!r}: {e}") from None
        if prefix is None:
            static.append((scope, kind, path))
        else:
            per_user.append((scope, prefix))
    for scope, kind, path in static:
        for user_scope, prefix in per_user:
            if kind in WRITE_KINDS and prefix.startswith(path):
                raise ValueError(
                    f"scope {scope!r} gives every user write access to every user's area "
                    f"{prefix}{{userdir}} (of {user_scope!r}); narrow it or drop it"
                )
            if path.startswith(prefix):
                raise ValueError(
                    f"scope {scope!r} lies inside the per-user areas {prefix}{{userdir}} (of "
                    f"{user_scope!r}) and gives every user access to some user's area; keep shared "
                    f"paths outside {prefix}"
                )


def render_scopes(scopes, name: str) -> list[str]:
    """Every scope with ``{userdir}`` rendered for user ``name``."""
    check_scopes(scopes)
    out = []
    for scope in scopes:
        split = _split_scope(scope)
        out.append(scope if split is None else f"{split[0]}:{render_path(split[1], name)}")
    return out


def storage_area(scopes, name: str) -> str | None:
    """The rendered path of the first per-user storage scope (the user's own area), or None."""
    for scope in scopes:
        split = _split_scope(scope)
        if split is not None and check_path_template(split[1]) is not None:
            return render_path(split[1], name)
    return None


def is_per_user(template: str) -> bool:
    return check_path_template(template) is not None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(
            "usage: python -m casa_hub.credentials.storage NAME [NAME ...]\n"
            "Print the storage directory name ({userdir}) of each hub user NAME, one per line."
        )
        return 0 if argv else 2
    for name in argv:
        print(user_dir(name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
