"""``python -m tests.dagger_engine --port N --token T [--rules FILE] [--record FILE]``: an engine
in its own process, until SIGINT/SIGTERM. Prints ``{"port": N, "session_token": T}`` once
listening, so a parent can wait for that line."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading

from tests.dagger_engine.engine import TestEngine
from tests.dagger_engine.standalone import dump_records, load_rules


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.dagger_engine", description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--token", default=None)
    parser.add_argument("--rules", help="JSON file of exec rules (see tests/dagger_engine/standalone.py)")
    parser.add_argument("--record", help="write execs/exports here on exit")
    args = parser.parse_args(argv)
    engine = TestEngine(port=args.port, token=args.token)
    engine.declare_suite_images()
    if args.rules:
        load_rules(engine, args.rules)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    engine.start()
    try:
        print(json.dumps({"port": engine.port, "session_token": engine.token}), flush=True)
        done.wait()
    finally:
        engine.stop()
        if args.record:
            dump_records(engine, args.record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
