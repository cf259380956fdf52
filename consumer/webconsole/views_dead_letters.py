"""The dead-letter queue: list with filters, a letter in full (secrets masked), replay and purge.

Looking never consumes: every read is ``DeadLetterQueue.browse`` (messages handed back in
place). Replay and purge act on the exact ids an operator saw in the preview: if the queue
changed meanwhile (another operator replayed one), nothing moves and the page says so.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from consumer.cli.arg_types import since
from consumer.client import DeadLetter, DeadLetterNotFound, ReplayIncomplete, Selector
from consumer.webconsole.pages import client_of, console_of, flash, mutation
from consumer.webconsole.security import Role
from schemas import ErrorCategory

log = logging.getLogger("dagger_adapter.webconsole.views_dead_letters")

SCAN_LIMIT = 5_000  # dead letters read per page view (the page says when there are more)
SHOW_LIMIT = 500  # rows shown
CATEGORIES = [*(c.value for c in ErrorCategory), "unknown"]


def cutoff(text: str | None, now: datetime) -> datetime | None:
    """A point in time from ``30m``, ``2h``, ``1d`` (back from ``now``) or an ISO time; None when empty."""
    if not text or not text.strip():
        return None
    try:
        value = since(text)
    except argparse.ArgumentTypeError as exc:
        raise ValueError(str(exc)) from None
    return now - value if isinstance(value, timedelta) else value


@dataclass(frozen=True)
class LetterFilter:
    category: str | None = None
    text: str | None = None  # in the error, case-insensitive
    task_id: str | None = None  # a substring of the task id
    newer_than: str | None = None  # 2h (dead-lettered at most this long ago) or an ISO time
    older_than: str | None = None

    @classmethod
    def from_values(cls, values: Any) -> LetterFilter:
        def get(name: str) -> str | None:
            value = values.get(name)
            return value.strip()[:500] or None if isinstance(value, str) else None

        category = get("category")
        return cls(
            category=category if category in CATEGORIES else None,
            text=get("q"),
            task_id=get("task"),
            newer_than=get("newer"),
            older_than=get("older"),
        )

    @property
    def active(self) -> bool:
        return any((self.category, self.text, self.task_id, self.newer_than, self.older_than))

    def as_params(self) -> dict[str, str]:
        pairs = {
            "category": self.category,
            "q": self.text,
            "task": self.task_id,
            "newer": self.newer_than,
            "older": self.older_than,
        }
        return {k: v for k, v in pairs.items() if v}

    def select(self, letters: list[DeadLetter], now: datetime) -> list[DeadLetter]:
        newer, older = cutoff(self.newer_than, now), cutoff(self.older_than, now)
        out = []
        for letter in letters:
            if self.category and letter.category != self.category:
                continue
            if self.text and self.text.lower() not in letter.reason.error.lower():
                continue
            if self.task_id and self.task_id not in (letter.task_id or ""):
                continue
            when = letter.when
            if newer is not None and (when is None or when < newer):
                continue
            if older is not None and (when is None or when > older):
                continue
            out.append(letter)
        return out


async def _browse(request: Request) -> list[DeadLetter]:
    hub = console_of(request).hub
    async with hub.dead_letter_lock:
        letters: list[DeadLetter] = await hub.dead_letters().browse(limit=SCAN_LIMIT)
        return letters


async def list_letters(request: Request) -> Response:
    console = console_of(request)
    chosen = LetterFilter.from_values(request.query_params)
    context: dict[str, Any] = {
        "filter": chosen,
        "categories": CATEGORIES,
        "letters": [],
        "scanned": 0,
        "matching": 0,
        "error": None,
        "filter_error": None,
        "total": console.hub.depths.get(console.hub.topology.dead_queue),
    }
    if console.hub.connection is None:
        context["error"] = console.hub.broker.error or "not connected to RabbitMQ"
        return console.render(request, "dead_letters.html", context)
    letters = await _browse(request)
    try:
        matching = chosen.select(letters, datetime.now(UTC))
    except ValueError as exc:
        context["filter_error"] = str(exc)
        matching = letters
    context.update(letters=matching[:SHOW_LIMIT], scanned=len(letters), matching=len(matching), scan_limit=SCAN_LIMIT)
    return console.render(request, "dead_letters.html", context)


async def changed_fragment(request: Request) -> Response:
    """A line saying the queue changed since the page was read (``seen``: the count it read)."""
    console = console_of(request)
    seen = request.query_params.get("seen", "")
    now = console.hub.depths.get(console.hub.topology.dead_queue)
    changed = seen.isdigit() and now is not None and now != int(seen)
    return console.render(request, "_dead_letters_changed.html", {"changed": changed, "depth": now})


async def show_letter(request: Request) -> Response:
    console = console_of(request)
    letter_id: str = request.path_params["letter_id"]
    async with console.hub.dead_letter_lock:
        letters = await console.hub.dead_letters().show(letter_id)
    return console.render(
        request, "dead_letter.html", {"letter_id": letter_id, "letters": [(x, x.to_json()) for x in letters]}
    )


# --- replay and purge: preview, then act on exactly what was previewed ---
async def _chosen(request: Request, form: dict[str, Any]) -> tuple[list[DeadLetter], str]:
    """The letters a preview form names: ticked ids, or every letter matching the filter."""
    letters = await _browse(request)
    if form.get("scope") == "filter":
        chosen = LetterFilter.from_values(form)
        return chosen.select(letters, datetime.now(UTC)), "every dead letter matching the filter"
    ids = [i for i in form.get("ids[]") or [] if isinstance(i, str)]
    wanted = set(ids)
    return [letter for letter in letters if letter.id in wanted], "the chosen dead letters"


def _refuse(request: Request, title: str, message: str) -> Response:
    return console_of(request).render(request, "error.html", {"title": title, "message": message}, 400)


def _back(request: Request, message: str, level: str = "ok") -> Response:
    flash(request, message, level)
    return RedirectResponse("/dead-letters", 303)


def _ids(form: dict[str, Any]) -> list[str]:
    return list(dict.fromkeys(i for i in form.get("ids[]") or [] if isinstance(i, str) and i))


def _preview(action: str) -> Any:
    @mutation(Role.OPERATOR)
    async def preview(request: Request) -> Response:
        try:
            letters, what = await _chosen(request, request.state.form)
        except ValueError as exc:
            return _refuse(request, "Filter", str(exc))
        if not letters:
            return _refuse(request, f"Nothing to {action}", "No dead letter was chosen.")
        ids = list(dict.fromkeys(letter.id for letter in letters))
        context = {"action": action, "letters": letters, "ids": ids, "what": what}
        return console_of(request).render(request, "confirm.html", context)

    preview.__name__ = f"{action}_preview"
    return preview


@mutation(Role.OPERATOR)
async def replay(request: Request) -> Response:
    ids = _ids(request.state.form)
    if not ids:
        return _refuse(request, "Replay", "No dead letter was chosen.")
    hub = console_of(request).hub
    try:
        async with hub.dead_letter_lock:
            moved = await hub.dead_letters().replay(Selector(ids=tuple(ids)))
    except DeadLetterNotFound as exc:
        return _back(request, f"nothing replayed: the queue changed since the preview ({exc}); preview again", "error")
    except ReplayIncomplete as exc:
        return _back(request, f"replayed {len(exc.moved)} of {len(ids)}, then: {exc}", "error")
    log.info("console: replayed %d dead letter(s) for %s: %s", len(moved), client_of(request), _listed(moved))
    tasks = ", ".join(sorted({m.letter.task_id or m.letter.id for m in moved})[:5])
    return _back(request, f"replayed {len(moved)} dead letter(s) to {hub.topology.tasks_exchange}: {tasks}")


@mutation(Role.OPERATOR)
async def purge(request: Request) -> Response:
    form = request.state.form
    ids = _ids(form)
    if form.get("confirm") != "purge":
        return _refuse(request, "Not purged", "Purging needs the confirmation box ticked. Nothing was deleted.")
    if not ids:
        return _refuse(request, "Purge", "No dead letter was chosen.")
    hub = console_of(request).hub
    try:
        async with hub.dead_letter_lock:
            purged = await hub.dead_letters().purge(Selector(ids=tuple(ids)))
    except DeadLetterNotFound as exc:
        return _back(request, f"nothing purged: the queue changed since the preview ({exc}); preview again", "error")
    log.info("console: purged %d dead letter(s) for %s: %s", len(purged), client_of(request), _listed(purged))
    return _back(request, f"purged {len(purged)} dead letter(s) from {hub.topology.dead_queue}")


def _listed(items: list[Any]) -> str:
    return ", ".join(getattr(item, "letter", item).id for item in items)


def routes() -> list[Route]:
    return [
        Route("/dead-letters", list_letters),
        Route("/fragments/dead-letters-changed", changed_fragment),
        Route("/dead-letters/replay/preview", _preview("replay"), methods=["POST"]),
        Route("/dead-letters/replay", replay, methods=["POST"]),
        Route("/dead-letters/purge/preview", _preview("purge"), methods=["POST"]),
        Route("/dead-letters/purge", purge, methods=["POST"]),
        Route("/dead-letters/{letter_id:path}", show_letter),
    ]
