#!/usr/bin/env python3
"""Stands in for the ``dagger`` CLI's ``session`` command against a test engine running in the
test's own process, so that the worker opens *separate* sessions of one engine (as it does with
the real CLI) and the engine's session-scoped state (registry credentials, host snapshots,
served modules) can be seen.

Each ``session`` invocation takes one of the session tokens the test opened beforehand from the
JSON file named by ``DAGGER_ADAPTER_TEST_SESSIONS`` (``{"port": N, "tokens": [...]}``), prints
the line the SDK reads and holds the session until the SDK closes stdin. Only the standard
library: the SDK runs this as a plain executable.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys


def main() -> int:
    if sys.argv[1:2] != ["session"]:
        print("usage: session_cli.py session [--label KEY:VALUE ...]", file=sys.stderr)
        return 2
    with open(os.environ["DAGGER_ADAPTER_TEST_SESSIONS"], "r+", encoding="utf-8") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        pool = json.load(fh)
        if not pool["tokens"]:
            print("no session left in the test's pool", file=sys.stderr)
            return 1
        token = pool["tokens"].pop(0)
        fh.seek(0)
        fh.truncate()
        json.dump(pool, fh)
    sys.stdout.write(json.dumps({"port": pool["port"], "session_token": token}) + "\n")
    sys.stdout.flush()
    while sys.stdin.read(65536):  # the session lasts until the SDK closes our stdin
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
