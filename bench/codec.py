"""Decoding and validating a command at the edge, against the plainest possible baseline.

Baseline: ``json.loads`` of the same bytes (no validation at all). Ours: ``decode_command``, which
also validates every field and the typed parameters, and ``encode`` of the result.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from schemas import ErrorCategory, ExecutionResult, decode_command, encode

COMMAND = json.dumps(
    {
        "task_id": "bench-0001",
        "execution_type": "containerized_workflow",
        "parameters": {
            "container_image": "python:3.12-slim",
            "workflow_definition": "data_processing.yml",
            "inputs": {"data_file": "data.csv", "output_file": "results.json"},
            "volumes": [{"source": "./data", "target": "/data"}],
            "environment": {"DEBUG": "true"},
        },
        "timeout_seconds": 600,
        "submitted_at": "2026-11-26T08:00:00Z",
    }
).encode()

RESULT = ExecutionResult(
    task_id="bench-0001", success=False, error="step exited 2", error_category=ErrorCategory.PERMANENT, attempts=2
)
RESULT_DICT = {f: getattr(RESULT, f) for f in RESULT.__struct_fields__}


def best_of(fn: Callable[[], object], n: int, rounds: int = 5) -> float:
    """Best per-call time over ``rounds`` runs of ``n`` calls (the least disturbed by noise)."""
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - start) / n)
    return best


def run(n: int = 20_000) -> dict[str, float]:
    baseline_decode = best_of(lambda: json.loads(COMMAND), n)
    ours_decode = best_of(lambda: decode_command(COMMAND), n)
    baseline_encode = best_of(lambda: json.dumps(RESULT_DICT, default=str).encode(), n)
    ours_encode = best_of(lambda: encode(RESULT), n)
    return {
        "decode_us": ours_decode * 1e6,
        "decode_baseline_us": baseline_decode * 1e6,
        "decode_ratio": ours_decode / baseline_decode,
        "encode_us": ours_encode * 1e6,
        "encode_baseline_us": baseline_encode * 1e6,
        "encode_ratio": ours_encode / baseline_encode,
    }
