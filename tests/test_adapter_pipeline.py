"""``dagger_pipeline`` end to end: container chains given as data and module function calls,
through the real SDK against the test engine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from schemas import ErrorCategory
from tests.dagger_engine import ExecOutcome, TestEngine
from tests.test_adapter_support import adapter_config, pipeline_command, started


async def test_a_chain_is_applied_in_order_with_objects_converted(dagger_engine: TestEngine, tmp_path: Path) -> None:
    src = tmp_path / "data" / "src"
    src.mkdir(parents=True)
    (src / "main.py").write_text("print('hi')\n")
    async with started(adapter_config(tmp_path)) as adapter:
        result = await adapter.execute(
            pipeline_command(
                pipeline=[
                    {"from": {"address": "python:3.12-slim"}},
                    {"with_env_variable": {"name": "MODE", "value": "ci"}},
                    {"with_mounted_directory": {"path": "/src", "source": str(src)}},
                    {"with_mounted_cache": {"path": "/root/.cache/pip", "cache": "pip-cache"}},
                    {"with_secret_variable": {"name": "PYPI_TOKEN", "secret": "pypi"}},
                    {"with_workdir": {"path": "/src"}},
                    {"with_user": {"name": "1000"}},
                    {"with_exec": {"args": ["python", "main.py"]}},
                ],
                secrets={"pypi": "pypi-token-value"},
            )
        )
    assert result.success, result.error
    (record,) = dagger_engine.execs
    assert record.image == "python:3.12-slim" and record.args == ["python", "main.py"]
    assert record.env == {"MODE": "ci"}
    assert record.mounts == {"/src": ("host", str(src.resolve())), "/root/.cache/pip": ("cache", "pip-cache")}
    # every secret as a variable of its own name at the start (as in workflows), and where the chain says
    assert record.secret_env == {"pypi": "pl-1/pypi", "PYPI_TOKEN": "pl-1/pypi"}
    assert (record.workdir, record.user, record.expect) == ("/src", "1000", "SUCCESS")
    assert result.result["exit_code"] == 0 and "pypi-token-value" not in repr(result)


async def test_the_last_exec_stdout_and_exit_code_are_the_result(dagger_engine: TestEngine, tmp_path: Path) -> None:
    async with started(adapter_config(tmp_path)) as adapter:
        result = await adapter.execute(
            pipeline_command(
                pipeline=[
                    {"from": {"address": "alpine:3.20"}},
                    {"with_exec": {"args": ["echo", "first"]}},
                    {"with_exec": {"args": ["echo", "second"]}},
                ]
            )
        )
    assert result.success, result.error
    assert result.result["stdout"] == "second\n" and result.result["exit_code"] == 0
    assert [r.args for r in dagger_engine.execs] == [["echo", "first"], ["echo", "second"]]


async def test_an_exec_exiting_non_zero_is_a_permanent_failure_with_its_stderr(
    dagger_engine: TestEngine, tmp_path: Path
) -> None:
    dagger_engine.on_exec(["pytest"], ExecOutcome(stdout="collected 3\n", stderr="2 failed, 1 passed\n", exit_code=1))
    async with started(adapter_config(tmp_path)) as adapter:
        result = await adapter.execute(
            pipeline_command(pipeline=[{"from": {"address": "python:3.12"}}, {"with_exec": {"args": ["pytest"]}}])
        )
    assert not result.success and result.error_category == ErrorCategory.PERMANENT
    assert "exited with code 1" in result.error and "2 failed, 1 passed" in result.error
    assert result.attempts == 1


async def test_expect_any_accepts_a_non_zero_exit(dagger_engine: TestEngine, tmp_path: Path) -> None:
    async with started(adapter_config(tmp_path)) as adapter:
        result = await adapter.execute(
            pipeline_command(
                pipeline=[
                    {"from": {"address": "alpine"}},
                    {"with_exec": {"args": ["sh", "-c", "echo partial; exit 3"], "expect": "ANY"}},
                ]
            )
        )
    assert result.success, result.error
    assert result.result["exit_code"] == 3 and result.result["stdout"] == "partial\n"
    assert dagger_engine.execs[0].expect == "ANY"


async def test_export_operations_write_back_under_the_path_rules(dagger_engine: TestEngine, tmp_path: Path) -> None:
    out = tmp_path / "data" / "dist"
    async with started(adapter_config(tmp_path)) as adapter:
        result = await adapter.execute(
            pipeline_command(
                pipeline=[
                    {"from": {"address": "alpine"}},
                    {"with_new_file": {"path": "/build/app.txt", "contents": "built\n"}},
                    {"export_directory": {"path": "/build", "host_path": str(out)}},
                    {"with_exec": {"args": ["echo", "after"]}},
                ]
            )
        )
    assert result.success, result.error
    assert [files for _staging, files in dagger_engine.exports] == [{"app.txt": "built\n"}]
    assert (out / "app.txt").read_text() == "built\n"
    assert result.result["exported"] == [str(out.resolve())]


@pytest.mark.parametrize(
    ("operation", "expected"),
    [
        ({"with_exec": {"args": ["id"], "insecure_root_capabilities": True}}, "unknown argument(s)"),
        ({"as_service": {}}, "operation not allowed"),
        ({"publish": {"address": "evil.io/x"}}, "operation not allowed"),
        ({"with_exec": {}}, "missing argument(s) args"),
        ({"with_exec": {"args": "echo hi"}}, "must be a list of strings"),
        ({"with_exec": {"args": ["x"], "expect": "MAYBE"}}, "one of SUCCESS, FAILURE, ANY"),
        ({"with_secret_variable": {"name": "T", "secret": "missing"}}, "unknown secret 'missing'"),
        ({"with_mounted_directory": {"path": "/x", "source": "/etc"}}, "outside the allowed host directories"),
        ({"with_mounted_directory": {"path": "/x", "source": "{tmp}/data/../.."}}, "'..'"),
        ({"export_directory": {"path": "/x", "host_path": "{tmp}/not-allowed"}}, "outside the allowed"),
    ],
)
async def test_refused_pipelines_fail_permanently_before_anything_runs(
    dagger_engine: TestEngine, tmp_path: Path, operation: dict[str, Any], expected: str
) -> None:
    ((name, args),) = operation.items()
    args = {k: v.format(tmp=tmp_path) if isinstance(v, str) else v for k, v in args.items()}
    async with started(adapter_config(tmp_path)) as adapter:
        result = await adapter.execute(
            pipeline_command(pipeline=[{"from": {"address": "alpine"}}, {name: args}], secrets={"known": "v"})
        )
    assert not result.success and result.error_category == ErrorCategory.PERMANENT
    assert expected in result.error
    assert dagger_engine.execs == []


async def test_a_pipeline_must_start_from_an_image(dagger_engine: TestEngine, tmp_path: Path) -> None:
    async with started(adapter_config(tmp_path)) as adapter:
        result = await adapter.execute(pipeline_command(pipeline=[{"with_exec": {"args": ["echo"]}}]))
    assert result.error_category == ErrorCategory.PERMANENT and "`from`" in result.error


async def test_a_module_function_is_called_with_its_arguments(dagger_engine: TestEngine, tmp_path: Path) -> None:
    calls: list[dict[str, Any]] = []

    def greet(name: str, times: int, loud_voice: bool = False) -> str:
        calls.append({"name": name, "times": times, "loud_voice": loud_voice})
        text = f"hello {name} x{times}"
        return text.upper() if loud_voice else text

    dagger_engine.register_module("github.com/acme/greeter@v1.2.0", "greeter", {"greet_person": greet})
    async with started(adapter_config(tmp_path)) as adapter:
        first = await adapter.execute(
            pipeline_command(
                "mod-1",
                module="github.com/acme/greeter@v1.2.0",
                function="greet_person",
                args={"name": 'Ada "the first"', "times": 2},
            )
        )
        second = await adapter.execute(
            pipeline_command(
                "mod-2",
                module="github.com/acme/greeter@v1.2.0",
                function="greet_person",
                args={"name": "Bob", "times": 1, "loud_voice": True},
            )
        )
    assert first.success, first.error
    assert first.result == {
        "module": "github.com/acme/greeter@v1.2.0",
        "function": "greet_person",
        "value": 'hello Ada "the first" x2',
    }
    assert second.success and second.result["value"] == "HELLO BOB X1"  # snake_case args -> loudVoice
    assert calls == [
        {"name": 'Ada "the first"', "times": 2, "loud_voice": False},
        {"name": "Bob", "times": 1, "loud_voice": True},
    ]


async def test_an_unknown_module_is_a_permanent_failure(dagger_engine: TestEngine, tmp_path: Path) -> None:
    async with started(adapter_config(tmp_path)) as adapter:
        result = await adapter.execute(pipeline_command(module="github.com/acme/nope", function="f"))
    assert not result.success and result.error_category == ErrorCategory.PERMANENT
    assert "rejected" in result.error


async def test_module_arguments_must_be_plain_values(dagger_engine: TestEngine, tmp_path: Path) -> None:
    async with started(adapter_config(tmp_path)) as adapter:
        result = await adapter.execute(pipeline_command(module="m", function="f", args={"cfg": {"a": 1}}))
    assert result.error_category == ErrorCategory.PERMANENT and "'cfg'" in result.error
