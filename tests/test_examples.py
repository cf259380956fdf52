"""The example command files in examples/ are valid commands, and run as documented."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from consumer.cli import main
from consumer.client.command_file import read_command
from schemas import decode_command, encode
from tests.dagger_engine import ExecOutcome, TestEngine

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


def test_data_processing_runs_the_example_workflow_on_the_example_data(
    dagger_engine: TestEngine, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The test engine has no Python: it stands in for the two python steps.
    totals = {"rows": 3, "columns": ["region", "units", "revenue"], "totals": {"units": 39.0, "revenue": 1070.75}}

    def python_step(marker: str):  # type: ignore[no-untyped-def]
        return lambda record: record.args[:2] == ["python", "-c"] and marker in record.args[2]

    dagger_engine.on_exec(python_step("csv.DictReader"), ExecOutcome(files={"/work/results.json": json.dumps(totals)}))
    dagger_engine.on_exec(python_step("json.load"), ExecOutcome(stdout=f"{totals}\n"))
    monkeypatch.chdir(ROOT)  # as the file says: run from the repository root

    code = main(["--config", str(_config(tmp_path)), "run", "examples/data-processing.yaml", "--json"])
    result = json.loads(capsys.readouterr().out)
    assert code == 0, result
    assert json.loads(result["result"]["outputs"]["summarize"]["results"]) == totals
    validate = next(e for e in dagger_engine.execs if e.args[:2] == ["sh", "-c"])
    assert validate.mounts["/data"] == ("host", str(ROOT / "examples" / "data"))
    assert validate.mounts["/work"] == ("directory", "")  # the workspace: where process leaves results.json
    assert not (ROOT / "examples" / "data" / "results.json").exists()  # the volume is read-only
