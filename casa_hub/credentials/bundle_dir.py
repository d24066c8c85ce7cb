"""A credential bundle as files in a directory: how the local spawner delivers it, and how tests lay one out as a
pod would see its Secret mounted.

Each file is written to a temporary file beside its target (with the bundle's mode, owned by the user) and renamed
over it, so a reader never sees a half-written credential and a refresh swaps files in place. No JupyterHub here:
the user side's tests lay bundles out with it too.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path, PurePosixPath

from .bundle import CredentialBundle


def _private_dir(path: Path, uid: int | None, gid: int | None) -> None:
    """Create ``path`` if needed and make it a private (0700) directory of ``uid``.

    Refuses a symlink or a non-directory there (the user could have planted one in their home to make the
    hub, running as root, write or chmod elsewhere); mode and owner are set through an fd opened with
    O_NOFOLLOW, never through the path.
    """
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        if uid is not None:
            os.fchown(fd, uid, gid if gid is not None else -1)
        os.fchmod(fd, 0o700)
    finally:
        os.close(fd)


def _check_relative(rel: str) -> PurePosixPath:
    p = PurePosixPath(rel)
    if p.is_absolute() or not p.parts or any(part in ("", ".", "..") for part in p.parts):
        raise ValueError(f"bundle path {rel!r} is not a plain relative path")
    return p


def _write_atomic(target: Path, content: bytes, mode: int, uid: int | None, gid: int | None) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".casa-")  # O_EXCL: never follows a planted link
    try:
        try:
            os.fchmod(fd, mode)
            if uid is not None:
                os.fchown(fd, uid, gid if gid is not None else -1)
            view = memoryview(content)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)  # rename replaces a symlink itself, never its target
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_bundle_dir(directory: Path, bundle: CredentialBundle, uid: int | None = None, gid: int | None = None) -> None:
    """Write (or replace) the bundle in ``directory`` (0700, owned by ``uid``): every file is written beside
    its target and renamed over it, with the bundle's mode. Files no longer in the bundle are removed."""
    directory = Path(directory)
    directory.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    _private_dir(directory, uid, gid)
    wanted = set()
    for rel, f in sorted(bundle.files.items()):
        parts = _check_relative(rel).parts
        parent = directory
        for sub in parts[:-1]:
            parent = parent / sub
            _private_dir(parent, uid, gid)
        target = parent / parts[-1]
        _write_atomic(target, f.content, f.mode, uid, gid)
        wanted.add(target)
    for path in sorted(directory.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        st = path.lstat()
        if stat.S_ISDIR(st.st_mode):
            if not any(path.iterdir()):
                path.rmdir()
        elif path not in wanted:
            path.unlink()


def remove_bundle_dir(directory: Path) -> None:
    """Remove the bundle directory (missing is fine; rmtree does not follow symlinks)."""
    directory = Path(directory)
    if directory.is_symlink():
        directory.unlink()
        return
    shutil.rmtree(directory, ignore_errors=True)
