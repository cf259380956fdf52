"""What an exec does when no ``on_exec`` rule matches: a few commands, simply emulated.

Which commands exist is the image's business (``images.py``): an image declares its
commands, by default a busybox-like set (``images.BASE_COMMANDS``). An executable the image
does not have fails to start, as runc reports it (``exec: "x": executable file not found in
$PATH``: an engine error, not an exit code, whatever ``expect`` says); inside ``sh -c`` it is
the shell's ``sh: x: not found`` and exit code 127. A command the image has but this module
does not emulate (``python`` in a python image, say) runs and exits 0 silently: give it
behaviour with ``engine.on_exec``. A test's ``on_exec`` rule stands for a program, so a
command a rule answers exists.

Emulated: ``echo``/``printf`` print, ``sh -c``/``bash -c`` run a tiny shell (``;``, ``&&``,
``||``, ``|``, ``> file``, ``>> file``, ``>&2``, ``$VAR``), ``exit N`` exits, ``sleep S``
takes S seconds, ``cat`` prints files of the container (mounted host dirs included), ``env``
prints the environment, ``true``/``false``, ``touch``/``mkdir``. Writes under a ``readOnly``
mount fail with "Read-only file system" (exit code 1).
"""

from __future__ import annotations

import dataclasses
import re
import shlex

from tests.dagger_engine.filesystem import ContainerFS, ReadOnlyFileSystem, normalize
from tests.dagger_engine.records import ExecOutcome

_VAR = re.compile(r"\$(?:\{(\w+)\}|(\w+))")
_OPERATORS = {";", "&&", "||", "|"}
# What a shell runs without looking for an executable (only inside ``sh -c``).
_SHELL_BUILTINS = frozenset({"exit", "cd", "export", "set", ":", "true", "false", "echo", "printf", "test", "["})


def expand(text: str, env: dict[str, str]) -> str:
    """``$VAR`` / ``${VAR}`` substitution, like the engine's ``expand: true``."""
    return _VAR.sub(lambda m: env.get(m.group(1) or m.group(2), ""), text)


class CommandNotFound(Exception):
    """The image has no such executable: the process cannot start."""

    def __init__(self, name: str) -> None:
        super().__init__(f'exec: "{name}": executable file not found in $PATH')
        self.name = name


@dataclasses.dataclass
class _Run:
    fs: ContainerFS
    env: dict[str, str]
    commands: frozenset[str] = frozenset()
    stdout: str = ""
    stderr: str = ""
    delay: float = 0.0
    files: dict[str, str] = dataclasses.field(default_factory=dict)

    def write_file(self, path: str, text: str, append: bool = False) -> None:
        full = normalize(path, self.fs.workdir)
        if append:
            text = (self.files.get(full) or self.fs.read(full) or "") + text
        self.files[full] = text
        self.fs.write(full, text)

    def read_file(self, path: str) -> str | None:
        full = normalize(path, self.fs.workdir)
        if full in self.files:
            return self.files[full]
        return self.fs.read(full)


def run_default(
    args: list[str], fs: ContainerFS, env: dict[str, str], stdin: str = "", commands: frozenset[str] = frozenset()
) -> ExecOutcome:
    """Emulate ``args`` against a scratch copy of the container's files; ``commands`` are the
    image's. Raises CommandNotFound when the image lacks ``args[0]``."""
    if args and _name(args[0]) not in commands:
        raise CommandNotFound(args[0])
    run = _Run(fs=fs, env=dict(env), commands=commands)
    code = _command(run, args, stdin)
    return ExecOutcome(stdout=run.stdout, stderr=run.stderr, exit_code=code, delay=run.delay, files=run.files)


class _Exit(Exception):
    def __init__(self, code: int) -> None:
        self.code = code


def _command(run: _Run, args: list[str], stdin: str) -> int:
    try:
        out, code = _simple(run, args, stdin)
    except _Exit as stop:
        return stop.code
    run.stdout += out
    return code


def _simple(run: _Run, args: list[str], stdin: str) -> tuple[str, int]:
    """Run one command; return what it printed on stdout and its exit code."""
    if not args:
        return "", 0
    name, rest = _name(args[0]), args[1:]
    if name not in run.commands and name not in _SHELL_BUILTINS:
        run.stderr += f"sh: {args[0]}: not found\n"
        return "", 127
    if name in {"sh", "bash", "ash", "dash"} and len(rest) >= 2 and rest[0] in {"-c", "-ec", "-lc", "-euc"}:
        return _script(run, rest[1])
    if name == "echo":
        newline = True
        if rest and rest[0] == "-n":
            newline, rest = False, rest[1:]
        return " ".join(rest) + ("\n" if newline else ""), 0
    if name == "printf":
        if not rest:
            return "", 0
        text = rest[0].replace("\\n", "\n").replace("\\t", "\t")
        try:
            return text % tuple(rest[1:]) if rest[1:] else text, 0
        except TypeError:
            return text, 0
    if name == "exit":
        raise _Exit(int(rest[0]) if rest else 0)
    if name == "sleep":
        run.delay += float(rest[0]) if rest else 0.0
        return "", 0
    if name == "cat":
        if not rest:
            return stdin, 0
        out, code = "", 0
        for path in rest:
            content = run.read_file(path)
            if content is None:
                run.stderr += f"cat: {path}: No such file or directory\n"
                code = 1
            else:
                out += content
        return out, code
    if name == "env":
        return "".join(f"{k}={v}\n" for k, v in run.env.items()), 0
    if name == "false":
        return "", 1
    if name in {"touch", "mkdir"}:
        for path in rest:
            if path.startswith("-"):
                continue
            try:
                run.fs.check_writable(normalize(path, run.fs.workdir))
                if name == "touch" and run.read_file(path) is None:
                    run.write_file(path, "")
            except ReadOnlyFileSystem:
                run.stderr += f"{name}: {path}: Read-only file system\n"
                return "", 1
        return "", 0
    return "", 0


def _name(executable: str) -> str:
    return executable.rsplit("/", 1)[-1]


def _script(run: _Run, script: str) -> tuple[str, int]:
    """A tiny shell: enough for ``sh -c "echo hi > /out/x && exit 3"`` style commands."""
    script = expand(script, run.env).replace("\n", " ; ")
    lexer = shlex.shlex(script, posix=True, punctuation_chars=";&|<>")
    lexer.whitespace_split = True
    lexer.whitespace = " \t\r"
    tokens = list(lexer)
    code, out_total = 0, ""
    pending: list[str] = []
    piped: str | None = None
    connector = ";"

    def flush(next_connector: str) -> None:
        nonlocal code, out_total, piped, connector
        should_run = connector in {";", "|"} or (connector == "&&") == (code == 0)
        if pending and should_run:
            out, code = _with_redirects(run, pending, piped or "")
            if next_connector == "|":
                piped = out
            else:
                piped = None
                out_total += out
        pending.clear()
        connector = next_connector

    try:
        for token in tokens:
            if token in _OPERATORS:
                flush(token)
            else:
                pending.append(token)
        flush(";")
    except _Exit as stop:
        run.stdout += out_total
        raise _Exit(stop.code) from None
    return out_total, code


def _with_redirects(run: _Run, words: list[str], stdin: str) -> tuple[str, int]:
    args: list[str] = []
    target: tuple[str, bool] | None = None
    to_stderr = False
    i = 0
    while i < len(words):
        word = words[i]
        if word in {">", ">>"} and i + 1 < len(words):
            target = (words[i + 1], word == ">>")
            i += 2
            continue
        if word == ">&" and i + 1 < len(words):
            to_stderr = to_stderr or words[i + 1] == "2"
            i += 2
            continue
        args.append(word)
        i += 1
    if target is not None:
        try:
            run.fs.check_writable(normalize(target[0], run.fs.workdir))
        except ReadOnlyFileSystem:
            run.stderr += f"sh: can't create {target[0]}: Read-only file system\n"
            return "", 1
    out, code = _simple(run, args, stdin)
    if target is not None:
        run.write_file(target[0], out, append=target[1])
        return "", code
    if to_stderr:
        run.stderr += out
        return "", code
    return out, code
