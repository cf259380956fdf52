"""Prometheus metrics of one worker process, served on ``/metrics`` when ``metrics_port`` is set.

Every label value is bounded: execution types come from the ``ExecutionType`` enum (anything
else is ``unknown``), outcomes and error categories from their enums, states from the breaker's
three. Never a task id, a worker-chosen or tenant-chosen string.

The worker owns one ``WorkerMetrics`` (its own registry, so two workers in one process, as in
tests, do not share counters) and calls its methods where things happen; the execution core
only reports through listeners (circuit state, engine requests) that the worker connects here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from threading import Thread
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    start_http_server,
)

from schemas import ErrorCategory, ExecutionResult, ExecutionType

log = logging.getLogger("dagger_adapter.metrics")

# No ``*_created`` series next to every counter: they double the series count and no dashboard uses them.
disable_created_metrics()  # type: ignore[no-untyped-call]

NAMESPACE = "dagger_adapter"
UNKNOWN = "unknown"
NO_ERROR = "none"
_TYPES = frozenset(t.value for t in ExecutionType)
_CATEGORIES = frozenset(c.value for c in ErrorCategory)
CIRCUIT_STATES = ("closed", "half-open", "open")
# Where the ledger answered a command instead of running it (see Worker._answer_from_ledger).
LEDGER_ANSWERS = ("duplicate", "redelivered", "unpublished")
POSTPONE_REASONS = ("leased", "circuit_open", "stopping", "valkey")

# Executions run from a second to hours: buckets up to 4 h (the longest deadline deploy/ allows).
EXECUTION_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400)
# One GraphQL request to the engine: most take milliseconds; an exec's request lasts as long as the exec.
ENGINE_REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)


def execution_type_label(value: object) -> str:
    text = getattr(value, "value", value)
    return text if isinstance(text, str) and text in _TYPES else UNKNOWN


def category_label(category: object) -> str:
    if category is None:
        return NO_ERROR
    text = getattr(category, "value", category)
    return text if isinstance(text, str) and text in _CATEGORIES else UNKNOWN


def status_class(status: int) -> str:
    return f"{status // 100}xx" if 100 <= status <= 599 else UNKNOWN


def _is_state(current: Callable[[], str], state: str) -> Callable[[], float]:
    return lambda: 1.0 if current() == state else 0.0


class WorkerMetrics:
    def __init__(self, *, worker_id: str, version: str, capacity: int) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        Info(f"{NAMESPACE}_worker", "This worker process", registry=r).info(
            {"worker_id": worker_id, "version": version}
        )
        self.received = Counter(
            f"{NAMESPACE}_commands_received_total",
            "Command deliveries taken off the tasks queue (redeliveries and retries included)",
            ["execution_type"],
            registry=r,
        )
        self.finished = Counter(
            f"{NAMESPACE}_commands_finished_total",
            "Final outcomes published (result, and a dead letter for a failure)",
            ["execution_type", "outcome", "error_category"],
            registry=r,
        )
        self.executions = Histogram(
            f"{NAMESPACE}_execution_duration_seconds",
            "Duration of one execution attempt through the adapter (cache hits included)",
            ["execution_type", "outcome", "error_category"],
            buckets=EXECUTION_BUCKETS,
            registry=r,
        )
        self.retries = Counter(
            f"{NAMESPACE}_retries_total",
            "Failed attempts sent to a retry queue to be tried again",
            ["execution_type", "error_category"],
            registry=r,
        )
        self.dead_letters = Counter(
            f"{NAMESPACE}_dead_letters_total",
            "Commands dead-lettered by this worker (RabbitMQ's own delivery-limit dead letters are not seen here)",
            ["execution_type", "error_category"],
            registry=r,
        )
        self.ledger_answers = Counter(
            f"{NAMESPACE}_idempotency_hits_total",
            "Commands answered from the idempotency ledger instead of running: duplicate (another message "
            "of a finished task), redelivered (outcome already published), unpublished (outcome published now)",
            ["execution_type", "kind"],
            registry=r,
        )
        self.cache_hits = Counter(
            f"{NAMESPACE}_cache_hits_total",
            "Executions answered from the result cache",
            ["execution_type"],
            registry=r,
        )
        self.postponed = Counter(
            f"{NAMESPACE}_commands_postponed_total",
            "Commands put back without an attempt: leased (running elsewhere), circuit_open, stopping, valkey (down)",
            ["reason"],
            registry=r,
        )
        self.in_flight = Gauge(f"{NAMESPACE}_commands_in_flight", "Commands received and not yet settled", registry=r)
        self.executing = Gauge(f"{NAMESPACE}_executions_running", "Executions running in the adapter now", registry=r)
        self.capacity = Gauge(
            f"{NAMESPACE}_capacity", "Executions this worker runs at once (max_concurrent_executions)", registry=r
        )
        self.capacity.set(capacity)
        self.consuming = Gauge(
            f"{NAMESPACE}_consuming",
            "1 while the worker consumes the tasks queue, 0 while paused or stopping",
            registry=r,
        )
        self.circuit_state = Gauge(
            f"{NAMESPACE}_circuit_breaker_state",
            "1 for the engine circuit breaker's current state",
            ["state"],
            registry=r,
        )
        self.circuit_transitions = Counter(
            f"{NAMESPACE}_circuit_breaker_transitions_total",
            "Engine circuit breaker state changes, by the state entered",
            ["state"],
            registry=r,
        )
        self.reconnects = Counter(
            f"{NAMESPACE}_broker_reconnects_total", "Connections to RabbitMQ re-established", registry=r
        )
        self.engine_requests = Histogram(
            f"{NAMESPACE}_engine_request_duration_seconds",
            "GraphQL requests to the Dagger engine: time to the response headers, by HTTP status class",
            ["status_class"],
            buckets=ENGINE_REQUEST_BUCKETS,
            registry=r,
        )
        # Every label set a dashboard queries exists from the start (a rate() of a missing series is no data).
        for state in CIRCUIT_STATES:
            self.circuit_transitions.labels(state)
        for reason in POSTPONE_REASONS:
            self.postponed.labels(reason)
        self._server: WSGIServer | None = None
        self._thread: Thread | None = None

    # --- what the worker reads live -----------------------------------------------------

    def follow(
        self,
        *,
        in_flight: Callable[[], int],
        executing: Callable[[], int],
        consuming: Callable[[], bool],
        circuit_state: Callable[[], str],
    ) -> None:
        self.in_flight.set_function(in_flight)
        self.executing.set_function(executing)
        self.consuming.set_function(lambda: 1.0 if consuming() else 0.0)
        for state in CIRCUIT_STATES:
            self.circuit_state.labels(state).set_function(_is_state(circuit_state, state))

    # --- events -------------------------------------------------------------------------

    def command_received(self, execution_type: object) -> None:
        self.received.labels(execution_type_label(execution_type)).inc()

    def execution_finished(self, execution_type: object, result: ExecutionResult, seconds: float) -> None:
        kind = execution_type_label(execution_type)
        self.executions.labels(kind, result.outcome.value, category_label(result.error_category)).observe(seconds)
        if result.cached:
            self.cache_hits.labels(kind).inc()

    def outcome_published(self, execution_type: object, result: ExecutionResult) -> None:
        self.finished.labels(
            execution_type_label(execution_type), result.outcome.value, category_label(result.error_category)
        ).inc()

    def retried(self, execution_type: object, category: object) -> None:
        self.retries.labels(execution_type_label(execution_type), category_label(category)).inc()

    def dead_lettered(self, execution_type: object, category: object) -> None:
        self.dead_letters.labels(execution_type_label(execution_type), category_label(category)).inc()

    def answered_from_ledger(self, execution_type: object, kind: str) -> None:
        self.ledger_answers.labels(
            execution_type_label(execution_type), kind if kind in LEDGER_ANSWERS else UNKNOWN
        ).inc()

    def command_postponed(self, reason: str) -> None:
        self.postponed.labels(reason if reason in POSTPONE_REASONS else UNKNOWN).inc()

    def circuit_changed(self, state: str) -> None:
        self.circuit_transitions.labels(state if state in CIRCUIT_STATES else UNKNOWN).inc()

    def broker_reconnected(self) -> None:
        self.reconnects.inc()

    def engine_request(self, seconds: float, status: int) -> None:
        self.engine_requests.labels(status_class(status)).observe(seconds)

    # --- the endpoint -------------------------------------------------------------------

    def serve(self, port: int, address: str) -> int:
        """Serve ``/metrics`` on ``address:port`` (0: any free port) in a thread; the port is returned."""
        server, self._thread = start_http_server(port, addr=address, registry=self.registry)
        self._server = server
        bound = int(server.server_address[1])
        log.info("metrics served", extra={"metrics_url": f"http://{address}:{bound}/metrics"})
        return bound

    def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
