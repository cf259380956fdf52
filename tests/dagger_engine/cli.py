#!/usr/bin/env python3
"""Stands in for the ``dagger`` CLI (``_EXPERIMENTAL_DAGGER_CLI_BIN``): the SDK runs
``BIN session --label ...``, reads one line ``{"port": N, "session_token": "..."}`` from its
stdout, and ends the session by closing its stdin.

Optional environment: ``DAGGER_TEST_ENGINE_RULES`` (exec rules file, see standalone.py) and
``DAGGER_TEST_ENGINE_RECORD`` (where to write the execs when the session ends).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

if __package__ in {None, ""}:  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.dagger_engine.engine import TestEngine
from tests.dagger_engine.standalone import RECORD_ENV, RULES_ENV, dump_records, load_rules


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] != "session":
        print("usage: cli.py session [--label KEY:VALUE ...]", file=sys.stderr)
        return 2
    engine = TestEngine()
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


if __name__ == "__main__":
    sys.exit(main())
