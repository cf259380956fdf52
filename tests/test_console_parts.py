"""The console's parts that need no browser: what it remembers, who may do what, the filters,
validation of a pasted command, and the HTTP rules every response follows."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from consumer.cli.console_cmd import bind_address
from consumer.client import DeadLetter
from consumer.client.command_file import CommandFileError
from consumer.config import load_config
from consumer.webconsole import create_app
from consumer.webconsole.history import FlowFilter, History
from consumer.webconsole.security import Access, AccessError, Role, is_loopback, safe_next
from consumer.webconsole.views_dead_letters import LetterFilter
from consumer.webconsole.views_submit import check
from schemas import DeadLetterHeaders, ErrorCategory, ExecutionResult, ExecutionType, StatusEvent, TaskState

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
VIEWER = "viewer-token-0123456789"
OPERATOR = "operator-token-0123456789"


def status(task_id: str, state: TaskState, attempt: int = 1, at: datetime = T0) -> StatusEvent:
    return StatusEvent(task_id=task_id, state=state, attempt=attempt, worker_id="w1", at=at)


def result(
    task_id: str, success: bool, execution_type: ExecutionType = ExecutionType.DAGGER_PIPELINE
) -> ExecutionResult:
    return ExecutionResult(
        task_id=task_id,
        success=success,
        error=None if success else "step exited with 1",
        error_category=None if success else ErrorCategory.PERMANENT,
        execution_type=execution_type,
        duration_ms=1200,
    )


# --- what the console remembers ---
def test_a_tasks_heartbeats_fold_into_one_entry_per_attempt_and_the_result_ends_its_story() -> None:
    history = History()
    history.add_status(status("t1", TaskState.RECEIVED), T0)
    history.add_status(status("t1", TaskState.RUNNING), T0)
    for n in range(5):
        history.add_status(status("t1", TaskState.HEARTBEAT, at=T0 + timedelta(seconds=n)), T0)
    history.add_status(status("t1", TaskState.RETRYING), T0)
    history.add_status(status("t1", TaskState.HEARTBEAT, attempt=2), T0)
    history.add_result(result("t1", True), T0)
    record = history.get("t1")
    assert record is not None
    assert [(e.state, e.attempt, e.count) for e in record.timeline] == [
        ("received", 1, 1),
        ("running", 1, 1),
        ("heartbeat", 1, 5),
        ("retrying", 1, 1),
        ("heartbeat", 2, 1),
        ("result", 1, 1),
    ]
    assert record.timeline[2].last_at == T0 + timedelta(seconds=4)
    assert record.outcome == "succeeded" and record.execution_type == "dagger_pipeline" and record.attempts == 2
    # The flow shows a run of heartbeats once.
    assert [e.state for e in history.flow].count("heartbeat") == 2


def test_the_history_is_bounded_and_forgets_the_least_recently_heard_task_first() -> None:
    history = History(max_tasks=3, max_flow=4)
    for name in ("a", "b", "c"):
        history.add_status(status(name, TaskState.RECEIVED), T0)
    history.add_status(status("a", TaskState.RUNNING), T0)  # heard again: kept
    history.add_status(status("d", TaskState.RECEIVED), T0)
    assert list(history.tasks) == ["c", "a", "d"]
    assert len(history.flow) == 4


def test_the_flow_filter_knows_a_status_events_type_and_outcome_from_its_tasks_result() -> None:
    history = History()
    history.add_status(status("ok", TaskState.RUNNING), T0)
    history.add_result(result("ok", True), T0)
    history.add_status(status("bad", TaskState.RUNNING), T0)
    history.add_result(result("bad", False, ExecutionType.CONTAINERIZED_WORKFLOW), T0)
    history.add_status(status("pending", TaskState.RUNNING), T0)

    def shown(**fields: str) -> list[tuple[str, str]]:
        return [(e.task_id, e.state) for e in history.recent(FlowFilter(**fields), 100)]

    assert shown(execution_type="dagger_pipeline") == [("ok", "succeeded"), ("ok", "running")]
    assert shown(outcome="failed") == [("bad", "failed"), ("bad", "running")]
    assert shown(kind="result", task_id="o") == [("ok", "succeeded")]
    assert shown(task_id="pend") == [("pending", "running")]


def test_the_rate_counts_outcomes_per_minute_over_the_last_thirty() -> None:
    history = History()
    history.add_result(result("a", True), T0)
    history.add_result(result("b", False), T0 + timedelta(seconds=30))
    history.add_result(result("c", True), T0 + timedelta(minutes=1))
    series = history.rate.series(T0 + timedelta(minutes=1, seconds=5))
    assert len(series) == 30
    assert series[-2:] == [(T0, 1, 1), (T0 + timedelta(minutes=1), 1, 0)]
    history.add_result(result("d", True), T0 + timedelta(minutes=45))  # the old minutes are dropped
    assert T0 not in history.rate.counts


# --- who may do what ---
def test_binding_beyond_loopback_needs_a_viewer_token_and_tokens_must_be_long_and_distinct() -> None:
    with pytest.raises(AccessError, match="console_token"):
        Access(None, OPERATOR, loopback=False)
    with pytest.raises(AccessError, match="too short"):
        Access("short", None, loopback=True)
    with pytest.raises(AccessError, match="must differ"):
        Access(VIEWER, VIEWER, loopback=True)
    open_locally = Access(None, None, loopback=True)
    assert open_locally.anonymous == Role.VIEWER and not open_locally.operators_possible
    guarded = Access(VIEWER, OPERATOR, loopback=False)
    assert guarded.anonymous == Role.NONE
    assert guarded.role_for(VIEWER) == Role.VIEWER
    assert guarded.role_for(OPERATOR) == Role.OPERATOR
    assert guarded.role_for(VIEWER + "x") == guarded.role_for("") == guarded.role_for(None) == Role.NONE


def test_loopback_addresses_and_redirect_targets() -> None:
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "10.0.0.1", "::", "example.com"))
    assert safe_next("/tasks/x?y=1") == "/tasks/x?y=1"
    assert [safe_next(t) for t in ("https://evil.example", "//evil.example", "/\\evil.example", None)] == ["/"] * 4
    assert bind_address("0.0.0.0:9000") == ("0.0.0.0", 9000)
    assert bind_address("[::1]:0") == ("::1", 0)
    assert bind_address(":8080") == ("127.0.0.1", 8080)
    for bad in ("8080", "host:", "host:99999", "host:http"):
        with pytest.raises(argparse.ArgumentTypeError):
            bind_address(bad)


def test_console_tokens_never_show_in_the_configurations_repr() -> None:
    config = load_config(
        env={"DAGGER_ADAPTER_CONSOLE_TOKEN": VIEWER, "DAGGER_ADAPTER_CONSOLE_OPERATOR_TOKEN": OPERATOR}
    )
    assert config.console_token == VIEWER and config.console_operator_token == OPERATOR
    assert VIEWER not in repr(config) and OPERATOR not in repr(config)
    assert config.redacted()["console_token"] == "***"


# --- dead-letter filters ---
def letter(task_id: str, category: str, error: str, age: timedelta, now: datetime) -> DeadLetter:
    reason = DeadLetterHeaders(error_category=category, error=error, attempts=1, dead_lettered_at=now - age)
    return DeadLetter(id=task_id, routing_key="x", body=b"{}", headers={}, reason=reason, command={"task_id": task_id})


def test_dead_letters_filter_by_category_error_text_task_id_and_age() -> None:
    now = T0
    letters = [
        letter("build-1", "permanent", "step 'build' exited with 1", timedelta(minutes=5), now),
        letter("build-2", "transient", "registry unreachable", timedelta(hours=3), now),
        letter("deploy-1", "permanent", "Registry said no", timedelta(days=2), now),
    ]

    def ids(**fields: str) -> list[str]:
        return [x.id for x in LetterFilter(**fields).select(letters, now)]

    assert ids(category="permanent") == ["build-1", "deploy-1"]
    assert ids(text="registry") == ["build-2", "deploy-1"]
    assert ids(task_id="build") == ["build-1", "build-2"]
    assert ids(newer_than="1h") == ["build-1"]
    assert ids(older_than="1h", newer_than="1d") == ["build-2"]
    assert ids(newer_than="2026-01-01T11:00:00") == ["build-1"]  # an ISO time (UTC)
    with pytest.raises(ValueError, match="not a duration"):
        ids(newer_than="yesterday")


# --- a pasted command ---
def test_a_pasted_command_is_validated_like_the_worker_does_and_yaml_aliases_are_refused() -> None:
    command = check(
        '{"task_id": "t1", "execution_type": "dagger_pipeline", "parameters": {"pipeline": [{"from": {"address": "alpine"}}]}}'
    )
    assert command.task_id == "t1"
    with pytest.raises(CommandFileError, match="execution_type"):
        check('{"task_id": "t1", "execution_type": "nope"}')
    bomb = "a: &a [x, x, x]\nb: &b [*a, *a, *a]\nc: [*b, *b, *b]\n"
    with pytest.raises(CommandFileError, match="aliases"):
        check(bomb)
    with pytest.raises(CommandFileError, match="longer than"):
        check("#" * (300 * 1024))


# --- HTTP rules (no broker needed: the hub is not started without the lifespan) ---
async def test_every_response_carries_the_security_headers_and_a_foreign_host_is_refused_on_open_loopback() -> None:
    app = create_app(load_config(env={}), loopback=True)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8080") as client:
        page = await client.get("/")
        assert page.status_code == 200
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert page.headers["x-frame-options"] == "DENY"
        assert "RabbitMQ" in page.text  # the banner: not connected (yet)
        # A POST without the session's CSRF token is refused before anything else.
        assert (await client.post("/submit", data={"text": "{}"})).status_code == 403
    async with httpx.AsyncClient(transport=transport, base_url="http://attacker.example") as rebound:
        assert (await rebound.get("/")).status_code == 400
