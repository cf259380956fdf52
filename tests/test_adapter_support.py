"""Helpers shared by the adapter tests (no tests here): a configuration rooted in the test's
tmp directory, and a started adapter that is always closed."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from consumer import DaggerAdapter, DaggerAdapterConfig, load_config
from schemas import ExecutionCommand, ExecutionType


def adapter_config(tmp_path: Path, **overrides: Any) -> DaggerAdapterConfig:
    """Fast failure paths: tiny backoff, no jitter, short timeouts; caching off unless a test
    gives a ``valkey_url``. Host paths may be read and written under ``tmp_path/data``."""
    workflows = tmp_path / "workflows"
    workflows.mkdir(exist_ok=True)
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    values: dict[str, Any] = {
        "workflow_directory": str(workflows),
        "allowed_volume_roots": [str(data)],
        "allowed_output_roots": [str(data)],
        "cache_directory": str(tmp_path / "cache"),
        "caching_enabled": "valkey_url" in overrides,
        "max_retries": 2,
        "retry_backoff_factor": 0.01,
        "retry_jitter": False,
        "timeout_seconds": 30.0,
        "engine_connect_timeout_seconds": 5.0,
        "breaker_failure_threshold": 5,
        "breaker_reset_seconds": 30.0,
    }
    values.update(overrides)
    return load_config(env={}, **values)  # converted and validated like a real configuration


@contextlib.asynccontextmanager
async def started(config: DaggerAdapterConfig) -> AsyncIterator[DaggerAdapter]:
    adapter = DaggerAdapter(config)
    await adapter.initialize()
    try:
        yield adapter
    finally:
        await adapter.close()


def workflow_command(task_id: str = "wf-1", **parameters: Any) -> ExecutionCommand:
    return ExecutionCommand(task_id=task_id, execution_type=ExecutionType.CONTAINERIZED_WORKFLOW, parameters=parameters)


def pipeline_command(task_id: str = "pl-1", **parameters: Any) -> ExecutionCommand:
    return ExecutionCommand(task_id=task_id, execution_type=ExecutionType.DAGGER_PIPELINE, parameters=parameters)


def write_workflow(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / "workflows" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    return path
