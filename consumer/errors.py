"""Every failure of an execution, put in one of four categories.

The category decides what happens next: ``transient`` and ``timeout`` may be retried,
``permanent`` and ``invalid`` never are. ``classify`` is the one place that knows how the
Dagger SDK (and what lies under it: gql, httpx, tenacity) reports a failure.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import dagger
import httpx
import tenacity
from aiobreaker import CircuitBreakerError
from gql.transport.exceptions import (
    TransportClosed,
    TransportConnectionFailed,
    TransportProtocolError,
    TransportQueryError,
    TransportServerError,
)

from schemas import ErrorCategory, InvalidMessage

TAIL_CHARS = 4096  # how much of a step's stdout/stderr a result or an error message carries


class ExecutionFailure(Exception):
    """A failed execution: a category, a message fit to show the task's owner, and the
    partial result (per-step results so far) when there is one."""

    def __init__(
        self,
        category: ErrorCategory,
        message: str,
        *,
        partial: Any = None,
        circuit_open: bool = False,
    ) -> None:
        super().__init__(message)
        self.category = category
        self.message = message
        self.partial = partial
        self.circuit_open = circuit_open
        self.attempts = 1  # set by the retry handler to the number of the last attempt

    def __repr__(self) -> str:
        return f"ExecutionFailure({self.category.value}, {self.message!r})"


def permanent(message: str, **kwargs: Any) -> ExecutionFailure:
    return ExecutionFailure(ErrorCategory.PERMANENT, message, **kwargs)


def tail(text: str, limit: int = TAIL_CHARS) -> str:
    """The last ``limit`` characters: the end of a log is where a failure explains itself.
    Text that may hold a secret is masked *before* it is cut (``Redactor.tail``): a cut
    through a secret would otherwise leave a piece of it that no longer matches."""
    return text if len(text) <= limit else text[-limit:]


MESSAGE_HEAD_CHARS = 512


def clip(text: str, limit: int = TAIL_CHARS + MESSAGE_HEAD_CHARS) -> str:
    """An error message bounded to about ``limit`` characters: its head (what failed) and its
    tail (why), with the middle elided. Mask secrets before clipping (``Redactor.clip``)."""
    if len(text) <= limit:
        return text
    head = min(MESSAGE_HEAD_CHARS, limit // 2)
    return f"{text[:head]} […] {text[len(text) - (limit - head) :]}"


# Local file-system errors say something about the request (a missing or unreadable path),
# not about the engine: retrying them cannot help.
_LOCAL_PATH_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


def classify(exc: BaseException) -> ExecutionFailure:
    """Map any exception raised while executing to an ``ExecutionFailure``."""
    if isinstance(exc, ExecutionFailure):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        # A TaskGroup of concurrent steps: the first real failure explains the rest
        # (its siblings were cancelled because of it).
        leaves = [e for e in _leaves(exc) if not isinstance(e, asyncio.CancelledError)]
        return classify(leaves[0]) if leaves else ExecutionFailure(ErrorCategory.TRANSIENT, "execution was cancelled")
    if isinstance(exc, InvalidMessage):
        return ExecutionFailure(ErrorCategory.INVALID, str(exc))
    if isinstance(exc, CircuitBreakerError):
        return ExecutionFailure(
            ErrorCategory.TRANSIENT, f"engine circuit breaker is open: {exc.message}", circuit_open=True
        )
    if isinstance(exc, dagger.ExecError):
        return permanent(_exec_error_message(exc))
    # An error the engine answered with (module calls are raw queries: TransportQueryError).
    if isinstance(exc, dagger.QueryError | TransportQueryError):
        text = _query_error_text(exc) if isinstance(exc, TransportQueryError) else str(exc)
        if _network_trouble(text):  # the engine could not reach a registry (or the network)
            return ExecutionFailure(ErrorCategory.TRANSIENT, f"the engine hit a network or registry error: {text}")
        return permanent(f"the engine rejected the request: {text}")
    if isinstance(exc, dagger.InvalidQueryError):
        return permanent(f"the request could not be built for this engine: {exc}")
    if isinstance(exc, dagger.TransportError | TransportConnectionFailed) and _caused_by_read_timeout(exc):
        return ExecutionFailure(ErrorCategory.TIMEOUT, "the engine did not answer within the execution timeout")
    if isinstance(exc, dagger.ClientConnectionError | dagger.ProvisionError):
        return ExecutionFailure(ErrorCategory.TRANSIENT, f"engine unreachable: {exc}")
    if isinstance(
        exc,
        dagger.TransportError
        | TransportConnectionFailed
        | TransportServerError
        | TransportProtocolError
        | TransportClosed
        | httpx.TransportError,
    ):
        return ExecutionFailure(ErrorCategory.TRANSIENT, f"engine transport error: {exc or type(exc).__name__}")
    if isinstance(exc, tenacity.RetryError):
        # The SDK's own retry (gql) gave up; say what the last attempt hit.
        last = exc.last_attempt.exception() if exc.last_attempt.failed else None
        why = f": {type(last).__name__}: {last}" if last is not None else ""
        return ExecutionFailure(ErrorCategory.TRANSIENT, f"the engine kept failing, the SDK gave up retrying{why}")
    if isinstance(exc, TimeoutError):  # asyncio.timeout() and friends; before OSError, its base
        return ExecutionFailure(ErrorCategory.TIMEOUT, "the execution ran past its timeout")
    if isinstance(exc, _LOCAL_PATH_ERRORS):
        return permanent(f"{type(exc).__name__}: {exc}")
    if isinstance(exc, OSError):
        return ExecutionFailure(ErrorCategory.TRANSIENT, f"{type(exc).__name__}: {exc}")
    # Anything else is a defect (ours or the SDK's); retrying the same input would hit it again.
    return permanent(f"internal error: {type(exc).__name__}: {exc}")


# How the engine (Go: net, net/http, containerd resolvers) words a registry or network failure
# that may pass: an image pull or a module fetch hitting them is worth retrying. Errors that
# will not pass ("pull access denied", "not found", "unauthorized") stay permanent.
_NETWORK_TROUBLE = re.compile(
    r"dial tcp|i/o timeout|connection refused|connection reset|no such host|server misbehaving"
    r"|temporary failure in name resolution|network is unreachable|tls handshake timeout|unexpected eof"
    r"|toomanyrequests|too many requests|\b(?:429|502|503|504)\b|bad gateway|service unavailable|gateway timeout",
    re.IGNORECASE,
)


def _network_trouble(message: str) -> bool:
    return _NETWORK_TROUBLE.search(message) is not None


def _exec_error_message(exc: dagger.ExecError) -> str:
    # The whole stderr: the adapter masks secrets in it before clipping the message.
    stderr = (exc.stderr or "").strip()
    message = f"command {exc.command!r} exited with code {exc.exit_code}"
    return f"{message}: {stderr}" if stderr else message


def _query_error_text(exc: TransportQueryError) -> str:
    if exc.errors and isinstance(exc.errors[0], dict) and "message" in exc.errors[0]:
        return str(exc.errors[0]["message"])
    return str(exc)


def _caused_by_read_timeout(exc: BaseException) -> bool:
    # A read timeout means the engine took the request but did not finish it in time (our
    # execute timeout); a connect timeout means the engine is unreachable (transient).
    seen: BaseException | None = exc
    for _ in range(10):  # exception chains are short; never follow a cycle forever
        if seen is None:
            break
        if isinstance(seen, httpx.TimeoutException) and not isinstance(seen, httpx.ConnectTimeout | httpx.PoolTimeout):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out
