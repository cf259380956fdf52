"""``TestEngine``: a Dagger engine for tests, speaking the real engine's GraphQL-over-HTTP
protocol so the real dagger-io SDK can drive it (see /work/shared/dagger-engine-protocol.md
and ``tests/dagger_engine/README.md`` for what it models)."""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import os
import secrets
import tempfile
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Unpack

import graphql

from tests.dagger_engine import validation
from tests.dagger_engine.core import EngineCore, Request
from tests.dagger_engine.evaluation import SESSION_AUTHS
from tests.dagger_engine.images import Image, ImageOptions, declare_suite_images
from tests.dagger_engine.modules import module_spec
from tests.dagger_engine.records import ExecAnswer, ExecMatch, ExecRecord, QueryProblem, exec_matches
from tests.dagger_engine.resolvers import executable_schema
from tests.dagger_engine.schema import SDL
from tests.dagger_engine.server import Listener
from tests.dagger_engine.sessions import Session

ENGINE_VERSION = "v0.21.11"  # what the dagger-io 0.21.11 SDK expects to talk to
CONTROL_ENV = "DAGGER_TEST_ENGINE_CONTROL"  # where cli.py asks a running engine for sessions
_JSON = {"Content-Type": "application/json"}


class TestEngine:
    """A threaded engine on 127.0.0.1. Every request runs in its own thread, so execs of
    concurrent pipelines overlap as they would on a real engine."""

    __test__ = False  # not a pytest test class

    def __init__(self, *, token: str | None = None, port: int = 0, version: str = ENGINE_VERSION) -> None:
        self._core = EngineCore(version)
        self._core.base_schema = executable_schema([])
        self.token = self.new_session(token)  # the session ``session_env()`` names
        self._control_key = secrets.token_hex(16)
        self._listener = Listener(self._handle, port=port)
        self._lock = threading.Lock()
        self._fail_remaining: float = 0
        self._fail_status = 500
        self._request_delay = 0.0
        self._released = threading.Event()
        self._released.set()
        self._query_errors: list[QueryProblem] = []
        self.request_count = 0  # every HTTP request received, injected failures included
        # The W3C ``traceparent`` header of each request that carried one, in arrival order (the
        # SDK puts the caller's current OpenTelemetry context on every request).
        self.traceparents: list[str] = []

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> TestEngine:
        self._core.stopping.clear()
        _warm_introspection(self._core.base_schema)
        self._listener.open()
        return self

    def stop(self) -> None:
        self._core.stopping.set()  # cuts exec and request delays short, releases a hang
        self._released.set()
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

    def session_env(self, token: str | None = None) -> dict[str, str]:
        """What the SDK needs to connect to a session (the first one by default) without
        provisioning an engine. Every connection made with one token shares its session."""
        return {"DAGGER_SESSION_PORT": str(self.port), "DAGGER_SESSION_TOKEN": token or self.token}

    # --- sessions ----------------------------------------------------------------------------

    def new_session(self, token: str | None = None) -> str:
        """Open another session on this engine (what ``dagger session`` does) and return its
        token. Sessions share the operation cache, cache volumes and images, not credentials,
        host snapshots or served modules."""
        token = token or secrets.token_hex(16)
        session = Session(token=token, schema=self._core.base_schema or executable_schema([]))
        with self._core.lock:
            self._core.sessions[token] = session
        return token

    def close_session(self, token: str) -> None:
        """End a session: its token is refused from now on (401), as after ``dagger session``
        exits."""
        with self._core.lock:
            session = self._core.sessions.pop(token, None)
        if session is not None:
            session.closed = True

    @property
    def sessions(self) -> list[str]:
        with self._core.lock:
            return list(self._core.sessions)

    def session_auths(self, token: str | None = None) -> list[tuple[str, str, str]]:
        """(registry host, username, secret name) a session holds (the first by default)."""
        return list(self._session(token or self.token).auth_records())

    def cli_env(self) -> dict[str, str]:
        """Environment for the SDK to provision sessions on *this* engine through the CLI
        stand-in (``_EXPERIMENTAL_DAGGER_CLI_BIN``): each ``dagger.Connection`` made without
        ``DAGGER_SESSION_PORT``/``DAGGER_SESSION_TOKEN`` then opens a new session here (ended
        when the SDK closes it), as a real ``dagger session`` does against one engine. Remove
        the two session variables from the environment when using this."""
        return {
            "_EXPERIMENTAL_DAGGER_CLI_BIN": str(Path(__file__).with_name("cli.py")),
            CONTROL_ENV: f"http://127.0.0.1:{self.port}/sessions#{self._control_key}",
        }

    def _control(self, method: str, path: str, headers: Mapping[str, str]) -> tuple[int, dict[str, str], bytes]:
        """``POST /sessions`` opens a session, ``DELETE /sessions/<token>`` closes one (the CLI
        stand-in's calls; authorized by the control key of ``cli_env``)."""
        given = {k.lower(): v for k, v in headers.items()}.get("authorization", "")
        if not secrets.compare_digest(given.encode(), f"Bearer {self._control_key}".encode()):
            return 401, {"Content-Type": "text/plain"}, b"unauthorized\n"
        route = path.split("?", 1)[0].rstrip("/")
        if method == "POST" and route == "/sessions":
            token = self.new_session()
            return 200, _JSON, json.dumps({"port": self.port, "session_token": token}).encode()
        if method == "DELETE" and route.startswith("/sessions/"):
            self.close_session(route.removeprefix("/sessions/"))
            return 200, _JSON, b"{}"
        return 405, {"Content-Type": "text/plain"}, b"method not allowed\n"

    def _session(self, token: str) -> Session:
        with self._core.lock:
            return self._core.sessions[token]

    # --- images ------------------------------------------------------------------------------

    def add_image(self, address: str, **options: Unpack[ImageOptions]) -> Image:
        """Declare an image (``images.ImageOptions``): ``from(address)`` pulls it (``address``
        normalized the way Docker does, so ``alpine`` is ``docker.io/library/alpine:latest``).
        ``commands`` are the executables it has (default: ``images.BASE_COMMANDS``, a
        busybox-like set; give ``[*BASE_COMMANDS, "python"]`` for more). ``credentials``
        (username, password) make it private: a pull needs them among the session's registry
        credentials."""
        return self._core.registries.add(address, **options)

    def declare_suite_images(self) -> None:
        """Declare ``images.SUITE_IMAGES`` (public, with their commands)."""
        declare_suite_images(self._core.registries)

    def move_tag(self, address: str, *, files: Mapping[str, str] | None = None) -> Image:
        """Push a new version under an existing tag: the next ``from`` resolves a new digest."""
        return self._core.registries.move_tag(address, files=files)

    def image(self, address: str) -> Image | None:
        """What ``address`` currently resolves to (None when not declared)."""
        return self._core.registries.get(address)

    def fail_pulls(self, target: str, fault: str, *, times: int | None = None) -> None:
        """Make pulls from ``target`` (a registry host like ``ghcr.io``, or an image) fail like
        the registry would: ``fault`` is one of ``images.FAULTS`` (unauthorized, forbidden,
        rate_limited, server_error, bad_gateway, unavailable); ``times`` limits how often."""
        self._core.registries.fail(target, fault, times=times)

    def clear_pull_failures(self) -> None:
        self._core.registries.clear_faults()

    @property
    def pulls(self) -> int:
        """Image resolutions asked of the registries (each ``from`` resolves)."""
        return self._core.registries.pulls

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
        """Execs that really ran, in start order (a snapshot; running ones have ``exit_code
        is None``). An exec answered from the operation cache is not run, so not here."""
        return self._core.runner.snapshot()

    @property
    def cache_hits(self) -> int:
        """Exec lookups answered from the operation cache instead of running: every call
        that re-sends a chain (``stdout()``, ``exit_code()``, ``node(id:)`` ...) counts."""
        return self._core.operations.hits

    def prune_cache(self) -> None:
        """Forget every cached operation (``dagger core engine local-cache prune``)."""
        self._core.operations.clear()

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

    def register_module(
        self,
        ref: str,
        name: str,
        functions: Mapping[str, Callable[..., Any]],
        *,
        constructor: Callable[..., Any] | None = None,
        cache: Mapping[str, str] | None = None,
    ) -> None:
        """Make ``moduleSource(refString: ref)`` resolve; once the module is served, its
        functions answer ``{ <name>(<constructor args>) { <function>(<args>) } }`` (names in
        camelCase; types from the annotations, see ``modules.py``). Calls are cached
        engine-wide unless ``cache`` says ``{"function": "session" | "never"}``."""
        with self._core.lock:
            self._core.modules[ref] = module_spec(ref, name, dict(functions), constructor, cache)

    @property
    def query_errors(self) -> list[QueryProblem]:
        """Queries refused because they do not validate against the session's schema (the
        SDK-derived API plus served modules), string values redacted."""
        with self._lock:
            return list(self._query_errors)

    def take_query_errors(self) -> list[QueryProblem]:
        """``query_errors``, cleared: for a test that sends invalid queries on purpose (the
        ``dagger_engine`` fixture fails a test that leaves any behind)."""
        with self._lock:
            taken, self._query_errors = self._query_errors, []
        return taken

    # --- failure injection -------------------------------------------------------------------

    def fail_requests(self, n: int | None, status: int = 500) -> None:
        """Answer the next ``n`` requests (every one when None: an outage, until
        ``recover()``) with HTTP ``status`` instead of serving them."""
        with self._lock:
            self._fail_remaining, self._fail_status = (float("inf") if n is None else n), status

    def recover(self) -> None:
        """End an outage, a hang and a delay: requests are served again."""
        with self._lock:
            self._fail_remaining, self._request_delay = 0, 0.0
        self._released.set()

    def hang(self) -> None:
        """Every request (those already waiting included) blocks until ``release()``,
        ``recover()`` or ``stop()``: an engine that accepts connections and never answers."""
        self._released.clear()

    def release(self) -> None:
        """Let hung requests go on (they are then served normally)."""
        self._released.set()

    @property
    def hanging(self) -> bool:
        return not self._released.is_set()

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

    def _session_for(self, headers: Mapping[str, str]) -> Session | None:
        value = {k.lower(): v for k, v in headers.items()}.get("authorization", "")
        scheme, _, encoded = value.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            username, _, _password = base64.b64decode(encoded).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        with self._core.lock:
            for token, session in self._core.sessions.items():
                if secrets.compare_digest(username.encode(), token.encode()):
                    return session
        return None

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
        while not self._released.wait(0.05):  # hung: hold the request until released
            if self._core.stopping.is_set():
                break
        with self._lock:
            if self._fail_remaining > 0:
                self._fail_remaining -= 1
                return self._fail_status, {"Content-Type": "text/plain"}, b"injected failure\n"
        if path.split("?", 1)[0].startswith("/sessions"):
            return self._control(method, path, headers)
        if path.split("?", 1)[0] != "/query":
            return 404, {"Content-Type": "text/plain"}, b"404 page not found\n"
        if method != "POST":
            return 405, {"Content-Type": "text/plain"}, b"method not allowed\n"
        session = self._session_for(headers)
        if session is None:
            return 401, {"Content-Type": "text/plain", "WWW-Authenticate": 'Basic realm="dagger"'}, b"unauthorized\n"
        try:
            payload = json.loads(body)
            if not isinstance(payload, dict):
                raise TypeError("not an object")
        except (ValueError, TypeError) as bad:
            return 400, _JSON, validation.error_body(f"json body could not be decoded: {bad}")
        refused = validation.check(session.schema, payload)
        if isinstance(refused, validation.Refusal):
            if refused.problem is not None:
                with self._lock:
                    self._query_errors.append(refused.problem)
            return refused.status, _JSON, refused.body
        try:
            response = self._execute(session, refused, payload)
        except Exception as bug:  # an engine bug: say so rather than drop the connection
            return 500, {"Content-Type": "text/plain"}, f"test engine error: {bug!r}\n".encode()
        return 200, _JSON, response

    def _execute(self, session: Session, document: graphql.DocumentNode, payload: dict[str, Any]) -> bytes:
        schema = session.schema
        if schema is self._core.base_schema and validation.is_introspection(document):
            return _introspect(schema, document)
        SESSION_AUTHS.set(session.auth_records)
        result = graphql.execute_sync(
            schema,
            document,
            context_value=Request(self._core, session),
            variable_values=payload.get("variables"),
            operation_name=payload.get("operationName"),
        )
        return json.dumps(result.formatted).encode()


# The SDK introspects on every connect, and the whole API takes graphql-core a second or two
# to introspect: the core schema's answer never changes, so it is computed once per process,
# and kept in a file named by its inputs' hash, so engines in their own process (the CLI
# stand-in) answer at once too.
_introspection_lock = threading.Lock()
_introspection: dict[str, bytes] = {}  # query -> the JSON answer
_warming: list[threading.Thread] = []


def _introspect(schema: graphql.GraphQLSchema, document: graphql.DocumentNode) -> bytes:
    query = graphql.print_ast(document)
    with _introspection_lock:
        if query not in _introspection:
            digest = hashlib.sha256(f"{SDL}\0{query}".encode()).hexdigest()[:24]
            path = Path(tempfile.gettempdir()) / f"dagger-test-engine-introspection-{digest}.json"
            try:
                _introspection[query] = path.read_bytes()
            except OSError:
                result = graphql.execute_sync(schema, document)
                if result.errors:
                    return json.dumps(result.formatted).encode()
                _introspection[query] = json.dumps(result.formatted).encode()
                with contextlib.suppress(OSError):
                    partial = path.with_suffix(f".{os.getpid()}.tmp")
                    partial.write_bytes(_introspection[query])
                    partial.replace(path)  # atomic: concurrent writers write the same bytes
        return _introspection[query]


def _warm_introspection(schema: graphql.GraphQLSchema | None) -> None:
    """Answer the SDK's introspection query once in the background (first engine only)."""
    if schema is None or _warming:
        return
    import gql.utilities  # slow to import; not needed before the first engine starts

    query = gql.utilities.get_introspection_query_ast()  # what the SDK's gql client sends
    thread = threading.Thread(target=_introspect, args=(schema, query), name="introspection-warmup", daemon=True)
    _warming.append(thread)
    thread.start()
