"""Module calls: only allowed modules, only the module's own functions and arguments (from its
type definitions on the engine), values only as typed variables -- a command's text never
becomes query text -- and object-typed arguments and returns handled or refused by name."""

import dataclasses
import enum
import logging
from pathlib import Path
from typing import Any

import dagger
import pytest

from consumer import DaggerAdapter
from schemas import ErrorCategory, ExecutionResult
from tests.dagger_engine import TestEngine
from tests.support.engines import EngineUnderTest
from tests.test_adapter_support import adapter_config, pipeline_command, started

REF = "github.com/acme/greeter@v1.2.0"


class Tone(enum.Enum):
    PLAIN = "plain"
    LOUD = "loud"


@dataclasses.dataclass
class Report:
    lines: int


class Greeter:
    """A module's functions, recording every call that reached them."""

    def __init__(self, engine: TestEngine) -> None:
        self.engine = engine
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def functions(self) -> dict[str, Any]:
        # The test engine hands the constructor's result to a first parameter named `self`.
        greeter = self

        def greet_person(self: Any, name: str, times: int, tone: Tone = Tone.PLAIN, tags: list[str] = ()) -> str:
            greeter.calls.append(("greet_person", {"name": name, "times": times, "tone": tone, "tags": tags}))
            text = f"{self['greeting']} {name} x{times}" + (f" {'+'.join(tags)}" if tags else "")
            return text.upper() if tone is Tone.LOUD else text

        def count_files(self: Any, source: dagger.Directory, token: dagger.Secret) -> str:
            greeter.calls.append(("count_files", {"source": source}))
            return f"{len(source.files)} files; token {greeter.engine.secret_plaintext(token.name)}"  # type: ignore[attr-defined]

        def listing(self: Any) -> dagger.Directory:
            greeter.calls.append(("listing", {}))
            return {"a.txt": "a", "sub/b.txt": "b"}  # type: ignore[return-value]

        def report(self: Any) -> dagger.File:
            greeter.calls.append(("report", {}))
            return "all good\n"  # type: ignore[return-value]

        def summary(self: Any) -> Report:
            greeter.calls.append(("summary", {}))
            return Report(lines=1)

        return {
            "greet_person": greet_person,
            "count_files": count_files,
            "listing": listing,
            "report": report,
            "summary": summary,
        }

    @staticmethod
    def constructor(greeting: str = "hello") -> dict[str, str]:
        return {"greeting": greeting}


@pytest.fixture
def greeter(dagger_engine: TestEngine) -> Greeter:
    module = Greeter(dagger_engine)
    dagger_engine.register_module(
        REF, "greeter", module.functions(), constructor=Greeter.constructor, cache={"greet_person": "never"}
    )
    return module


def allowed(tmp_path: Path, *patterns: str, **overrides: Any) -> Any:
    return adapter_config(tmp_path, allowed_modules=list(patterns or ["github.com/acme/*"]), **overrides)


async def call(adapter: DaggerAdapter, function: str, module: str = REF, **parameters: Any) -> ExecutionResult:
    return await adapter.execute(pipeline_command("mod-1", module=module, function=function, **parameters))


def refused(result: ExecutionResult, *words: str) -> None:
    assert not result.success and result.error_category == ErrorCategory.PERMANENT, result
    for word in words:
        assert word in (result.error or ""), result.error


# --- calls through the type definitions ------------------------------------------------------


async def test_a_function_is_called_with_typed_scalar_enum_list_and_constructor_arguments(
    dagger_engine: TestEngine, greeter: Greeter, tmp_path: Path
) -> None:
    async with started(allowed(tmp_path)) as adapter:
        first = await call(adapter, "greet_person", args={"name": 'Ada "the first"', "times": 2})
        second = await call(
            adapter,
            "greetPerson",
            args={"name": "Bob", "times": 1, "tone": "LOUD", "tags": ["x", "y"]},
            constructor_args={"greeting": "hi"},
        )
    assert first.success, first.error
    assert first.result == {"module": REF, "function": "greet_person", "value": 'hello Ada "the first" x2'}
    assert second.success, second.error
    assert second.result["value"] == "HI BOB X1 X+Y"
    assert greeter.calls[1] == ("greet_person", {"name": "Bob", "times": 1, "tone": Tone.LOUD, "tags": ["x", "y"]})


async def test_wrong_argument_values_are_refused_naming_the_argument(
    dagger_engine: TestEngine, greeter: Greeter, tmp_path: Path
) -> None:
    async with started(allowed(tmp_path)) as adapter:
        results = {
            "an enum member that does not exist": await call(
                adapter, "greet_person", args={"name": "a", "times": 1, "tone": "SHOUTY"}
            ),
            "a string for an Int": await call(adapter, "greet_person", args={"name": "a", "times": "1"}),
            "a missing required argument": await call(adapter, "greet_person", args={"name": "a"}),
        }
    refused(results["an enum member that does not exist"], "'tone'", "PLAIN, LOUD")
    refused(results["a string for an Int"], "'times'", "Int")
    refused(results["a missing required argument"], "times")
    assert greeter.calls == []


async def test_object_arguments_are_built_from_host_paths_and_secret_names(
    dagger_engine: TestEngine, greeter: Greeter, tmp_path: Path
) -> None:
    source = tmp_path / "data" / "src"
    source.mkdir(parents=True)
    (source / "one.txt").write_text("1")
    (source / "two.txt").write_text("2")
    async with started(allowed(tmp_path)) as adapter:
        counted = await call(
            adapter,
            "count_files",
            args={"source": str(source), "token": "api"},
            secrets={"api": "s3cr3t-token-value"},
        )
        outside = await call(adapter, "count_files", args={"source": "/etc", "token": "api"}, secrets={"api": "x"})
        unknown_secret = await call(adapter, "count_files", args={"source": str(source), "token": "nope"})
    assert counted.success, counted.error
    assert counted.result["value"] == "2 files; token ***"  # the secret's value is masked in results
    refused(outside, "outside the allowed host directories")
    refused(unknown_secret, "unknown secret 'nope'")
    assert len(greeter.calls) == 1


async def test_object_returns_are_resolved_or_refused_by_name(
    dagger_engine: TestEngine, greeter: Greeter, tmp_path: Path
) -> None:
    async with started(allowed(tmp_path)) as adapter:
        listing = await call(adapter, "listing")
        report = await call(adapter, "report")
        summary = await call(adapter, "summary")
    assert listing.success, listing.error
    assert listing.result["value"] == {"type": "Directory", "entries": ["a.txt", "sub/"]}
    assert report.success, report.error
    assert report.result["value"] == {"type": "File", "name": "report", "size": 9, "contents": "all good\n"}
    refused(summary, "'summary'", "returns GreeterReport", "cannot be carried in a result")
    assert [name for name, _ in greeter.calls] == ["listing", "report"]  # summary never ran


# --- injection -------------------------------------------------------------------------------

PRIVILEGED = (
    'container { from(address: "alpine") { withExec(args: ["cat", "/etc/shadow"], '
    "insecureRootCapabilities: true, experimentalPrivilegedNesting: true) { stdout } } }"
)


@pytest.mark.parametrize(
    ("where", "function", "args"),
    [
        ("function name", f'greetPerson(name: "x", times: 1) }} {PRIVILEGED} x: greeter {{ greetPerson', {}),
        (
            "argument name",
            "greet_person",
            {f'name: "x", times: 1) }} {PRIVILEGED} y: greeter {{ greetPerson(name': "z"},
        ),
        ("argument name", "greet_person", {"name": "x", "times": 1, "tone: LOUD, x": "y"}),
        ("constructor argument name", "greet_person", {"name": "x", "times": 1}),
    ],
)
async def test_crafted_names_are_refused_by_name_and_nothing_reaches_the_engine(
    dagger_engine: TestEngine, greeter: Greeter, tmp_path: Path, where: str, function: str, args: dict[str, Any]
) -> None:
    constructor_args = {f'greeting: "x") {{ {PRIVILEGED} }} q: greeter(greeting': "y"} if "constructor" in where else {}
    async with started(allowed(tmp_path)) as adapter:
        result = await call(adapter, function, args=args, constructor_args=constructor_args)
    refused(result, "has no function" if where == "function name" else "has no argument")
    assert dagger_engine.execs == []  # no exec ran, privileged or not
    assert greeter.calls == []
    assert dagger_engine.query_errors == []  # no query text was made of the names either


async def test_values_that_look_like_graphql_are_data(
    dagger_engine: TestEngine, greeter: Greeter, tmp_path: Path
) -> None:
    crafted = f'x", times: 1) {{ id }} {PRIVILEGED} #'
    async with started(allowed(tmp_path)) as adapter:
        result = await call(adapter, "greet_person", args={"name": crafted, "times": 3})
    assert result.success, result.error
    assert greeter.calls == [("greet_person", {"name": crafted, "times": 3, "tone": Tone.PLAIN, "tags": ()})]
    assert dagger_engine.execs == []


# --- which modules -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ref", "why"),
    [
        ("github.com/evil/greeter@v1", "not in this worker's allowed_modules"),
        ("github.com/acme", "not in this worker's allowed_modules"),  # the whole ref must match
        ("xgithub.com/acme/greeter", "not in this worker's allowed_modules"),
        ("github.com/acme/../evil/x", "must not contain '..'"),
        ("/", "not in this worker's allowed_modules"),
        ("github.com/acme/greeter\n@v1", "whitespace or control characters"),
    ],
)
async def test_a_module_outside_allowed_modules_is_refused_before_the_engine_hears_of_it(
    dagger_engine: TestEngine, greeter: Greeter, tmp_path: Path, ref: str, why: str
) -> None:
    async with started(allowed(tmp_path)) as adapter:
        before = dagger_engine.request_count
        result = await call(adapter, "greet_person", module=ref, args={"name": "a", "times": 1})
        assert dagger_engine.request_count == before
    refused(result, why)
    assert greeter.calls == []


async def test_without_allowed_modules_module_calls_are_refused_and_start_up_says_so(
    dagger_engine: TestEngine, greeter: Greeter, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dagger_adapter")
    async with started(adapter_config(tmp_path)) as adapter:
        result = await call(adapter, "greet_person", args={"name": "a", "times": 1})
    refused(result, "module calls are disabled on this worker (allowed_modules is empty)")
    assert "allowed_modules is empty: module calls are refused" in caplog.text
    assert greeter.calls == []


async def test_a_local_module_must_also_obey_the_path_rules(
    dagger_engine: TestEngine, greeter: Greeter, tmp_path: Path
) -> None:
    async with started(allowed(tmp_path, "./*", "/*")) as adapter:
        result = await call(adapter, "greet_person", module="/etc", args={"name": "a", "times": 1})
    refused(result, "outside the allowed host directories")


# --- versions ------------------------------------------------------------------------------------


def answering(text: str) -> Any:
    def version() -> str:
        return text

    return version


async def test_two_versions_of_a_module_each_get_a_session_of_their_own(
    engine_under_test: EngineUnderTest, tmp_path: Path
) -> None:
    engine = engine_under_test.only_test_engine("needs two registered versions of a test module")
    for version in ("v1", "v2"):
        engine.register_module(f"github.com/acme/greeter@{version}", "greeter", {"version": answering(version)})
    async with started(allowed(tmp_path)) as adapter:
        v1 = await call(adapter, "version", module="github.com/acme/greeter@v1")
        v2 = await call(adapter, "version", module="github.com/acme/greeter@v2")
        v1_again = await call(adapter, "version", module="github.com/acme/greeter@v1")
    assert [r.result["value"] for r in (v1, v2, v1_again)] == ["v1", "v2", "v1"], (v1.error, v2.error)


async def test_bound_to_one_given_session_a_second_version_is_refused_clearly(
    dagger_engine: TestEngine, tmp_path: Path
) -> None:
    for version in ("v1", "v2"):
        dagger_engine.register_module(f"github.com/acme/greeter@{version}", "greeter", {"version": answering(version)})
    async with started(allowed(tmp_path)) as adapter:
        v1 = await call(adapter, "version", module="github.com/acme/greeter@v1")
        v2 = await call(adapter, "version", module="github.com/acme/greeter@v2")
    assert v1.success and v1.result["value"] == "v1"
    refused(v2, "already loaded in this engine session from 'github.com/acme/greeter@v1'", "DAGGER_SESSION_PORT")
