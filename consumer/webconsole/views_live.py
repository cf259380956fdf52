"""Fleet (``/``), live flow (``/flow``) and the task view (``/tasks/<id>``)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from consumer.client import ClientError, DeadLetter
from consumer.webconsole.history import FlowFilter, TaskRecord
from consumer.webconsole.pages import console_of
from schemas import ExecutionType, Outcome

FLOW_ROWS = 200
CHART_WIDTH, CHART_HEIGHT = 1200, 110
TASK_LETTER_SCAN = 5_000  # dead letters looked through for one task's letters


# --- fleet ---
def _fleet_context(request: Request) -> dict[str, Any]:
    hub = console_of(request).hub
    now = datetime.now(UTC)
    spec = hub.topology
    queues = [("tasks", spec.tasks_queue, "waiting to run")]
    queues += [
        (f"retry {tier.delay_ms / 1000:g} s", tier.queue, "waiting out a retry delay") for tier in spec.retry_tiers
    ]
    queues.append(("dead letters", spec.dead_queue, "for an operator"))
    workers = [(w, w.freshness(now)) for w in hub.workers_now(now)]
    live = [w.heartbeat for w, freshness in workers if freshness != "stale"]
    return {
        "workers": workers,
        "totals": {
            "ready": sum(1 for beat in live if beat.ready),
            "load": sum(beat.current_load for beat in live),
            "capacity": sum(beat.capacity for beat in live),
        },
        "queues": [(label, name, hint, hub.depths.get(name)) for label, name, hint in queues],
        "depths_known": bool(hub.depths),
        "history": hub.history,
    }


async def fleet(request: Request) -> Response:
    return console_of(request).render(request, "fleet.html", _fleet_context(request))


async def fleet_fragment(request: Request) -> Response:
    return console_of(request).render(request, "_fleet.html", _fleet_context(request))


# --- flow ---
def flow_filter(request: Request) -> FlowFilter:
    params = request.query_params
    kind = params.get("kind") or None
    execution_type = params.get("type") or None
    outcome = params.get("outcome") or None
    return FlowFilter(
        execution_type=execution_type if execution_type in {t.value for t in ExecutionType} else None,
        outcome=outcome if outcome in {o.value for o in Outcome} else None,
        task_id=(params.get("task") or "").strip()[:200] or None,
        kind=kind if kind in ("result", "status") else None,
    )


def _flow_context(request: Request) -> dict[str, Any]:
    hub = console_of(request).hub
    chosen = flow_filter(request)
    rows = hub.history.recent(chosen, FLOW_ROWS)
    return {
        "filter": chosen,
        "rows": [(row, hub.history.get(row.task_id)) for row in rows],
        "query": request.url.query,
        "types": [t.value for t in ExecutionType],
        "outcomes": [o.value for o in Outcome],
        "seen": hub.history,
    }


async def flow(request: Request) -> Response:
    return console_of(request).render(request, "flow.html", {**_flow_context(request), **_chart(request)})


async def flow_fragment(request: Request) -> Response:
    return console_of(request).render(request, "_flow.html", _flow_context(request))


def _chart(request: Request) -> dict[str, Any]:
    """Succeeded/failed per minute as stacked bars: geometry computed here, drawn as SVG."""
    series = console_of(request).hub.history.rate.series(datetime.now(UTC))
    top = max([ok + failed for _, ok, failed in series] + [1])
    slot = CHART_WIDTH / len(series)
    bars: list[dict[str, Any]] = []
    for i, (minute, ok, failed) in enumerate(series):
        ok_h = CHART_HEIGHT * ok / top
        failed_h = CHART_HEIGHT * failed / top
        bars.append(
            {
                "x": round(i * slot + 1, 1),
                "width": round(slot - 2, 1),
                "ok_y": round(CHART_HEIGHT - ok_h, 1),
                "ok_h": round(ok_h, 1),
                "failed_y": round(CHART_HEIGHT - ok_h - failed_h, 1),
                "failed_h": round(failed_h, 1),
                "minute": minute,
                "ok": ok,
                "failed": failed,
            }
        )
    ticks = [
        (bar["x"], bar["minute"]) for i, bar in enumerate(bars) if (len(bars) - 1 - i) % 10 == 0 and i < len(bars) - 1
    ]
    return {
        "bars": bars,
        "ticks": ticks,
        "chart_width": CHART_WIDTH,
        "chart_height": CHART_HEIGHT,
        "top": top,
        "totals": (sum(ok for _, ok, _ in series), sum(failed for _, _, failed in series)),
    }


async def rate_fragment(request: Request) -> Response:
    return console_of(request).render(request, "_rate.html", _chart(request))


# --- task ---
async def find_task(request: Request) -> Response:
    task_id = (request.query_params.get("id") or "").strip()
    if not task_id:
        return RedirectResponse("/flow", 303)
    return RedirectResponse("/tasks/" + quote(task_id, safe=""), 303)


def _task_context(request: Request) -> dict[str, Any]:
    task_id: str = request.path_params["task_id"]
    record: TaskRecord | None = console_of(request).hub.history.get(task_id)
    return {"task_id": task_id, "record": record, "started": _started(record)}


async def _letters_context(request: Request) -> dict[str, Any]:
    """The task's dead letters: a browse of the queue (only on load and when the task fails)."""
    console = console_of(request)
    task_id: str = request.path_params["task_id"]
    letters: list[DeadLetter] = []
    letters_error = None
    scanned = False
    if console.hub.connection is not None:
        try:
            async with console.hub.dead_letter_lock:
                browsed = await console.hub.dead_letters().browse(limit=TASK_LETTER_SCAN)
            letters = [letter for letter in browsed if letter.task_id == task_id]
            scanned = len(browsed) >= TASK_LETTER_SCAN
        except ClientError as exc:
            letters_error = str(exc)
    else:
        letters_error = "not connected to RabbitMQ"
    return {"letters": letters, "letters_error": letters_error, "letters_partial": scanned}


def _started(record: TaskRecord | None) -> datetime | None:
    if record is None:
        return None
    result = record.result
    if result is not None and result.started_at is not None:
        return result.started_at
    return next((e.at for e in record.timeline if e.state in ("received", "running")), None)


async def task(request: Request) -> Response:
    if not request.path_params["task_id"]:
        return RedirectResponse("/flow", 303)
    context = {**_task_context(request), **await _letters_context(request)}
    return console_of(request).render(request, "task.html", context)


async def task_fragment(request: Request) -> Response:
    return console_of(request).render(request, "_task.html", _task_context(request))


async def task_letters_fragment(request: Request) -> Response:
    context = {**_task_context(request), **await _letters_context(request)}
    return console_of(request).render(request, "_task_letters.html", context)


def routes() -> list[Route]:
    return [
        Route("/", fleet),
        Route("/fragments/fleet", fleet_fragment),
        Route("/flow", flow),
        Route("/fragments/flow", flow_fragment),
        Route("/fragments/rate", rate_fragment),
        Route("/tasks", find_task),
        Route("/tasks/{task_id:path}", task),
        Route("/fragments/tasks/{task_id:path}", task_fragment),
        Route("/fragments/task-letters/{task_id:path}", task_letters_fragment),
    ]
