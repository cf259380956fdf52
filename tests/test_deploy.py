"""The deployment files stay in step with the code: every DAGGER_ADAPTER_* setting they use is
a configuration field that loads, and the worker's grace period outlasts its drain."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from consumer.config import ENV_PREFIX, load_config

DEPLOY = Path(__file__).parent.parent / "deploy"


def _documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _adapter_settings(env: dict[str, str]) -> dict[str, str]:
    return {k: str(v) for k, v in env.items() if k.startswith(ENV_PREFIX)}


def test_compose_settings_are_valid_configuration() -> None:
    (compose,) = _documents(DEPLOY / "compose" / "compose.yaml")
    worker = compose["services"]["worker"]
    settings = _adapter_settings(worker["environment"])
    config = load_config(env=settings)
    assert config.amqp_url.startswith("amqp://") and config.valkey_url
    assert config.timeout_seconds <= config.broker_consumer_timeout_seconds
    grace = int(worker["stop_grace_period"].rstrip("s"))
    assert grace > config.drain_timeout_seconds
    assert worker["command"] == ["worker"]


def test_kubernetes_settings_are_valid_configuration() -> None:
    docs = {doc["kind"]: doc for doc in _documents(DEPLOY / "kubernetes" / "worker.yaml")}
    settings = {**docs["ConfigMap"]["data"], **docs["Secret"]["stringData"]}
    config = load_config(env=_adapter_settings(settings))
    assert config.timeout_seconds <= config.broker_consumer_timeout_seconds
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > config.drain_timeout_seconds
    worker = pod["containers"][0]
    assert worker["args"] == ["worker"]
    assert config.health_file
    assert worker["livenessProbe"]["exec"]["command"] == ["dagger-adapter", "health"]
    assert worker["readinessProbe"]["exec"]["command"] == ["dagger-adapter", "health", "--ready"]


def test_the_broker_consumer_timeout_matches_what_the_workers_are_told() -> None:
    conf = (DEPLOY / "rabbitmq" / "rabbitmq.conf").read_text()
    (line,) = [ln for ln in conf.splitlines() if ln.startswith("consumer_timeout")]
    broker_ms = int(line.split("=")[1])
    (compose,) = _documents(DEPLOY / "compose" / "compose.yaml")
    told = float(compose["services"]["worker"]["environment"]["DAGGER_ADAPTER_BROKER_CONSUMER_TIMEOUT_SECONDS"])
    assert broker_ms == told * 1000
