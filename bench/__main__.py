"""``python -m bench [overhead] [codec] [--quick] [--json]``: the benchmarks, each figure a ratio
against a baseline measured in the same run (``bench/README.md``).

- ``overhead`` (default): our worker against a raw aio-pika loop on the same broker: cache hit,
  trivial execution through the SDK, idle round trip, and capacity (1,000 executions of 5 s in
  one worker). Needs RabbitMQ (``DAGGER_ADAPTER_AMQP_URL``, default 127.0.0.1:5672, loopback
  only); starts its own Valkey (or uses ``DAGGER_ADAPTER_VALKEY_URL``) and test engine. About
  2-4 minutes on 2 cores; ``--quick`` is a smaller run of the same scenarios.
- ``codec``: decoding and validating a command with msgspec against a bare ``json.loads``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench import codec

ALL = ("overhead", "codec")


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("which", nargs="*", help=f"benchmarks: {', '.join(ALL)} or all (default: overhead)")
    parser.add_argument("--json", action="store_true", help="figures as JSON on stdout")
    parser.add_argument("--quick", action="store_true", help="fewer commands (a look, not a record)")
    parser.add_argument("--commands", type=positive, default=None, help="overhead: commands of the raw loop (2000)")
    parser.add_argument("--capacity", type=positive, default=None, help="overhead: executions held at once (1000)")
    parser.add_argument(
        "--skip", action="append", default=[], choices=("cache", "trivial", "capacity"), help="overhead: skip one"
    )
    parser.add_argument("--profile", type=Path, default=None, help="overhead: py-spy profiles of the worker into DIR")
    args = parser.parse_args()
    unknown = sorted(set(args.which) - {*ALL, "all"})
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)} (choose from {', '.join(ALL)}, all)")
    which = ALL if "all" in args.which else (args.which or ("overhead",))
    results: dict[str, dict[str, dict[str, float]] | dict[str, float]] = {}
    text: list[str] = []
    if "overhead" in which:
        from bench import overhead
        from bench.services import Unavailable

        sizes = {"n": 400, "trivial_n": 60, "capacity": 200} if args.quick else {}
        if args.commands:
            sizes["n"] = args.commands
        if args.capacity:
            sizes["capacity"] = args.capacity
        try:
            figures = overhead.run(**sizes, skip=args.skip, profile_dir=args.profile)
        except Unavailable as exc:
            sys.exit(f"bench: {exc}")
        results["overhead"] = figures
        text.append("[overhead] ratios against a raw aio-pika loop in this run\n" + overhead.render(figures))
    if "codec" in which:
        figures_codec = codec.run()
        results["codec"] = figures_codec
        width = max(map(len, figures_codec))
        text.append("[codec]\n" + "\n".join(f"  {k:{width}} {v:10.3f}" for k, v in figures_codec.items()))
    print(json.dumps(results, indent=2) if args.json else "\n\n".join(text))


if __name__ == "__main__":
    main()
