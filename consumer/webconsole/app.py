"""The console's ASGI application (Starlette): pages rendered on the server with Jinja2
(autoescaped: everything from messages is text), live updates over server-sent events, and a
little vanilla JavaScript (``static/console.js``) that refetches server-rendered fragments."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, timedelta
from pathlib import Path
from urllib.parse import quote, urlsplit

import aiormq
import jinja2
import msgspec
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from consumer.cli.console import ago, seconds_text
from consumer.client import ClientError, DeadLetterNotFound
from consumer.config import DaggerAdapterConfig
from consumer.webconsole import views_dead_letters, views_live, views_submit
from consumer.webconsole.hub import DEFAULT_BACKFILL, Hub, Notice
from consumer.webconsole.pages import Console, console_of, flash, mutation, text_value
from consumer.webconsole.security import LOCAL_HOSTS, Access, Role, csrf_ok, safe_next

HERE = Path(__file__).parent
SESSION_COOKIE = "dagger_console"
SESSION_MAX_AGE = 12 * 3600
SSE_PING_SECONDS = 15

# Defence in depth next to autoescaping: no inline script or style, nothing from elsewhere.
SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "base-uri 'none'; form-action 'self'; frame-ancestors 'none'; object-src 'none'"
    ),
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}


# --- access: the gate every request passes ---
class Gate:
    """Pure ASGI middleware (streaming responses pass untouched): security headers on every
    response; a request whose role is below viewer gets 401 and the sign-in page."""

    OPEN_PATHS = ("/login",)
    OPEN_PREFIXES = ("/static/",)

    def __init__(self, app: ASGIApp, access: Access) -> None:
        self.app = app
        self.access = access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {k.lower() for k, _ in headers}
                for name, value in SECURITY_HEADERS.items():
                    if name.encode() not in present:
                        headers.append((name.encode(), value.encode()))
                message["headers"] = headers
            await send(message)

        path: str = scope["path"]
        request = Request(scope)
        if self.access.anonymous != Role.NONE and not _local_host(request.headers.get("host", "")):
            # Open to anyone on this machine: refuse other Host names (a DNS-rebinding page).
            await PlainTextResponse("unknown host", 400)(scope, receive, with_headers)
            return
        if path not in self.OPEN_PATHS and not path.startswith(self.OPEN_PREFIXES):
            if self.access.role_of(request) < Role.VIEWER:
                response = await _unauthorised(request)
                await response(scope, receive, with_headers)
                return
        await self.app(scope, receive, with_headers)


def _local_host(host: str) -> bool:
    try:
        name = urlsplit("//" + host).hostname or ""
    except ValueError:
        return False
    return name in LOCAL_HOSTS


async def _unauthorised(request: Request) -> Response:
    wants_html = "text/html" in request.headers.get("accept", "") and request.url.path != "/events"
    if wants_html:
        console = console_of(request)
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return console.render(request, "login.html", {"next": target, "failed": False}, 401)
    return JSONResponse({"error": "a console token is required"}, 401, headers={"www-authenticate": "Bearer"})


# --- sign in / out ---
async def login_page(request: Request) -> Response:
    console = console_of(request)
    return console.render(request, "login.html", {"next": safe_next(request.query_params.get("next")), "failed": False})


async def login(request: Request) -> Response:
    console = console_of(request)
    form = await request.form(max_files=0, max_fields=10)
    if not csrf_ok(request, text_value(form.get("csrf_token"))):
        return console.render(request, "login.html", {"next": "/", "failed": True, "stale": True}, 403)
    role = console.access.role_for(text_value(form.get("token")))
    target = safe_next(text_value(form.get("next")))
    if role == Role.NONE:
        return console.render(request, "login.html", {"next": target, "failed": True}, 401)
    request.session.clear()
    request.session["role"] = int(role)
    request.session["csrf"] = secrets.token_urlsafe(32)  # a fresh one for the signed-in session
    flash(request, f"signed in as {role.name.lower()}")
    return RedirectResponse(target, 303)


@mutation(Role.NONE)
async def logout(request: Request) -> Response:
    request.session.clear()
    return RedirectResponse("/", 303)


@mutation(Role.VIEWER)
async def broker_retry(request: Request) -> Response:
    console_of(request).hub.retry_now()
    back = urlsplit(request.headers.get("referer", ""))
    same_site = back.netloc == request.headers.get("host")
    return RedirectResponse(safe_next(back.path if same_site else "/"), 303)


async def banner_fragment(request: Request) -> Response:
    return console_of(request).render(request, "_banner.html")


# --- live: server-sent events ---
async def events(request: Request) -> Response:
    """Names of what changed (fleet, flow with its task id, broker); pages refetch fragments."""
    hub = console_of(request).hub
    # What the page listens to: ?kinds=fleet,flow,broker and, for one task's page, ?task=<id>.
    kinds = set((request.query_params.get("kinds") or "fleet,flow,broker").split(","))
    task_id = request.query_params.get("task")

    def wanted(notice: Notice) -> bool:
        if notice.kind not in kinds:
            return False
        return notice.kind != "flow" or task_id is None or notice.task_id == task_id

    async def stream() -> AsyncIterator[ServerSentEvent]:
        with hub.listen() as notices:
            yield ServerSentEvent(data=msgspec.json.encode({"version": hub.version}).decode(), event="hello")
            while True:
                notice = await notices.get()
                if wanted(notice):
                    data = msgspec.json.encode({"task_id": notice.task_id, "state": notice.state}).decode()
                    yield ServerSentEvent(data=data, event=notice.kind)

    return EventSourceResponse(stream(), ping=SSE_PING_SECONDS, headers={"x-accel-buffering": "no"})


# --- errors: a page with the reason, never a stack trace ---
async def broker_error(request: Request, exc: Exception) -> Response:
    console = console_of(request)
    message = str(exc) or type(exc).__name__
    if isinstance(exc, aiormq.exceptions.AMQPError | ConnectionError | aiormq.exceptions.ChannelInvalidStateError):
        message = f"lost the connection to RabbitMQ ({message}); the console reconnects by itself"
    return console.render(request, "error.html", {"title": "RabbitMQ", "message": message, "retry": True}, 503)


async def not_found(request: Request, exc: Exception) -> Response:
    detail = str(exc) if isinstance(exc, DeadLetterNotFound) else getattr(exc, "detail", "not found")
    return console_of(request).render(request, "error.html", {"title": "Not found", "message": detail}, 404)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return await not_found(request, exc)
    return console_of(request).render(
        request, "error.html", {"title": str(exc.status_code), "message": exc.detail}, exc.status_code
    )


# --- assembly ---
def make_templates() -> Jinja2Templates:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,  # every template, whatever its name: message data is text
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["url_part"] = lambda value: quote(str(value), safe="")  # one path segment, whatever it holds
    env.filters["task_url"] = lambda task_id: "/tasks/" + quote(str(task_id), safe="")
    env.filters["letter_url"] = lambda letter_id: "/dead-letters/" + quote(str(letter_id), safe="")
    env.filters["hms"] = lambda at: at.astimezone(UTC).strftime("%H:%M:%S") if at else "–"
    env.filters["stamp"] = lambda at: at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if at else "–"
    env.filters["iso"] = lambda at: at.isoformat() if at else ""
    env.filters["ago"] = ago
    env.filters["ms"] = lambda ms: "–" if ms is None else seconds_text(ms)
    env.filters["pretty_json"] = lambda value: msgspec.json.format(msgspec.json.encode(value), indent=2).decode()
    return Jinja2Templates(env=env)


def create_app(
    config: DaggerAdapterConfig,
    *,
    loopback: bool,
    examples: Path | None = None,
    history_size: int | None = None,
    backfill: timedelta = DEFAULT_BACKFILL,
) -> Starlette:
    """The console for ``config``. ``loopback``: whether it is bound to a loopback address only;
    ``backfill``: how far back to read the results stream at start."""
    access = Access(config.console_token, config.console_operator_token, loopback)
    hub = Hub(config, history_size=history_size, backfill=backfill)
    console = Console(hub, access, make_templates(), examples)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        hub.start()
        try:
            yield
        finally:
            await hub.stop()

    middleware = [
        Middleware(
            SessionMiddleware,
            secret_key=secrets.token_urlsafe(32),  # a restart signs everybody out
            session_cookie=SESSION_COOKIE,
            max_age=SESSION_MAX_AGE,
            same_site="strict",
            https_only=False,
        ),
        Middleware(Gate, access=access),
    ]
    routes = [
        *views_live.routes(),
        *views_dead_letters.routes(),
        *views_submit.routes(),
        Route("/login", login_page, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/broker/retry", broker_retry, methods=["POST"]),
        Route("/fragments/banner", banner_fragment),
        Route("/events", events),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    app = Starlette(
        routes=routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={
            HTTPException: http_error,
            DeadLetterNotFound: not_found,
            ClientError: broker_error,
            aiormq.exceptions.AMQPError: broker_error,
            ConnectionError: broker_error,
            aiormq.exceptions.ChannelInvalidStateError: broker_error,  # a channel closed under us
        },
    )
    app.state.console = console
    return app
