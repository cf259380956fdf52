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

Reading and writing are different rights. Host *writes* (pipeline exports, writable volumes)
go only under ``allowed_output_roots`` (none by default: a worker writes nothing to its host
unless told where), and never into or over anything the worker itself reads: the workflow
directory, the cache directory, the installed code (its packages, ``sys.prefix``) and the
files directly in the configuration file's directory. Below its output root a write path may
not pass through a symlink at all; ``consumer.host_output`` re-checks that when it writes,
component by component without following links, so a path swapped for a link after the
check still cannot redirect the write.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from consumer.errors import permanent

WORKFLOW_SUFFIXES = (".yml", ".yaml")


@dataclass(frozen=True, slots=True)
class OutputPath:
    """A checked host write target: an output root (trusted configuration, its real path)
    and the components below it, none of which may be a symlink when the write happens."""

    root: Path
    parts: tuple[str, ...]

    @property
    def path(self) -> Path:
        return self.root.joinpath(*self.parts)

    def __str__(self) -> str:
        return str(self.path)


class PathRules:
    def __init__(
        self,
        *,
        volume_roots: Sequence[str | os.PathLike[str]],
        workflow_directory: str | os.PathLike[str],
        protected: Sequence[str | os.PathLike[str]] = (),
        output_roots: Sequence[str | os.PathLike[str]] = (),
        write_protected: Sequence[str | os.PathLike[str]] = (),
        config_directories: Sequence[str | os.PathLike[str]] = (),
    ):
        self._workflow_root = Path(workflow_directory)
        self._volume_roots = [Path(r) for r in volume_roots] or [Path.cwd()]
        self._protected = [Path(p) for p in protected]
        self._output_roots = [Path(r) for r in output_roots]
        # Never written, never written over: what the worker reads its work, code and data from.
        self._write_protected = [self._workflow_root, *self._protected, *(Path(p) for p in write_protected)]
        # Configuration directories: nothing directly in them (the files the worker reads),
        # their subdirectories are ordinary places (an output root may be one).
        self._config_directories = [Path(p) for p in config_directories]

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

    @property
    def output_roots(self) -> list[Path]:
        return [_resolved(r) for r in self._output_roots]

    def output_path(self, path: str, *, what: str = "export target", directory: bool) -> OutputPath:
        """A host path to write to (a directory tree when ``directory``, else one file): under
        an output root, through no symlink below it, and neither inside nor (for a directory,
        which an export may wipe) around a write-protected directory. It need not exist yet."""
        if not path or "\x00" in path:
            raise permanent(f"{what} must be a non-empty path")
        _refuse_parent_components(path, what)
        if not self._output_roots:
            raise permanent(
                f"{what} {path!r}: this worker writes nothing to its host (allowed_output_roots is not set)"
            )
        absolute = Path(os.path.abspath(Path(path).expanduser()))
        found: OutputPath | None = None
        for configured in self._output_roots:
            real = _resolved(configured)
            for spelling in (Path(os.path.abspath(configured.expanduser())), real):
                if absolute == spelling or absolute.is_relative_to(spelling):
                    parts = absolute.relative_to(spelling).parts
                    if found is None or len(parts) < len(found.parts):  # the innermost root
                        found = OutputPath(real, parts)
        if found is None:
            raise permanent(f"{what} {path!r} is outside the allowed output directories (see allowed_output_roots)")
        if not directory and not found.parts:
            raise permanent(f"{what} {path!r} is an output root itself, not a file path under it")
        target = found.path
        for protected in map(_resolved, self._write_protected):
            if _is_within(target, [protected]) or (directory and _is_within(protected, [target])):
                raise permanent(f"{what} {path!r} would write over what the worker itself reads ({protected})")
        for config in map(_resolved, self._config_directories):
            if target == config or target.parent == config or (directory and _is_within(config, [target])):
                raise permanent(f"{what} {path!r} would write over the worker's configuration ({config})")
        # Early, clear refusals; consumer.host_output enforces the same when it writes.
        walked = found.root
        for index, part in enumerate(found.parts):
            walked = walked / part
            if walked.is_symlink():
                raise permanent(f"{what} {path!r} passes through a symlink ({walked}); writes never follow links")
            last = index == len(found.parts) - 1
            if walked.exists() and not walked.is_dir() and (directory or not last):
                raise permanent(f"{what} {path!r}: {walked} exists and is not a directory")
            if last and not directory and walked.is_dir():
                raise permanent(f"{what} {path!r} is an existing directory; name the file to write")
        return found

    def check_writable_source(self, path: str, *, what: str = "writable volume") -> OutputPath:
        """A writable volume's source: readable as an input, and a write target (an output
        root rule) because its content is exported back after the run."""
        target = self.output_path(path, what=what, directory=True)
        if not target.path.is_dir():
            raise permanent(f"{what} {path!r} is not an existing directory")
        return target

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


def worker_code_paths() -> list[Path]:
    """Where the worker's own code lives (its packages, the Python installation): never
    written, never written over."""
    own = [Path(sys.prefix), Path(sys.base_prefix)]
    for package in ("consumer", "schemas", "topology"):  # found, not imported (topology means AMQP)
        spec = importlib.util.find_spec(package)
        if spec is not None and spec.origin:
            own.append(Path(spec.origin).parent)
    return own


def _refuse_parent_components(path: str, what: str) -> None:
    if ".." in Path(path).parts or ".." in path.replace("\\", "/").split("/"):
        raise permanent(f"{what} {path!r} must not contain '..'")


def _resolved(path: Path) -> Path:
    # realpath follows every symlink, including in the part of the path that exists when
    # the rest does not (export targets), so "link/new-file" is judged by where link points.
    return Path(os.path.realpath(path.expanduser()))


def _is_within(path: Path, roots: Iterable[Path]) -> bool:
    return any(path == root or path.is_relative_to(root) for root in roots)
