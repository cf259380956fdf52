"""``python -m bench [codec|worker ...]``: print each benchmark's figures and its ratio to the
baseline measured in the same run.

- ``codec`` (default): per-call times; its ratios are time ratios (below 1 means faster than the
  baseline). Takes a few seconds, needs nothing.
- ``worker`` (on request only: about 80 s at its defaults on 2 cores, and it needs RabbitMQ):
  end-to-end commands/s through the real worker against a bare consumer on the same broker and
  engine (``bench/worker.py``); its ``ratio`` is a throughput ratio (above 1 means faster than the
  baseline). RabbitMQ from ``DAGGER_ADAPTER_AMQP_URL`` (default 127.0.0.1:5672), loopback only.
  ``python -m bench worker --commands 100 --rounds 1`` is a quick look; ``all`` runs everything.
"""

from __future__ import annotations

import argparse
import json
import sys

from bench import codec

ALL = ("codec", "worker")
DEFAULT = ("codec",)


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument(
        "which", nargs="*", help=f"benchmarks to run: {', '.join(ALL)} or all (default: {', '.join(DEFAULT)})"
    )
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--commands", type=positive, default=None, help="worker: commands per round (default 300)")
    parser.add_argument("--concurrency", type=positive, default=None, help="worker: prefetch = concurrency (default 8)")
    parser.add_argument("--rounds", type=positive, default=None, help="worker: timed rounds per side (default 2)")
    args = parser.parse_args()
    unknown = sorted(set(args.which) - {*ALL, "all"})
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)} (choose from {', '.join(ALL)}, all)")
    which = ALL if "all" in args.which else (args.which or DEFAULT)
    results: dict[str, dict[str, float]] = {}
    if "codec" in which:
        results["codec"] = codec.run()
    if "worker" in which:
        from bench import worker
        from bench.services import Unavailable

        options = {"n": args.commands, "concurrency": args.concurrency, "rounds": args.rounds}
        try:
            results["worker"] = worker.run(**{k: v for k, v in options.items() if v is not None})
        except Unavailable as exc:
            sys.exit(f"bench worker: {exc}")
    if args.json:
        print(json.dumps(results, indent=2))
        return
    for name, figures in results.items():
        print(f"[{name}]")
        width = max(map(len, figures))
        for key, value in figures.items():
            print(f"  {key:{width}} {value:10.3f}")


if __name__ == "__main__":
    main()
