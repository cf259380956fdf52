"""The worker's health file: its latest heartbeat on local disk, for container probes.

A liveness probe asks "is the worker's event loop still turning?" -- a fresh file says yes,
even while the worker is paused for a missing engine (restarting it would not help). A
readiness probe also wants ``ready``: consuming, circuit closed, not draining.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import msgspec

from schemas import WorkerHeartbeat, encode


def write_health_file(path: str | os.PathLike[str], beat: WorkerHeartbeat) -> None:
    """Replace the file atomically, so a probe never reads half of it."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(encode(beat))
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class Health:
    heartbeat: WorkerHeartbeat
    age_seconds: float


class Unhealthy(Exception):
    """Why a probe fails; one line."""


def read_health_file(path: str | os.PathLike[str], *, max_age_seconds: float, require_ready: bool) -> Health:
    try:
        raw = Path(path).read_bytes()
        age = time.time() - Path(path).stat().st_mtime
    except FileNotFoundError:
        raise Unhealthy(f"no health file at {path} (is the worker running with this health_file?)") from None
    except OSError as exc:
        raise Unhealthy(f"cannot read {path}: {exc.strerror}") from None
    try:
        beat = msgspec.json.decode(raw, type=WorkerHeartbeat)
    except msgspec.DecodeError as exc:
        raise Unhealthy(f"{path} is not a worker heartbeat: {exc}") from None
    if age > max_age_seconds:
        raise Unhealthy(f"worker {beat.worker_id}: no heartbeat for {age:.0f} s (at most {max_age_seconds:g} s)")
    if require_ready and not beat.ready:
        raise Unhealthy(f"worker {beat.worker_id} is alive but not ready (circuit {beat.circuit or 'unknown'})")
    return Health(beat, age)
