"""The test engine, driven by the real dagger-io SDK over the real protocol."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import dagger
import gql
import httpx
import pytest
from dagger import dag

from tests.dagger_engine import ExecOutcome, ExecRecord, TestEngine

ENGINE_DIR = Path(__file__).parent / "dagger_engine"


@pytest.fixture
async def connected(dagger_engine: TestEngine) -> AsyncIterator[TestEngine]:
    """The global ``dag`` connected to the engine, without retries (failures surface at once)."""
    async with dagger.connection(dagger.Config(retry=None)):
        yield dagger_engine


async def test_chain_with_env_and_exec_returns_stdout(connected: TestEngine) -> None:
    ctr = (
        dag.container()
        .from_("python:3.12-slim")
        .with_env_variable("GREETING", "hello")
        .with_workdir("/app")
        .with_exec(["sh", "-c", "echo $GREETING world"])
    )
    assert await ctr.stdout() == "hello world\n"
    [record] = connected.execs
    assert record.image == "python:3.12-slim"
    assert record.args == ["sh", "-c", "echo $GREETING world"]
    assert record.env == {"GREETING": "hello"}
    assert record.workdir == "/app"
    assert record.exit_code == 0
    assert record.finished_at is not None and record.finished_at >= record.started_at


async def test_exec_failure_raises_exec_error_with_its_output(connected: TestEngine) -> None:
    ctr = dag.container().from_("alpine").with_exec(["sh", "-c", "echo out; echo oops >&2; exit 3"])
    with pytest.raises(dagger.ExecError) as caught:
        await ctr.stdout()
    assert caught.value.exit_code == 3
    assert caught.value.stdout == "out\n"
    assert caught.value.stderr == "oops\n"
    assert caught.value.command == ["sh", "-c", "echo out; echo oops >&2; exit 3"]


async def test_expect_any_returns_the_exit_code_and_sync_runs_the_exec_once(connected: TestEngine) -> None:
    synced = (
        await dag.container().from_("alpine").with_exec(["sh", "-c", "exit 7"], expect=dagger.ReturnType.ANY).sync()
    )
    assert await synced.exit_code() == 7
    assert await synced.stdout() == ""
    assert len(connected.execs) == 1  # node(id:) queries reuse the evaluated state


async def test_exec_rules_choose_outcomes_latest_first_and_limited_by_times(connected: TestEngine) -> None:
    connected.add_image("builder")
    connected.on_exec(["make"], ExecOutcome(stdout="built\n"))
    connected.on_exec(["make", "test"], ExecOutcome(stderr="1 failed\n", exit_code=2), times=1)
    connected.on_exec(lambda r: r.env.get("MODE") == "dry", lambda r: ExecOutcome(stdout=f"would run {r.args}\n"))
    base = dag.container().from_("builder")

    assert await base.with_exec(["make", "all"]).stdout() == "built\n"
    with pytest.raises(dagger.ExecError) as caught:
        await base.with_exec(["make", "test"]).stdout()
    assert caught.value.exit_code == 2
    assert await base.with_exec(["make", "test"]).stdout() == "built\n"  # the limited rule is used up
    dry = base.with_env_variable("MODE", "dry").with_exec(["deploy"])
    assert await dry.stdout() == "would run ['deploy']\n"


async def test_default_commands_share_files_between_execs(connected: TestEngine) -> None:
    ctr = (
        dag.container()
        .from_("alpine")
        .with_new_file("/etc/motd", "welcome\n")
        .with_exec(["sh", "-c", "echo one > /tmp/x && echo two >> /tmp/x"])
        .with_exec(["cat", "/etc/motd", "/tmp/x"])
    )
    assert await ctr.stdout() == "welcome\none\ntwo\n"
    assert await ctr.file("/tmp/x").contents() == "one\ntwo\n"
    missing = dag.container().from_("alpine").with_exec(["cat", "/nope"], expect=dagger.ReturnType.ANY)
    assert await missing.exit_code() == 1
    assert "No such file" in await missing.stderr()


async def test_secrets_reach_the_exec_but_records_hold_only_their_names(connected: TestEngine) -> None:
    connected.add_image("registry.example.com/app:1", credentials=("robot", "s3cr3t-value"))
    token = dag.set_secret("registry-token", "s3cr3t-value")
    ctr = (
        dag.container()
        .with_registry_auth("registry.example.com", "robot", token)
        .from_("registry.example.com/app:1")
        .with_secret_variable("TOKEN", token)
        .with_exec(["env"])
    )
    assert await ctr.stdout() == "TOKEN=***\n"  # the engine scrubs secret values from output
    [record] = connected.execs
    assert record.secret_env == {"TOKEN": "registry-token"}
    assert record.registry_auths == [("registry.example.com", "robot", "registry-token")]
    assert "s3cr3t-value" not in repr(record)
    assert connected.secret_plaintext("registry-token") == "s3cr3t-value"
    mounted = dag.container().from_("alpine").with_mounted_secret("/run/token", token).with_exec(["cat", "/run/token"])
    assert await mounted.stdout() == "***"
    assert connected.execs[-1].mounts == {"/run/token": ("secret", "registry-token")}


async def test_host_directory_is_mounted_and_outputs_export_back(connected: TestEngine, tmp_path: Path) -> None:
    source = tmp_path / "src"
    (source / "sub").mkdir(parents=True)
    (source / "data.csv").write_text("a,b\n1,2\n")
    (source / "sub" / "notes.txt").write_text("note\n")
    connected.on_exec(["process"], ExecOutcome(stdout="done\n", files={"/out/report.txt": "2 rows\n"}))
    cache = dag.cache_volume("pip")
    ctr = (
        dag.container()
        .from_("alpine")
        .with_mounted_directory("/data", dag.host().directory(str(source)))
        .with_mounted_directory("/out", dag.directory())
        .with_mounted_cache("/root/.cache", cache)
        .with_exec(["cat", "/data/sub/notes.txt"])
        .with_exec(["process", "/data"])
    )
    assert await ctr.stdout() == "done\n"
    assert connected.execs[0].stdout == "note\n"
    assert connected.execs[1].mounts == {
        "/data": ("host", str(source)),
        "/out": ("directory", ""),
        "/root/.cache": ("cache", "pip"),
    }
    target = tmp_path / "exported"
    assert await ctr.directory("/out").export(str(target)) == str(target)
    assert (target / "report.txt").read_text() == "2 rows\n"
    assert connected.exports == [(str(target), {"report.txt": "2 rows\n"})]
    assert sorted(await ctr.directory("/data").entries()) == ["data.csv", "sub/"]
    only_txt = dag.host().directory(str(source), include=["**/*.txt"])
    assert await only_txt.glob("**/*") == ["sub/notes.txt"]
    assert await dag.host().directory(str(source), exclude=["sub"]).entries() == ["data.csv"]


async def test_module_function_is_called_after_serve(dagger_engine: TestEngine) -> None:
    def greet(name: str, times: int = 1) -> str:
        return " ".join([f"hello {name}"] * times)

    def describe(task_id: str) -> dict[str, object]:
        return {"task": task_id, "ok": True}

    dagger_engine.register_module("github.com/acme/greeter@v1", "greeter-tool", {"greet": greet, "describe": describe})
    async with dagger.connection(dagger.Config(retry=None)) as conn:
        await dag.module_source("github.com/acme/greeter@v1").as_module().serve()
        data = await conn.session.execute(gql.gql('{ greeterTool { greet(name: "ada", times: 2) } }'))
        assert data == {"greeterTool": {"greet": "hello ada hello ada"}}
        data = await conn.session.execute(gql.gql('{ greeterTool { describe(taskId: "t-1") } }'))
        assert json.loads(data["greeterTool"]["describe"]) == {"task": "t-1", "ok": True}
        with pytest.raises(dagger.QueryError):
            await dag.module_source("github.com/acme/unknown@v1").as_module().serve()


async def test_unknown_field_is_refused_like_a_real_engine_and_recorded() -> None:
    with TestEngine() as engine:
        query = {"query": '{ container { frobnicate(token: "s3cr3t") } }'}
        async with httpx.AsyncClient(auth=(engine.token, "")) as http:
            response = await http.post(engine.url, json=query)
        assert response.status_code == 422  # gqlgen's answer to a query that does not validate
        body = response.json()
        assert body["data"] is None
        [error] = body["errors"]
        assert "frobnicate" in error["message"] and error["extensions"] == {"code": "GRAPHQL_VALIDATION_FAILED"}
        [problem] = engine.take_query_errors()
        assert "frobnicate" in problem.messages[0] and "s3cr3t" not in problem.query
        assert engine.query_errors == []


async def test_wrong_token_is_refused_at_connect(dagger_engine: TestEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DAGGER_SESSION_TOKEN", "not-the-token")
    with pytest.raises(dagger.ClientConnectionError):
        async with dagger.Connection(dagger.Config(retry=None)):
            pass


async def test_http_500_fails_a_connect_and_a_query(dagger_engine: TestEngine) -> None:
    dagger_engine.fail_requests(1, status=500)
    with pytest.raises(dagger.ClientConnectionError):
        async with dagger.Connection(dagger.Config(retry=None)):
            pass
    async with dagger.Connection(dagger.Config(retry=None)) as client:
        ctr = client.container().from_("alpine").with_exec(["echo", "hi"])
        dagger_engine.fail_requests(1, status=503)
        with pytest.raises(dagger.TransportError):
            await ctr.stdout()
        assert await ctr.stdout() == "hi\n"  # the next request is served again
    assert len(dagger_engine.execs) == 1  # the failed request never reached an exec


async def test_refused_connections_and_recovery_on_the_same_port(dagger_engine: TestEngine) -> None:
    port = dagger_engine.port
    async with dagger.Connection(dagger.Config(retry=None)) as client:
        ctr = client.container().from_("alpine").with_exec(["echo", "hi"])
        dagger_engine.refuse()
        with pytest.raises(dagger.TransportError):
            await ctr.stdout()
        dagger_engine.accept()
        assert dagger_engine.port == port
        assert await ctr.stdout() == "hi\n"
    dagger_engine.refuse()
    with pytest.raises(dagger.ClientConnectionError):
        async with dagger.Connection(dagger.Config(retry=None)):
            pass
    dagger_engine.accept()


async def test_slow_engine_hits_the_execute_timeout(dagger_engine: TestEngine) -> None:
    async with dagger.Connection(dagger.Config(retry=None, execute_timeout=0.5)) as client:
        dagger_engine.delay_requests(5)
        with pytest.raises(dagger.TransportError):
            await client.container().from_("alpine").with_exec(["true"]).sync()
        dagger_engine.delay_requests(0)


async def test_parallel_execs_are_counted_while_they_overlap(connected: TestEngine) -> None:
    engine = connected

    def wait_for_all_three(record: ExecRecord) -> ExecOutcome:
        # Each exec holds until all three run at once: proves the engine serves them concurrently.
        engine.wait_until(lambda: engine.max_concurrent_execs >= 3, timeout=10)
        return ExecOutcome(stdout=record.args[1] + "\n")

    engine.on_exec(["job"], wait_for_all_three)
    base = dag.container().from_("alpine")
    outputs = await asyncio.gather(*(base.with_exec(["job", str(i)]).stdout() for i in range(3)))
    assert sorted(outputs) == ["0\n", "1\n", "2\n"]
    assert engine.max_concurrent_execs == 3
    assert engine.current_execs == 0


async def test_cli_bin_startup_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps([{"match": ["build"], "stdout": "built by cli engine\n"}]))
    record = tmp_path / "record.json"
    monkeypatch.delenv("DAGGER_SESSION_PORT", raising=False)
    monkeypatch.delenv("DAGGER_SESSION_TOKEN", raising=False)
    monkeypatch.setenv("_EXPERIMENTAL_DAGGER_CLI_BIN", str(ENGINE_DIR / "cli.py"))
    monkeypatch.setenv("DAGGER_TEST_ENGINE_RULES", str(rules))
    monkeypatch.setenv("DAGGER_TEST_ENGINE_RECORD", str(record))
    # The script's "#!/usr/bin/env python3" must find this interpreter (it has graphql-core).
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    async with dagger.connection(dagger.Config(retry=None)):
        assert await dag.container().from_("alpine").with_exec(["build"]).stdout() == "built by cli engine\n"
    recorded = json.loads(record.read_text())  # written when the SDK closed the session
    assert [e["args"] for e in recorded["execs"]] == [["build"]]
    assert recorded["query_errors"] == []


async def test_wait_for_exec_sees_a_running_exec(connected: TestEngine) -> None:
    release = threading.Event()

    def held(record: ExecRecord) -> ExecOutcome:
        release.wait(10)
        return ExecOutcome(stdout="released\n")

    connected.on_exec(["long-job"], held)
    call = asyncio.ensure_future(dag.container().from_("alpine").with_exec(["long-job"]).stdout())
    try:
        record = await asyncio.to_thread(connected.wait_for_exec, ["long-job"], timeout=10)
        assert record.exit_code is None and record.finished_at is None
        assert connected.current_execs == 1
    finally:
        release.set()
    assert await call == "released\n"
    assert record.exit_code == 0


async def test_expand_entrypoint_user_and_redirects(connected: TestEngine) -> None:
    ctr = (
        dag.container()
        .from_("alpine")
        .with_env_variable("NAME", "ada")
        .with_env_variable("GREETING", "hi $NAME", expand=True)
        .with_user("1000")
        .with_entrypoint(["echo", "entry:"])
        .with_exec(["$GREETING"], use_entrypoint=True, expand=True, redirect_stdout="/tmp/out.txt")
    )
    synced = await ctr.sync()
    assert await synced.file("/tmp/out.txt").contents() == "entry: hi ada\n"
    assert await synced.stdout() == "entry: hi ada\n"
    [record] = connected.execs
    assert record.args == ["echo", "entry:", "hi ada"]
    assert record.user == "1000"
    assert record.env == {"NAME": "ada", "GREETING": "hi ada"}


def test_standalone_engine_process(tmp_path: Path) -> None:
    rules = tmp_path / "rules.json"
    rules.write_text(
        json.dumps(
            {
                "rules": [{"match": ["fail-once"], "exit_code": 4, "stderr": "boom\n", "times": 1}],
                "images": [{"address": "registry.example.com/tools:2", "commands": ["fail-once"]}],
            }
        )
    )
    record = tmp_path / "record.json"
    command = [sys.executable, "-m", "tests.dagger_engine", "--token", "tok-1", "--rules", str(rules)]
    proc = subprocess.Popen(
        [*command, "--record", str(record)],
        cwd=ENGINE_DIR.parent.parent,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        ready = json.loads(proc.stdout.readline())
        assert ready["session_token"] == "tok-1"
        env = {**os.environ, "DAGGER_SESSION_PORT": str(ready["port"]), "DAGGER_SESSION_TOKEN": "tok-1"}
        script = (
            "import anyio, dagger\n"
            "async def main():\n"
            "    async with dagger.Connection(dagger.Config(retry=None)) as c:\n"
            "        ctr = c.container().from_('registry.example.com/tools:2')\n"
            "        ctr = ctr.with_exec(['fail-once'], expect=dagger.ReturnType.ANY)\n"
            "        print(await ctr.exit_code(), await ctr.stderr())\n"
            "anyio.run(main)\n"
        )
        client = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
        assert client.returncode == 0, client.stderr
        # Two leaf calls re-send the chain: the exec with expect ANY that exited 4 is a
        # successful operation, so the second call is answered from the engine's cache.
        assert client.stdout == "4 boom\n\n"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
    recorded = json.loads(record.read_text())
    assert [e["exit_code"] for e in recorded["execs"]] == [4]
