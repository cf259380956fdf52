"""Secrets are masked in the whole text before it is cut (issue 8: "a secret that straddles
the output tail cut leaks its suffix").

The secret here is a registry password: the engine masks the secrets a step is *given*, not a
registry credential, so what reaches the result is the adapter's own masking."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from consumer.errors import TAIL_CHARS
from tests.dagger_engine import ExecOutcome, TestEngine
from tests.test_adapter_support import adapter_config, pipeline_command, started, workflow_command

PASSWORD = "pw-Zq8Xr3Kd9Lm2Vt7Yh4Nc6"
AUTH = {"username": "robot", "password": PASSWORD}


def straddling(cut_from_end: int, *, inside: int = 9, filler: str = ".") -> str:
    """Text whose last ``cut_from_end`` characters include only the password's last ``inside``
    characters: a cut there splits the password."""
    head = filler * 5000
    tail = filler * (cut_from_end - inside)
    return head + PASSWORD + tail


def leaks(text: Any) -> list[str]:
    """Pieces of the password (6+ characters) anywhere in ``text``."""
    flat = repr(text)
    return [
        PASSWORD[i:j] for i in range(len(PASSWORD)) for j in range(i + 6, len(PASSWORD) + 1) if PASSWORD[i:j] in flat
    ]


@pytest.mark.parametrize("inside", [3, 9, len(PASSWORD) - 3])
async def test_step_output_tails_never_carry_a_piece_of_a_secret(
    dagger_engine: TestEngine, tmp_path: Path, inside: int
) -> None:
    dagger_engine.on_exec(
        ["build"],
        ExecOutcome(stdout=straddling(TAIL_CHARS, inside=inside), stderr=straddling(TAIL_CHARS, inside=inside)),
    )
    progress: list[tuple[str, str, str | None]] = []
    async with started(adapter_config(tmp_path)) as adapter:
        result = await adapter.execute(
            workflow_command(container_image="alpine", command=["build"], registry_auth=AUTH),
            on_progress=lambda *event: progress.append(event),
        )
    assert result.success, result.error
    step = result.result["steps"]["command"]
    assert len(step["stdout"]) <= TAIL_CHARS and step["truncated"] is True
    assert leaks(result) == [] and leaks(progress) == []


async def test_error_messages_never_carry_a_piece_of_a_secret(dagger_engine: TestEngine, tmp_path: Path) -> None:
    # A failing workflow step: its error quotes the last 500 characters of stderr.
    dagger_engine.on_exec(["fail"], ExecOutcome(stderr=straddling(500) + "\n", exit_code=1))
    # A failing pipeline exec (the engine's own error, with the whole stderr).
    dagger_engine.on_exec(["boom"], ExecOutcome(stderr=straddling(TAIL_CHARS) + "\n", exit_code=2))
    progress: list[tuple[str, str, str | None]] = []
    async with started(adapter_config(tmp_path, max_retries=0)) as adapter:
        step_failure = await adapter.execute(
            workflow_command(container_image="alpine", command=["fail"], registry_auth=AUTH),
            on_progress=lambda *event: progress.append(event),
        )
        exec_failure = await adapter.execute(
            pipeline_command(
                "pl-2",
                pipeline=[{"from": {"address": "alpine"}}, {"with_exec": {"args": ["boom"]}}],
                registry_auth=AUTH,
            ),
            on_progress=lambda *event: progress.append(event),
        )
    assert not step_failure.success and "exited with code 1" in (step_failure.error or "")
    assert not exec_failure.success and "exited with code 2" in (exec_failure.error or "")
    assert "***" in (step_failure.error or "") + (exec_failure.error or "")
    assert len(exec_failure.error or "") < TAIL_CHARS + 1024  # still bounded
    assert leaks(step_failure) == [] and leaks(exec_failure) == [] and leaks(progress) == []
