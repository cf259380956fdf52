"""A container's files while it is evaluated: its root filesystem plus what is mounted.

Paths are POSIX container paths. A mount hides what the root filesystem has under its path;
the longest mount path containing a file owns it. Cache volumes live in the engine (shared by
every container that mounts the same key), everything else is copied per state.
"""

from __future__ import annotations

import posixpath
import threading
from collections.abc import Iterator, Mapping


def normalize(path: str, workdir: str = "/") -> str:
    return posixpath.normpath(posixpath.join(workdir or "/", path)).replace("//", "/")


def relative_to(path: str, base: str) -> str | None:
    """``path`` relative to ``base`` ("" when equal), or None when outside it."""
    if base == "/":
        return path.lstrip("/")
    if path == base:
        return ""
    if path.startswith(base + "/"):
        return path[len(base) + 1 :]
    return None


class ReadOnlyFileSystem(OSError):
    """A write under a ``readOnly`` mount (EROFS inside the container)."""

    def __init__(self, path: str) -> None:
        super().__init__(30, "Read-only file system", path)
        self.path = path


class CacheStore:
    """The contents of every cache volume, by key; shared across states and queries."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._volumes: dict[str, dict[str, str]] = {}

    def volume(self, key: str) -> dict[str, str]:
        with self._lock:
            return self._volumes.setdefault(key, {})

    def snapshot(self, key: str) -> dict[str, str]:
        with self._lock:
            return dict(self._volumes.get(key, {}))


class ContainerFS:
    def __init__(
        self,
        rootfs: dict[str, str],
        mounts: dict[str, dict[str, str]],
        caches: Mapping[str, str],
        cache_store: CacheStore,
        workdir: str = "/",
        read_only: frozenset[str] = frozenset(),
    ) -> None:
        self.rootfs = rootfs  # absolute path -> text
        self.mounts = mounts  # mount path -> {relative path: text}
        self.caches = dict(caches)  # mount path -> cache key
        self._cache_store = cache_store
        self.workdir = workdir or "/"
        self.read_only = read_only  # mount paths mounted with readOnly

    def _tables(self) -> Iterator[tuple[str, dict[str, str]]]:
        for path, files in self.mounts.items():
            yield path, files
        for path, key in self.caches.items():
            yield path, self._cache_store.volume(key)

    def _owner(self, path: str) -> tuple[dict[str, str], str]:
        """The table holding ``path`` and the key it has there."""
        best: tuple[str, dict[str, str]] | None = None
        for mount_path, table in self._tables():
            if relative_to(path, mount_path) is not None and (best is None or len(mount_path) > len(best[0])):
                best = (mount_path, table)
        if best is None:
            return self.rootfs, path
        return best[1], relative_to(path, best[0]) or ""

    def read(self, path: str) -> str | None:
        table, key = self._owner(normalize(path, self.workdir))
        return table.get(key)

    def write(self, path: str, text: str) -> None:
        full = normalize(path, self.workdir)
        self.check_writable(full)
        table, key = self._owner(full)
        table[key] = text

    def check_writable(self, path: str) -> None:
        """Raise ReadOnlyFileSystem when the longest mount holding ``path`` is read-only."""
        full = normalize(path, self.workdir)
        owners = [m for m in [*self.mounts, *self.caches] if relative_to(full, m) is not None]
        if owners and max(owners, key=len) in self.read_only:
            raise ReadOnlyFileSystem(full)

    def tree(self, path: str) -> dict[str, str]:
        """Every file under ``path``, relative to it."""
        base = normalize(path, self.workdir)
        found: dict[str, str] = {}
        owners: list[tuple[str, dict[str, str]]] = [("/", self.rootfs), *self._tables()]
        for mount_path, table in sorted(owners, key=lambda item: len(item[0])):
            for key, text in list(table.items()):
                full = key if mount_path == "/" else normalize(key, mount_path)
                if self._owner(full)[0] is not table:
                    continue  # hidden by a mount
                rel = relative_to(full, base)
                if rel:
                    found[rel] = text
        return found

    def is_dir(self, path: str) -> bool:
        base = normalize(path, self.workdir)
        if any(relative_to(base, mount_path) is not None for mount_path, _ in self._tables()):
            return True
        return bool(self.tree(path))
