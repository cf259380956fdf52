"""Which host paths a command may touch.

A command names host paths (volume sources, pipeline directories, export targets) and
workflow files. A worker must not become a way to read or overwrite arbitrary files of its
host, so every such path must resolve *inside* one of the configured roots:

- volume sources and other host paths: inside ``allowed_volume_roots`` (or, when none are
  configured, inside the working directory, so the original design's example mounting
  ``./data`` works as written), and never in or above a protected directory (the adapter's
  own ``cache_directory``: the embedded Valkey keeps other tasks' results there);
- workflow files: inside ``workflow_directory``.

Relative paths are taken relative to the worker's working directory. A path with a ``..``
component is refused outright, and symlinks are resolved before the check, so a link that
points out of a root is refused too. Refusals are permanent failures: retrying cannot help.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from consumer.errors import permanent

WORKFLOW_SUFFIXES = (".yml", ".yaml")


class PathRules:
    def __init__(
        self,
        *,
        volume_roots: Sequence[str | os.PathLike[str]],
        workflow_directory: str | os.PathLike[str],
        protected: Sequence[str | os.PathLike[str]] = (),
    ):
        self._workflow_root = Path(workflow_directory)
        self._volume_roots = [Path(r) for r in volume_roots] or [Path.cwd()]
        self._protected = [Path(p) for p in protected]

    @property
    def volume_roots(self) -> list[Path]:
        return [_resolved(r) for r in self._volume_roots]

    @property
    def workflow_root(self) -> Path:
        return _resolved(self._workflow_root)

    def host_directory(self, path: str, *, what: str = "volume source") -> Path:
        """An existing host directory inside the allowed roots."""
        resolved = self._inside(path, self.volume_roots, what, "allowed_volume_roots")
        if not resolved.exists():
            raise permanent(f"{what} {path!r} does not exist")
        if not resolved.is_dir():
            raise permanent(f"{what} {path!r} is not a directory")
        return resolved

    def host_file(self, path: str, *, what: str = "host file") -> Path:
        """An existing host file inside the allowed roots."""
        resolved = self._inside(path, self.volume_roots, what, "allowed_volume_roots")
        if not resolved.is_file():
            raise permanent(f"{what} {path!r} is not an existing file")
        return resolved

    def export_target(self, path: str, *, what: str = "export target") -> Path:
        """A host path to write to: it may not exist yet, but where it would be created
        (its nearest existing ancestor, symlinks resolved) must be inside the allowed roots."""
        return self._inside(path, self.volume_roots, what, "allowed_volume_roots")

    def workflow_file(self, name: str) -> Path:
        """The workflow file ``name`` (with or without ``.yml``/``.yaml``) under ``workflow_directory``."""
        if Path(name).is_absolute():
            raise permanent(f"workflow_definition {name!r} must be a path relative to the workflow directory")
        _refuse_parent_components(name, "workflow_definition")
        root = self.workflow_root
        candidates = [name] if name.endswith(WORKFLOW_SUFFIXES) else [name, *(name + s for s in WORKFLOW_SUFFIXES)]
        for candidate in candidates:
            resolved = _resolved(root / candidate)
            if not _is_within(resolved, [root]):
                raise permanent(f"workflow_definition {name!r} resolves outside the workflow directory")
            if resolved.is_file():
                return resolved
        raise permanent(f"unknown workflow {name!r}: no such file in the workflow directory")

    def _inside(self, path: str, roots: Iterable[Path], what: str, setting: str) -> Path:
        if not path or "\x00" in path:
            raise permanent(f"{what} must be a non-empty path")
        _refuse_parent_components(path, what)
        resolved = _resolved(Path(path))
        roots = list(roots)
        if not _is_within(resolved, roots):
            raise permanent(f"{what} {path!r} is outside the allowed host directories (see {setting})")
        for protected in map(_resolved, self._protected):
            if _is_within(resolved, [protected]) or _is_within(protected, [resolved]):
                raise permanent(f"{what} {path!r} would expose the adapter's own data ({protected})")
        return resolved


def _refuse_parent_components(path: str, what: str) -> None:
    if ".." in Path(path).parts or ".." in path.replace("\\", "/").split("/"):
        raise permanent(f"{what} {path!r} must not contain '..'")


def _resolved(path: Path) -> Path:
    # realpath follows every symlink, including in the part of the path that exists when
    # the rest does not (export targets), so "link/new-file" is judged by where link points.
    return Path(os.path.realpath(path.expanduser()))


def _is_within(path: Path, roots: Iterable[Path]) -> bool:
    return any(path == root or path.is_relative_to(root) for root in roots)
