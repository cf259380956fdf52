"""The operator console in a real headless Chromium (Debian's, driven by Playwright), served
by `dagger-adapter console` as a subprocess, against real RabbitMQ, Valkey, a real worker
subprocess and the test engine.

Screenshots of the main pages are written to $DAGGER_ADAPTER_SCREENSHOTS (docs/screenshots for
the README) or the test's temporary directory.
"""

from __future__ import annotations

import re
import threading
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aio_pika
import httpx
import pytest
from aio_pika.abc import AbstractRobustConnection
from playwright.async_api import Page, expect

from consumer.client import DeadLetterQueue, ExecutionClient
from schemas import ErrorCategory, ExecutionResult, ExecutionType, StatusEvent, TaskState, encode
from tests.dagger_engine import ExecOutcome, ExecRecord, TestEngine
from tests.support.console_process import ConsoleProcess, Relay, launch_browser, screenshot
from tests.support.worker_process import Observer, WorkerProcess, command, wait_until, worker_settings
from tests.test_client_support import command as client_command
from tests.test_client_support import put_dead_letter
from topology import Topology, declare

WAIT = 30_000  # ms: deadline of every condition the browser waits for
OPERATOR = "operator-" + uuid.uuid4().hex
SECRET = "hunter2-" + uuid.uuid4().hex


# --- fixtures ---
@pytest.fixture
def console_env(amqp_url: str, valkey_url: str, topology_spec: Topology, tmp_path: Path) -> dict[str, str]:
    settings = worker_settings(
        amqp_url=amqp_url, valkey_url=valkey_url, spec=topology_spec, work_dir=tmp_path, worker_id="console"
    )
    settings["DAGGER_ADAPTER_CONSOLE_OPERATOR_TOKEN"] = OPERATOR
    return settings


@pytest.fixture
async def console(console_env: dict[str, str], observer: Observer, tmp_path: Path) -> AsyncIterator[ConsoleProcess]:
    process = ConsoleProcess(console_env, tmp_path / "console.log", "--bind", "127.0.0.1:0")
    try:
        await process.connected()
        yield process
    finally:
        process.stop()
    assert OPERATOR not in process.output(), "a token was logged"


@pytest.fixture
async def worker(
    amqp_url: str,
    valkey_url: str,
    topology_spec: Topology,
    dagger_engine: TestEngine,
    observer: Observer,
    tmp_path: Path,
) -> AsyncIterator[WorkerProcess]:
    settings = worker_settings(
        amqp_url=amqp_url,
        valkey_url=valkey_url,
        spec=topology_spec,
        work_dir=tmp_path,
        engine_env=dagger_engine.session_env(),
        max_concurrent_executions=3,
    )
    process = WorkerProcess(settings, tmp_path / "worker.log")
    try:
        yield process
    finally:
        process.terminate()
        try:
            await process.wait(30)
        finally:
            process.stop()


@pytest.fixture
async def page() -> AsyncIterator[Page]:
    async with launch_browser() as browser:
        context = await browser.new_context(viewport={"width": 1360, "height": 860})
        page = await context.new_page()
        errors: list[Any] = []
        page.on("pageerror", lambda error: errors.append(error))
        try:
            yield page
        finally:
            await context.close()
        assert errors == [], f"errors in the page's JavaScript: {errors}"


async def sign_in(page: Page, base: str, token: str) -> None:
    await page.goto(base + "login")
    await page.fill("input[name=token]", token)
    await page.click("button.primary")
    await expect(page.locator(".flash")).to_contain_text("signed in")


def gated_echo(engine: TestEngine, gate: threading.Event) -> None:
    """``sh -c`` execs (the hello example) wait for ``gate``, then print the greeting."""

    def answer(record: ExecRecord) -> ExecOutcome:
        gate.wait(60)
        return ExecOutcome(stdout=record.env.get("GREETING", "") + "\n")

    engine.on_exec(["sh"], answer)


async def publish_result(amqp: AbstractRobustConnection, spec: Topology, task_id: str, success: bool = True) -> None:
    """A result on the results exchange, as a worker publishes it (with a message id)."""
    declared = await declare(amqp, spec)
    outcome = "succeeded" if success else "failed"
    await declared.results.publish(
        aio_pika.Message(
            encode(ExecutionResult(task_id=task_id, success=success, execution_type=ExecutionType.DAGGER_PIPELINE)),
            message_id=uuid.uuid4().hex,
        ),
        routing_key=spec.result_routing_key("dagger_pipeline", outcome),
    )


# --- tests ---
async def test_a_worker_appears_and_a_submitted_example_is_followed_live_to_success(
    console: ConsoleProcess, worker: WorkerProcess, dagger_engine: TestEngine, page: Page, tmp_path: Path
) -> None:
    gate = threading.Event()
    gated_echo(dagger_engine, gate)
    try:
        await page.goto(console.url)
        row = page.locator(f'#workers tr[data-worker="{worker.worker_id}"]')
        await expect(row).to_be_visible(timeout=WAIT)  # it appears without a reload
        await expect(row.locator(".badge")).to_have_text("ready")
        await expect(row).to_contain_text("0/3")

        await sign_in(page, console.url, OPERATOR)
        await page.goto(console.url + "submit")
        await page.click('[data-example="hello-pipeline.json"]')
        verdict = page.get_by_test_id("verdict")
        await expect(verdict).to_contain_text("valid dagger_pipeline command")
        example = await page.input_value("#command-text")

        # Checked as you type, naming the field that is wrong.
        await page.fill("#command-text", example.replace('"dagger_pipeline"', '"dagger_pipelin"'))
        await expect(verdict).to_contain_text("execution_type")
        await expect(verdict).to_have_class("verdict verdict-bad")
        task_id = f"hello-{uuid.uuid4().hex[:8]}"
        await page.fill("#command-text", example.replace('"hello-1"', f'"{task_id}"'))
        await expect(verdict).to_contain_text("✔ valid dagger_pipeline command")
        await screenshot(page, "submit", tmp_path)

        await page.click("#submit-button")
        await expect(page).to_have_url(console.url + "tasks/" + task_id)
        await expect(page.get_by_test_id("task-state")).to_have_text("running", timeout=WAIT)
        await page.evaluate("window.__same_page = true")
    finally:
        gate.set()
    # Followed live: the outcome arrives on the page that is open (no reload).
    await expect(page.get_by_test_id("task-state")).to_have_text("succeeded", timeout=WAIT)
    assert await page.evaluate("window.__same_page === true")
    await expect(page.get_by_test_id("task-result")).to_contain_text("hello from Dagger")
    timeline = page.locator(".timeline")
    for state in ("submitted", "received", "running", "succeeded"):
        await expect(timeline).to_contain_text(state)
    await expect(page.locator("#task")).to_contain_text(worker.worker_id)
    await screenshot(page, "task", tmp_path)

    await page.goto(console.url + "flow?type=dagger_pipeline&kind=result")
    await expect(page.locator("#flow")).to_contain_text(task_id)
    await expect(page.get_by_test_id("rate-ok")).to_have_text("1")
    await page.goto(console.url + "flow?outcome=failed")
    await expect(page.locator("#flow")).to_contain_text("Nothing seen matches this filter yet")

    await page.goto(console.url)
    await expect(page.locator('[data-testid="results-seen"]')).to_have_text("1")
    await screenshot(page, "fleet", tmp_path)

    # A worker that stops sending heartbeats goes stale, in colour, on the open page.
    worker.terminate()
    assert await worker.wait(30) == 0
    await expect(row).to_have_class(re.compile(r"\bfresh-stale\b"), timeout=WAIT)
    await expect(row.locator(".badge")).to_have_text("stale")
    await expect(page.get_by_test_id("workers-ready")).to_contain_text("0")


async def test_a_failing_command_shows_its_reason_in_the_dead_letters_and_is_replayed_from_the_page(
    console: ConsoleProcess,
    worker: WorkerProcess,
    dagger_engine: TestEngine,
    observer: Observer,
    amqp: AbstractRobustConnection,
    amqp_url: str,
    topology_spec: Topology,
    page: Page,
    tmp_path: Path,
) -> None:
    fixed = threading.Event()  # the engine answers from its own threads
    dagger_engine.on_exec(
        ["deploy"],
        lambda _r: (
            ExecOutcome(stdout="deployed\n")
            if fixed.is_set()
            else ExecOutcome(stderr="registry said no\n", exit_code=3)
        ),
    )
    task_id = f"deploy-{uuid.uuid4().hex[:8]}"
    failing = command(task_id, "deploy", "prod")
    failing.parameters["secrets"] = {"API_KEY": SECRET}
    await sign_in(page, console.url, OPERATOR)
    await page.goto(console.url + "flow")
    async with ExecutionClient.connect(amqp_url, topology_spec) as client:
        await client.submit(command(f"echo-{task_id}"))
        await client.submit(failing)
    # The flow shows one succeed and one fail, live.
    await expect(page.locator("#flow tr.ev-result.st-failed")).to_contain_text(task_id, timeout=WAIT)
    await expect(page.locator("#flow tr.ev-result.st-succeeded")).to_contain_text(f"echo-{task_id}", timeout=WAIT)
    await expect(page.get_by_test_id("rate-failed")).to_have_text("1")
    await expect(page.get_by_test_id("rate-ok")).to_have_text("1")
    await observer.wait_for(lambda: "dead_lettered" in observer.states_of(task_id), 30, "the dead letter")
    await screenshot(page, "flow", tmp_path)

    await page.goto(console.url + "dead-letters")
    row = page.locator(f'tr[data-task="{task_id}"]')
    await expect(row).to_contain_text("permanent")
    await expect(row).to_contain_text("exited with code 3")  # the reason
    await screenshot(page, "dead-letters", tmp_path)

    # The letter in full: headers, and the body with its secret masked.
    await row.locator("td").nth(1).locator("a").click()
    await expect(page.get_by_test_id("letter-headers")).to_contain_text('"x-error-category": "permanent"')
    await expect(page.get_by_test_id("letter-body")).to_contain_text('"API_KEY": "***"')
    assert SECRET not in await page.content()
    await screenshot(page, "dead-letter", tmp_path)
    dlq = DeadLetterQueue(amqp, topology_spec)
    assert [letter.task_id for letter in await dlq.browse()] == [task_id]  # looking consumed nothing

    # The task view knows the story and the dead letter.
    await page.goto(console.url + "tasks/" + task_id)
    await expect(page.get_by_test_id("task-error")).to_contain_text("exited with code 3")
    await expect(page.locator("#task")).to_contain_text("dead lettered")
    await expect(page.locator("#task-letters")).to_contain_text("exited with code 3")

    # Replay after the cause is fixed: a preview first, then exactly what it showed.
    fixed.set()
    await page.goto(console.url + "dead-letters")
    await row.locator("input[type=checkbox]").check()
    await page.click("text=Replay selected…")
    await expect(page.get_by_test_id("preview")).to_contain_text(task_id)
    assert len(await dlq.browse()) == 1, "the preview moved something"
    await page.click("button:has-text('Replay 1')")
    await expect(page.locator(".flash")).to_contain_text("replayed 1 dead letter")
    await page.goto(console.url + "tasks/" + task_id)
    await expect(page.get_by_test_id("task-outcome")).to_have_text("succeeded", timeout=WAIT)
    await page.goto(console.url + "dead-letters")
    await expect(page.locator("main")).to_contain_text("The dead-letter queue is empty")
    assert await dlq.browse() == []


async def test_purge_needs_an_explicit_confirmation(
    console: ConsoleProcess, amqp: AbstractRobustConnection, topology_spec: Topology, page: Page, tmp_path: Path
) -> None:
    declared = await declare(amqp, topology_spec)
    await put_dead_letter(declared, client_command("t-keep"), error="keep me")
    drop = await put_dead_letter(declared, client_command("t-drop"), category="invalid", error="bad parameters")
    dlq = DeadLetterQueue(amqp, topology_spec)
    await sign_in(page, console.url, OPERATOR)
    await page.goto(console.url + "dead-letters?category=invalid")
    await expect(page.get_by_test_id("dlq-count")).to_contain_text("2 dead letters in the queue, 1 matching")
    # The list says when the queue changed under it (live), without consuming anything.
    await put_dead_letter(declared, client_command("t-late"), category="transient", error="later")
    await expect(page.get_by_test_id("dlq-changed")).to_contain_text("now holds 3 dead letters", timeout=WAIT)
    await page.click("text=Purge all 1 matching…")
    await expect(page.get_by_test_id("preview")).to_contain_text("t-drop")
    await expect(page.get_by_test_id("preview")).not_to_contain_text("t-keep")
    await screenshot(page, "purge-confirm", tmp_path)

    # Without the box ticked the browser does not send the form, and the server refuses it anyway.
    await page.click("button:has-text('Purge 1')")
    await expect(page.locator("h1")).to_contain_text("Purge 1 dead letter for good?")
    csrf = await page.get_attribute('meta[name="csrf-token"]', "content")
    refused = await page.request.post(
        console.url + "dead-letters/purge", form={"csrf_token": csrf or "", "ids[]": drop}, max_redirects=0
    )
    assert refused.status == 400 and "Nothing was deleted" in await refused.text()
    assert {letter.task_id for letter in await dlq.browse()} == {"t-keep", "t-drop", "t-late"}

    await page.check("input[name=confirm]")
    await page.click("button:has-text('Purge 1')")
    await expect(page.locator(".flash")).to_contain_text("purged 1 dead letter")
    assert [letter.task_id for letter in await dlq.browse()] == ["t-keep", "t-late"]


async def test_beyond_loopback_every_request_needs_a_token(
    console_env: dict[str, str], observer: Observer, page: Page, tmp_path: Path
) -> None:
    # No viewer token: it refuses to start.
    bare = ConsoleProcess(console_env, tmp_path / "bare.log", "--bind", "0.0.0.0:0")
    try:
        assert await bare.exited() == 2
        assert "needs console_token" in bare.output()
    finally:
        bare.stop()

    viewer = "viewer-" + uuid.uuid4().hex
    env = {**console_env, "DAGGER_ADAPTER_CONSOLE_TOKEN": viewer}
    process = ConsoleProcess(env, tmp_path / "console.log", "--bind", "0.0.0.0:0")
    try:
        url = (await process.listening()).replace("0.0.0.0", "127.0.0.1")
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            for method, path in [
                ("GET", "/"),
                ("GET", "/events"),
                ("GET", "/dead-letters"),
                ("GET", "/tasks/x"),
                ("POST", "/dead-letters/purge"),
                ("POST", "/submit"),
            ]:
                refused = await http.request(method, path)
                assert refused.status_code == 401, (method, path, refused.status_code)
            wrong = await http.get("/", headers={"Authorization": "Bearer not-the-token-at-all"})
            assert wrong.status_code == 401
            seen = await http.get("/", headers={"Authorization": f"Bearer {viewer}"})
            assert seen.status_code == 200 and "Workers" in seen.text
            # A viewer may look but not act.
            act = await http.post(
                "/dead-letters/purge",
                headers={"Authorization": f"Bearer {viewer}"},
                data={"ids[]": "x", "confirm": "purge"},
            )
            assert act.status_code == 403

        # In the browser: the sign-in page, a wrong token refused, the viewer token read-only.
        response = await page.goto(url + "dead-letters")
        assert response is not None and response.status == 401
        await expect(page.locator("body")).not_to_contain_text(console_env["DAGGER_ADAPTER_TOPOLOGY_PREFIX"])
        await screenshot(page, "sign-in", tmp_path)
        await page.fill("input[name=token]", "wrong-" + viewer)
        await page.click("button.primary")
        await expect(page.locator("main")).to_contain_text("That token is not valid here")
        await page.fill("input[name=token]", viewer)
        await page.click("button.primary")
        await expect(page).to_have_url(url + "dead-letters")
        await expect(page.locator(".who")).to_contain_text("read-only")
        await expect(page.locator("main")).not_to_contain_text("Purge")

        # Signed in as operator, a POST without this session's CSRF token or from elsewhere is refused.
        await sign_in(page, url, OPERATOR)
        forged = await page.request.post(url + "dead-letters/purge", form={"ids[]": "x", "confirm": "purge"})
        assert forged.status == 403
        csrf = await page.get_attribute('meta[name="csrf-token"]', "content") or ""
        elsewhere = await page.request.post(
            url + "dead-letters/purge",
            form={"csrf_token": csrf, "ids[]": "x", "confirm": "purge"},
            headers={"Origin": "http://evil.example"},
        )
        assert elsewhere.status == 403
    finally:
        process.stop()
    assert viewer not in process.output() and OPERATOR not in process.output()


HOSTILE = ["<img/src=x/onerror=window.__pwned=1>", "[/bold]<script>window.__pwned=2</script>", "a/b?c#d%2F"]


async def test_hostile_task_ids_render_as_inert_text(
    console: ConsoleProcess, amqp: AbstractRobustConnection, topology_spec: Topology, page: Page
) -> None:
    declared = await declare(amqp, topology_spec)
    await page.goto(console.url + "flow")
    for task_id in HOSTILE:  # events as anyone on the exchanges could publish them
        await declared.status.publish(
            aio_pika.Message(encode(StatusEvent(task_id=task_id, state=TaskState.RUNNING, worker_id=task_id))),
            routing_key=topology_spec.status_routing_key("running"),
        )
        await declared.results.publish(
            aio_pika.Message(
                encode(
                    ExecutionResult(
                        task_id=task_id, success=False, error=task_id, error_category=ErrorCategory.PERMANENT
                    )
                )
            ),
            routing_key=topology_spec.result_routing_key("dagger_pipeline", "failed"),
        )
        await put_dead_letter(declared, client_command(task_id), error=task_id)
    flow = page.locator("#flow")
    for task_id in HOSTILE:  # arrived live, through the fragment swap
        await expect(flow.get_by_role("link", name=task_id, exact=True).first).to_be_visible(timeout=WAIT)

    pages = [("tasks/" + quote(t, safe=""), t) for t in HOSTILE] + [("dead-letters", HOSTILE[0]), ("flow", HOSTILE[1])]
    for path, shown in pages:
        await page.goto(console.url + path)
        await expect(page.locator("main")).to_contain_text(shown)
        assert await page.locator("main img").count() == 0
        assert await page.locator("main script").count() == 0
        assert await page.evaluate("window.__pwned") is None
    # The task view is found by its exact id, also from the search box.
    await page.fill("input[name=id]", HOSTILE[1])
    await page.press("input[name=id]", "Enter")
    await expect(page.get_by_test_id("task-id")).to_have_text(HOSTILE[1])
    await expect(page.get_by_test_id("task-outcome")).to_have_text("failed")
    await page.goto(console.url + "tasks/" + quote(HOSTILE[2], safe=""))
    await expect(page.get_by_test_id("task-id")).to_have_text(HOSTILE[2])
    await expect(page.locator("#task")).to_contain_text("permanent")
    assert await page.evaluate("window.__pwned") is None


async def test_an_unreachable_broker_is_a_banner_and_the_console_recovers(
    console_env: dict[str, str],
    observer: Observer,
    amqp_url: str,
    amqp: AbstractRobustConnection,
    topology_spec: Topology,
    page: Page,
    tmp_path: Path,
) -> None:
    async with Relay(amqp_url) as relay:
        relay.down()
        env = {**console_env, "DAGGER_ADAPTER_AMQP_URL": relay.url}
        process = ConsoleProcess(env, tmp_path / "console.log", "--bind", "127.0.0.1:0")
        try:
            url = await process.listening()
            response = await page.goto(url)
            assert response is not None and response.status == 200
            banner = page.locator(".banner")
            await expect(banner).to_contain_text("cannot reach RabbitMQ")
            await page.goto(url + "dead-letters")
            await expect(page.locator("main")).to_contain_text("Cannot read the dead-letter queue")
            assert "Traceback" not in await page.content()

            relay.up()
            await page.click("text=Retry now")
            await expect(banner).to_have_count(0, timeout=WAIT)
            await expect(page.locator("main")).to_contain_text("The dead-letter queue is empty")

            await page.goto(url + "flow")
            relay.down()  # the connection drops under an open page: the banner comes live
            await expect(banner).to_contain_text("RabbitMQ", timeout=WAIT)
            # A result published meanwhile is not lost: the console reads on from the results stream.
            await publish_result(amqp, topology_spec, "while-away")
            relay.up()  # and goes once the console is back by itself
            await expect(banner).to_have_count(0, timeout=WAIT)
            await expect(page.locator("#flow")).to_contain_text("while-away", timeout=WAIT)
        finally:
            process.stop()


async def test_results_from_before_the_console_started_are_read_back_from_the_results_stream(
    console_env: dict[str, str],
    observer: Observer,
    amqp: AbstractRobustConnection,
    topology_spec: Topology,
    tmp_path: Path,
) -> None:
    await publish_result(amqp, topology_spec, "earlier-ok")
    await publish_result(amqp, topology_spec, "earlier-failed", success=False)
    await observer.wait_for(lambda: len(observer.results) == 2, 10, "the results")
    process = ConsoleProcess(console_env, tmp_path / "console.log", "--bind", "127.0.0.1:0", "--since", "10m")
    try:
        url = await process.listening()
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:

            async def flow() -> str:
                return (await http.get("/fragments/flow?kind=result")).text

            async def both_shown() -> bool:
                shown = await flow()
                return "earlier-ok" in shown and "earlier-failed" in shown

            await wait_until(both_shown, 15, "the results read back from the stream")
            task = await http.get("/tasks/earlier-failed")
            assert 'data-testid="task-outcome"><span class="badge b-bad">failed' in task.text
            rate = (await http.get("/fragments/rate")).text
            assert 'data-testid="rate-ok">1<' in rate and 'data-testid="rate-failed">1<' in rate
    finally:
        process.stop()
    without = ConsoleProcess(console_env, tmp_path / "none.log", "--bind", "127.0.0.1:0", "--since", "0s")
    try:
        url = await without.listening()
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:

            async def connected() -> bool:
                return "RabbitMQ" not in (await http.get("/fragments/banner")).text

            await wait_until(connected, 15, "the console to connect")
            await publish_result(amqp, topology_spec, "later")

            async def later_shown() -> bool:
                return "later" in (await http.get("/fragments/flow")).text

            await wait_until(later_shown, 15, "the live result")
            assert "earlier" not in (await http.get("/fragments/flow")).text
    finally:
        without.stop()
