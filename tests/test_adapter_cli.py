"""``dagger-adapter run FILE``: one command executed in-process through the adapter."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from consumer.cli import main
from tests.dagger_engine import ExecOutcome, TestEngine
from tests.dagger_engine.images import BASE_COMMANDS


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    (tmp_path / "workflows").mkdir()
    (tmp_path / "data").mkdir()
    (tmp_path / "workflows" / "build.yml").write_text(
        "image: alpine\nsteps:\n  - {name: compile, run: [make]}\n  - {name: test, depends_on: [compile], run: [echo, ok]}\n"
    )
    path = tmp_path / "adapter.toml"
    path.write_text(
        f'workflow_directory = "{tmp_path / "workflows"}"\n'
        f'allowed_volume_roots = ["{tmp_path / "data"}"]\n'
        "caching_enabled = false\nmax_retries = 0\nretry_backoff_factor = 0.01\n"
    )
    return path


def run(config_file: Path, *args: str) -> int:
    return main(["--config", str(config_file), "run", *args])


def test_json_result_on_stdout_and_step_progress_on_stderr(
    dagger_engine: TestEngine, config_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dagger_engine.add_image("alpine", commands=[*BASE_COMMANDS, "make"])  # the build workflow runs make
    command = tmp_path / "command.json"
    command.write_text(
        json.dumps(
            {
                "task_id": "cli-1",
                "execution_type": "containerized_workflow",
                "parameters": {"workflow_definition": "build"},
            }
        )
    )
    assert run(config_file, str(command), "--json") == 0
    out, err = capsys.readouterr()
    result = json.loads(out)
    assert result["task_id"] == "cli-1" and result["success"] is True
    assert list(result["result"]["steps"]) == ["compile", "test"]
    assert "step compile: started" in err and "step test: succeeded" in err
    assert [r.args for r in dagger_engine.execs] == [["make"], ["echo", "ok"]]


def test_yaml_from_stdin_with_a_human_summary(
    dagger_engine: TestEngine, config_file: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(
        "sys.stdin",
        io.StringIO(
            "execution_type: dagger_pipeline\nparameters:\n  pipeline:\n"
            "    - from: {address: alpine}\n    - with_exec: {args: [echo, from-stdin]}\n"
        ),
    )
    assert run(config_file, "-", "--task-id", "cli-2") == 0
    out, _ = capsys.readouterr()
    assert "task cli-2 succeeded" in out and "from-stdin" in out


def test_a_failing_step_exits_1_and_says_why(
    dagger_engine: TestEngine, config_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dagger_engine.on_exec(["make"], ExecOutcome(stderr="make: *** [all] Error 2\n", exit_code=2))
    command = tmp_path / "command.yml"
    command.write_text(
        "task_id: cli-3\nexecution_type: containerized_workflow\nparameters: {workflow_definition: build}\n"
    )
    assert run(config_file, str(command)) == 1
    out, err = capsys.readouterr()
    assert "failed (permanent" in out and "exited with code 2" in out
    assert "step compile: failed" in err
    assert "Traceback" not in out + err


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "no such file"),
        ("[1, 2]", "must hold a mapping"),
        ('{"execution_type": "containerized_workflow", "parameters": {"volumes": 3}}', "parameters"),
        ('{"execution_type": "nope"}', "execution_type"),
    ],
)
def test_a_bad_file_exits_2_with_one_line_on_stderr(
    config_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None, expected: str
) -> None:
    command = tmp_path / "bad.json"
    if content is not None:
        command.write_text(content)
    assert run(config_file, str(command)) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert err.startswith("dagger-adapter: error: ") and expected in err


def test_an_unreachable_engine_exits_1_as_transient(
    dagger_engine: TestEngine, config_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dagger_engine.refuse()
    command = tmp_path / "command.json"
    command.write_text('{"execution_type": "containerized_workflow", "parameters": {"workflow_definition": "build"}}')
    assert run(config_file, str(command), "--json") == 1
    out, err = capsys.readouterr()
    result = json.loads(out)
    assert result["error_category"] == "transient" and "engine unreachable" in result["error"]
    assert "Traceback" not in err
