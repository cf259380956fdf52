"""A long pipeline is built in linear memory and never blocks the event loop for long (issue 8:
"a pipeline of 100,000 operations is built with memory that grows with the square of its
length, blocks the event loop for minutes; 10,000 operations block it for 13 s").

On main a chain of a few hundred operations did not even run: the SDK nests the query as deep
as the chain and building it exceeded Python's recursion limit."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.abuse.conftest import LoopLag
from tests.test_adapter_support import adapter_config, pipeline_command, started, workflow_command

ROOT = Path(__file__).resolve().parent.parent.parent

LONG = 1000  # the default max_pipeline_operations: the longest chain a command may send


@pytest.fixture
def engine_process(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The test engine in a process of its own, as a real engine is: what this process allocates
    and how long its event loop stalls are then the worker's alone."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.dagger_engine"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        ready = json.loads(proc.stdout.readline())
        monkeypatch.setenv("DAGGER_SESSION_PORT", str(ready["port"]))
        monkeypatch.setenv("DAGGER_SESSION_TOKEN", ready["session_token"])
        yield
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def chain(length: int) -> list[dict[str, dict[str, object]]]:
    ops: list[dict[str, dict[str, object]]] = [{"from": {"address": "alpine"}}]
    ops += [{"with_env_variable": {"name": f"V{i}", "value": f"value {i}"}} for i in range(length - 2)]
    ops.append({"with_exec": {"args": ["sh", "-c", "echo $V0 $V" + str(length - 3)]}})
    return ops


async def run_measured(tmp_path: Path, length: int, *, trace: bool) -> tuple[float, float, dict[str, Any]]:
    """(peak traced MiB, worst event-loop lag s, result) of one pipeline of ``length``
    operations. Memory and lag are measured in separate runs: tracing slows every allocation,
    the thread's work included, and would inflate the lag."""
    # A deadline for a loaded machine: tracing slows every allocation several times over.
    async with started(adapter_config(tmp_path, timeout_seconds=300)) as adapter:
        await adapter.probe()  # connect first: the connection's own allocations are not the chain's
        if trace:
            tracemalloc.start()
        try:
            with LoopLag() as lag:
                result = await adapter.execute(pipeline_command(f"long-{length}", pipeline=chain(length)))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert result.success, result.error
    assert isinstance(result.result, dict)
    return peak / 2**20, lag.worst, result.result


async def test_a_pipeline_of_the_longest_allowed_length_runs_in_linear_memory(
    engine_process: None, tmp_path: Path
) -> None:
    short_peak, _, _ = await run_measured(tmp_path, LONG // 4, trace=True)
    peak, _, result = await run_measured(tmp_path, LONG, trace=True)
    assert result["stdout"] == f"value 0 value {LONG - 3}\n"  # every operation applied, in order
    # Generous bounds; on main this chain failed outright (RecursionError building the query).
    assert peak < 32, f"peak {peak:.1f} MiB"
    assert peak < 8 * short_peak, f"4x the operations took {peak / short_peak:.1f}x the memory: not linear"


async def test_a_pipeline_of_the_longest_allowed_length_does_not_block_the_event_loop(
    engine_process: None, tmp_path: Path
) -> None:
    _, worst_lag, result = await run_measured(tmp_path, LONG, trace=False)
    assert result["stdout"] == f"value 0 value {LONG - 3}\n"
    # Building the chain costs the SDK 1-5 ms per operation: on the loop, that was 1.4 s and
    # more here (13 s for 10,000 operations). In the builder's thread, what is left on the loop
    # is the SDK serializing one chunk's query (tens of ms); the bound leaves room for a
    # machine so loaded that the loop waits for a CPU.
    assert worst_lag < 1.0, f"the event loop was blocked for {worst_lag:.2f} s"


async def test_a_workflow_step_with_a_large_environment_is_built_in_chunks_too(
    engine_process: None, tmp_path: Path
) -> None:
    # A workflow file's environment is not bounded by the message limits, and a step's chain
    # is one call per variable: 600 calls would nest a query beyond the recursion limit.
    workflow_env = {f"W{i}": f"w{i}" for i in range(400)}
    command_env = {f"C{i}": f"c{i}" for i in range(200)}
    async with started(adapter_config(tmp_path)) as adapter:
        result = await adapter.execute(
            workflow_command(
                workflow_definition={
                    "image": "alpine",
                    "environment": workflow_env,
                    "steps": [{"name": "s", "run": ["sh", "-c", "echo $W0 $W399 $C199"]}],
                },
                environment=command_env,
            )
        )
    assert result.success, result.error
    assert isinstance(result.result, dict)
    assert result.result["steps"]["s"]["stdout"] == "w0 w399 c199\n"
