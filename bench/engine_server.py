"""``python -m bench.engine_server [--exec-delay S]``: the test Dagger engine in a process of its
own, so that the worker's CPU (read from ``/proc``) holds none of the engine's.

Prints ``{"port": N, "session_token": T}`` once listening. Then each line ``stats`` on stdin is
answered with one JSON line: HTTP requests received, execs run and the peak number of execs
running at once. EOF on stdin stops it.
"""

from __future__ import annotations

import argparse
import json
import sys

from tests.dagger_engine import TestEngine
from tests.dagger_engine.records import ExecOutcome

# Commands whose exec the capacity scenario holds for a while at the engine.
SLOW_COMMAND = ["sleep-at-engine"]


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.engine_server")
    parser.add_argument("--exec-delay", type=float, default=0.0, help="seconds an exec of SLOW_COMMAND takes")
    args = parser.parse_args()
    engine = TestEngine().start()
    engine.on_exec(SLOW_COMMAND, ExecOutcome(stdout="slept\n", delay=args.exec_delay))
    try:
        print(json.dumps({"port": engine.port, "session_token": engine.token}), flush=True)
        for line in sys.stdin:
            if line.strip() == "stats":
                stats = {
                    "requests": engine.request_count,
                    "execs": len(engine.execs),
                    "max_concurrent_execs": engine.max_concurrent_execs,
                    "query_errors": len(engine.query_errors),
                }
                print(json.dumps(stats), flush=True)
    finally:
        engine.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
