"""pytest fixture ``dagger_engine``: a started TestEngine the SDK connects to through the
environment (DAGGER_SESSION_PORT / DAGGER_SESSION_TOKEN), with the suite's public images
declared (``images.SUITE_IMAGES``). A test declares any other image itself
(``dagger_engine.add_image``). The test fails if it sent a query the engine refused as
invalid and did not take the refusal (``take_query_errors``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.dagger_engine.engine import TestEngine


@pytest.fixture
def dagger_engine(monkeypatch: pytest.MonkeyPatch) -> Iterator[TestEngine]:
    engine = TestEngine().start()
    engine.declare_suite_images()
    for name, value in engine.session_env().items():
        monkeypatch.setenv(name, value)
    try:
        yield engine
    finally:
        engine.stop()
    assert engine.query_errors == [], "queries the engine refused as invalid (a real engine refuses them too)"
