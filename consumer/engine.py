"""The process's one connection to the Dagger engine, shared by concurrent executions.

Why ``dagger.Connection`` (the SDK's isolated client) and not ``dagger.connection()`` + the
global ``dag``: the global one is a process-wide singleton that keeps its connection
parameters after a failed connect until ``dagger.close()``, and every execution would share
one mutable global. A long-lived service needs to *replace* a broken connection while other
executions still hold the old one; with an isolated client each generation is an object we
own: executions borrow the current one, a failure marks it stale, the next borrower opens a
fresh one, and the stale one is closed when its last borrower returns it.

SDK configuration: ``retry=None`` -- our ``RetryHandler`` is the only retry layer (the SDK's
own gql retry would stall 15-20 s per failure and hide attempts from our policy and the
broker); a connect timeout from ``engine_connect_timeout_seconds``; an execute (read)
timeout equal to the worker's ``timeout_seconds`` as a backstop under each command's own
deadline; ``log_output=None`` (engine logs are not mixed into ours).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import dagger
import dagger.client._session as sdk_session
import gql
import httpx
from dagger._exceptions import _query_error_from_transport
from gql.transport.exceptions import (
    TransportClosed,
    TransportConnectionFailed,
    TransportProtocolError,
    TransportQueryError,
    TransportServerError,
)

log = logging.getLogger(__name__)

# ``(seconds, http_status)`` of each GraphQL request to the engine, up to its response headers.
RequestListener = Callable[[float, int], None]

# gql logs every request and response body at DEBUG; queries carry secrets inline
# (setSecret(plaintext: ...)), so those loggers must never print, whatever the log level.
for _name in ("gql.transport.httpx", "gql.transport.common.base", "gql.client", "gql.dsl"):
    logging.getLogger(_name).setLevel(logging.WARNING)


def _share_the_sdk_converter() -> None:
    """The SDK builds a new cattrs converter for every ``Context`` — every chained call and every
    query — at ~20 % of a worker's CPU. Its one per-context part is a hook that structures query
    results into SDK objects bound to that context, which the generated client never uses (object
    lists are loaded by ID); so one converter, with the same settings and enum hooks and without
    that hook (structuring an SDK object then fails loudly instead of binding the wrong context),
    serves every context. Pinned to the SDK minor version this was checked against."""
    from cattrs.preconf.json import make_converter as make_json_converter
    from dagger.client import _core

    converter = make_json_converter(omit_if_default=True, detailed_validation=False)
    _core.configure_converter_enum(converter)
    _core.make_converter = lambda _ctx: converter  # type: ignore[assignment]


_share_the_sdk_converter()

# An exec's three results in one request, instead of sync + exitCode + stdout + stderr (four).
# Fixed text: the container travels as a variable (its engine ID), never as message text.
EXEC_OUTPUT_QUERY = gql.gql(
    "query ExecOutput($id: ID!) { node(id: $id) { ... on Container { exitCode stdout stderr } } }"
)


@dataclass(frozen=True)
class ExecOutput:
    exit_code: int
    stdout: str
    stderr: str
    container: dagger.Container  # the container after the exec, by its ID (as ``sync`` returns it)


class _Generation:
    """One opened connection and the executions currently using it."""

    def __init__(self, connection: dagger.Connection, client: dagger.Client) -> None:
        self.connection = connection
        self.client = client
        self.users = 0
        self.stale = False
        self.modules: dict[str, str] = {}  # module ref -> its GraphQL field, once served
        self.modules_lock = asyncio.Lock()


class DaggerEngine:
    def __init__(self, *, connect_timeout: float, execute_timeout: float, max_connections: int = 100) -> None:
        self._connect_timeout = connect_timeout
        self._execute_timeout = execute_timeout
        # The SDK's HTTP pool (httpx's default: 100 connections, 20 kept alive) queues every
        # request past its size, and with many executions the queue's bookkeeping eats the
        # worker's CPU; sized to the executions in flight, nothing waits for a connection.
        self.max_connections = max_connections
        self._current: _Generation | None = None
        self._lock = asyncio.Lock()
        self._closing: set[asyncio.Task[None]] = set()
        self._request_listeners: list[RequestListener] = []

    @property
    def connected(self) -> bool:
        return self._current is not None and not self._current.stale

    def _config(self) -> dagger.Config:
        return dagger.Config(
            timeout=dagger.Timeout(self._execute_timeout, connect=self._connect_timeout),
            retry=None,
            log_output=None,
        )

    async def _open(self) -> _Generation:
        async with self._lock:
            current = self._current
            if current is not None and not current.stale:
                return current
            connection = dagger.Connection(self._config())
            try:
                with _http_pool(self.max_connections):
                    client = await connection.__aenter__()
            except BaseException:
                with contextlib.suppress(Exception):
                    await connection.close()  # type: ignore[no-untyped-call]
                raise
            self._observe_requests(client)
            self._current = _Generation(connection, client)
            log.info("connected to the Dagger engine")
            return self._current

    def add_request_listener(self, listener: RequestListener) -> None:
        """``listener(seconds, status)`` after every request to the engine (metrics)."""
        self._request_listeners.append(listener)

    def _observe_requests(self, client: dagger.Client) -> None:
        """Time the connection's HTTP requests with httpx event hooks on the SDK's client (the SDK
        opens it with gql's httpx transport and offers no hook of its own)."""
        if not self._request_listeners:
            return
        try:  # the isolated client's connection -> gql client -> its httpx transport's client
            gql_client: Any = client._ctx.conn.session.client
            http = gql_client.transport.client
        except AttributeError:
            http = None
        if not isinstance(http, httpx.AsyncClient):
            log.info("engine request timing unavailable: unexpected SDK transport")
            return
        started: weakref.WeakKeyDictionary[httpx.Request, float] = weakref.WeakKeyDictionary()
        listeners = self._request_listeners

        async def on_request(request: httpx.Request) -> None:
            started[request] = time.monotonic()

        async def on_response(response: httpx.Response) -> None:
            t0 = started.pop(response.request, None)
            if t0 is None:
                return
            seconds = time.monotonic() - t0
            for listener in listeners:
                try:
                    listener(seconds, response.status_code)
                except Exception:
                    log.exception("engine request listener failed")

        hooks = http.event_hooks
        http.event_hooks = {
            "request": [*hooks.get("request", []), on_request],
            "response": [*hooks.get("response", []), on_response],
        }

    async def connect(self) -> None:
        """Open the connection now (otherwise the first execution opens it)."""
        await self._open()

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[EngineSession]:
        """Borrow the current connection for one execution attempt."""
        generation = await self._open()
        generation.users += 1
        try:
            yield EngineSession(self, generation)
        finally:
            generation.users -= 1
            if generation.stale and generation.users == 0:
                self._close_later(generation)

    def discard(self, generation: _Generation) -> None:
        """After an engine failure: the next execution opens a fresh connection."""
        if generation.stale:
            return
        generation.stale = True
        if self._current is generation:
            self._current = None
        log.info("dropping the engine connection after an engine failure; the next execution reconnects")
        if generation.users == 0:
            self._close_later(generation)

    def _close_later(self, generation: _Generation) -> None:
        task = asyncio.get_running_loop().create_task(_close(generation))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        generation, self._current = self._current, None
        if generation is not None:
            generation.stale = True
            await _close(generation)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)


class EngineSession:
    """What an execution attempt holds: the client, and a way to report the engine broken."""

    def __init__(self, engine: DaggerEngine, generation: _Generation) -> None:
        self._engine = engine
        self._generation = generation
        self.client: dagger.Client = generation.client

    def discard(self) -> None:
        self._engine.discard(self._generation)

    async def exec_output(self, container: dagger.Container) -> ExecOutput:
        """Run ``container``'s exec and read its exit code, stdout and stderr: two requests (the
        chain's ID, then one fixed query), where ``sync`` and a request per field take four."""
        container_id = await container.id()
        data = await self._execute(EXEC_OUTPUT_QUERY, {"id": container_id})
        node = data["node"]
        # Later reads (directories, files) refer to the exec by its ID, as after ``sync``.
        synced = dagger.Container(self.client._ctx.select_id("Container", container_id))
        return ExecOutput(exit_code=node["exitCode"], stdout=node["stdout"], stderr=node["stderr"], container=synced)

    async def _execute(self, query: Any, variables: dict[str, Any]) -> dict[str, Any]:
        """A fixed query through this connection, its failures raised as the SDK raises them
        (``ExecError``, ``QueryError``, ``TransportError``) so they classify alike."""
        request = gql.GraphQLRequest(query, variable_values=variables)
        try:
            result: dict[str, Any] = await self.client._ctx.conn.session.execute(request)
        except TransportClosed as exc:
            raise dagger.TransportError("Connection to engine has been closed.") from exc
        except (TransportProtocolError, TransportServerError) as exc:
            raise dagger.TransportError(f"Unexpected response from engine: {exc}") from exc
        except TransportConnectionFailed as exc:
            timed_out = isinstance(exc.__cause__, httpx.TimeoutException)
            message = str(exc) or ("Request timed out." if timed_out else "Failed to execute request")
            raise dagger.TransportError(message) from exc
        except TransportQueryError as exc:
            error = _query_error_from_transport(exc, request)
            if error is not None:
                raise error from exc
            raise
        return result

    async def call_function(self, module_ref: str, function: str, args: dict[str, Any]) -> Any:
        """Call ``function`` of the Dagger module ``module_ref`` with JSON-like ``args``.

        The SDK has no public helper for a call given as data: the module is loaded and
        served into this session once (``serve()`` is once per session), then the function is
        queried as ``{ <module> { <function>(args) } }`` through the connection's own session.
        """
        field = await self._served_field(module_ref)
        arguments = ", ".join(f"{_camel(k)}: {_graphql_literal(v)}" for k, v in args.items())
        call = f"{_camel(function)}({arguments})" if arguments else _camel(function)
        query = gql.gql(f"{{ {field} {{ {call} }} }}")
        # The isolated client's connection: the SDK builds no query for fields it did not
        # introspect (module functions appear after serve()), so the raw request goes here.
        result = await self.client._ctx.conn.session.execute(query)
        return result[field][_camel(function)]

    async def _served_field(self, module_ref: str) -> str:
        generation = self._generation
        async with generation.modules_lock:
            if module_ref not in generation.modules:
                module = self.client.module_source(module_ref).as_module()
                name = await module.name()
                await module.serve()
                generation.modules[module_ref] = _camel(name)
            return generation.modules[module_ref]


# Connections per httpcore pool. httpcore looks at every connection of its pool on each request
# (to drop expired ones and assign the request), so one pool of thousands costs O(connections)
# per request: past this size, requests are spread over several pools instead.
SHARD_CONNECTIONS = 64


@contextlib.contextmanager
def _http_pool(max_connections: int) -> Iterator[None]:
    """While a connection opens, the SDK builds its HTTP transport with room for
    ``max_connections`` requests at once: the SDK has no setting for it, so its transport class
    is swapped for a factory of a sized one just then."""
    original = sdk_session.TelemetryTransport
    shards = max(1, -(-max_connections // SHARD_CONNECTIONS))
    per_shard = -(-max_connections // shards)
    limits = httpx.Limits(max_connections=per_shard, max_keepalive_connections=per_shard)

    def sized(**kwargs: Any) -> httpx.AsyncBaseTransport:
        if shards == 1:
            return original(limits=limits, **kwargs)
        return ShardedTransport([original(limits=limits, **kwargs) for _ in range(shards)])

    sdk_session.TelemetryTransport = sized  # type: ignore[assignment, misc]
    try:
        yield
    finally:
        sdk_session.TelemetryTransport = original  # type: ignore[misc]


class ShardedTransport(httpx.AsyncBaseTransport):
    """Each request goes to the pool with the fewest requests in flight; a request counts until
    its response is closed."""

    def __init__(self, shards: list[httpx.AsyncBaseTransport]) -> None:
        self._shards = shards
        self._in_flight = [0] * len(shards)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        index = min(range(len(self._shards)), key=self._in_flight.__getitem__)
        self._in_flight[index] += 1
        try:
            response = await self._shards[index].handle_async_request(request)
        except BaseException:
            self._in_flight[index] -= 1
            raise
        response.stream = _ReleasingStream(response.stream, lambda: self._release(index))
        return response

    def _release(self, index: int) -> None:
        self._in_flight[index] -= 1

    async def aclose(self) -> None:
        for shard in self._shards:
            await shard.aclose()


class _ReleasingStream(httpx.AsyncByteStream):
    def __init__(self, stream: Any, on_close: Any) -> None:
        self._stream = stream
        self._on_close = on_close

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            if self._on_close is not None:
                self._on_close, on_close = None, self._on_close
                on_close()


async def _close(generation: _Generation) -> None:
    try:
        await generation.connection.close()  # type: ignore[no-untyped-call]
    except Exception as exc:  # closing a broken connection may fail too; nothing to do about it
        log.debug("closing a stale engine connection: %s", type(exc).__name__)


def _camel(name: str) -> str:
    """A module, function or argument name as GraphQL spells it (snake/kebab -> lowerCamel)."""
    parts = [p for p in re.split(r"[-_]", name) if p]
    if not parts:
        return name
    return parts[0][:1].lower() + parts[0][1:] + "".join(p[:1].upper() + p[1:] for p in parts[1:])


def _graphql_literal(value: Any) -> str:
    """A JSON-like value as a GraphQL literal (JSON's string escapes are valid GraphQL)."""
    if value is None or isinstance(value, bool | int | float | str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_graphql_literal(v) for v in value) + "]"
    raise TypeError(
        f"unsupported function argument type {type(value).__name__} (use strings, numbers, booleans, lists)"
    )
