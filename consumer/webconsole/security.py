"""Who may see and who may act, and the checks every request goes through.

- Roles: ``viewer`` (every page, read-only) and ``operator`` (also submit, replay, purge).
- ``console_token`` grants viewer; ``console_operator_token`` grants operator. Without an
  operator token the console is read-only for everyone.
- Bound to loopback without ``console_token``, anyone who can reach it may view (the Host header
  must then name localhost, against DNS rebinding). Bound to anything else, ``console_token`` is
  required to start, and every request needs a token.
- A browser signs in once (``/login``) and gets a signed, HttpOnly, SameSite=Strict session
  cookie; scripts send ``Authorization: Bearer <token>``.
- Every POST made with the session cookie carries the session's CSRF token (a form field or the
  ``X-CSRF-Token`` header) and, when the browser sends one, an Origin of this console.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
from dataclasses import dataclass
from enum import IntEnum
from urllib.parse import urlsplit

from starlette.requests import Request

MIN_TOKEN_LENGTH = 16
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1", "[::1]")


class Role(IntEnum):
    NONE = 0
    VIEWER = 1
    OPERATOR = 2


class AccessError(ValueError):
    """The console cannot start with these settings (one line, never showing a token)."""


@dataclass(frozen=True)
class Access:
    console_token: str | None
    operator_token: str | None
    loopback: bool

    def __post_init__(self) -> None:
        for name, token in (("console_token", self.console_token), ("console_operator_token", self.operator_token)):
            if token is not None and len(token) < MIN_TOKEN_LENGTH:
                raise AccessError(
                    f"{name} is too short: use at least {MIN_TOKEN_LENGTH} characters "
                    "(e.g. python -c 'import secrets; print(secrets.token_urlsafe())')"
                )
        if not self.loopback and not self.console_token:
            raise AccessError(
                "binding beyond loopback needs console_token (or DAGGER_ADAPTER_CONSOLE_TOKEN): "
                "anyone who can reach the port could otherwise read the dead letters"
            )
        if self.console_token and self.console_token == self.operator_token:
            raise AccessError("console_token and console_operator_token must differ (viewers would be operators)")

    @property
    def anonymous(self) -> Role:
        """The role of a request without a token."""
        return Role.VIEWER if self.loopback and not self.console_token else Role.NONE

    @property
    def operators_possible(self) -> bool:
        return self.operator_token is not None

    def role_for(self, token: str | None) -> Role:
        if not token:
            return Role.NONE
        if self.operator_token and hmac.compare_digest(token.encode(), self.operator_token.encode()):
            return Role.OPERATOR
        if self.console_token and hmac.compare_digest(token.encode(), self.console_token.encode()):
            return Role.VIEWER
        return Role.NONE

    def role_of(self, request: Request) -> Role:
        """The bearer token's role, else the session's, else the anonymous role."""
        bearer = bearer_token(request)
        if bearer is not None:
            return self.role_for(bearer)
        session_role = request.session.get("role")
        if session_role in (Role.VIEWER, Role.OPERATOR):
            return Role(max(session_role, self.anonymous))
        return self.anonymous


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def csrf_token(request: Request) -> str:
    """The session's CSRF token (made on first use)."""
    token = request.session.get("csrf")
    if not isinstance(token, str):
        token = request.session["csrf"] = secrets.token_urlsafe(32)
    return token


def csrf_ok(request: Request, submitted: str | None) -> bool:
    """A POST is genuine when it comes with a bearer token (a browser never adds one by itself),
    or with this session's CSRF token and, if the browser says where it comes from, our origin."""
    if bearer_token(request) is not None:
        return True
    expected = request.session.get("csrf")
    if not isinstance(expected, str) or not submitted:
        return False
    if not hmac.compare_digest(expected.encode(), submitted.encode()):
        return False
    origin = request.headers.get("origin")
    if origin and origin != "null":
        return urlsplit(origin).netloc == request.headers.get("host", "")
    return True


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a path of this console only (no open redirect)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target
