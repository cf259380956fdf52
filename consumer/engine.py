"""The process's sessions with the Dagger engine, shared by concurrent executions.

Why ``dagger.Connection`` (the SDK's isolated client) and not ``dagger.connection()`` + the
global ``dag``: the global one is a process-wide singleton that keeps its connection
parameters after a failed connect until ``dagger.close()``, and every execution would share
one mutable global. A long-lived service needs to *replace* a broken connection while other
executions still hold the old one; with an isolated client each generation is an object we
own: executions borrow the current one, a failure marks it stale, the next borrower opens a
fresh one, and the stale one is closed when its last borrower returns it.

A real engine keeps registry credentials and served modules per *session*, so there is not
one connection but a small pool, one per ``SessionKey`` (see there); through the dagger CLI
each connection is a session of its own. Handed one existing session (``DAGGER_SESSION_PORT``)
the pool cannot isolate anything, and says so instead of mixing credentials.

SDK configuration: ``retry=None`` -- our ``RetryHandler`` is the only retry layer (the SDK's
own gql retry would stall 15-20 s per failure and hide attempts from our policy and the
broker); a connect timeout from ``engine_connect_timeout_seconds``; an execute (read)
timeout equal to the worker's ``timeout_seconds`` as a backstop under each command's own
deadline; ``log_output=None`` (engine logs are not mixed into ours).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
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

from consumer.coalesce import Coalescer
from consumer.errors import permanent

log = logging.getLogger("dagger_adapter.engine")

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


@dataclass(frozen=True)
class ExecOutput:
    exit_code: int
    stdout: str
    stderr: str
    container: dagger.Container  # the container after the exec, by its ID (as ``sync`` returns it)


@dataclass(frozen=True, slots=True)
class SessionKey:
    """Which engine session an execution needs.

    A real engine keeps registry credentials (``withRegistryAuth``) per *session*, and lets a
    session load one version of a module only. So executions are grouped: tasks with the same
    registry credentials share a session (``credentials``: a digest of the set; ``""``: none,
    a session that never saw any), and each module ref gets a session of its own."""

    credentials: str = ""
    module: str = ""


MAIN = SessionKey()
# The pool's bound and how long an unused session stays open. Each session is one
# ``dagger session`` process of the CLI (a few tens of MB) and its own engine-side state;
# reopening one costs a connect (~1 s). See README "Engine sessions".
MAX_SESSIONS = 8
IDLE_SECONDS = 300.0


def given_session() -> bool:
    """True when the SDK is handed one existing session (``DAGGER_SESSION_PORT``): every
    connection then lands in that same session and the pool cannot isolate anything."""
    return bool(os.environ.get("DAGGER_SESSION_PORT"))


class _Generation:
    """One opened session and the executions currently using it."""

    def __init__(self, key: SessionKey, connection: dagger.Connection, client: dagger.Client) -> None:
        self.key = key
        self.connection = connection
        self.client = client
        self.users = 0
        self.stale = False
        self.last_used = time.monotonic()
        self.modules: dict[str, Any] = {}  # module ref -> its binding (typedefs), once served
        self.modules_lock = asyncio.Lock()
        # Image reference -> its digest now, one look-up at a time (``consumer.coalesce``).
        self.image_refs: Coalescer[str] = Coalescer()


class DaggerEngine:
    def __init__(
        self,
        *,
        connect_timeout: float,
        execute_timeout: float,
        max_sessions: int = MAX_SESSIONS,
        idle_seconds: float = IDLE_SECONDS,
        max_connections: int = 100,
    ) -> None:
        self._connect_timeout = connect_timeout
        self._execute_timeout = execute_timeout
        # The SDK's HTTP pool (httpx's default: 100 connections, 20 kept alive) queues every
        # request past its size, and with many executions the queue's bookkeeping eats the
        # worker's CPU; sized to the executions in flight, nothing waits for a connection.
        self.max_connections = max_connections
        self._max_sessions = max(1, max_sessions)
        self._idle_seconds = idle_seconds
        self._sessions: dict[SessionKey, _Generation] = {}
        self._changed = asyncio.Condition()
        self._closing: set[asyncio.Task[None]] = set()
        self._request_listeners: list[RequestListener] = []

    @property
    def connected(self) -> bool:
        return any(not g.stale for g in self._sessions.values())

    @property
    def session_count(self) -> int:
        """Sessions open now (the pool's size)."""
        return sum(1 for g in self._sessions.values() if not g.stale)

    def _config(self) -> dagger.Config:
        return dagger.Config(
            timeout=dagger.Timeout(self._execute_timeout, connect=self._connect_timeout),
            retry=None,
            log_output=None,
        )

    def _resolve_key(self, key: SessionKey) -> SessionKey:
        if not given_session():
            return key
        if key.credentials:
            raise permanent(
                "registry_auth needs an engine session of its own (a real engine keeps registry "
                "credentials per session), and this worker is bound to one given session "
                "(DAGGER_SESSION_PORT); run the worker with the dagger CLI instead"
            )
        return MAIN  # modules: one version per ref is checked when it is served

    async def _open(self, key: SessionKey) -> _Generation:
        async with self._changed:
            while True:
                self._close_idle()
                current = self._sessions.get(key)
                if current is not None and not current.stale:
                    current.users += 1
                    return current
                if len(self._sessions) < self._max_sessions or self._evict_one():
                    break
                await self._changed.wait()  # every session busy: wait for one to be returned
            connection = dagger.Connection(self._config())
            try:
                with _http_pool(self.max_connections):
                    client = await connection.__aenter__()
            except BaseException:
                with contextlib.suppress(Exception):
                    await connection.close()  # type: ignore[no-untyped-call]
                raise
            self._observe_requests(client)
            generation = _Generation(key, connection, client)
            generation.users += 1
            self._sessions[key] = generation
            log.info("opened an engine session (%d open)", len(self._sessions))
            return generation

    def _close_idle(self) -> None:
        now = time.monotonic()
        for key, generation in list(self._sessions.items()):
            idle = generation.users == 0 and now - generation.last_used > self._idle_seconds
            if generation.stale or (idle and key != MAIN):
                self._forget(generation)

    def _evict_one(self) -> bool:
        idle = [g for g in self._sessions.values() if g.users == 0]
        if not idle:
            return False
        self._forget(min(idle, key=lambda g: g.last_used))
        return True

    def _forget(self, generation: _Generation) -> None:
        generation.stale = True
        if self._sessions.get(generation.key) is generation:
            del self._sessions[generation.key]
        if generation.users == 0:
            self._close_later(generation)

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
        """Open the main session now (otherwise the first execution opens it)."""
        async with self.session():
            pass

    @contextlib.asynccontextmanager
    async def session(self, key: SessionKey = MAIN) -> AsyncIterator[EngineSession]:
        """Borrow the session for ``key`` (opened on first use) for one execution attempt."""
        generation = await self._open(self._resolve_key(key))
        try:
            yield EngineSession(self, generation)
        finally:
            generation.users -= 1
            generation.last_used = time.monotonic()
            if generation.stale and generation.users == 0:
                self._close_later(generation)
            async with self._changed:
                self._changed.notify_all()

    def discard(self, generation: _Generation) -> None:
        """After an engine failure: the next execution opens a fresh session."""
        if generation.stale:
            return
        log.info("dropping an engine session after an engine failure; the next execution reconnects")
        self._forget(generation)

    def _close_later(self, generation: _Generation) -> None:
        task = asyncio.get_running_loop().create_task(_close(generation))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        generations, self._sessions = list(self._sessions.values()), {}
        for generation in generations:
            generation.stale = True
        await asyncio.gather(*(_close(g) for g in generations), return_exceptions=True)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)


class EngineSession:
    """What an execution attempt holds: the client, and a way to report the engine broken."""

    def __init__(self, engine: DaggerEngine, generation: _Generation) -> None:
        self._engine = engine
        self._generation = generation
        self.client: dagger.Client = generation.client

    @property
    def modules(self) -> dict[str, Any]:
        """Modules served in this session (ref -> binding); guarded by ``modules_lock``."""
        return self._generation.modules

    @property
    def modules_lock(self) -> asyncio.Lock:
        return self._generation.modules_lock

    def discard(self) -> None:
        self._engine.discard(self._generation)

    async def image_ref(self, key: str, look_up: Callable[[], Awaitable[str]]) -> str:
        """The digest-pinned reference of the image ``key`` names, as the engine resolves it now:
        concurrent look-ups of one image in this session share a request (``consumer.coalesce``)."""
        return await self._generation.image_refs.get(key, look_up)

    async def exec_output(self, container: dagger.Container) -> ExecOutput:
        """Run ``container``'s exec and read its ID, exit code, stdout and stderr in one request:
        the SDK's own selection of several fields on the chain it built (every value serialised
        by the SDK), where ``sync`` and a request per field take four."""
        ctx = container._ctx.select_multiple(
            "Container", id="id", exit_code="exitCode", stdout="stdout", stderr="stderr"
        )
        fields = await ctx.execute(dict[str, Any])
        # Later reads (directories, files) refer to the exec by its ID, as after ``sync``.
        synced = dagger.Container(self.client._ctx.select_id("Container", fields["id"]))
        return ExecOutput(
            exit_code=fields["exit_code"], stdout=fields["stdout"], stderr=fields["stderr"], container=synced
        )

    async def execute(self, query: str, variables: dict[str, Any]) -> dict[str, Any]:
        """A query whose text the caller built from the engine's own type definitions, with
        every value in ``variables``. The SDK builds no query for fields it did not introspect
        (a served module's functions appear after ``serve()``), so it goes through the
        connection's own session."""
        return await self._execute(query, variables)

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
