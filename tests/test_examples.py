"""The example command files in examples/ are valid commands, and run as documented."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from consumer.cli import main
from consumer.client.command_file import read_command
from schemas import decode_command, encode
from tests.dagger_engine import TestEngine

ROOT = Path(__file__).parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.*"))


def test_there_are_examples() -> None:
    assert {p.name for p in EXAMPLES} >= {"hello-pipeline.json", "data-processing.yaml", "build-and-test.yaml"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_is_a_valid_command(path: Path) -> None:
    command = read_command(str(path))
    decode_command(encode(command))  # the worker's own validation, parameters included


def _config(tmp_path: Path) -> Path:
    config = tmp_path / "adapter.toml"
    config.write_text(f'workflow_directory = "{ROOT / "workflows"}"\ncaching_enabled = false\nmax_retries = 0\n')
    return config


def test_hello_pipeline_runs_and_prints_its_greeting(
    dagger_engine: TestEngine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["--config", str(_config(tmp_path)), "run", str(ROOT / "examples" / "hello-pipeline.json"), "--json"])
    result = json.loads(capsys.readouterr().out)
    assert code == 0, result
    assert result["result"]["stdout"] == "hello from Dagger\n"
    (execution,) = dagger_engine.execs
    assert execution.image == "alpine:3.20" and execution.env["GREETING"] == "hello from Dagger"


def test_build_and_test_runs_its_checks_side_by_side_then_reports(
    dagger_engine: TestEngine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["--config", str(_config(tmp_path)), "run", str(ROOT / "examples" / "build-and-test.yaml"), "--json"])
    result = json.loads(capsys.readouterr().out)
    assert code == 0, result
    steps = result["result"]["steps"]
    assert set(steps) == {"prepare", "compile", "smoke-test", "report"}
    assert steps["report"]["stdout"] == "all checks passed\n"
    first, *checks, last = (e.args for e in dagger_engine.execs)
    assert first == ["python", "--version"]  # prepare, before everything that depends on it
    assert sorted(a[1] for a in checks) == ["-c", "-m"]  # compile and smoke-test, in either order
    assert last[:2] == ["sh", "-c"]  # report, after both checks
