"""Reading host files into snapshots and writing snapshots back (``export``)."""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterable, Mapping


def _matches(rel: str, patterns: Iterable[str]) -> bool:
    """A path matches a pattern itself or through one of its parent directories."""
    parts = rel.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        pattern = pattern.strip("/").replace("**/", "*").replace("/**", "/*")
        if any(fnmatch.fnmatchcase(p, pattern) for p in prefixes):
            return True
    return False


def select(files: Mapping[str, str], include: Iterable[str] = (), exclude: Iterable[str] = ()) -> dict[str, str]:
    include, exclude = list(include), list(exclude)
    return {
        rel: text
        for rel, text in files.items()
        if (not include or _matches(rel, include)) and not (exclude and _matches(rel, exclude))
    }


def read_text(path: str) -> str:
    with open(path, "rb") as handle:
        return handle.read().decode("utf-8", errors="replace")


def read_tree(root: str) -> dict[str, str]:
    """Every file under ``root`` by relative POSIX path; raises FileNotFoundError if absent."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"lstat {root}: no such file or directory")
    files: dict[str, str] = {}
    for folder, _dirs, names in os.walk(root):
        for name in names:
            full = os.path.join(folder, name)
            if os.path.isfile(full):
                files[os.path.relpath(full, root).replace(os.sep, "/")] = read_text(full)
    return files


def write_tree(root: str, files: Mapping[str, str], wipe: bool = False) -> None:
    if wipe and os.path.isdir(root):
        for folder, _dirs, names in os.walk(root, topdown=False):
            for name in names:
                os.remove(os.path.join(folder, name))
    os.makedirs(root, exist_ok=True)
    for rel, text in files.items():
        write_file(os.path.join(root, rel), text)


def write_file(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def subtree(files: Mapping[str, str], path: str) -> dict[str, str]:
    """Files under the relative directory ``path`` ("" or "." for all), relative to it."""
    base = path.strip("/")
    if base in {"", "."}:
        return dict(files)
    return {rel[len(base) + 1 :]: text for rel, text in files.items() if rel.startswith(base + "/")}


def entries(files: Mapping[str, str], path: str = "") -> list[str]:
    """Immediate children of ``path``; directories end with "/" like the real engine's."""
    names: set[str] = set()
    for rel in subtree(files, path):
        head, sep, _ = rel.partition("/")
        names.add(head + sep)
    return sorted(names)
