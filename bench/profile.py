"""``python -m bench.profile FILE [--top N] [--areas]``: summarise py-spy's collapsed stacks
(``--format raw``) as the share of samples each function is on the stack for (inclusive) and at
the top of (self), or (``--areas``) the worker's busy samples by what it was doing, so a profile
can be read, and pasted into the README, as text."""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path


def summarise(path: Path, top: int) -> str:
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        samples = int(count)
        total += samples
        frames = [_short(frame) for frame in stack.split(";")]
        for frame in set(frames):
            inclusive[frame] += samples
        own[frames[-1]] += samples
    lines = [f"{total} samples; % inclusive / % self"]
    for frame, samples in inclusive.most_common(top):
        lines.append(f"{100 * samples / total:5.1f} {100 * own[frame] / total:5.1f}  {frame}")
    return "\n".join(lines)


# What the worker was doing, by a frame on the stack; the first area that matches wins.
AREAS: list[tuple[str, tuple[str, ...]]] = [
    ("image digest look-up (an engine request)", ("RunContext.resolve_image", "Coalescer._send")),
    (
        "the exec's engine request (the SDK builds the query; gql, httpx send it)",
        ("EngineSession.exec_output", "EngineSession._execute", "Context.execute (dagger"),
    ),
    ("building the pipeline (SDK objects)", ("PipelinePlan.run", "_run_chain")),
    ("status events and heartbeats", ("Worker._status",)),
    ("result, reply, dead letter (publishes with confirms)", ("Worker._publish_outcome", "Worker._publish_result")),
    ("ledger (Valkey)", ("Ledger.", "Lease.")),
    ("result cache (Valkey)", ("CacheManager.",)),
    ("ack", ("Worker._settle",)),
    ("decoding and checking the command", ("decode_command", "fingerprint (", "Delivery.of")),
    ("AMQP connection I/O (aiormq)", ("Connection.__reader", "Connection.__writer", "Channel._reader")),
    ("Valkey I/O (writes of the ledger's and the cache's commands)", ("valkey/",)),
    ("the adapter around a run (its context, spans, retry, breaker)", ("DaggerAdapter.execute",)),
    ("handling a command, between the steps above", ("Worker._handle",)),
]
IDLE = ("_worker (concurrent/futures/thread.py)", "EpollSelector.select (selectors.py)")


def areas(path: Path) -> str:
    shares: Counter[str] = Counter()
    busy = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [_short(frame) for frame in stack.split(";")]
        if frames[-1] in IDLE:
            continue
        busy += int(count)
        area = next((name for name, marks in AREAS if any(m in f for m in marks for f in frames)), None)
        shares[area or "the event loop and the rest (other tasks, callbacks)"] += int(count)
    lines = [f"{busy} busy samples"]
    lines += [f"{100 * n / busy:5.1f} %  {name}" for name, n in shares.most_common()]
    return "\n".join(lines)


def _short(frame: str) -> str:
    """``func (path/to/site-packages/pkg/mod.py:12)`` -> ``func (pkg/mod.py)``."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "lib/python3.11/", "/work/"):
        if marker in where:
            where = where.split(marker, 1)[1]
    return f"{name} ({where})"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile")
    parser.add_argument("file", type=Path)
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--areas", action="store_true", help="busy samples by what the worker was doing")
    args = parser.parse_args()
    print(areas(args.file) if args.areas else summarise(args.file, args.top))


if __name__ == "__main__":
    main()
