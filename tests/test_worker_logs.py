"""Structured logs: JSON lines naming worker, task and attempt; no credentials."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import orjson
import pytest

from consumer.logs import configure_logging, task_context


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    stream = io.StringIO()
    configure_logging("INFO", worker_id="w-1", stream=stream)
    try:
        yield stream
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in stream.getvalue().splitlines()]


def test_every_line_names_worker_task_and_attempt(captured: io.StringIO) -> None:
    log = logging.getLogger("dagger_adapter.test")
    log.info("before")
    with task_context("task-9", 2):
        log.info("inside", extra={"delay_s": 1.5})
    log.debug("not at INFO")

    before, inside = lines(captured)
    assert before["msg"] == "before" and before["worker_id"] == "w-1"
    assert before["task_id"] is None and before["attempt"] is None
    assert inside["task_id"] == "task-9" and inside["attempt"] == 2 and inside["delay_s"] == 1.5
    assert inside["level"] == "info" and inside["logger"] == "dagger_adapter.test"


def test_passwords_in_urls_never_reach_a_line(captured: io.StringIO) -> None:
    log = logging.getLogger("dagger_adapter.test")
    log.warning("cannot reach amqp://guest:hunter2@rabbit:5672/", extra={"url": "redis://:s3cret@valkey:6379/0"})
    try:
        raise ConnectionError("refused by amqp://admin:topsecret@host/")
    except ConnectionError:
        log.exception("failed")

    text = captured.getvalue()
    assert "hunter2" not in text and "s3cret" not in text and "topsecret" not in text
    first, second = lines(captured)
    assert first["msg"] == "cannot reach amqp://guest:***@rabbit:5672/"
    assert first["url"] == "redis://:***@valkey:6379/0"
    assert "amqp://admin:***@host/" in str(second["exc"])


def test_amqp_library_errors_during_a_reconnect_are_written_as_warnings(captured: io.StringIO) -> None:
    try:
        raise ConnectionResetError("Connection reset by peer")
    except ConnectionResetError:
        logging.getLogger("aiormq.connection").exception("Unexpected connection close from remote")
        logging.getLogger("aio_pika.robust_connection").error("Connection attempt failed")
    logging.getLogger("dagger_adapter.worker").error("ours stays an error")

    aiormq_line, aio_pika_line, ours = lines(captured)
    assert aiormq_line["level"] == aio_pika_line["level"] == "warning"
    assert aiormq_line["msg"] == "Unexpected connection close from remote" and "exc" not in aiormq_line
    assert ours["level"] == "error"
