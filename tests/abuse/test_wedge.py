"""One small message must never wedge a worker: whatever decoding raises (RecursionError
included), the message ends as one ``invalid`` dead letter and the worker keeps consuming."""

from __future__ import annotations

from tests.abuse.conftest import LoopLag
from tests.abuse.expect import Broker, engine_untouched, invalid_dead_letters, still_works
from tests.abuse.test_limits import MAX_LOOP_LAG
from tests.dagger_engine import TestEngine
from tests.support.worker_process import Observer, publish_raw
from tests.test_worker import StartWorker


def nested(depth: int, task_id: str = "deep") -> bytes:
    """A command of a few KB whose module args nest ``depth`` arrays deep."""
    return (
        b'{"task_id": "' + task_id.encode() + b'", "execution_type": "dagger_pipeline", "parameters": '
        b'{"module": "github.com/acme/m", "function": "f", "args": {"x": ' + b"[" * depth + b"]" * depth + b"}}}"
    )


async def test_deeply_nested_json_is_dead_lettered_and_does_not_wedge_the_worker(
    start_worker: StartWorker,
    observer: Observer,
    broker: Broker,
    dagger_engine: TestEngine,
    loop_lag: LoopLag,
) -> None:
    # More of them than the worker's capacity: each used to hold a prefetch slot for ever.
    worker = await start_worker(max_concurrent_executions=2)
    before = dagger_engine.request_count
    loop_lag.start()
    reasons = {}
    for i, depth in enumerate([1_000, 10_000, 100_000]):
        message_id = await publish_raw(broker.channel, broker.spec, nested(depth, f"deep-{i}"), "dagger_pipeline")
        reasons[message_id] = "the message nests too deep: over the limit max_json_depth = 32"

    await invalid_dead_letters(broker, observer, worker, reasons=reasons)
    engine_untouched(dagger_engine, before)
    assert observer.results == []  # too deep to be read: no task id to answer
    assert loop_lag.worst < MAX_LOOP_LAG, f"the event loop was blocked {loop_lag.worst:.2f} s"
    await still_works(broker, observer)


async def test_a_limit_can_be_raised_by_the_operator(
    start_worker: StartWorker,
    observer: Observer,
    broker: Broker,
) -> None:
    """The depth limit is configuration: raised, a message of that depth is read (and refused
    for what it is: an unknown module, past the limits)."""
    worker = await start_worker(max_json_depth=60)
    await publish_raw(broker.channel, broker.spec, nested(50, "deep-ok"), "dagger_pipeline")
    await observer.wait_for(lambda: observer.results_for("deep-ok"), 30, "the result")
    (result,) = observer.results_for("deep-ok")
    assert "max_json_depth" not in (result.error or "")
    assert worker.limits.max_json_depth == 60
