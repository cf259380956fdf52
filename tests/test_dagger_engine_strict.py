"""What the test engine models of a real engine, shown with the real dagger-io SDK.

Each test is one behaviour of ``tests/dagger_engine/README.md``: the SDK-derived schema and
refusal of invalid queries, the operation cache, declared images and registry errors,
session-scoped credentials, per-session host snapshots, read-only mounts, one module version
per session, commands an image has, and the hang/outage modes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import dagger
import gql
import graphql
import httpx
import pytest
from gql.transport.exceptions import TransportQueryError

from tests.dagger_engine import ExecOutcome, TestEngine
from tests.dagger_engine.images import BASE_COMMANDS
from tests.dagger_engine.schema import GEN_PY, SDL, render

REAL_SCHEMA = "schema-v0.21.8.graphqls"


@contextlib.asynccontextmanager
async def session(engine: TestEngine, token: str | None = None, **config: object) -> AsyncIterator[dagger.Client]:
    """An isolated SDK client on one of the engine's sessions (the first by default)."""
    saved = {k: os.environ.get(k) for k in ("DAGGER_SESSION_PORT", "DAGGER_SESSION_TOKEN")}
    os.environ.update(engine.session_env(token))
    try:
        async with dagger.Connection(dagger.Config(retry=None, **config)) as client:  # type: ignore[arg-type]
            yield client
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# --- the schema ------------------------------------------------------------------------------


def _real_schema_path() -> Path | None:
    repo = Path(__file__).resolve().parents[1]
    for candidate in (
        os.environ.get("DAGGER_REAL_SCHEMA", ""),
        f"/work/shared/dagger/{REAL_SCHEMA}",
        str(repo.parent / "shared" / "dagger" / REAL_SCHEMA),
        str(repo.parent.parent / "shared" / "dagger" / REAL_SCHEMA),
    ):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def test_the_schema_is_the_sdk_generated_client_read_mechanically() -> None:
    assert SDL == render(GEN_PY.read_text(encoding="utf-8"))
    schema = graphql.build_schema(SDL)
    container = schema.get_type("Container")
    assert isinstance(container, graphql.GraphQLObjectType)
    with_exec = container.fields["withExec"]
    assert str(with_exec.args["args"].type) == "[String!]!"
    assert str(with_exec.args["expect"].type) == "ReturnType"
    assert graphql.print_ast(with_exec.args["expect"].ast_node.default_value) == "SUCCESS"  # type: ignore[union-attr]
    assert str(container.fields["withMountedDirectory"].args["source"].type) == "ID!"
    assert {i.name for i in container.interfaces} == {"Exportable", "Node", "Syncer"}
    assert len(schema.type_map) > 150  # the whole API, not a hand-picked subset


@pytest.mark.skipif(_real_schema_path() is None, reason=f"the published {REAL_SCHEMA} is not next to the clone")
def test_the_derived_schema_agrees_with_the_published_engine_schema() -> None:
    """Every type, field, argument type, default and enum value of the published v0.21.8
    schema is derived the same; the SDK (0.21.11) is allowed to have more, and object-valued
    fields are non-null (the SDK does not say which may be null; a query validates the same)."""
    path = _real_schema_path()
    assert path is not None
    real = graphql.build_schema(path.read_text(encoding="utf-8"))
    ours = graphql.build_schema(SDL)
    problems: list[str] = []
    for name, real_type in real.type_map.items():
        if name.startswith("__"):
            continue
        our_type = ours.type_map.get(name)
        if type(our_type) is not type(real_type):
            problems.append(f"{name}: {type(our_type).__name__}")
            continue
        if isinstance(real_type, graphql.GraphQLEnumType):
            assert isinstance(our_type, graphql.GraphQLEnumType)
            if set(our_type.values) != set(real_type.values):
                problems.append(f"enum {name}")
        if isinstance(real_type, graphql.GraphQLInputObjectType):
            assert isinstance(our_type, graphql.GraphQLInputObjectType)
            for field_name, field in real_type.fields.items():
                if str(our_type.fields[field_name].type) != str(field.type):
                    problems.append(f"input {name}.{field_name}")
        if isinstance(real_type, graphql.GraphQLObjectType | graphql.GraphQLInterfaceType):
            assert isinstance(our_type, graphql.GraphQLObjectType | graphql.GraphQLInterfaceType)
            if {i.name for i in our_type.interfaces} != {i.name for i in real_type.interfaces}:
                problems.append(f"{name} implements")
            for field_name, real_field in real_type.fields.items():
                field = our_type.fields.get(field_name)
                if field is None:
                    problems.append(f"{name}.{field_name} missing")
                    continue
                if str(field.type) != str(real_field.type) and str(field.type) != f"{real_field.type}!":
                    problems.append(f"{name}.{field_name}: {field.type} vs {real_field.type}")
                if set(field.args) != set(real_field.args):
                    problems.append(f"{name}.{field_name} arguments")
                for arg_name, real_arg in real_field.args.items():
                    arg = field.args.get(arg_name)
                    if arg is None or str(arg.type) != str(real_arg.type):
                        problems.append(f"{name}.{field_name}({arg_name}) type")
                    elif _default(arg) != _default(real_arg):
                        problems.append(f"{name}.{field_name}({arg_name}) default")
    assert problems == []


def _default(arg: graphql.GraphQLArgument) -> str | None:
    node = arg.ast_node
    return graphql.print_ast(node.default_value) if node is not None and node.default_value else None


async def test_a_query_the_schema_rejects_is_refused_with_a_graphql_error(dagger_engine: TestEngine) -> None:
    async with session(dagger_engine) as client:
        await client.version()
        bad = gql.gql('{ container { from(address: "alpine") { withExec(args: ["true"], noSuchArg: 1) { id } } } }')
        with pytest.raises(TransportQueryError, match="noSuchArg") as refused:  # a raw query: gql's error
            await client._ctx.conn.session.execute(bad)  # type: ignore[union-attr]
        [error] = refused.value.errors or []
        assert error["message"] == "Unknown argument 'noSuchArg' on field 'Container.withExec'."
        assert error["extensions"] == {"code": "GRAPHQL_VALIDATION_FAILED"} and error["locations"]
    [problem] = dagger_engine.take_query_errors()
    assert any("noSuchArg" in message for message in problem.messages)
    assert dagger_engine.execs == []  # nothing of a refused query runs


async def test_a_valid_field_the_engine_does_not_model_says_so(dagger_engine: TestEngine) -> None:
    async with session(dagger_engine) as client:
        with pytest.raises(dagger.QueryError, match="not modelled by the test engine"):
            await client.container().from_("alpine").with_exposed_port(8080).sync()
    assert dagger_engine.query_errors == []  # valid, so not a refusal


# --- the operation cache ---------------------------------------------------------------------


async def test_an_expect_any_exec_that_failed_is_cached_and_runs_once(dagger_engine: TestEngine) -> None:
    async with session(dagger_engine) as client:
        step = (
            client.container().from_("alpine").with_exec(["sh", "-c", "echo out; exit 3"], expect=dagger.ReturnType.ANY)
        )
        assert await step.exit_code() == 3
        assert await step.stdout() == "out\n"  # the chain re-sent: answered from the cache
    async with session(dagger_engine) as other_connection:  # same session, another connection
        again = other_connection.container().from_("alpine")
        assert await again.with_exec(["sh", "-c", "echo out; exit 3"], expect=dagger.ReturnType.ANY).exit_code() == 3
    assert len(dagger_engine.execs) == 1 and dagger_engine.execs[0].exit_code == 3
    assert dagger_engine.cache_hits == 2


async def test_a_cache_busting_input_runs_the_exec_again(dagger_engine: TestEngine) -> None:
    async with session(dagger_engine) as client:
        base = client.container().from_("alpine")
        for buster in ("1", "1", "2"):
            step = base.with_env_variable("CACHE_BUSTER", buster).with_exec(["echo", "hi"])
            assert await step.stdout() == "hi\n"
    assert [r.env["CACHE_BUSTER"] for r in dagger_engine.execs] == ["1", "2"]


async def test_a_failed_exec_is_not_cached_and_runs_again(dagger_engine: TestEngine) -> None:
    dagger_engine.on_exec(["sh"], ExecOutcome(exit_code=1, stderr="flaky\n"), times=1)
    async with session(dagger_engine) as client:
        step = client.container().from_("alpine").with_exec(["sh", "-c", "echo ok"])
        with pytest.raises(dagger.ExecError):
            await step.stdout()
        assert await step.stdout() == "ok\n"
    assert [r.exit_code for r in dagger_engine.execs] == [1, 0]


async def test_an_exec_whose_client_gave_up_is_cancelled_and_not_cached(dagger_engine: TestEngine) -> None:
    dagger_engine.on_exec(["work"], ExecOutcome(stdout="done\n"))
    dagger_engine.on_exec(["work"], ExecOutcome(stdout="slow\n", delay=30), times=1)  # the first run only
    async with session(dagger_engine, execute_timeout=2) as client:
        step = client.container().from_("alpine").with_exec(["work"])
        with pytest.raises(dagger.TransportError, match="timed out"):
            await step.stdout()
        await asyncio.to_thread(dagger_engine.wait_until, lambda: dagger_engine.current_execs == 0)
        assert dagger_engine.execs[0].exit_code == -1  # killed with its request
        assert await step.stdout() == "done\n"  # asked again: it runs again
    assert len(dagger_engine.execs) == 2


async def test_concurrent_identical_execs_run_once(dagger_engine: TestEngine) -> None:
    dagger_engine.on_exec(["build"], ExecOutcome(stdout="built\n", delay=0.3))
    dagger_engine.add_image("builder:1")
    async with session(dagger_engine) as client:
        step = client.container().from_("builder:1").with_exec(["build"])
        assert await asyncio.gather(step.stdout(), step.stdout(), step.stdout()) == ["built\n"] * 3
    assert len(dagger_engine.execs) == 1


# --- images and registries -------------------------------------------------------------------


async def test_only_declared_images_exist(dagger_engine: TestEngine) -> None:
    async with session(dagger_engine) as client:
        with pytest.raises(dagger.QueryError) as hub:
            await client.container().from_("nosuch:1").sync()
        with pytest.raises(dagger.QueryError) as private_registry:
            await client.container().from_("ghcr.io/acme/nosuch:1").sync()
    assert str(hub.value).startswith(
        "failed to resolve source metadata for docker.io/library/nosuch:1: pull access denied"
    )
    assert str(private_registry.value) == (
        "failed to resolve source metadata for ghcr.io/acme/nosuch:1: ghcr.io/acme/nosuch:1: not found"
    )


@pytest.mark.parametrize(
    ("fault", "shape"),
    [
        ("rate_limited", "429 Too Many Requests"),
        ("server_error", "500 Internal Server Error"),
        ("unavailable", "503 Service Unavailable"),
        ("forbidden", "403 Forbidden"),
        ("unauthorized", "401 Unauthorized"),
    ],
)
async def test_registry_faults_read_like_the_registry(dagger_engine: TestEngine, fault: str, shape: str) -> None:
    dagger_engine.add_image("ghcr.io/acme/tool:1")
    dagger_engine.fail_pulls("ghcr.io", fault, times=1)
    async with session(dagger_engine) as client:
        ctr = client.container().from_("ghcr.io/acme/tool:1")
        with pytest.raises(dagger.QueryError) as failed:
            await ctr.sync()
        assert str(failed.value).startswith("failed to resolve source metadata for ghcr.io/acme/tool:1: ")
        assert shape in str(failed.value)
        await ctr.sync()  # the fault was limited to one pull


async def test_a_private_pull_needs_credentials_which_belong_to_the_whole_session(dagger_engine: TestEngine) -> None:
    dagger_engine.add_image("registry.example.com/team/app:1", credentials=("robot", "pa55"))
    async with session(dagger_engine) as client:
        with pytest.raises(dagger.QueryError, match="401 Unauthorized"):
            await client.container().from_("registry.example.com/team/app:1").sync()
        wrong = client.set_secret("wrong", "nope")
        with pytest.raises(dagger.QueryError, match="401 Unauthorized"):
            await (
                client.container()
                .with_registry_auth("registry.example.com", "robot", wrong)
                .from_("registry.example.com/team/app:1")
                .sync()
            )
        password = client.set_secret("pw", "pa55")
        authed = client.container().with_registry_auth("registry.example.com", "robot", password)
        await authed.from_("registry.example.com/team/app:1").sync()
        # The leak a real engine has: the credential went to the session, so a container that
        # never asked for it pulls the private image too.
        await client.container().from_("registry.example.com/team/app:1").sync()
    assert dagger_engine.session_auths() == [("registry.example.com", "robot", "pw")]
    other = dagger_engine.new_session()
    async with session(dagger_engine, other) as client:  # another session has no credentials
        with pytest.raises(dagger.QueryError, match="401 Unauthorized"):
            await client.container().from_("registry.example.com/team/app:1").sync()


async def test_a_moved_tag_resolves_to_a_new_digest_and_runs_again(dagger_engine: TestEngine) -> None:
    first = dagger_engine.add_image("python:3.13", commands=[*BASE_COMMANDS, "python"])
    async with session(dagger_engine) as client:
        ref = await client.container().from_("python:3.13").image_ref()
        assert ref == f"docker.io/library/python:3.13@{first.digest}"
        assert await client.container().from_("python:3.13").with_exec(["python", "-V"]).exit_code() == 0
        moved = dagger_engine.move_tag("python:3.13")
        assert (
            await client.container().from_("python:3.13").image_ref() == f"docker.io/library/python:3.13@{moved.digest}"
        )
        assert await client.container().from_("python:3.13").with_exec(["python", "-V"]).exit_code() == 0
        pinned = client.container().from_(f"python:3.13@{first.digest}")  # the old digest is still pullable
        assert await pinned.image_ref() == f"docker.io/library/python:3.13@{first.digest}"
        with pytest.raises(dagger.QueryError, match=r"immediately after the 'Container\.From' call"):
            await pinned.with_exec(["true"]).image_ref()
    assert moved.digest != first.digest
    assert [r.image_ref for r in dagger_engine.execs] == [first.image_ref, moved.image_ref]  # a new input


async def test_an_image_has_only_its_commands(dagger_engine: TestEngine) -> None:
    async with session(dagger_engine) as client:
        alpine = client.container().from_("alpine")
        with pytest.raises(dagger.QueryError) as missing:
            await alpine.with_exec(["python", "-V"], expect=dagger.ReturnType.ANY).sync()
        assert not isinstance(missing.value, dagger.ExecError)  # cannot start: not an exit code
        assert 'exec: "python": executable file not found in $PATH' in str(missing.value)
        in_shell = alpine.with_exec(["sh", "-c", "python -V"], expect=dagger.ReturnType.ANY)
        assert await in_shell.exit_code() == 127
        assert await in_shell.stderr() == "sh: python: not found\n"
        assert await client.container().from_("python:3.12-slim").with_exec(["python", "-V"]).exit_code() == 0
        with pytest.raises(dagger.QueryError, match="executable file not found"):
            await client.container().with_exec(["echo", "scratch has nothing"]).sync()


# --- host snapshots --------------------------------------------------------------------------


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "input.txt").write_text("v1\n")
    yield folder


async def test_host_reads_are_snapshotted_per_session_unless_no_cache(
    dagger_engine: TestEngine, data_dir: Path
) -> None:
    async def read(client: dagger.Client, *, no_cache: bool = False) -> str:
        source = client.host().directory(str(data_dir), no_cache=no_cache)
        ctr = client.container().from_("alpine").with_mounted_directory("/data", source)
        return await ctr.with_exec(["cat", "/data/input.txt"]).stdout()

    async with session(dagger_engine) as client:
        assert await read(client) == "v1\n"
        (data_dir / "input.txt").write_text("v2\n")
        assert await read(client) == "v1\n"  # stale: the session's snapshot
        assert await client.host().file(str(data_dir / "input.txt")).contents() == "v2\n"  # first read of the file
        assert await read(client, no_cache=True) == "v2\n"
        (data_dir / "input.txt").write_text("v3\n")
        assert await client.host().file(str(data_dir / "input.txt")).contents() == "v2\n"
        assert await client.host().file(str(data_dir / "input.txt"), no_cache=True).contents() == "v3\n"
    async with session(dagger_engine, dagger_engine.new_session()) as client:
        assert await read(client) == "v3\n"  # a new session reads the host again
    assert [r.stdout for r in dagger_engine.execs] == ["v1\n", "v2\n", "v3\n"]  # same content: cached


# --- read-only mounts ------------------------------------------------------------------------


async def test_writes_under_a_read_only_mount_fail(dagger_engine: TestEngine, data_dir: Path) -> None:
    dagger_engine.on_exec(["sh", "-c", "generate"], ExecOutcome(files={"/data/report.txt": "r\n"}))
    async with session(dagger_engine) as client:
        source = client.host().directory(str(data_dir))
        read_only = client.container().from_("alpine").with_mounted_directory("/data", source, read_only=True)
        with pytest.raises(dagger.ExecError) as refused:
            await read_only.with_exec(["sh", "-c", "echo x > /data/out.txt"]).sync()
        assert refused.value.exit_code == 1
        assert refused.value.stderr == "sh: can't create /data/out.txt: Read-only file system\n"
        with pytest.raises(dagger.ExecError, match="exit code: 1"):
            await read_only.with_exec(["touch", "/data/new"]).sync()
        with pytest.raises(dagger.ExecError) as program:
            await read_only.with_exec(["sh", "-c", "generate"]).sync()
        assert "Read-only file system" in program.value.stderr
        assert await read_only.with_exec(["cat", "/data/input.txt"]).stdout() == "v1\n"  # reading is fine
        writable = client.container().from_("alpine").with_mounted_directory("/data", source)
        written = writable.with_exec(["sh", "-c", "echo x > /data/out.txt"])
        assert await written.file("/data/out.txt").contents() == "x\n"
    assert sorted(os.listdir(data_dir)) == ["input.txt"]  # the host never changes


# --- modules ---------------------------------------------------------------------------------


def _greeter(version: str) -> dict[str, object]:
    def greet(name: str) -> str:
        return f"{version}: hello {name}"

    return {"greet": greet}


async def test_module_queries_are_validated_against_what_the_session_serves(dagger_engine: TestEngine) -> None:
    dagger_engine.register_module("github.com/acme/greeter@v1", "greeter", _greeter("v1"))
    async with session(dagger_engine) as client:
        execute = client._ctx.conn.session.execute  # type: ignore[union-attr]
        with pytest.raises(TransportQueryError, match="greeter"):  # not served yet: not in the schema
            await execute(gql.gql('{ greeter { greet(name: "ada") } }'))
        await client.module_source("github.com/acme/greeter@v1").as_module().serve()
        assert await execute(gql.gql('{ greeter { greet(name: "ada") } }')) == {"greeter": {"greet": "v1: hello ada"}}
        with pytest.raises(TransportQueryError, match="nosuch"):
            await execute(gql.gql("{ greeter { nosuch } }"))
        with pytest.raises(TransportQueryError, match="name"):  # a required argument missing
            await execute(gql.gql("{ greeter { greet } }"))
    refused = dagger_engine.take_query_errors()
    assert len(refused) == 3


async def test_a_session_loads_one_version_of_a_module(dagger_engine: TestEngine) -> None:
    dagger_engine.register_module("github.com/acme/greeter@v1", "greeter", _greeter("v1"))
    dagger_engine.register_module("github.com/acme/greeter@v2", "greeter", _greeter("v2"))
    async with session(dagger_engine) as client:
        await client.module_source("github.com/acme/greeter@v1").as_module().serve()
        await client.module_source("github.com/acme/greeter@v1").as_module().serve()  # the same: fine
        with pytest.raises(dagger.QueryError, match=r"already loaded from 'github\.com/acme/greeter@v1'"):
            await client.module_source("github.com/acme/greeter@v2").as_module().serve()
    async with session(dagger_engine, dagger_engine.new_session()) as client:
        await client.module_source("github.com/acme/greeter@v2").as_module().serve()
        data = await client._ctx.conn.session.execute(gql.gql('{ greeter { greet(name: "bo") } }'))  # type: ignore[union-attr]
        assert data == {"greeter": {"greet": "v2: hello bo"}}


class Level(enum.Enum):
    LOW = "low"
    HIGH = "high"


@dataclasses.dataclass
class Report:
    file_count: int
    level: str


async def test_module_functions_take_constructor_enum_and_object_arguments_and_return_objects(
    dagger_engine: TestEngine, data_dir: Path
) -> None:
    def scan(self: dict[str, str], source: dagger.Directory, level: Level = Level.LOW) -> Report:
        return Report(file_count=len(source.files), level=f"{self['prefix']}{level.name}")  # type: ignore[attr-defined]

    def bundle(self: dict[str, str]) -> dagger.Directory:
        return {"out/readme.txt": f"{self['prefix']}bundle\n"}  # type: ignore[return-value]

    def new(prefix: str = "") -> dict[str, str]:
        return {"prefix": prefix}

    dagger_engine.register_module(
        "github.com/acme/scanner@v3", "scanner", {"scan": scan, "bundle": bundle}, constructor=new
    )
    async with session(dagger_engine) as client:
        await client.module_source("github.com/acme/scanner@v3").as_module().serve()
        execute = client._ctx.conn.session.execute  # type: ignore[union-attr]
        source_id = await client.host().directory(str(data_dir)).id()
        query = f'{{ scanner(prefix: "p-") {{ scan(source: "{source_id}", level: HIGH) {{ fileCount level }} }} }}'
        assert await execute(gql.gql(query)) == {"scanner": {"scan": {"fileCount": 1, "level": "p-HIGH"}}}
        with pytest.raises(TransportQueryError, match="must have a selection of subfields"):
            await execute(gql.gql(f'{{ scanner {{ scan(source: "{source_id}") }} }}'))  # an object, unselected
        with pytest.raises(TransportQueryError, match="MEDIUM"):  # not a value of the module's enum
            await execute(gql.gql(f'{{ scanner {{ scan(source: "{source_id}", level: MEDIUM) {{ level }} }} }}'))
        bundle_id = (await execute(gql.gql('{ scanner(prefix: "x-") { bundle { id } } }')))["scanner"]["bundle"]["id"]
        assert await client.load_directory_from_id(dagger.DirectoryID(bundle_id)).file("out/readme.txt").contents() == (
            "x-bundle\n"
        )
    assert len(dagger_engine.take_query_errors()) == 2


async def test_module_function_calls_are_cached_unless_their_policy_says_otherwise(dagger_engine: TestEngine) -> None:
    calls: list[str] = []

    def stamp(name: str) -> str:
        calls.append(f"stamp {name}")
        return f"stamped {name}"

    def fresh(name: str) -> str:
        calls.append(f"fresh {name}")
        return f"fresh {name}"

    dagger_engine.register_module(
        "github.com/acme/stamper@v1", "stamper", {"stamp": stamp, "fresh": fresh}, cache={"fresh": "never"}
    )
    for token in (dagger_engine.token, dagger_engine.new_session()):
        async with session(dagger_engine, token) as client:
            await client.module_source("github.com/acme/stamper@v1").as_module().serve()
            execute = client._ctx.conn.session.execute  # type: ignore[union-attr]
            for name in ("a", "a", "b"):
                query = f'{{ stamper {{ stamp(name: "{name}") fresh(name: "{name}") }} }}'
                assert await execute(gql.gql(query)) == {
                    "stamper": {"stamp": f"stamped {name}", "fresh": f"fresh {name}"}
                }
    assert sorted(c for c in calls if c.startswith("stamp")) == ["stamp a", "stamp b"]  # once, engine-wide
    assert len([c for c in calls if c.startswith("fresh")]) == 6


async def test_a_modules_type_definitions_describe_its_functions(dagger_engine: TestEngine) -> None:
    def scan(self: dict[str, str], source: dagger.Directory, level: Level = Level.LOW) -> Report:
        raise AssertionError("not called")

    def new(prefix: str = "") -> dict[str, str]:
        return {"prefix": prefix}

    dagger_engine.register_module("github.com/acme/scanner@v3", "scanner", {"scan": scan}, constructor=new)
    async with session(dagger_engine) as client:
        module = client.module_source("github.com/acme/scanner@v3").as_module()
        main, report = await module.objects()  # no serve() needed to read them
        assert await main.kind() == dagger.TypeDefKind.OBJECT_KIND
        assert [await main.as_object().name(), await report.as_object().name()] == ["Scanner", "ScannerReport"]
        [constructor_arg] = await main.as_object().constructor().args()
        assert (await constructor_arg.name(), await constructor_arg.default_value()) == ("prefix", dagger.JSON('""'))
        [function] = await main.as_object().functions()
        assert await function.name() == "scan"
        source, level = await function.args()
        assert await source.name() == "source" and await source.type_def().kind() == dagger.TypeDefKind.OBJECT_KIND
        assert await source.type_def().as_object().name() == "Directory"
        assert await level.type_def().kind() == dagger.TypeDefKind.ENUM_KIND and await level.type_def().optional()
        assert [await m.name() for m in await level.type_def().as_enum().members()] == ["LOW", "HIGH"]
        assert await level.default_value() == dagger.JSON('"LOW"')
        returned = function.return_type()
        assert await returned.kind() == dagger.TypeDefKind.OBJECT_KIND
        assert await returned.as_object().name() == "ScannerReport"
        fields = await report.as_object().fields()
        assert [await f.name() for f in fields] == ["fileCount", "level"]
        assert await fields[0].type_def().kind() == dagger.TypeDefKind.INTEGER_KIND
        [enum_def] = await module.enums()
        assert await enum_def.as_enum().name() == "ScannerLevel"


# --- sessions, hangs and outages -------------------------------------------------------------


async def test_a_closed_session_is_refused(dagger_engine: TestEngine) -> None:
    token = dagger_engine.new_session()
    dagger_engine.close_session(token)
    async with httpx.AsyncClient(auth=(token, "")) as http:
        response = await http.post(dagger_engine.url, json={"query": "{ version }"})
    assert response.status_code == 401


async def test_a_hung_engine_answers_nothing_until_released(dagger_engine: TestEngine) -> None:
    async with session(dagger_engine, execute_timeout=2) as client:
        step = client.container().from_("alpine").with_exec(["echo", "hi"])
        dagger_engine.hang()
        with pytest.raises(dagger.TransportError, match="timed out"):
            await step.stdout()
        assert dagger_engine.hanging
        dagger_engine.release()
        assert await step.stdout() == "hi\n"


async def test_an_outage_fails_every_request_until_recovery(dagger_engine: TestEngine) -> None:
    async with session(dagger_engine) as client:
        step = client.container().from_("alpine").with_exec(["echo", "hi"])
        dagger_engine.fail_requests(None, status=503)
        for _ in range(3):
            with pytest.raises(dagger.TransportError, match="503"):
                await step.stdout()
        dagger_engine.recover()
        assert await step.stdout() == "hi\n"


async def test_the_cli_stand_in_opens_sessions_on_a_running_engine(
    dagger_engine: TestEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    dagger_engine.add_image("registry.example.com/app:1", credentials=("robot", "pa55"))
    for name in ("DAGGER_SESSION_PORT", "DAGGER_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    for name, value in dagger_engine.cli_env().items():
        monkeypatch.setenv(name, value)
    async with dagger.Connection(dagger.Config(retry=None)) as first:
        password = first.set_secret("pw", "pa55")
        await first.container().with_registry_auth("registry.example.com", "robot", password).sync()
        await first.container().from_("registry.example.com/app:1").with_exec(["echo", "hi"]).sync()
        async with dagger.Connection(dagger.Config(retry=None)) as second:
            assert len(dagger_engine.sessions) == 3  # the fixture's and one per connection
            with pytest.raises(dagger.QueryError, match="401 Unauthorized"):  # its own credentials only
                await second.container().from_("registry.example.com/app:1").sync()
            assert await second.container().from_("alpine").with_exec(["echo", "hi"]).stdout() == "hi\n"
    assert len(dagger_engine.sessions) == 1  # the SDK closed both sessions
    assert [r.image for r in dagger_engine.execs] == ["registry.example.com/app:1", "alpine"]
