"""The engine the end-to-end tests run against: the test engine (CI), or a real Dagger engine.

Tests marked ``real_engine`` take the ``engine_under_test`` fixture, and their bodies are written
so they run unchanged on both: real commands in real public images, judged by what comes out.

- By default (and in CI) it is the test engine (``tests/dagger_engine/``), reached the way the
  worker reaches a real engine through the dagger CLI: every ``dagger session`` is a session of
  its own (``session_cli.py`` hands out sessions of the in-process engine), so what a real
  engine keeps per session (registry credentials, host snapshots, served modules) is seen.
- With ``DAGGER_ADAPTER_REAL_ENGINE=1`` (``just test-real-engine``) it is the real engine the SDK
  finds on its own: the dagger CLI (``_EXPERIMENTAL_DAGGER_CLI_BIN``, engine from
  ``_EXPERIMENTAL_DAGGER_RUNNER_HOST``) or one given session (``DAGGER_SESSION_PORT`` +
  ``DAGGER_SESSION_TOKEN``). Steps only a test engine can take (move a tag in a registry, make a
  registry fail, hang the engine) skip with the reason, and so do steps that need what only the
  person running them can provide: a private image and its credentials
  (``DAGGER_ADAPTER_TEST_PRIVATE_IMAGE``, ``..._USERNAME``, ``..._PASSWORD``).
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.dagger_engine import ExecOutcome, ExecRecord, TestEngine

REAL_ENGINE = os.environ.get("DAGGER_ADAPTER_REAL_ENGINE") == "1"
IMAGE = "alpine:3.20"
# Output that differs on every run: the same text twice means the command did not run again.
FRESH_OUTPUT = ["sh", "-c", "od -An -N16 -tx1 /dev/urandom | tr -d ' \\n'"]
FRESH_FAILURE = ["sh", "-c", "od -An -N16 -tx1 /dev/urandom | tr -d ' \\n' >&2; exit 3"]
# No registry has it: Docker Hub answers an anonymous pull of it with "pull access denied".
MISSING_IMAGE = "docker.io/library/dagger-adapter-test-no-such-image:1"
SESSION_CLI = Path(__file__).with_name("session_cli.py")
SESSIONS_PER_TEST = 24


class EngineUnderTest:
    def __init__(self, engine: TestEngine | None) -> None:
        self._engine = engine

    @property
    def real(self) -> bool:
        return self._engine is None

    @property
    def name(self) -> str:
        return "a real Dagger engine" if self.real else "the test engine"

    def only_test_engine(self, why: str) -> TestEngine:
        """The test engine, for a step a real one cannot be made to take; skips on a real one."""
        if self._engine is None:
            pytest.skip(f"on a real engine: {why}")
        return self._engine

    @property
    def test_engine(self) -> TestEngine | None:
        return self._engine

    def private_image(self) -> tuple[str, dict[str, str]]:
        """A private image and the registry credentials that pull it."""
        if self._engine is None:
            image = os.environ.get("DAGGER_ADAPTER_TEST_PRIVATE_IMAGE")
            user = os.environ.get("DAGGER_ADAPTER_TEST_PRIVATE_IMAGE_USERNAME")
            password = os.environ.get("DAGGER_ADAPTER_TEST_PRIVATE_IMAGE_PASSWORD")
            if not (image and user and password):
                pytest.skip("on a real engine: set DAGGER_ADAPTER_TEST_PRIVATE_IMAGE and its _USERNAME/_PASSWORD")
            return image, {"address": image.split("/", 1)[0], "username": user, "password": password}
        image = "registry.example.test/team/private:1"
        password = secrets.token_hex(8)
        self._engine.add_image(image, credentials=("ci", password))
        return image, {"address": "registry.example.test", "username": "ci", "password": password}


def _fresh(record: ExecRecord) -> ExecOutcome:
    # What `od ... /dev/urandom` prints, for an engine that emulates its commands.
    text = secrets.token_hex(16)
    return ExecOutcome(stderr=text, exit_code=3) if record.args == FRESH_FAILURE else ExecOutcome(stdout=text)


@pytest.fixture
def engine_under_test(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[EngineUnderTest]:
    """The engine this run tests against (see the module docstring); the SDK's environment is
    set up for it, with a fresh session per connection."""
    if REAL_ENGINE:
        yield EngineUnderTest(None)
        return
    engine: TestEngine = request.getfixturevalue("dagger_engine")
    engine.on_exec(lambda r: r.args in (FRESH_OUTPUT, FRESH_FAILURE), _fresh)
    pool = tmp_path / "engine-sessions.json"
    pool.write_text(
        json.dumps({"port": engine.port, "tokens": [engine.new_session() for _ in range(SESSIONS_PER_TEST)]})
    )
    monkeypatch.delenv("DAGGER_SESSION_PORT", raising=False)
    monkeypatch.delenv("DAGGER_SESSION_TOKEN", raising=False)
    monkeypatch.setenv("_EXPERIMENTAL_DAGGER_CLI_BIN", str(SESSION_CLI))
    monkeypatch.setenv("DAGGER_ADAPTER_TEST_SESSIONS", str(pool))
    yield EngineUnderTest(engine)
