"""What every view shares: the ``Console`` (hub, access rules, templates), rendering with the
common context, flash messages, and ``mutation``: the guard of every POST (role and CSRF)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.templating import Jinja2Templates

from consumer.webconsole.hub import Hub
from consumer.webconsole.security import Access, Role, csrf_ok, csrf_token

MAX_BODY = 2 * 1024 * 1024  # bytes of a POST (a pasted command is at most 256 KiB)


@dataclass
class Console:
    """What every view needs: the hub, the access rules, the templates, the examples."""

    hub: Hub
    access: Access
    templates: Jinja2Templates
    examples: Path | None

    def render(self, request: Request, name: str, context: dict[str, Any] | None = None, status: int = 200) -> Response:
        role = self.access.role_of(request)
        flash = request.session.pop("flash", None) if "session" in request.scope else None
        base = {
            "role": role.name.lower(),
            "operator": role >= Role.OPERATOR,
            "operators_possible": self.access.operators_possible,
            "needs_login": self.access.anonymous == Role.NONE,
            "csrf": csrf_token(request),
            "broker": self.hub.broker,
            "where": self.hub.where,
            "topology": self.hub.topology,
            "now": datetime.now(UTC),
            "flash": flash,
            "path": request.url.path,
            "version": self.hub.version,
        }
        return self.templates.TemplateResponse(request, name, {**base, **(context or {})}, status_code=status)


def console_of(request: Request) -> Console:
    console: Console = request.app.state.console
    return console


def client_of(request: Request) -> str:
    """Who did it, for the log: the role and the peer address (never a token)."""
    role = console_of(request).access.role_of(request).name.lower()
    peer = request.client.host if request.client else "?"
    return f"{role} at {peer}"


def flash(request: Request, message: str, level: str = "ok") -> None:
    request.session["flash"] = {"message": message, "level": level}


# --- decorators for views ---
View = Callable[[Request], Awaitable[Response]]


def mutation(role: Role) -> Callable[[View], View]:
    """A POST view: refused (403) without ``role`` or without a valid CSRF token; the form is
    parsed once and kept in ``request.state.form``."""

    def wrap(view: View) -> View:
        async def guarded(request: Request) -> Response:
            console = console_of(request)
            length = request.headers.get("content-length", "0")
            if not length.isdigit() or int(length) > MAX_BODY:
                return console.render(
                    request, "error.html", {"title": "Too large", "message": "That request is too large."}, 413
                )
            if request.headers.get("content-type", "").startswith("application/json"):
                try:
                    data = msgspec.json.decode(await request.body()) if length != "0" else {}
                except msgspec.DecodeError:
                    data = {}
                form: dict[str, Any] = data if isinstance(data, dict) else {}
                submitted = request.headers.get("x-csrf-token")
            else:
                parsed = await request.form(max_files=0, max_fields=20_000)
                form = {k: parsed.getlist(k) if k.endswith("[]") else parsed.get(k) for k in parsed}
                submitted = request.headers.get("x-csrf-token") or text_value(form.get("csrf_token"))
            if not csrf_ok(request, submitted):
                return console.render(
                    request,
                    "error.html",
                    {
                        "title": "Refused",
                        "message": "This form is stale or did not come from this console (CSRF check). Reload the page and try again.",
                    },
                    403,
                )
            if console.access.role_of(request) < role:
                why = (
                    "Sign in with the operator token to do this."
                    if console.access.operators_possible
                    else "This console is read-only: start it with console_operator_token to allow this."
                )
                return console.render(request, "error.html", {"title": "Not allowed", "message": why}, 403)
            request.state.form = form
            return await view(request)

        guarded.__name__ = view.__name__
        return guarded

    return wrap


def text_value(value: Any) -> str | None:
    return value if isinstance(value, str) else None
