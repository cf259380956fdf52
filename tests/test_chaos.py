"""`just chaos` in CI: the short profile (a private broker node, Valkey, three worker processes,
every fault once) must account for every task. The accounting itself is checked alone below."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from schemas import ExecutionResult
from tests.chaos.run import account
from tests.support.private_rabbit import RABBIT_BIN

REPOSITORY = Path(__file__).resolve().parents[1]


def result(task_id: str, success: bool = True) -> ExecutionResult:
    return ExecutionResult(task_id=task_id, success=success)


def test_the_accounting_finds_lost_conflicting_and_repeated_results() -> None:
    tally = account(
        ["a", "b", "c", "d", "e"],
        [
            (result("a"), "a:1"),
            (result("a"), "a:1"),  # a copy: recognisable
            (result("b"), "b:1"),
            (result("b", success=False), "b:2"),  # two outcomes
            (result("c"), "c:1"),
            (result("c"), "c:2"),  # run again, same outcome
        ],
        dead={"d"},
    )
    assert tally.lost == ["e"] and tally.conflicting == ["b"]
    assert tally.copies == 1 and tally.reruns == 2


@pytest.mark.slow
@pytest.mark.chaos
async def test_the_short_chaos_run_loses_nothing_and_gives_no_task_two_outcomes() -> None:
    if not (RABBIT_BIN / "rabbitmq-server").exists():
        pytest.skip("needs a local RabbitMQ installation to start a private node")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.chaos",
        "--profile",
        "short",
        cwd=REPOSITORY,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 420)
    table = out.decode()
    assert process.returncode == 0, table + err.decode()[-3000:]
    assert "LOST (no result, no dead letter)                  0" in table
    assert "CONFLICTING (two different outcomes)              0" in table
    assert "every worker consuming after each fault           yes" in table
