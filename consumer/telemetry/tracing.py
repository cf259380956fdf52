"""OpenTelemetry traces: W3C trace context in the command's AMQP headers, a span per command in
the worker, and the context the Dagger SDK puts on its engine requests.

- Publishers (``ExecutionClient``, ``dagger-adapter submit``, or anyone) send the application
  headers ``traceparent`` / ``tracestate``. They are untrusted: a value that is not W3C trace
  context is ignored (the command starts a trace of its own), never an error.
- The worker runs each command in a CONSUMER span continuing that context, and each execution in
  a child span. The SDK's HTTP transport injects the *current* context into every engine request
  (``dagger.client._session.TelemetryTransport`` calls ``propagate.inject``), so the engine's
  spans join the command's trace.
- ``configure_tracing`` installs the process's tracer provider when the standard ``OTEL_*``
  variables name an exporter (``OTEL_TRACES_EXPORTER``, ``OTEL_EXPORTER_OTLP_ENDPOINT``, ...).
  Without one, tracing is a no-op (no span is recorded: recording a command's two spans takes
  about 0.3 ms of CPU), yet a command's own trace context still travels on: to the engine, the logs and the
  result's ``trace_id``.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Awaitable, Iterator, Mapping
from importlib.metadata import entry_points
from typing import Any, TypeVar

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from schemas.headers import TRACEPARENT, TRACESTATE

log = logging.getLogger("dagger_adapter.tracing")
T = TypeVar("T")

SERVICE_NAME = "dagger-adapter"
INSTRUMENTATION = "dagger_adapter"
# The W3C propagator itself, not the global one: the headers are a contract (exactly these two
# names), whatever OTEL_PROPAGATORS says.
_W3C = TraceContextTextMapPropagator()
# traceparent is 55 characters in version 00; later versions may append fields. tracestate: W3C
# caps it at 32 members; 512 characters is the size its spec says a vendor may truncate to.
_HEADER_LIMITS = {TRACEPARENT: 256, TRACESTATE: 512}

MAX_ATTRIBUTE = 200  # characters of a span attribute taken from a message (a task id's limit)
ATTR_TASK_ID = "dagger_adapter.task_id"
ATTR_EXECUTION_TYPE = "dagger_adapter.execution_type"
ATTR_ATTEMPT = "dagger_adapter.attempt"
ATTR_OUTCOME = "dagger_adapter.outcome"
ATTR_WORKER_ID = "dagger_adapter.worker_id"

_configured = False


# Made once (a tracer costs ~0.1 ms to make): before a provider is installed it is a proxy that
# follows the one ``configure_tracing`` (or the application) installs later.
_TRACER = trace.get_tracer(INSTRUMENTATION)


def _tracer() -> trace.Tracer:
    return _TRACER


# --- set-up ------------------------------------------------------------------------------


class TracingConfigError(ValueError):
    """The ``OTEL_*`` variables name an exporter that is not installed (or an unknown OTLP protocol)."""


# What OTEL_EXPORTER_OTLP_PROTOCOL makes of the exporter name ``otlp`` (the SDK's own mapping).
_OTLP_BY_PROTOCOL = {"grpc": "otlp_proto_grpc", "http/protobuf": "otlp_proto_http"}


def configure_tracing(*, dagger_sdk: bool = False) -> None:
    """Install the process's tracer provider once (unless the application installed one), with
    the exporters ``OTEL_TRACES_EXPORTER`` names (``otlp`` by default when an OTLP endpoint is set);
    nothing when no exporter is named. ``TracingConfigError`` when a named exporter is not installed.

    ``dagger_sdk``: this process talks to the engine through the Dagger SDK, whose own telemetry
    set-up (``dagger.telemetry.initialize``, run on every connect, once per process) adds those
    exporters to the provider; it is run now, and ours would export every span twice."""
    global _configured
    if _configured or os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return
    if "OTEL_TRACES_EXPORTER" not in os.environ and (
        os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    ):
        os.environ["OTEL_TRACES_EXPORTER"] = "otlp"  # the specification's default exporter
    if "otlp" in _exporter_names():
        # The specification's default protocol, and the OTLP exporter dagger-io installs (the
        # Python SDK alone would pick gRPC, which is not installed).
        os.environ.setdefault("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    exporters = _installed_exporters()  # raises before anything is changed
    _configured = True
    if not exporters:
        return
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": SERVICE_NAME}
        provider = TracerProvider(resource=Resource.create(attributes))
        trace.set_tracer_provider(provider)
    if dagger_sdk:
        from dagger import telemetry as dagger_telemetry

        dagger_telemetry.initialize()
    else:
        for exporter in exporters:
            provider.add_span_processor(BatchSpanProcessor(exporter()))


def _exporter_names() -> list[str]:
    names = (name.strip() for name in os.environ.get("OTEL_TRACES_EXPORTER", "").split(","))
    return [name for name in names if name and name != "none"]


def _installed_exporters() -> list[Any]:
    """The exporter classes ``OTEL_TRACES_EXPORTER`` names, from their entry points."""
    protocol = (
        os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or ""
    ).strip()
    classes = []
    for name in _exporter_names():
        if name == "otlp":
            if protocol not in _OTLP_BY_PROTOCOL:
                raise TracingConfigError(f"OTEL_EXPORTER_OTLP_PROTOCOL {protocol!r}: expected grpc or http/protobuf")
            name = _OTLP_BY_PROTOCOL[protocol]
        found = list(entry_points(group="opentelemetry_traces_exporter", name=name))
        if not found:
            raise TracingConfigError(
                f"OTEL_TRACES_EXPORTER names the trace exporter {name!r}, which is not installed "
                "(installed: otlp over http/protobuf, console)"
            )
        classes.append(found[0].load())
    return classes


def shutdown_tracing() -> None:
    """Export what is pending (a short-lived CLI process ends right after its span)."""
    provider = trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):
        provider.force_flush(timeout_millis=5000)


# --- the headers -------------------------------------------------------------------------


def inject(headers: dict[str, Any]) -> None:
    """Add the current span's ``traceparent`` (and ``tracestate``) to AMQP ``headers``;
    nothing when there is no current span."""
    _W3C.inject(headers)


def extract(headers: Mapping[str, Any] | None) -> otel_context.Context | None:
    """The trace context a message's headers carry; None when absent or malformed (untrusted input)."""
    carrier: dict[str, str] = {}
    for name, limit in _HEADER_LIMITS.items():
        value = (headers or {}).get(name)
        if isinstance(value, bytes | bytearray):
            try:
                value = bytes(value).decode("ascii")
            except UnicodeDecodeError:
                continue
        if isinstance(value, str) and len(value) <= limit and value.isprintable():
            carrier[name] = value
    if TRACEPARENT not in carrier:
        return None
    try:
        found = _W3C.extract(carrier)
    except Exception:  # the propagator validates; anything it trips on is just not a trace context
        return None
    return found if trace.get_current_span(found).get_span_context().is_valid else None


def context_from_env() -> otel_context.Context | None:
    """``TRACEPARENT``/``TRACESTATE`` of the environment (how CI systems and the dagger CLI pass a trace on)."""
    return extract({TRACEPARENT: os.environ.get("TRACEPARENT"), TRACESTATE: os.environ.get("TRACESTATE")})


# --- spans -------------------------------------------------------------------------------


@contextlib.contextmanager
def command_span(
    headers: Mapping[str, Any] | None,
    *,
    queue: str,
    message_id: str | None,
    task_id: str | None,
    execution_type: str | None,
    attempt: int,
    worker_id: str,
) -> Iterator[Span]:
    """The worker's span for one delivery, continuing the trace its headers carry."""
    attributes: dict[str, Any] = {
        "messaging.system": "rabbitmq",
        "messaging.operation.type": "process",
        "messaging.destination.name": queue,
        ATTR_ATTEMPT: attempt,
        ATTR_WORKER_ID: worker_id,
    }
    # Values from the message are the publisher's: bounded like the contract bounds them (a task
    # id of an invalid command may be anything).
    if message_id:
        attributes["messaging.message.id"] = message_id[:MAX_ATTRIBUTE]
    if task_id:
        attributes[ATTR_TASK_ID] = task_id[:MAX_ATTRIBUTE]
    if execution_type:
        attributes[ATTR_EXECUTION_TYPE] = execution_type[:MAX_ATTRIBUTE]
    with _tracer().start_as_current_span(
        f"process {queue}", context=extract(headers), kind=SpanKind.CONSUMER, attributes=attributes
    ) as span:
        yield span


@contextlib.contextmanager
def execution_span(execution_type: str) -> Iterator[Span]:
    """One execution attempt; the SDK's engine requests made inside it are its children."""
    with _tracer().start_as_current_span(
        f"execute {execution_type}", attributes={ATTR_EXECUTION_TYPE: execution_type}
    ) as span:
        yield span


@contextlib.contextmanager
def publish_span(exchange: str, *, task_id: str, execution_type: str) -> Iterator[Span]:
    """A publisher's span around sending a command, in the current trace."""
    with _tracer().start_as_current_span(
        f"send {exchange}",
        kind=SpanKind.PRODUCER,
        attributes={
            "messaging.system": "rabbitmq",
            "messaging.operation.type": "send",
            "messaging.destination.name": exchange,
            ATTR_TASK_ID: task_id,
            ATTR_EXECUTION_TYPE: execution_type,
        },
    ) as span:
        yield span


@contextlib.contextmanager
def cli_span(verb: str) -> Iterator[Span]:
    """A CLI verb's root span, under the environment's ``TRACEPARENT`` when set."""
    with _tracer().start_as_current_span(f"dagger-adapter {verb}", context=context_from_env()) as span:
        yield span


def set_outcome(outcome: str, *, error: str | None = None) -> None:
    """Mark the current command span with what became of the delivery."""
    span = trace.get_current_span()
    span.set_attribute(ATTR_OUTCOME, outcome)
    if error is not None:
        span.set_status(Status(StatusCode.ERROR, error[:200]))


def current_trace_id() -> str | None:
    """The current trace's id as 32 hex digits, or None outside any trace."""
    span_context = trace.get_current_span().get_span_context()
    return trace.format_trace_id(span_context.trace_id) if span_context.is_valid else None


async def in_execution_span(execution_type: str, work: Awaitable[T]) -> T:
    """Await ``work`` inside an ``execution_span`` (for a task of its own: the span lasts as long as it)."""
    with execution_span(execution_type):
        return await work
