"""Running an engine in its own process: exec rules from a JSON file, records to a JSON file.

Rules file: a JSON list of ``{"match": [args prefix], "stdout": "", "stderr": "",
"exit_code": 0, "delay": 0, "files": {}, "times": null}`` (only ``match`` is required), or an
object ``{"rules": [...], "images": [...]}`` whose images are ``{"address": ..., "commands":
[...], "files": {}, "env": {}, "credentials": [user, password]}`` (only ``address`` is
required), declared on top of the suite's images.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from tests.dagger_engine.engine import TestEngine
from tests.dagger_engine.records import ExecOutcome

RULES_ENV = "DAGGER_TEST_ENGINE_RULES"
RECORD_ENV = "DAGGER_TEST_ENGINE_RECORD"


def load_rules(engine: TestEngine, path: str | Path) -> None:
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    rules, images = (data, []) if isinstance(data, list) else (data.get("rules", []), data.get("images", []))
    for image in images:
        options = {k: v for k, v in image.items() if k != "address"}
        if "credentials" in options:
            options["credentials"] = tuple(options["credentials"])
        engine.add_image(image["address"], **options)
    for rule in rules:
        outcome = ExecOutcome(
            stdout=rule.get("stdout", ""),
            stderr=rule.get("stderr", ""),
            exit_code=int(rule.get("exit_code", 0)),
            delay=float(rule.get("delay", 0.0)),
            files=dict(rule.get("files", {})),
        )
        engine.on_exec(list(rule["match"]), outcome, times=rule.get("times"))


def dump_records(engine: TestEngine, path: str | Path) -> None:
    """The engine's execs and exports, for the test that started the process."""
    data = {
        "execs": [dataclasses.asdict(record) for record in engine.execs],
        "exports": [[host, files] for host, files in engine.exports],
        "query_errors": [dataclasses.asdict(problem) for problem in engine.query_errors],
    }
    Path(path).write_text(json.dumps(data, indent=1), encoding="utf-8")
