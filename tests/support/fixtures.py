"""Fixtures shared by the worker tests (in-process and subprocess)."""

from __future__ import annotations

import pytest
from aio_pika.abc import AbstractChannel, AbstractRobustConnection

from tests.support.worker_process import Observer
from topology import Topology, declare


@pytest.fixture
async def observer(amqp: AbstractRobustConnection, topology_spec: Topology) -> Observer:
    """The test's topology declared, and every result, status event and heartbeat on it recorded."""
    await declare(amqp, topology_spec)
    return await Observer(amqp, topology_spec).start()


@pytest.fixture
async def channel(amqp: AbstractRobustConnection) -> AbstractChannel:
    return await amqp.channel()
