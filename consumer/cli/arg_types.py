"""argparse types shared by the operator verbs (errors become exit code 2 with argparse's message)."""

from __future__ import annotations

import argparse
import math
import re
from datetime import UTC, datetime, timedelta


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value):  # nan would time out at once, inf never
        raise argparse.ArgumentTypeError(f"not a finite number of seconds: {text!r}")
    if value <= 0:
        raise argparse.ArgumentTypeError("must be more than 0 seconds")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def since(text: str) -> timedelta | datetime:
    """``90s``, ``30m``, ``1h``, ``7d`` back from now, or an ISO 8601 time (UTC when it names no zone)."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", text.strip())
    if match:
        return timedelta(seconds=float(match[1]) * _UNITS[match[2]])
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a duration (90s, 30m, 1h, 7d) or an ISO time: {text!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
