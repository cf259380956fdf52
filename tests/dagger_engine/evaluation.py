"""Lazy evaluation of a container chain: its files and its last exec, memoized per state."""

from __future__ import annotations

import dataclasses
import shlex
from collections.abc import Callable

from tests.dagger_engine.executor import ExecRunner
from tests.dagger_engine.filesystem import CacheStore, ContainerFS
from tests.dagger_engine.records import ExecRecord, MountInfo
from tests.dagger_engine.state import (
    CacheVolumeState,
    ContainerState,
    DirectoryState,
    ExecOp,
    FileState,
    Mount,
    SecretState,
    WriteOp,
)


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


def mount_info(mount: Mount) -> MountInfo:
    return (mount.kind, mount.label)


def _expect_allows(expect: str, exit_code: int) -> bool:
    if expect == "ANY":
        return True
    if expect == "FAILURE":
        return exit_code != 0
    return exit_code == 0


class Evaluator:
    def __init__(self, runner: ExecRunner, caches: CacheStore, secret_value: Callable[[SecretState], str]) -> None:
        self._runner = runner
        self._caches = caches
        self._secret_value = secret_value

    def evaluate(self, state: ContainerState) -> Evaluated:
        with state.memo.lock:
            if state.memo.value is None:
                state.memo.value = self._compute(state)
            result: Evaluated = state.memo.value
            return result

    def view(self, state: ContainerState) -> ContainerFS:
        """A scratch copy of the container's files after its chain ran."""
        done = self.evaluate(state)
        mounts = {path: dict(files) for path, files in done.mounts.items()}
        return ContainerFS(dict(done.rootfs), mounts, self._cache_paths(state), self._caches, state.workdir)

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
        rootfs = dict(base.rootfs)
        fs = ContainerFS(rootfs, mounts, self._cache_paths(state), self._caches, state.workdir)
        last = base.last_exec
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
            registry_auths=[(address, user, secret.name) for address, user, secret in state.registry_auths],
            stdin=fs.read(op.redirect_stdin) or "" if op.redirect_stdin else op.stdin,
            expect=op.expect,
        )
        mounted = [self._secret_value(m.source) for m in state.mounts.values() if isinstance(m.source, SecretState)]
        hidden = [value for value in [*secret_values.values(), *mounted] if value]

        def scrub(text: str) -> str:
            for value in hidden:
                text = text.replace(value, "***")
            return text

        outcome = self._runner.run(record, fs, {**state.env, **secret_values}, scrub)
        for path, text in outcome.files.items():
            fs.write(path, text)
        if op.redirect_stdout:
            fs.write(op.redirect_stdout, outcome.stdout)
        if op.redirect_stderr:
            fs.write(op.redirect_stderr, outcome.stderr)
        result = ExecResult(outcome.stdout, outcome.stderr, outcome.exit_code)
        if not _expect_allows(op.expect, outcome.exit_code):
            raise ExecFailed(list(op.args), result, op.expect)
        return result
