"""Lazy evaluation of a container chain: its files and its last exec.

Results are cached engine-wide by the state's content key (``state.py``), as a real engine
caches operations: a chain evaluated once is not run again, in any session, however it is
asked for again (the same query, ``node(id:)``, another connection). An exec whose exit code
its ``expect`` allows -- with ``expect: ANY`` that includes a non-zero exit -- is a successful
operation and cached like any other; only an exec that *fails* (``ExecFailed``) is not, so
asking again runs it again. Concurrent evaluations of one key wait for the first. A test
busts the cache the way a user does: by changing an input (an env var, a file, the image).
Side effects on cache volumes belong to the run that made them, as on a real engine.
"""

from __future__ import annotations

import contextvars
import dataclasses
import shlex
import threading
from collections.abc import Callable

from tests.dagger_engine.executor import ExecRunner
from tests.dagger_engine.filesystem import CacheStore, ContainerFS, ReadOnlyFileSystem
from tests.dagger_engine.records import ExecRecord, MountInfo
from tests.dagger_engine.server import CLIENT_GONE
from tests.dagger_engine.state import (
    CacheVolumeState,
    ContainerState,
    DirectoryState,
    ExecOp,
    FileState,
    FromOp,
    Mount,
    SecretState,
    WriteOp,
)

# The session's registry credentials (host, username, secret name), for exec records; set
# per request by the engine.
SESSION_AUTHS: contextvars.ContextVar[Callable[[], tuple[tuple[str, str, str], ...]]] = contextvars.ContextVar(
    "session_auths", default=tuple
)


class _Entry:
    def __init__(self) -> None:
        self.changed = threading.Condition()
        self.value: Evaluated | None = None
        # Set when the client of the request computing it went away (see server.CLIENT_GONE).
        self.running: threading.Event | None = None


class OperationCache:
    """Content key -> evaluation, shared by every session of the engine."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        self.hits = 0  # exec evaluations answered from the cache

    def entry(self, key: str) -> _Entry:
        with self._lock:
            return self._entries.setdefault(key, _Entry())

    def hit(self) -> None:
        with self._lock:
            self.hits += 1

    def clear(self) -> None:
        """Forget everything (like pruning a real engine's cache)."""
        with self._lock:
            self._entries.clear()


@dataclasses.dataclass(frozen=True, slots=True)
class ExecResult:
    stdout: str
    stderr: str
    exit_code: int


@dataclasses.dataclass(frozen=True, slots=True)
class Evaluated:
    rootfs: dict[str, str]
    mounts: dict[str, dict[str, str]]  # files of every non-cache mount, by mount path
    last_exec: ExecResult | None


class ExecFailed(Exception):
    """An exec ended in a way its ``expect`` does not allow (the SDK's ExecError)."""

    def __init__(self, cmd: list[str], result: ExecResult, expect: str) -> None:
        if expect == "FAILURE":
            message = f"process {shlex.join(cmd)!r} was expected to fail but exited 0"
        else:
            message = f'process "{shlex.join(cmd)}" did not complete successfully: exit code: {result.exit_code}'
        super().__init__(message)
        self.cmd = cmd
        self.result = result


def _read_only(state: ContainerState) -> frozenset[str]:
    return frozenset(path for path, mount in state.mounts.items() if mount.read_only)


def mount_info(mount: Mount) -> MountInfo:
    return (mount.kind, mount.label)


def _expect_allows(expect: str, exit_code: int) -> bool:
    if expect == "ANY":
        return True
    if expect == "FAILURE":
        return exit_code != 0
    return exit_code == 0


class Evaluator:
    def __init__(
        self,
        runner: ExecRunner,
        caches: CacheStore,
        secret_value: Callable[[SecretState], str],
        operations: OperationCache,
    ) -> None:
        self._runner = runner
        self._caches = caches
        self._secret_value = secret_value
        self.operations = operations

    def evaluate(self, state: ContainerState) -> Evaluated:
        """The state's evaluation: from the cache, or computed once while concurrent askers
        wait. A computation whose client went away (a real engine cancels it) is not kept,
        and a waiter takes over rather than waiting for it."""
        assert state.content_key, "every container state has a content key"
        entry = self.operations.entry(state.content_key)
        mine = CLIENT_GONE.get() or threading.Event()
        with entry.changed:
            while True:
                if entry.value is not None:
                    if isinstance(state.op, ExecOp):
                        self.operations.hit()
                    return entry.value
                if entry.running is None or entry.running.is_set():
                    entry.running = mine
                    break
                entry.changed.wait(0.05)
        value: Evaluated | None = None
        try:
            value = self._compute(state)
            return value
        finally:
            with entry.changed:
                if value is not None and not mine.is_set():
                    entry.value = value
                if entry.running is mine:
                    entry.running = None
                entry.changed.notify_all()

    def view(self, state: ContainerState) -> ContainerFS:
        """A scratch copy of the container's files after its chain ran."""
        done = self.evaluate(state)
        mounts = {path: dict(files) for path, files in done.mounts.items()}
        return ContainerFS(
            dict(done.rootfs), mounts, self._cache_paths(state), self._caches, state.workdir, _read_only(state)
        )

    @staticmethod
    def _cache_paths(state: ContainerState) -> dict[str, str]:
        return {
            path: mount.source.key for path, mount in state.mounts.items() if isinstance(mount.source, CacheVolumeState)
        }

    def _initial_files(self, mount: Mount) -> dict[str, str]:
        source = mount.source
        if isinstance(source, DirectoryState):
            return dict(source.files)
        if isinstance(source, FileState):
            return {"": source.contents}
        if isinstance(source, SecretState):
            return {"": self._secret_value(source)}
        return {}

    def _compute(self, state: ContainerState) -> Evaluated:
        parent = state.parent
        base = self.evaluate(parent) if parent is not None else Evaluated({}, {}, None)
        mounts: dict[str, dict[str, str]] = {}
        for path, mount in state.mounts.items():
            if mount.kind == "cache":
                continue
            inherited = parent is not None and parent.mounts.get(path) is mount and path in base.mounts
            mounts[path] = dict(base.mounts[path]) if inherited else self._initial_files(mount)
        rootfs = dict(state.op.image.files) if isinstance(state.op, FromOp) else dict(base.rootfs)
        fs = ContainerFS(rootfs, mounts, self._cache_paths(state), self._caches, state.workdir, _read_only(state))
        last = None if isinstance(state.op, FromOp) else base.last_exec
        if isinstance(state.op, WriteOp):
            for path, text in state.op.files.items():
                fs.write(path, text)
        elif isinstance(state.op, ExecOp):
            last = self._exec(state, state.op, fs)
        return Evaluated(rootfs, mounts, last)

    def _exec(self, state: ContainerState, op: ExecOp, fs: ContainerFS) -> ExecResult:
        secret_values = {var: self._secret_value(secret) for var, secret in state.secret_env.items()}
        record = ExecRecord(
            image=state.image,
            args=list(op.args),
            env=dict(state.env),
            mounts={path: mount_info(m) for path, m in state.mounts.items()},
            secret_env={var: secret.name for var, secret in state.secret_env.items()},
            workdir=state.workdir,
            user=state.user,
            registry_auths=list(SESSION_AUTHS.get()()),
            stdin=fs.read(op.redirect_stdin) or "" if op.redirect_stdin else op.stdin,
            expect=op.expect,
            image_ref=state.pulled.image_ref if state.pulled is not None else None,
        )
        mounted = [self._secret_value(m.source) for m in state.mounts.values() if isinstance(m.source, SecretState)]
        hidden = [value for value in [*secret_values.values(), *mounted] if value]

        def scrub(text: str) -> str:
            for value in hidden:
                text = text.replace(value, "***")
            return text

        commands = state.pulled.commands if state.pulled is not None else frozenset()
        outcome = self._runner.run(record, fs, {**state.env, **secret_values}, scrub, commands)
        writes = dict(outcome.files)
        if op.redirect_stdout:
            writes[op.redirect_stdout] = outcome.stdout
        if op.redirect_stderr:
            writes[op.redirect_stderr] = outcome.stderr
        for path, text in writes.items():
            try:
                fs.write(path, text)
            except ReadOnlyFileSystem as refused:  # the program's write failed inside the container
                outcome.stderr += f"{refused.path}: Read-only file system\n"
                outcome.exit_code = outcome.exit_code or 1
                record.exit_code, record.stderr = outcome.exit_code, outcome.stderr
        result = ExecResult(outcome.stdout, outcome.stderr, outcome.exit_code)
        if not _expect_allows(op.expect, outcome.exit_code):
            raise ExecFailed(list(op.args), result, op.expect)
        return result
