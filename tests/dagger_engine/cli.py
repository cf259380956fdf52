#!/usr/bin/env python3
"""Stands in for the ``dagger`` CLI (``_EXPERIMENTAL_DAGGER_CLI_BIN``): the SDK runs
``BIN session --label ...``, reads one line ``{"port": N, "session_token": "..."}`` from its
stdout, and ends the session by closing its stdin.

With ``DAGGER_TEST_ENGINE_CONTROL`` (from ``TestEngine.cli_env()``) each run opens a new
session on that running engine, as ``dagger session`` does against a real one, and closes it
when the SDK closes our stdin. Otherwise it starts an engine of its own for the session, with
``DAGGER_TEST_ENGINE_RULES`` (exec rules file, see standalone.py) and
``DAGGER_TEST_ENGINE_RECORD`` (where to write the execs when the session ends).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import sys
import urllib.request
from pathlib import Path

if __package__ in {None, ""}:  # run as a script: make the repository importable
    _REPO = Path(__file__).resolve().parents[2]
    sys.path.insert(0, str(_REPO))
    # The engine's schema comes from the installed dagger-io SDK: when "python3" on PATH is
    # not the project's interpreter, run again under the repository's virtualenv.
    _VENV_PYTHON = _REPO / ".venv" / "bin" / "python"
    if importlib.util.find_spec("dagger") is None and _VENV_PYTHON.exists() and sys.executable != str(_VENV_PYTHON):
        os.execv(str(_VENV_PYTHON), [str(_VENV_PYTHON), __file__, *sys.argv[1:]])

from tests.dagger_engine.engine import CONTROL_ENV, TestEngine
from tests.dagger_engine.standalone import RECORD_ENV, RULES_ENV, dump_records, load_rules


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] != "session":
        print("usage: cli.py session [--label KEY:VALUE ...]", file=sys.stderr)
        return 2
    if os.environ.get(CONTROL_ENV):
        return _session_on_running_engine(os.environ[CONTROL_ENV])
    engine = TestEngine()
    engine.declare_suite_images()
    if os.environ.get(RULES_ENV):
        load_rules(engine, os.environ[RULES_ENV])
    engine.start()
    try:
        sys.stdout.write(json.dumps({"port": engine.port, "session_token": engine.token}) + "\n")
        sys.stdout.flush()
        while sys.stdin.read(65536):  # the session lasts until the SDK closes our stdin
            pass
    finally:
        engine.stop()
        if os.environ.get(RECORD_ENV):
            dump_records(engine, os.environ[RECORD_ENV])
    return 0


def _session_on_running_engine(control: str) -> int:
    """A new session on the engine a test runs (``TestEngine.cli_env``), closed at EOF."""
    url, _, key = control.partition("#")
    headers = {"Authorization": f"Bearer {key}"}
    with urllib.request.urlopen(urllib.request.Request(url, method="POST", headers=headers), timeout=10) as answer:
        line = answer.read().decode()
    token = json.loads(line)["session_token"]
    sys.stdout.write(line.strip() + "\n")
    sys.stdout.flush()
    try:
        while sys.stdin.read(65536):
            pass
    finally:
        closing = urllib.request.Request(f"{url}/{token}", method="DELETE", headers=headers)
        with contextlib.suppress(OSError), urllib.request.urlopen(closing, timeout=10):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
