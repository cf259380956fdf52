"""Writing what a run produced to the host, race-safely.

The engine never writes into a host path a command named. It exports into a fresh private
staging directory; from there the files are installed under their ``OutputPath`` (checked by
``PathRules``) with directory file descriptors: each component below the output root is
opened with ``O_NOFOLLOW``, files are written under a temporary name and renamed into place,
and existing symlinks are replaced, never followed. So a directory swapped for a link between
the check and the write (by another tenant's export, say) makes the write fail instead of
landing where the link points.

A directory export *mirrors* the staged tree: what is not in it is removed from the target
(a file deleted in the container is deleted on the host). Symlinks in the staged tree are
copied as links (data, never followed); special files are skipped. File modes keep their
permission bits, without setuid/setgid/sticky.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import shutil
import stat
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

from consumer.errors import permanent
from consumer.paths import OutputPath

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
_CHUNK = 1 << 20


def staging_directory() -> Path:
    """A private (0700), empty directory for the engine to export into."""
    return Path(tempfile.mkdtemp(prefix="dagger-adapter-export-"))


def remove_staging(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def install_tree(staged: Path, target: OutputPath) -> None:
    """Make the directory ``target`` hold exactly the staged tree (deletions included)."""
    fd = _open_target_dir(target)
    try:
        _mirror(staged, fd, target)
    finally:
        os.close(fd)


def install_file(staged: Path, target: OutputPath) -> None:
    """Write the staged file at ``target`` (replacing a file or link there, atomically)."""
    parent = OutputPath(target.root, target.parts[:-1])
    fd = _open_target_dir(parent)
    try:
        name = target.parts[-1]
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISDIR(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode):
                raise permanent(f"export target {target} is an existing directory")
        _copy_file(staged, fd, name)
    finally:
        os.close(fd)


def _open_target_dir(target: OutputPath) -> int:
    """An fd on the directory ``target``, walked from its root without following links,
    creating missing directories."""
    fd = os.open(target.root, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
    walked = target.root
    try:
        for part in target.parts:
            walked = walked / part
            with contextlib.suppress(FileExistsError):
                os.mkdir(part, 0o755, dir_fd=fd)
            try:
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise permanent(
                        f"export target {target}: {walked} is a symlink or not a directory; writes never follow links"
                    ) from None
                raise
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def _mirror(source: Path, fd: int, where: OutputPath) -> None:
    wanted: set[str] = set()
    with os.scandir(source) as entries:
        for entry in entries:
            if entry.is_symlink():
                _replace_with(fd, entry.name, functools.partial(_symlink, os.readlink(entry.path), fd))
            elif entry.is_dir(follow_symlinks=False):
                child = _child_dir(fd, entry.name)
                try:
                    _mirror(Path(entry.path), child, OutputPath(where.root, (*where.parts, entry.name)))
                finally:
                    os.close(child)
            elif entry.is_file(follow_symlinks=False):
                _copy_file(Path(entry.path), fd, entry.name)
            else:
                continue  # sockets, devices, fifos: never recreated on the host
            wanted.add(entry.name)
    for name in os.listdir(fd):
        if name not in wanted:
            _remove(fd, name)


def _child_dir(fd: int, name: str) -> int:
    """The subdirectory ``name`` of ``fd`` (created; a file or link in its way is removed)."""
    try:
        info = os.stat(name, dir_fd=fd, follow_symlinks=False)
        if not stat.S_ISDIR(info.st_mode):
            os.unlink(name, dir_fd=fd)
            raise FileNotFoundError
    except FileNotFoundError:
        os.mkdir(name, 0o755, dir_fd=fd)
    return os.open(name, _DIR_FLAGS, dir_fd=fd)


def _copy_file(source: Path, fd: int, name: str) -> None:
    mode = stat.S_IMODE(os.stat(source, follow_symlinks=False).st_mode) & 0o777

    def write(tmp: str) -> None:
        out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode, dir_fd=fd)
        try:
            with source.open("rb") as src:
                while chunk := src.read(_CHUNK):
                    os.write(out, chunk)
            os.fchmod(out, mode)
        finally:
            os.close(out)

    _replace_with(fd, name, write)


def _replace_with(fd: int, name: str, create: Callable[[str], None]) -> None:
    """Create the new entry under a temporary name, then rename it over ``name`` (a rename
    replaces a link rather than following it; a directory in the way is removed first)."""
    tmp = f".{name[:64]}.{uuid.uuid4().hex}.tmp"
    create(tmp)
    try:
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISDIR(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode):
                shutil.rmtree(name, dir_fd=fd)
        os.replace(tmp, name, src_dir_fd=fd, dst_dir_fd=fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=fd)
        raise


def _symlink(link: str, fd: int, name: str) -> None:
    os.symlink(link, name, dir_fd=fd)


def _remove(fd: int, name: str) -> None:
    info = os.stat(name, dir_fd=fd, follow_symlinks=False)
    if stat.S_ISDIR(info.st_mode):
        shutil.rmtree(name, dir_fd=fd)  # fd-based: never follows a link out of the tree
    else:
        os.unlink(name, dir_fd=fd)
