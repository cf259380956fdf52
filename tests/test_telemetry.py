"""Metrics and traces of a real worker (real RabbitMQ, Valkey, the SDK against the test engine).

- ``/metrics`` is scraped over HTTP after real executions: a success, a cache hit, a duplicate
  answered from the ledger, a transient failure retried, a permanent failure dead-lettered.
- One command is followed from the client's span through the AMQP headers, the worker's spans and
  the engine's requests to the result and the logs: one trace id everywhere.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import aio_pika
import httpx
import msgspec
import pytest
from aio_pika.abc import AbstractChannel, AbstractRobustConnection
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client.parser import text_string_to_metric_families

from consumer.client import ClientError, ExecutionClient
from consumer.telemetry import tracing
from schemas import ExecutionCommand, ExecutionResult, ExecutionType, decode, encode
from tests.dagger_engine import ExecOutcome, TestEngine
from tests.support.worker_process import (
    Observer,
    WorkerProcess,
    command,
    publish_command,
    wait_until,
    worker_settings,
)
from tests.test_client_support import cli_env, declared, run_cli
from tests.test_worker import StartWorker, dead_letters, settle, start_worker, stop_worker, worker_log
from topology import Topology

__all__ = ["declared", "start_worker", "worker_log"]

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
CW = "containerized_workflow"


async def scrape(port: int) -> tuple[str, Samples]:
    async with httpx.AsyncClient() as http:
        response = await http.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return response.text, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum over every series of ``name`` whose labels include ``labels``."""
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= ls)


async def test_metrics_count_real_executions_by_type_outcome_and_category(
    start_worker: StartWorker,
    observer: Observer,
    channel: AbstractChannel,
    topology_spec: Topology,
    dagger_engine: TestEngine,
) -> None:
    worker = await start_worker(
        metrics_port=0, metrics_address="127.0.0.1", caching_enabled="true", max_concurrent_executions=3
    )
    assert worker.metrics_port
    _, before = await scrape(worker.metrics_port)
    assert value(before, "dagger_adapter_capacity") == 3
    assert value(before, "dagger_adapter_consuming") == 1
    assert value(before, "dagger_adapter_circuit_breaker_state", state="closed") == 1
    assert value(before, "dagger_adapter_circuit_breaker_state", state="open") == 0
    assert total(before, "dagger_adapter_commands_received_total") == 0

    async def run(cmd: ExecutionCommand, results: int = 1) -> ExecutionResult:
        await publish_command(channel, topology_spec, cmd)
        await observer.wait_for(lambda: len(observer.results_for(cmd.task_id)) >= results, 30, cmd.task_id)
        return observer.results_for(cmd.task_id)[-1]

    ok = await run(command("ok-1", "echo", "same"))
    cached = await run(command("cached-1", "echo", "same"))  # same work: the cache answers
    duplicate = await run(command("ok-1", "echo", "same"), results=2)  # a finished task again: the ledger answers
    # The next engine request fails: a transient failure, retried. (`cache: false`, so that request is
    # the run's own, not the image digest lookup for the result cache, whose failure only skips the cache.)
    flaky_command = command("flaky-1")
    dagger_engine.fail_requests(1)
    flaky = await run(msgspec.structs.replace(flaky_command, parameters={**flaky_command.parameters, "cache": False}))
    failed = await run(command("bad-1", "sh", "-c", "exit 3"))  # permanent: dead-lettered
    assert ok.success and cached.success and cached.cached and duplicate == ok
    assert flaky.success and flaky.attempts == 2
    assert not failed.success and failed.error_category is not None
    assert len(await dead_letters(channel, topology_spec)) == 1
    await settle(observer, worker, beats=2)  # every handler done (acked) before the scrape

    text, after = await scrape(worker.metrics_port)
    received = "dagger_adapter_commands_received_total"
    assert value(after, received, execution_type=CW) == 6  # ok, cached, duplicate, flaky x2, bad
    finished = "dagger_adapter_commands_finished_total"
    assert value(after, finished, execution_type=CW, outcome="succeeded", error_category="none") == 3
    assert value(after, finished, execution_type=CW, outcome="failed", error_category="permanent") == 1
    assert total(after, finished) == 4  # the duplicate re-sent a result; it finished nothing new
    durations = "dagger_adapter_execution_duration_seconds_count"
    assert value(after, durations, execution_type=CW, outcome="succeeded", error_category="none") == 3
    assert value(after, durations, execution_type=CW, outcome="failed", error_category="transient") == 1
    assert value(after, durations, execution_type=CW, outcome="failed", error_category="permanent") == 1
    assert value(after, "dagger_adapter_retries_total", execution_type=CW, error_category="transient") == 1
    assert value(after, "dagger_adapter_dead_letters_total", execution_type=CW, error_category="permanent") == 1
    assert total(after, "dagger_adapter_dead_letters_total") == 1
    assert value(after, "dagger_adapter_idempotency_hits_total", execution_type=CW, kind="duplicate") == 1
    assert value(after, "dagger_adapter_cache_hits_total", execution_type=CW) == 1
    # Engine requests are timed: the injected 500 and the real answers.
    assert value(after, "dagger_adapter_engine_request_duration_seconds_count", status_class="5xx") == 1
    assert value(after, "dagger_adapter_engine_request_duration_seconds_count", status_class="2xx") >= 3
    assert value(after, "dagger_adapter_commands_in_flight") == 0
    assert value(after, "dagger_adapter_executions_running") == 0
    assert total(after, "dagger_adapter_circuit_breaker_transitions_total") == 0
    assert value(after, "dagger_adapter_broker_reconnects_total") == 0
    assert total(after, "dagger_adapter_worker_info", worker_id=worker.worker_id) == 1
    # Bounded labels: no task id ever becomes a label value.
    for task_id in ("ok-1", "cached-1", "flaky-1", "bad-1"):
        assert task_id not in text


async def test_an_unknown_type_or_routing_key_never_becomes_a_label(
    start_worker: StartWorker, observer: Observer, channel: AbstractChannel, topology_spec: Topology
) -> None:
    worker = await start_worker(metrics_port=0, metrics_address="127.0.0.1")
    exchange = await channel.get_exchange(topology_spec.tasks_exchange, ensure=False)
    body = json.dumps({"task_id": "odd-1", "execution_type": "x" * 40, "parameters": {}}).encode()
    await exchange.publish(aio_pika.Message(body, message_id=uuid.uuid4().hex), routing_key="#")
    await observer.wait_for(lambda: observer.results_for("odd-1"), 30, "the invalid command's result")
    await settle(observer, worker, beats=2)
    assert worker.metrics_port
    text, samples = await scrape(worker.metrics_port)
    assert "x" * 40 not in text
    assert value(samples, "dagger_adapter_commands_received_total", execution_type="unknown") == 1
    assert value(samples, "dagger_adapter_dead_letters_total", execution_type="unknown", error_category="invalid") == 1


async def test_no_metrics_port_serves_nothing_and_a_taken_port_stops_start_up(
    start_worker: StartWorker,
) -> None:
    worker = await start_worker()
    assert worker.metrics_port is None
    taken = await start_worker(metrics_port=0, metrics_address="127.0.0.1")
    with pytest.raises(Exception, match="cannot serve metrics"):
        await start_worker(metrics_port=taken.metrics_port, metrics_address="127.0.0.1")


# --- traces ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def span_exporter() -> InMemorySpanExporter:
    """Finished spans of this process (the worker runs in it). The global tracer provider can be
    set once per process: the worker's own (no exporter) gets the in-memory one added."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


@pytest.fixture
def spans(span_exporter: InMemorySpanExporter) -> Iterator[Callable[[str], list[ReadableSpan]]]:
    span_exporter.clear()
    yield lambda trace_id: [
        s for s in span_exporter.get_finished_spans() if s.context and f"{s.context.trace_id:032x}" == trace_id
    ]
    span_exporter.clear()


def traceparent_ids(engine: TestEngine, trace_id: str) -> list[str]:
    """Parent span ids of the engine requests that carried ``trace_id``."""
    return [tp.split("-")[2] for tp in engine.traceparents if tp.split("-")[1] == trace_id]


async def test_one_trace_from_the_client_through_the_worker_to_the_engine(
    start_worker: StartWorker,
    observer: Observer,
    amqp: AbstractRobustConnection,
    topology_spec: Topology,
    dagger_engine: TestEngine,
    spans: Callable[[str], list[ReadableSpan]],
    worker_log: Callable[[], list[dict[str, Any]]],
) -> None:
    worker = await start_worker()
    client = await ExecutionClient(amqp, topology_spec).start()
    try:
        with trace.get_tracer("platform").start_as_current_span("platform request") as root:
            trace_id = f"{root.get_span_context().trace_id:032x}"
            result = await client.submit_and_wait(command("traced-1"), timeout=30)
    finally:
        await client.close()

    assert result.success and result.trace_id == trace_id
    names = ["platform request", f"send {topology_spec.tasks_exchange}", f"process {topology_spec.tasks_queue}"]
    await wait_until(lambda: {s.name for s in spans(trace_id)} >= {*names, f"execute {CW}"}, 10, "the spans")
    by_name = {s.name: s for s in spans(trace_id)}
    send, process, execute = by_name[names[1]], by_name[names[2]], by_name[f"execute {CW}"]
    assert send.kind == SpanKind.PRODUCER and send.parent and send.parent.span_id == root.get_span_context().span_id
    assert process.kind == SpanKind.CONSUMER and process.parent and send.context
    assert process.parent.span_id == send.context.span_id  # continued from the AMQP headers
    assert execute.parent and process.context and execute.parent.span_id == process.context.span_id
    attributes = dict(process.attributes or {})
    assert attributes["dagger_adapter.task_id"] == "traced-1"
    assert attributes["dagger_adapter.execution_type"] == CW
    assert attributes["dagger_adapter.attempt"] == 1
    assert attributes["dagger_adapter.outcome"] == "succeeded"
    assert attributes["dagger_adapter.worker_id"] == worker.worker_id

    # The SDK put the execution's context on its engine requests: the engine's spans join the trace.
    assert execute.context is not None
    parents = traceparent_ids(dagger_engine, trace_id)
    assert parents and set(parents) == {f"{execute.context.span_id:016x}"}

    # Every log line about the task carries the trace id.
    lines = [line for line in worker_log() if line["task_id"] == "traced-1"]
    assert lines and {line["trace_id"] for line in lines} == {trace_id}


@pytest.mark.parametrize(
    "headers",
    [
        {"traceparent": "00-not-a-trace-01"},
        {"traceparent": "00-" + "0" * 32 + "-" + "1" * 16 + "-01"},  # all-zero trace id: invalid
        {"traceparent": bytearray(b"\xff\xfe"), "tracestate": bytearray(b"\x00")},
        {"traceparent": 12345, "tracestate": ["a"]},
        {"traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01" + "x" * 5000},
    ],
)
async def test_a_malformed_traceparent_is_ignored_and_the_command_runs_in_a_trace_of_its_own(
    headers: dict[str, Any],
    start_worker: StartWorker,
    observer: Observer,
    channel: AbstractChannel,
    topology_spec: Topology,
    dagger_engine: TestEngine,
    spans: Callable[[str], list[ReadableSpan]],
) -> None:
    await start_worker()  # traced (the ``spans`` fixture's provider): a command without context gets a trace
    await publish_command(channel, topology_spec, command("odd-trace"), headers=headers)
    await observer.wait_for(lambda: observer.results_for("odd-trace"), 30, "the result")
    (result,) = observer.results_for("odd-trace")
    assert result.success and result.trace_id and len(result.trace_id) == 32
    assert result.trace_id not in ("0" * 32, "a" * 32)
    processed = await wait_until(
        lambda: [s for s in spans(result.trace_id or "") if s.name.startswith("process ")], 10, "the worker's span"
    )
    process = processed[0]
    assert process.parent is None  # a root: nothing was taken from the bad header
    assert traceparent_ids(dagger_engine, result.trace_id)


async def queued_traceparent(amqp: AbstractRobustConnection, spec: Topology) -> tuple[str, str, Any]:
    """(trace id, parent span id, tracestate) of the one command waiting in the tasks queue."""
    channel = await amqp.channel()
    queue = await channel.get_queue(spec.tasks_queue, ensure=False)
    message = await queue.get(no_ack=True, fail=True)
    await channel.close()
    assert message is not None and message.headers is not None
    assert decode(message.body, ExecutionCommand).task_id == "cli-traced"
    version, trace_id, span_id, flags = str(message.headers["traceparent"]).split("-")
    assert (version, flags) == ("00", "01")
    return trace_id, span_id, message.headers.get("tracestate")


async def test_submit_passes_on_the_trace_context_of_its_caller(
    amqp_url: str, amqp: AbstractRobustConnection, topology_spec: Topology, declared: Any
) -> None:
    parent_trace, parent_span = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    env = cli_env(amqp_url, topology_spec, TRACEPARENT=f"00-{parent_trace}-{parent_span}-01", TRACESTATE="ci=1")
    ran = await run_cli("submit", "-", "--task-id", "cli-traced", "--json", env=env, stdin=SUBMITTED)
    assert ran.code == 0, ran.err
    assert ran.json()["trace_id"] == parent_trace
    # No exporter: nothing is recorded, the caller's context travels on as it came.
    assert await queued_traceparent(amqp, topology_spec) == (parent_trace, parent_span, "ci=1")


class Collector:
    """An OTLP/HTTP trace receiver: the spans exporters send it."""

    def __init__(self) -> None:
        self.spans: list[Any] = []
        collector = self

        class Receive(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path == "/v1/traces":
                    request = ExportTraceServiceRequest.FromString(body)
                    for resource in request.resource_spans:
                        for scope in resource.scope_spans:
                            collector.spans.extend((resource.resource, span) for span in scope.spans)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Receive)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def collector() -> Iterator[Collector]:
    running = Collector()
    yield running
    running.close()


async def test_submit_exports_its_spans_over_otlp_and_the_command_continues_them(
    amqp_url: str, amqp: AbstractRobustConnection, topology_spec: Topology, declared: Any, collector: Collector
) -> None:
    parent_trace, parent_span = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    env = cli_env(
        amqp_url,
        topology_spec,
        TRACEPARENT=f"00-{parent_trace}-{parent_span}-01",
        OTEL_EXPORTER_OTLP_ENDPOINT=collector.endpoint,  # the only OTEL setting: otlp is the default exporter
    )
    ran = await run_cli("submit", "-", "--task-id", "cli-traced", "--json", env=env, stdin=SUBMITTED)
    assert ran.code == 0, ran.err
    assert ran.json()["trace_id"] == parent_trace

    spans = {span.name: (resource, span) for resource, span in collector.spans}
    resource, cli_span = spans["dagger-adapter submit"]
    _, send = spans[f"send {topology_spec.tasks_exchange}"]
    assert cli_span.trace_id.hex() == send.trace_id.hex() == parent_trace
    assert cli_span.parent_span_id.hex() == parent_span and send.parent_span_id == cli_span.span_id
    service = next(a.value.string_value for a in resource.attributes if a.key == "service.name")
    assert service == "dagger-adapter"
    # The command carries the send span: the worker's span will be its child.
    assert await queued_traceparent(amqp, topology_spec) == (parent_trace, send.span_id.hex(), None)


SUBMITTED = encode(
    ExecutionCommand(
        task_id="placeholder",
        execution_type=ExecutionType.CONTAINERIZED_WORKFLOW,
        parameters={"container_image": "alpine:3.20", "command": ["true"]},
    )
).decode()


# --- result lookup -----------------------------------------------------------------------


async def test_results_get_and_get_result_answer_from_the_outcome_records(
    start_worker: StartWorker,
    observer: Observer,
    channel: AbstractChannel,
    amqp: AbstractRobustConnection,
    amqp_url: str,
    valkey_url: str,
    topology_spec: Topology,
    dagger_engine: TestEngine,
    tmp_path: Path,
) -> None:
    worker = await start_worker()
    dagger_engine.on_exec(["report"], ExecOutcome(stdout="all good\n"))
    await publish_command(channel, topology_spec, command("looked-up", "report"))
    await publish_command(channel, topology_spec, command("looked-up-bad", "sh", "-c", "exit 4"))
    await observer.wait_for(
        lambda: observer.results_for("looked-up") and observer.results_for("looked-up-bad"), 30, "both results"
    )
    published = observer.results_for("looked-up")[0]
    await stop_worker(worker)  # a lookup needs no worker

    client = await ExecutionClient(amqp, topology_spec, valkey_url=valkey_url).start()
    try:
        assert await client.get_result("looked-up") == published
        assert await client.get_result("never-submitted") is None
        bad = await client.get_result("looked-up-bad")
        assert bad is not None and not bad.success and bad.error_category is not None
    finally:
        await client.close()

    amqp_only = await ExecutionClient(amqp, topology_spec).start()
    try:
        with pytest.raises(ClientError, match="valkey_url"):
            await amqp_only.get_result("looked-up")
    finally:
        await amqp_only.close()

    env = cli_env(amqp_url, topology_spec, DAGGER_ADAPTER_VALKEY_URL=valkey_url)
    ran = await run_cli("results", "get", "looked-up", "--json", env=env)
    assert ran.code == 0, ran.err
    assert decode(ran.out.encode(), ExecutionResult) == published
    ran = await run_cli("results", "get", "looked-up", env=env)
    assert ran.code == 0 and "looked-up" in ran.out and "succeeded" in ran.out and "all good" in ran.out
    ran = await run_cli("results", "get", "looked-up-bad", env=env)
    assert ran.code == 1 and "failed" in ran.out and "permanent" in ran.out
    ran = await run_cli("results", "get", "never-submitted", env=env)
    assert ran.code == 4 and ran.out == "" and "no result recorded for task never-submitted" in ran.err
    ran = await run_cli("results", "get", "looked-up", env=cli_env(amqp_url, topology_spec))
    assert ran.code == 2 and "valkey_url" in ran.err
    # The live stream is still `results` without a sub-verb.
    ran = await run_cli("results", "--for", "0.2", "--json", env=env)
    assert ran.code == 0, ran.err


def test_trace_headers_are_read_as_text_or_bytes_and_anything_else_is_no_context() -> None:
    traceparent = "00-" + "a" * 32 + "-" + "b" * 16 + "-01"
    for raw in (traceparent, traceparent.encode(), bytearray(traceparent.encode())):
        found = tracing.extract({"traceparent": raw, "tracestate": "vendor=v1"})
        assert found is not None
        span_context = trace.get_current_span(found).get_span_context()
        assert f"{span_context.trace_id:032x}" == "a" * 32 and span_context.is_remote
        assert span_context.trace_state.get("vendor") == "v1"
    assert tracing.extract(None) is None and tracing.extract({}) is None
    assert tracing.extract({"tracestate": "vendor=v1"}) is None
    assert tracing.extract({"traceparent": "ff-" + "a" * 32 + "-" + "b" * 16 + "-01"}) is None  # version ff: invalid


async def test_a_worker_process_exports_its_spans_where_the_otel_variables_say_once_each(
    amqp_url: str,
    valkey_url: str,
    topology_spec: Topology,
    dagger_engine: TestEngine,
    observer: Observer,
    channel: AbstractChannel,
    tmp_path: Path,
) -> None:
    otel = {"OTEL_TRACES_EXPORTER": "console", "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=test"}
    settings = worker_settings(
        amqp_url=amqp_url,
        valkey_url=valkey_url,
        spec=topology_spec,
        work_dir=tmp_path,
        engine_env={**dagger_engine.session_env(), **otel},
    )
    worker = WorkerProcess(settings, tmp_path / "worker.log")
    try:
        await observer.wait_ready(worker.worker_id)
        trace_id = uuid.uuid4().hex
        traceparent = f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01"
        await publish_command(channel, topology_spec, command("exported-1"), headers={"traceparent": traceparent})
        await observer.wait_for(lambda: observer.results_for("exported-1"), 30, "the result")
        assert observer.results_for("exported-1")[0].trace_id == trace_id
        worker.terminate()
        assert await worker.wait(30) == 0
        output = worker.output()
    finally:
        worker.stop()
    # The console exporter prints each finished span as JSON: the command's spans, exactly once
    # each (the SDK's telemetry set-up and ours share one provider), under our service name.
    assert output.count(f'"name": "process {topology_spec.tasks_queue}"') == 1, output
    assert output.count('"name": "execute containerized_workflow"') == 1
    assert f'"trace_id": "0x{trace_id}"' in output
    assert '"service.name": "dagger-adapter"' in output and '"deployment.environment": "test"' in output
    lines = [line for line in worker.log_lines() if line.get("task_id") == "exported-1"]
    assert lines and all(line["trace_id"] == trace_id and "otelTraceID" not in line for line in lines)


async def test_breaker_state_and_transitions_follow_the_engine(
    start_worker: StartWorker,
    observer: Observer,
    channel: AbstractChannel,
    topology_spec: Topology,
    dagger_engine: TestEngine,
) -> None:
    worker = await start_worker(metrics_port=0, metrics_address="127.0.0.1", breaker_failure_threshold=1)
    assert worker.metrics_port is not None
    port = worker.metrics_port
    dagger_engine.fail_requests(10_000)
    await publish_command(channel, topology_spec, command("breaks-1"))

    async def state_is(state: str) -> bool:
        _, samples = await scrape(port)
        return value(samples, "dagger_adapter_circuit_breaker_state", state=state) == 1

    await wait_until(lambda: state_is("open"), 30, "the breaker open")
    _, samples = await scrape(port)
    assert value(samples, "dagger_adapter_consuming") == 0  # paused: commands stay queued
    assert value(samples, "dagger_adapter_circuit_breaker_transitions_total", state="open") >= 1

    dagger_engine.fail_requests(0)  # the engine is back: the next probe closes the breaker
    await wait_until(lambda: state_is("closed"), 30, "the breaker closed")

    async def consuming() -> bool:
        _, samples = await scrape(port)
        return value(samples, "dagger_adapter_consuming") == 1

    await wait_until(consuming, 30, "consuming again")
    _, samples = await scrape(port)
    transitions = "dagger_adapter_circuit_breaker_transitions_total"
    assert value(samples, transitions, state="half-open") >= 1 and value(samples, transitions, state="closed") >= 1
    assert value(samples, "dagger_adapter_retries_total", execution_type=CW, error_category="transient") == 1


async def test_an_invalid_commands_span_says_so_with_bounded_attributes(
    start_worker: StartWorker,
    observer: Observer,
    channel: AbstractChannel,
    topology_spec: Topology,
    span_exporter: InMemorySpanExporter,
) -> None:
    await start_worker()
    long_id = "m" * 250  # a message id is the publisher's: 255 bytes fit in AMQP, the span takes 200
    body = json.dumps({"task_id": "invalid-span", "execution_type": "dagger_pipeline", "parameters": {"nope": 1}})
    exchange = await channel.get_exchange(topology_spec.tasks_exchange, ensure=False)
    await exchange.publish(aio_pika.Message(body.encode(), message_id=long_id), routing_key="dagger_pipeline")
    await observer.wait_for(lambda: observer.results_for("invalid-span"), 30, "the invalid command's failure result")
    (result,) = observer.results_for("invalid-span")
    assert result.error_category is not None and result.error_category.value == "invalid" and result.trace_id

    def invalid_spans() -> list[ReadableSpan]:
        return [
            s
            for s in span_exporter.get_finished_spans()
            if s.context and f"{s.context.trace_id:032x}" == result.trace_id and s.name.startswith("process ")
        ]

    (span,) = await wait_until(invalid_spans, 10, "the span")
    attributes = dict(span.attributes or {})
    assert attributes["dagger_adapter.outcome"] == "invalid"
    assert attributes["dagger_adapter.task_id"] == "invalid-span"
    assert attributes["messaging.message.id"] == long_id[:200]
    assert span.status.status_code.name == "ERROR"


def test_label_values_come_from_the_enums_only() -> None:
    from consumer.telemetry.metrics import category_label, execution_type_label, status_class

    assert execution_type_label("dagger_pipeline") == "dagger_pipeline"
    assert execution_type_label(ExecutionType.CONTAINERIZED_WORKFLOW) == CW
    assert execution_type_label("retry.1000ms") == execution_type_label(None) == execution_type_label(7) == "unknown"
    assert category_label(None) == "none" and category_label("permanent") == "permanent"
    assert category_label("made-up") == "unknown"
    assert (status_class(200), status_class(503), status_class(42)) == ("2xx", "5xx", "unknown")


async def test_an_exporter_that_is_not_installed_is_a_one_line_start_up_error(
    amqp_url: str,
    valkey_url: str,
    topology_spec: Topology,
    declared: Any,
    dagger_engine: TestEngine,
    tmp_path: Path,
) -> None:
    env = cli_env(amqp_url, topology_spec, OTEL_TRACES_EXPORTER="zipkin")
    ran = await run_cli("submit", "-", "--task-id", "cli-traced", env=env, stdin=SUBMITTED)
    assert ran.code == 2 and ran.out == ""
    assert ran.err.strip() == (
        "dagger-adapter: error: OTEL_TRACES_EXPORTER names the trace exporter 'zipkin', which is not installed "
        "(installed: otlp over http/protobuf, console)"
    )
    settings = worker_settings(
        amqp_url=amqp_url,
        valkey_url=valkey_url,
        spec=topology_spec,
        work_dir=tmp_path,
        engine_env={
            **dagger_engine.session_env(),
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        },
    )
    worker = WorkerProcess(settings, tmp_path / "worker.log")
    try:
        assert await worker.wait(60) == 1
        assert "the trace exporter 'otlp_proto_grpc', which is not installed" in worker.output()
    finally:
        worker.stop()
