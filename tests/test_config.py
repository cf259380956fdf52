"""Configuration: defaults < TOML file < environment, validation naming the field, and no
credential ever shown."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from consumer.config import ConfigError, DaggerAdapterConfig, load_config, topology_for


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "adapter.toml"
    path.write_text(text)
    return path


def test_defaults_of_the_original_design() -> None:
    config = load_config(env={})
    assert config.container_registry == "docker.io"
    assert config.max_concurrent_executions == 4
    assert config.max_retries == 3
    assert config.caching_enabled is True
    assert config.valkey_url is None  # embedded Valkey
    assert config.topology_prefix == "dagger"
    assert config.worker_id  # generated, unique per process


def test_file_overrides_defaults_and_environment_overrides_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'max_concurrent_executions = 8\ncontainer_registry = "ghcr.io"\nretry_jitter = false\n'
        'allowed_volume_roots = ["/srv/data"]\n',
    )
    from_file = load_config(path, env={})
    assert (from_file.max_concurrent_executions, from_file.container_registry) == (8, "ghcr.io")
    assert from_file.retry_jitter is False
    assert from_file.allowed_volume_roots == ["/srv/data"]

    both = load_config(
        path,
        env={
            "DAGGER_ADAPTER_MAX_CONCURRENT_EXECUTIONS": "3",
            "DAGGER_ADAPTER_RETRY_JITTER": "true",
            "DAGGER_ADAPTER_ALLOWED_VOLUME_ROOTS": "/a, /b",
            "DAGGER_ADAPTER_TIMEOUT_SECONDS": "12.5",
        },
    )
    assert both.max_concurrent_executions == 3
    assert both.container_registry == "ghcr.io"  # not overridden: the file's value stays
    assert both.retry_jitter is True
    assert both.allowed_volume_roots == ["/a", "/b"]
    assert both.timeout_seconds == 12.5


def test_config_file_can_come_from_the_environment_and_use_a_table(tmp_path: Path) -> None:
    path = write(tmp_path, "[dagger_adapter]\nmax_retries = 7\n")
    assert load_config(env={"DAGGER_ADAPTER_CONFIG": str(path)}).max_retries == 7


@pytest.mark.parametrize(
    ("env", "field"),
    [
        ({"DAGGER_ADAPTER_MAX_CONCURRENT_EXECUTIONS": "0"}, "max_concurrent_executions"),
        ({"DAGGER_ADAPTER_MAX_CONCURRENT_EXECUTIONS": "many"}, "max_concurrent_executions"),
        ({"DAGGER_ADAPTER_TIMEOUT_SECONDS": "-5"}, "timeout_seconds"),
        ({"DAGGER_ADAPTER_CACHING_ENABLED": "maybe"}, "caching_enabled"),
        ({"DAGGER_ADAPTER_TOPOLOGY_PREFIX": "has space"}, "topology_prefix"),
        ({"DAGGER_ADAPTER_RETRY_DELAY_TIERS": "1,-2"}, "retry_delay_tiers"),
    ],
)
def test_invalid_values_fail_naming_the_field(env: dict[str, str], field: str) -> None:
    with pytest.raises(ConfigError, match=rf"`\$\.{field}"):
        load_config(env=env)


def test_unknown_fields_and_missing_files_are_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown configuration field.*max_concurency"):
        load_config(write(tmp_path, "max_concurency = 3\n"), env={})
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.toml", env={})
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "= nope"), env={})


def test_credentials_never_appear_in_reprs_or_errors() -> None:
    config = load_config(
        env={
            "DAGGER_ADAPTER_CONTAINER_CREDENTIALS_USERNAME": "bot",
            "DAGGER_ADAPTER_CONTAINER_CREDENTIALS_PASSWORD": "pw-SECRET-1",
            "DAGGER_ADAPTER_AMQP_URL": "amqp://app:amqp-SECRET-2@rabbit:5672/prod",
            "DAGGER_ADAPTER_VALKEY_URL": "redis://:valkey-SECRET-3@cache:6379/0",
        }
    )
    assert config.container_credentials is not None and config.container_credentials.secret == "pw-SECRET-1"
    for text in (repr(config), str(config), str(config.redacted()), repr(config.container_credentials)):
        assert "SECRET" not in text
    assert "amqp://app:***@rabbit:5672/prod" in repr(config)

    token = load_config(env={"DAGGER_ADAPTER_CONTAINER_CREDENTIALS": '{"token": "tok-SECRET-4"}'})
    assert token.container_credentials is not None and token.container_credentials.secret == "tok-SECRET-4"
    assert "SECRET" not in repr(token)

    with pytest.raises(ConfigError) as info:
        load_config(env={"DAGGER_ADAPTER_CONTAINER_CREDENTIALS": '{"username": "u", "tokn": "tok-SECRET-5"}'})
    assert "SECRET" not in str(info.value)
    assert "container_credentials" in str(info.value)
    with pytest.raises(ConfigError) as info:
        load_config(env={"DAGGER_ADAPTER_CONTAINER_CREDENTIALS": "{not json tok-SECRET-6"})
    assert "SECRET" not in str(info.value)


def test_topology_follows_the_configuration() -> None:
    spec = topology_for(
        load_config(env={"DAGGER_ADAPTER_TOPOLOGY_PREFIX": "acme", "DAGGER_ADAPTER_DELIVERY_LIMIT": "9"})
    )
    assert spec.tasks_queue == "acme.tasks"
    assert spec.delivery_limit == 9


def test_invalid_configuration_stops_the_cli_with_one_line() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "consumer.cli", "topology", "show"],
        env={"DAGGER_ADAPTER_MAX_CONCURRENT_EXECUTIONS": "0", "PATH": ""},
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "dagger-adapter: error: invalid configuration: Expected `int` >= 1 - at `$.max_concurrent_executions`"
    ]


def test_config_is_a_struct_with_every_field_of_the_original_design() -> None:
    fields = set(DaggerAdapterConfig.__struct_fields__)
    assert fields >= {
        "container_registry",
        "container_credentials",
        "workflow_directory",
        "max_concurrent_executions",
        "timeout_seconds",
        "max_retries",
        "retry_backoff_factor",
        "retry_jitter",
        "caching_enabled",
        "cache_directory",
        "cache_ttl_seconds",
        "amqp_url",
        "valkey_url",
        "worker_id",
        "heartbeat_interval_seconds",
        "drain_timeout_seconds",
        "topology_prefix",
        "allowed_volume_roots",
    }


def test_the_readme_documents_every_configuration_field() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    missing = [f for f in DaggerAdapterConfig.__struct_fields__ if f"| `{f}` |" not in readme]
    assert missing == [], f"README's configuration table lacks {missing}"


@pytest.mark.parametrize("url", ["notaurl", "rabbit:5672", "http://rabbit/", "amqp://u:pw-SECRET@rabbit:port/"])
def test_a_malformed_amqp_url_fails_at_start_up_without_echoing_it(url: str) -> None:
    # aio-pika's robust connection would retry a malformed URL forever instead.
    with pytest.raises(ConfigError, match="amqp_url") as info:
        load_config(env={"DAGGER_ADAPTER_AMQP_URL": url})
    assert "SECRET" not in str(info.value)
