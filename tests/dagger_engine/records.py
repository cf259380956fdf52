"""What a test sees of the execs the engine ran, and what a test tells it to answer."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

# A mount as a test sees it: ("host", host path) | ("cache", volume key) | ("directory", "")
# for a directory not taken from the host | ("file", host path or "") | ("secret", secret name).
MountInfo = tuple[str, str]


@dataclasses.dataclass(slots=True)
class ExecOutcome:
    """How an exec ends. ``files`` are written into the container after it ran (paths are
    container paths; relative ones are resolved against the workdir)."""

    stdout: str = ""
    stderr: str = ""
    exit_code: int = 0
    delay: float = 0.0
    files: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(slots=True, eq=False)
class ExecRecord:
    """One exec, appended to ``engine.execs`` when it starts; ``exit_code`` and
    ``finished_at`` are set when it ends. Secrets appear by name only, never by value."""

    image: str | None
    args: list[str]
    env: dict[str, str]
    mounts: dict[str, MountInfo]
    secret_env: dict[str, str]
    workdir: str
    user: str
    registry_auths: list[tuple[str, str, str]]
    stdin: str = ""
    expect: str = "SUCCESS"
    image_ref: str | None = None  # what ``image`` resolved to: host/repo:tag@sha256:...
    started_at: float = 0.0
    finished_at: float | None = None
    exit_code: int | None = None
    stdout: str = ""
    stderr: str = ""


ExecMatch = Callable[[ExecRecord], bool] | list[str]
ExecAnswer = ExecOutcome | Callable[[ExecRecord], ExecOutcome]


@dataclasses.dataclass(slots=True, eq=False)
class ExecRule:
    """An ``on_exec`` registration; ``remaining`` counts down when limited by ``times``."""

    match: ExecMatch
    outcome: ExecAnswer
    remaining: int | None = None

    def matches(self, record: ExecRecord) -> bool:
        if self.remaining is not None and self.remaining <= 0:
            return False
        return exec_matches(self.match, record)


def exec_matches(match: ExecMatch, record: ExecRecord) -> bool:
    """``match`` is a predicate on the record, or a prefix of its args."""
    if callable(match):
        return bool(match(record))
    prefix = list(match)
    return record.args[: len(prefix)] == prefix


@dataclasses.dataclass(slots=True, frozen=True)
class QueryProblem:
    """A query the real engine's schema would reject. ``query`` has its string values
    replaced by "***" because queries carry secrets inline."""

    messages: tuple[str, ...]
    query: str
