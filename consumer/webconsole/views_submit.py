"""Submit a command: paste it or pick one of the examples, validated as you type (the same
decoder the worker uses), published with confirms, then followed on its task view."""

from __future__ import annotations

import logging
from pathlib import Path
from urllib.parse import quote

import msgspec
import yaml
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from consumer.client import ClientError
from consumer.client.command_file import CommandFileError, command_from_text, parse_document
from consumer.webconsole.pages import client_of, console_of, mutation, text_value
from consumer.webconsole.security import Role
from schemas import ExecutionCommand

log = logging.getLogger("dagger_adapter.webconsole.views_submit")

MAX_DOCUMENT = 256 * 1024  # characters of a pasted command
EXAMPLE_SUFFIXES = (".json", ".yaml", ".yml")
SOURCE = "the command"


def examples(directory: Path | None) -> dict[str, Path]:
    """The example files by name (only names from this listing are ever opened)."""
    if directory is None or not directory.is_dir():
        return {}
    return {p.name: p for p in sorted(directory.iterdir()) if p.is_file() and p.suffix in EXAMPLE_SUFFIXES}


def check(text: str) -> ExecutionCommand:
    """The command in ``text``, fully validated; ``CommandFileError`` says what is wrong."""
    if len(text) > MAX_DOCUMENT:
        raise CommandFileError(f"{SOURCE} is longer than {MAX_DOCUMENT // 1024} KiB")
    if _has_yaml_alias(text):
        # An alias can make a few bytes of YAML expand to gigabytes of JSON.
        raise CommandFileError(f"{SOURCE} uses YAML anchors/aliases; write the values out")
    return command_from_text(text, SOURCE)


def _has_yaml_alias(text: str) -> bool:
    try:
        msgspec.json.decode(text)
        return False
    except msgspec.DecodeError:
        pass
    try:
        return any(isinstance(event, yaml.AliasEvent) for event in yaml.parse(text, Loader=yaml.SafeLoader))
    except yaml.YAMLError:
        return False  # parse_document reports it


def _given_task_id(text: str) -> bool:
    try:
        return "task_id" in parse_document(text, SOURCE)
    except CommandFileError:
        return False


async def submit_page(request: Request, *, text: str = "", error: str | None = None, status: int = 200) -> Response:
    console = console_of(request)
    chosen = request.query_params.get("example")
    found = examples(console.examples)
    if not text and chosen in found:
        text = found[chosen].read_text(encoding="utf-8")
    return console.render(
        request,
        "submit.html",
        {"examples": list(found), "chosen": chosen, "text": text, "error": error},
        status,
    )


async def submit_form(request: Request) -> Response:
    return await submit_page(request)


async def example(request: Request) -> Response:
    found = examples(console_of(request).examples)
    name = request.path_params["name"]
    if name not in found:
        return PlainTextResponse("no such example", 404)
    return PlainTextResponse(found[name].read_text(encoding="utf-8"))


@mutation(Role.VIEWER)
async def validate(request: Request) -> Response:
    """``{"text": ...}`` -> ``{"ok", "message", "task_id", "execution_type"}`` (checks only)."""
    text = text_value(request.state.form.get("text")) or ""
    if not text.strip():
        return JSONResponse({"ok": False, "message": "paste a command (JSON or YAML), or pick an example"})
    try:
        command = check(text)
    except CommandFileError as exc:
        return JSONResponse({"ok": False, "message": str(exc)})
    generated = not _given_task_id(text)
    return JSONResponse(
        {
            "ok": True,
            "message": "valid "
            + command.execution_type.value
            + " command"
            + (" (a task id is made up when it is submitted)" if generated else ""),
            "task_id": None if generated else command.task_id,
            "execution_type": command.execution_type.value,
        }
    )


@mutation(Role.OPERATOR)
async def submit(request: Request) -> Response:
    console = console_of(request)
    text = text_value(request.state.form.get("text")) or ""
    try:
        command = check(text)
    except CommandFileError as exc:
        return await submit_page(request, text=text, error=str(exc), status=400)
    try:
        task_id = await console.hub.require_client().submit(command)
    except ClientError as exc:
        return await submit_page(request, text=text, error=f"not submitted: {exc}", status=503)
    console.hub.history.add_note(task_id, "submitted", "from the console")
    log.info("console: submitted task %s (%s) for %s", task_id, command.execution_type.value, client_of(request))
    return RedirectResponse("/tasks/" + quote(task_id, safe=""), 303)


def routes() -> list[Route]:
    return [
        Route("/submit", submit_form, methods=["GET"]),
        Route("/submit", submit, methods=["POST"]),
        Route("/submit/validate", validate, methods=["POST"]),
        Route("/submit/examples/{name}", example),
    ]
