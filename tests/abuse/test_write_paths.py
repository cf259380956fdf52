"""Read roots are not write roots: a tenant's export or writable volume cannot rewrite what
the worker runs for other tenants (issue 8: "a tenant can rewrite another tenant's workflow")."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from aio_pika.abc import AbstractChannel

from consumer.config import load_config
from consumer.errors import ExecutionFailure
from consumer.host_output import install_file, install_tree
from consumer.paths import OutputPath, PathRules
from schemas import DeadLetterHeaders, ErrorCategory, ExecutionCommand, ExecutionType
from tests.dagger_engine import ExecOutcome, ExecRecord, TestEngine
from tests.support.worker_process import Observer, publish_command
from tests.test_adapter_support import adapter_config, pipeline_command, started, workflow_command
from tests.test_worker import StartWorker, dead_letters, start_worker  # noqa: F401 - the worker fixture
from topology import Topology

VICTIM_WORKFLOW = "name: report\nimage: alpine\nsteps:\n  - {name: report, run: [echo, original report]}\n"
ATTACKER_WORKFLOW = "image: alpine\nsteps:\n  - {name: pwn, run: [sh, -c, 'echo $API_TOKEN']}\n"


def overwrite_workflow(task_id: str, host_path: str) -> ExecutionCommand:
    """The attack: write a workflow file of one's own over the shared one."""
    return ExecutionCommand(
        task_id=task_id,
        execution_type=ExecutionType.DAGGER_PIPELINE,
        parameters={
            "pipeline": [
                {"from": {"address": "alpine"}},
                {"with_new_file": {"path": "/x/data_processing.yml", "contents": ATTACKER_WORKFLOW}},
                {"export_file": {"path": "/x/data_processing.yml", "host_path": host_path}},
            ]
        },
    )


@pytest.fixture
def shared_workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A worker's working directory with its workflows in ./workflows (the default layout)."""
    (tmp_path / "workflows").mkdir()
    (tmp_path / "workflows" / "data_processing.yml").write_text(VICTIM_WORKFLOW)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("output_roots", ["", "."], ids=["no-output-roots", "working-directory-as-output-root"])
async def test_a_tenant_cannot_rewrite_the_workflow_another_tenant_runs_next(
    start_worker: StartWorker,  # noqa: F811
    observer: Observer,
    channel: AbstractChannel,
    topology_spec: Topology,
    dagger_engine: TestEngine,
    shared_workdir: Path,
    output_roots: str,
) -> None:
    # Default read roots (the working directory); as output roots nothing, or the whole working
    # directory: either way the workflow directory is never a write target.
    settings: dict[str, Any] = {"workflow_directory": "./workflows", "max_retries": 0}
    if output_roots:
        settings["allowed_output_roots"] = output_roots
    await start_worker(**settings)
    await publish_command(channel, topology_spec, overwrite_workflow("attack", "./workflows/data_processing.yml"))
    await observer.wait_for(lambda: observer.results_for("attack"), 30, "the attacker's result")
    (result,) = observer.results_for("attack")
    assert not result.success and result.error_category is ErrorCategory.PERMANENT
    expected = "what the worker itself reads" if output_roots else "allowed_output_roots is not set"
    assert expected in (result.error or "")
    (letter,) = await dead_letters(channel, topology_spec)
    assert DeadLetterHeaders.from_headers(dict(letter.headers)).error_category == "permanent"
    assert dagger_engine.execs == [] and dagger_engine.exports == []  # refused before anything ran
    assert (shared_workdir / "workflows" / "data_processing.yml").read_text() == VICTIM_WORKFLOW

    # The victim's next run, with its secret, runs the victim's own workflow.
    victim = ExecutionCommand(
        task_id="victim",
        execution_type=ExecutionType.CONTAINERIZED_WORKFLOW,
        parameters={"workflow_definition": "data_processing.yml", "secrets": {"API_TOKEN": "victim-secret-1"}},
    )
    await publish_command(channel, topology_spec, victim)
    await observer.wait_for(lambda: observer.results_for("victim"), 30, "the victim's result")
    (victim_result,) = observer.results_for("victim")
    assert victim_result.success, victim_result.error
    assert [e.args for e in dagger_engine.execs] == [["echo", "original report"]]


@pytest.mark.parametrize(
    ("make_command", "expected"),
    [
        (
            lambda tmp: workflow_command(
                container_image="alpine",
                command=["true"],
                volumes=[{"source": str(tmp / "workflows"), "target": "/w", "writable": True}],
            ),
            "what the worker itself reads",
        ),
        (
            lambda tmp: workflow_command(
                container_image="alpine",
                command=["true"],
                volumes=[{"source": str(tmp), "target": "/w", "writable": True}],  # around the workflows
            ),
            "what the worker itself reads",
        ),
        (
            lambda tmp: pipeline_command(
                pipeline=[
                    {"from": {"address": "alpine"}},
                    {"export_directory": {"path": "/", "host_path": str(tmp / "cache" / "x")}},
                ]
            ),
            "what the worker itself reads",
        ),
        (
            lambda tmp: pipeline_command(
                pipeline=[
                    {"from": {"address": "alpine"}},
                    {"export_file": {"path": "/etc/passwd", "host_path": str(Path(os.__file__).parent / "x.py")}},
                ]
            ),
            "allowed_output_roots",
        ),
    ],
    ids=["writable-workflow-dir", "writable-parent-of-workflow-dir", "export-into-cache", "export-outside-roots"],
)
async def test_writes_over_what_the_worker_reads_are_refused_before_anything_runs(
    dagger_engine: TestEngine, tmp_path: Path, make_command: Any, expected: str
) -> None:
    # The operator made the whole tmp tree an output root (and a read root): still refused.
    config = adapter_config(tmp_path, allowed_volume_roots=[str(tmp_path)], allowed_output_roots=[str(tmp_path)])
    async with started(config) as adapter:
        result = await adapter.execute(make_command(tmp_path))
    assert not result.success and result.error_category is ErrorCategory.PERMANENT
    assert expected in (result.error or "")
    assert dagger_engine.execs == [] and dagger_engine.exports == []


async def test_the_worker_never_writes_into_its_own_code_or_configuration(
    dagger_engine: TestEngine, tmp_path: Path
) -> None:
    import consumer

    package = Path(consumer.__file__).parent
    root = package.parent  # an operator who made the source tree an output root
    config = adapter_config(tmp_path, allowed_output_roots=[str(root)])
    async with started(config) as adapter:
        result = await adapter.execute(
            pipeline_command(
                pipeline=[
                    {"from": {"address": "alpine"}},
                    {"with_new_file": {"path": "/p.py", "contents": "import os; os.system('id')\n"}},
                    {"export_file": {"path": "/p.py", "host_path": str(package / "adapter.py")}},
                ]
            )
        )
    assert not result.success and "what the worker itself reads" in (result.error or "")
    assert "os.system" not in (package / "adapter.py").read_text()


async def test_the_configuration_file_is_never_written_over(dagger_engine: TestEngine, tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    config_file = conf / "adapter.toml"
    config_file.write_text(f'allowed_output_roots = ["{tmp_path}"]\n')
    settings = adapter_config(tmp_path).redacted()
    settings.pop("allowed_output_roots")
    config = load_config(config_file, env={}, **settings)

    def export(host_path: Path) -> ExecutionCommand:
        return pipeline_command(
            pipeline=[
                {"from": {"address": "alpine"}},
                {"with_new_file": {"path": "/f", "contents": 'amqp_url = "amqp://evil/"\n'}},
                {"export_file": {"path": "/f", "host_path": str(host_path)}},
            ]
        )

    async with started(config) as adapter:
        over = await adapter.execute(export(config_file))
        beside = await adapter.execute(export(conf / "other.toml"))
        below = await adapter.execute(export(conf / "reports" / "r.txt"))  # a subdirectory is ordinary
    for refused in (over, beside):
        assert not refused.success and "would write over the worker's configuration" in (refused.error or "")
    assert below.success, below.error
    assert config_file.read_text() == f'allowed_output_roots = ["{tmp_path}"]\n'


async def test_writable_volumes_need_an_output_root_and_read_roots_do_not_grant_one(
    dagger_engine: TestEngine, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    config = adapter_config(tmp_path, allowed_output_roots=[str(tmp_path / "out")])
    async with started(config) as adapter:
        result = await adapter.execute(
            workflow_command(
                container_image="alpine",
                command=["true"],
                volumes=[{"source": str(data), "target": "/data", "writable": True}],
            )
        )
    assert not result.success and result.error_category is ErrorCategory.PERMANENT
    assert "outside the allowed output directories" in (result.error or "")
    assert dagger_engine.execs == []


async def test_a_directory_swapped_for_a_symlink_during_the_run_cannot_redirect_the_export(
    dagger_engine: TestEngine, tmp_path: Path
) -> None:
    out = tmp_path / "data" / "out"
    (out / "site").mkdir(parents=True)
    victim = tmp_path / "workflows"
    victim.mkdir()
    (victim / "build.yml").write_text(VICTIM_WORKFLOW)

    def swap(record: ExecRecord) -> ExecOutcome:
        # While the command runs (after its paths were checked), someone replaces the checked
        # directory with a link to the workflow directory.
        (out / "site").rmdir()
        (out / "site").symlink_to(victim)
        return ExecOutcome(stdout="built\n")

    dagger_engine.on_exec(["build"], swap)
    async with started(adapter_config(tmp_path)) as adapter:
        result = await adapter.execute(
            pipeline_command(
                pipeline=[
                    {"from": {"address": "alpine"}},
                    {"with_exec": {"args": ["build"]}},
                    {"with_new_file": {"path": "/site/build.yml", "contents": ATTACKER_WORKFLOW}},
                    {"export_directory": {"path": "/site", "host_path": str(out / "site")}},
                ]
            )
        )
    assert not result.success and result.error_category is ErrorCategory.PERMANENT
    assert "symlink" in (result.error or "")
    assert os.listdir(victim) == ["build.yml"] and (victim / "build.yml").read_text() == VICTIM_WORKFLOW


async def test_a_directory_export_mirrors_the_container_deletions_included(
    dagger_engine: TestEngine, tmp_path: Path
) -> None:
    out = tmp_path / "data" / "dist"
    (out / "old").mkdir(parents=True)
    (out / "old" / "stale.txt").write_text("from the last build\n")
    (out / "stale.txt").write_text("from the last build\n")
    async with started(adapter_config(tmp_path)) as adapter:
        result = await adapter.execute(
            pipeline_command(
                pipeline=[
                    {"from": {"address": "alpine"}},
                    {"with_new_file": {"path": "/dist/app.txt", "contents": "v2\n"}},
                    {"export_directory": {"path": "/dist", "host_path": str(out)}},
                ]
            )
        )
    assert result.success, result.error
    assert sorted(p.name for p in out.iterdir()) == ["app.txt"] and (out / "app.txt").read_text() == "v2\n"


# --- the installer on its own: links in the way are replaced or refused, never followed ----------


def _staged(tmp_path: Path, files: dict[str, str]) -> Path:
    staged = tmp_path / "staged"
    for rel, text in files.items():
        (staged / rel).parent.mkdir(parents=True, exist_ok=True)
        (staged / rel).write_text(text)
    staged.mkdir(exist_ok=True)
    return staged


def test_links_inside_the_target_are_replaced_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep\n")
    root = tmp_path / "root"
    (root / "t").mkdir(parents=True)
    (root / "t" / "f.txt").symlink_to(outside / "keep.txt")  # a file position holding a link
    (root / "t" / "sub").symlink_to(outside)  # a directory position holding a link
    staged = _staged(tmp_path, {"f.txt": "new\n", "sub/g.txt": "g\n"})
    install_tree(staged, OutputPath(root.resolve(), ("t",)))
    assert not (root / "t" / "f.txt").is_symlink() and (root / "t" / "f.txt").read_text() == "new\n"
    assert not (root / "t" / "sub").is_symlink() and (root / "t" / "sub" / "g.txt").read_text() == "g\n"
    assert sorted(os.listdir(outside)) == ["keep.txt"] and (outside / "keep.txt").read_text() == "keep\n"


def test_a_link_on_the_way_to_the_target_is_refused_at_write_time(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "root"
    root.mkdir()
    rules = PathRules(volume_roots=[str(root)], workflow_directory=tmp_path / "wf", output_roots=[str(root)])
    target = rules.output_path(str(root / "a" / "b.txt"), directory=False)  # checked: fine
    (root / "a").symlink_to(outside)  # then swapped in before the write
    staged = _staged(tmp_path, {"b.txt": "x\n"})
    with pytest.raises(ExecutionFailure) as info:
        install_file(staged / "b.txt", target)
    assert "symlink" in info.value.message
    assert os.listdir(outside) == []
