"""``TestEngine``: a Dagger engine for tests, speaking the real engine's GraphQL-over-HTTP
protocol so the real dagger-io SDK can drive it (see /work/shared/dagger-engine-protocol.md)."""

from __future__ import annotations

import base64
import binascii
import json
import secrets
import threading
from collections.abc import Callable, Mapping
from typing import Any

import graphql

from tests.dagger_engine import validation
from tests.dagger_engine.core import EngineCore
from tests.dagger_engine.modules import module_spec
from tests.dagger_engine.records import ExecAnswer, ExecMatch, ExecRecord, QueryProblem, exec_matches
from tests.dagger_engine.resolvers import executable_schema
from tests.dagger_engine.server import Listener

ENGINE_VERSION = "v0.21.11"  # what the dagger-io 0.21.11 SDK expects to talk to
_JSON = {"Content-Type": "application/json"}
_INTROSPECTION_FIELDS = {"__schema", "__type", "__typename"}


class TestEngine:
    """A threaded engine on 127.0.0.1. Every request runs in its own thread, so execs of
    concurrent pipelines overlap as they would on a real engine."""

    __test__ = False  # not a pytest test class

    def __init__(self, *, token: str | None = None, port: int = 0, version: str = ENGINE_VERSION) -> None:
        self.token = token or secrets.token_hex(16)
        self._core = EngineCore(version)
        self._core.schema = executable_schema([])
        self._listener = Listener(self._handle, port=port)
        self._lock = threading.Lock()
        self._fail_remaining = 0
        self._fail_status = 500
        self._request_delay = 0.0
        self._query_errors: list[QueryProblem] = []
        self.request_count = 0  # every HTTP request received, injected failures included
        # The W3C ``traceparent`` header of each request that carried one, in arrival order (the
        # SDK puts the caller's current OpenTelemetry context on every request).
        self.traceparents: list[str] = []

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> TestEngine:
        self._core.stopping.clear()
        self._listener.open()
        return self

    def stop(self) -> None:
        self._core.stopping.set()  # cuts exec and request delays short
        self._listener.close()

    def __enter__(self) -> TestEngine:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._listener.port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/query"

    def session_env(self) -> dict[str, str]:
        """What the SDK needs to connect without provisioning an engine."""
        return {"DAGGER_SESSION_PORT": str(self.port), "DAGGER_SESSION_TOKEN": self.token}

    # --- execs -------------------------------------------------------------------------------

    def on_exec(self, match: ExecMatch, outcome: ExecAnswer, *, times: int | None = None) -> None:
        """Answer execs matching ``match`` (an args prefix, or a predicate on the ExecRecord)
        with ``outcome`` (an ExecOutcome, or a function of the ExecRecord). The latest matching
        rule wins; ``times`` limits how often a rule applies."""
        self._core.runner.add_rule(match, outcome, times)

    def clear_exec_rules(self) -> None:
        self._core.runner.clear_rules()

    @property
    def execs(self) -> list[ExecRecord]:
        """Execs in start order (a snapshot; running ones have ``exit_code is None``)."""
        return self._core.runner.snapshot()

    @property
    def current_execs(self) -> int:
        return self._core.runner.current

    @property
    def max_concurrent_execs(self) -> int:
        return self._core.runner.max_concurrent

    def wait_for_exec(self, match: ExecMatch | None = None, *, timeout: float = 10.0) -> ExecRecord:
        """Block until an exec matching ``match`` (any when None) has started; return it."""
        found: list[ExecRecord] = []

        def started() -> bool:
            found[:] = [r for r in self._core.runner.records if match is None or exec_matches(match, r)]
            return bool(found)

        if not self._core.runner.wait_for(started, timeout):
            raise TimeoutError(f"no matching exec started within {timeout} s")
        return found[0]

    def wait_until(self, predicate: Callable[[], bool], *, timeout: float = 10.0) -> None:
        """Block until ``predicate()`` holds; it is checked whenever an exec starts or ends."""
        if not self._core.runner.wait_for(predicate, timeout):
            raise TimeoutError(f"condition not met within {timeout} s")

    # --- other state -------------------------------------------------------------------------

    @property
    def exports(self) -> list[tuple[str, dict[str, str]]]:
        """``(host path, {relative path: text})`` per export (a File export: ``{file name: text}``)."""
        with self._core.lock:
            return list(self._core.exports)

    def secret_plaintext(self, name: str) -> str | None:
        """The value a secret of that name was given (tests only: records hold names)."""
        return self._core.secret_plaintext(name)

    def cache_volume(self, key: str) -> dict[str, str]:
        """Files in a cache volume (relative path -> text)."""
        return self._core.caches.snapshot(key)

    def register_module(self, ref: str, name: str, functions: Mapping[str, Callable[..., Any]]) -> None:
        """Make ``moduleSource(refString: ref)`` resolve; once the module is served, its
        functions answer ``{ <name> { <function>(<args>) } }`` (names in camelCase)."""
        with self._core.lock:
            self._core.modules[ref] = module_spec(ref, name, dict(functions))

    @property
    def query_errors(self) -> list[QueryProblem]:
        with self._lock:
            return list(self._query_errors)

    # --- failure injection -------------------------------------------------------------------

    def fail_requests(self, n: int, status: int = 500) -> None:
        """Answer the next ``n`` requests with HTTP ``status`` instead of serving them."""
        with self._lock:
            self._fail_remaining, self._fail_status = n, status

    def delay_requests(self, seconds: float) -> None:
        """Hold every request ``seconds`` before serving it (0 to stop)."""
        with self._lock:
            self._request_delay = seconds

    def refuse(self) -> None:
        """Stop listening and drop open connections: clients get "connection refused"."""
        self._listener.close()

    def accept(self) -> None:
        """Listen again, on the same port."""
        self._listener.open()

    # --- the protocol ------------------------------------------------------------------------

    def _authorized(self, headers: Mapping[str, str]) -> bool:
        value = {k.lower(): v for k, v in headers.items()}.get("authorization", "")
        scheme, _, encoded = value.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            username, _, _password = base64.b64decode(encoded).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        return secrets.compare_digest(username, self.token)

    def _handle(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        traceparent = {k.lower(): v for k, v in headers.items()}.get("traceparent")
        with self._lock:
            self.request_count += 1
            if traceparent is not None:
                self.traceparents.append(traceparent)
            delay = self._request_delay
        if delay > 0:
            self._core.stopping.wait(delay)
        with self._lock:
            if self._fail_remaining > 0:
                self._fail_remaining -= 1
                return self._fail_status, {"Content-Type": "text/plain"}, b"injected failure\n"
        if path.split("?", 1)[0] != "/query":
            return 404, {"Content-Type": "text/plain"}, b"404 page not found\n"
        if method != "POST":
            return 405, {"Content-Type": "text/plain"}, b"method not allowed\n"
        if not self._authorized(headers):
            return 401, {"Content-Type": "text/plain", "WWW-Authenticate": 'Basic realm="dagger"'}, b"unauthorized\n"
        try:
            payload = json.loads(body)
            document = graphql.parse(payload["query"])
        except (ValueError, KeyError, TypeError, graphql.GraphQLError) as bad:
            return 400, _JSON, json.dumps({"errors": [{"message": f"bad request: {bad}"}]}).encode()
        try:
            response = self._execute(document, payload)
        except Exception as bug:  # an engine bug: say so rather than drop the connection
            return 500, {"Content-Type": "text/plain"}, f"test engine error: {bug!r}\n".encode()
        return 200, _JSON, json.dumps(response).encode()

    def _execute(self, document: graphql.DocumentNode, payload: dict[str, Any]) -> dict[str, Any]:
        core = self._core
        fields = validation.top_level_fields(document)
        module_fields = {m.field_name for m in core.modules.values()}
        if not fields <= _INTROSPECTION_FIELDS and not fields & module_fields:
            problem = validation.problems(document)
            if problem is not None:
                with self._lock:
                    self._query_errors.append(QueryProblem(*problem))
        schema = core.schema
        assert schema is not None
        errors = graphql.validate(schema, document)
        if errors:
            return {"errors": [e.formatted for e in errors]}
        result = graphql.execute_sync(
            schema,
            document,
            context_value=core,
            variable_values=payload.get("variables"),
            operation_name=payload.get("operationName"),
        )
        return dict(result.formatted)
