"""``python -m bench [codec|worker ...]``: print each benchmark's figures and its ratio to the
baseline measured in the same run (a ratio below 1 means faster than the baseline)."""

from __future__ import annotations

import argparse
import json

from bench import codec


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("which", nargs="*", help="benchmarks to run: codec (default: all)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    which = args.which or ["codec"]
    results = {}
    if "codec" in which:
        results["codec"] = codec.run()
    if args.json:
        print(json.dumps(results, indent=2))
        return
    for name, figures in results.items():
        print(f"[{name}]")
        for key, value in figures.items():
            print(f"  {key:24} {value:10.3f}")


if __name__ == "__main__":
    main()
