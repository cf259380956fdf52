"""pytest fixture ``dagger_engine``: a started TestEngine the SDK connects to through the
environment (DAGGER_SESSION_PORT / DAGGER_SESSION_TOKEN)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.dagger_engine.engine import TestEngine


@pytest.fixture
def dagger_engine(monkeypatch: pytest.MonkeyPatch) -> Iterator[TestEngine]:
    engine = TestEngine().start()
    for name, value in engine.session_env().items():
        monkeypatch.setenv(name, value)
    try:
        yield engine
    finally:
        engine.stop()
    assert engine.query_errors == [], "queries the real engine would reject"
