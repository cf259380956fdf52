"""Headers from publishers are not trusted: an attempt count is believed only when the worker
itself sealed it on the way through a retry queue, and never beyond max_retries."""

from __future__ import annotations

from consumer.attempts import SEAL
from schemas import encode
from schemas import headers as h
from tests.abuse.expect import Broker
from tests.dagger_engine import TestEngine
from tests.support.worker_process import Observer, command
from tests.test_worker import StartWorker


async def test_a_forged_attempt_count_is_not_believed(
    start_worker: StartWorker, observer: Observer, broker: Broker, dagger_engine: TestEngine
) -> None:
    await start_worker(max_retries=2)
    dagger_engine.fail_requests(1)  # the first attempt fails transiently: it must be retried
    await broker.publish(
        encode(command("forged-attempts")), "containerized_workflow", headers={h.ATTEMPTS: 1000, SEAL: "00" * 32}
    )
    await observer.wait_for(lambda: observer.results_for("forged-attempts"), 30, "the result")
    (result,) = observer.results_for("forged-attempts")
    assert result.success and result.attempts == 2  # attempt 1 (not 1001) failed and was retried
    running = [e.attempt for e in observer.events if e.task_id == "forged-attempts" and e.state.value == "running"]
    assert running == [1, 2]


async def test_a_sealed_count_copied_onto_another_body_is_not_believed(
    start_worker: StartWorker, observer: Observer, broker: Broker, dagger_engine: TestEngine
) -> None:
    """A seal is bound to the body it was made for: a publisher who saw one cannot reuse it."""
    await start_worker(max_retries=1)
    dagger_engine.fail_requests(1)
    await broker.publish(encode(command("sealed-1")), "containerized_workflow")
    await observer.wait_for(lambda: observer.results_for("sealed-1"), 30, "the first task's result")
    assert observer.results_for("sealed-1")[0].attempts == 2  # retried once, through a sealed count

    dagger_engine.fail_requests(1)
    # Whatever seal an attacker copies, it does not match this body: the command counts as fresh
    # and gets its retry.
    await broker.publish(
        encode(command("sealed-2")), "containerized_workflow", headers={h.ATTEMPTS: 1, SEAL: "ab" * 32}
    )
    await observer.wait_for(lambda: observer.results_for("sealed-2"), 30, "the second task's result")
    (result,) = observer.results_for("sealed-2")
    assert result.success and result.attempts == 2
