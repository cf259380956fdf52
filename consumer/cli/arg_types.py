"""argparse types shared by the operator verbs (errors become exit code 2 with argparse's message)."""

from __future__ import annotations

import argparse
import math


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
