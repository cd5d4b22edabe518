"""Fixtures for tests against a real Apache Kafka broker (a plugin of tests/conftest.py).

One broker per test session, started by ``scripts/kafka-local`` in a temporary dir and stopped
at the end; ``STREAMNB_TEST_BOOTSTRAP=host:port`` uses an existing broker instead. Each test
gets its own topics (``test-<uuid8>``), so tests never see each other's records.

Under pytest-xdist (``make pytest`` runs ``-n 3``) a session is one worker process, so each
worker that runs a Kafka test starts its own broker, once, in its own temporary dir (distinct
data dirs) on free ports (picked under a lock, see ``broker.PORTS_LOCK``). A test that stops
and starts ``kafka_broker`` therefore restarts only its own worker's broker, while no other
test runs on it: the other workers' tests never see a restart.

    def test_roundtrip(make_topic, produce, consume_all):
        topic = make_topic(partitions=3)
        produce(topic, [{"id": 1}], key="a")
        assert [r["value"] for r in consume_all(topic)] == [b'{"id": 1}']
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient

from tests.io.kafka import broker as kafka
from tests.io.kafka.broker import KafkaBroker, KafkaRecord
from tests.io.kafka.registry import SchemaRegistry


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    """The session's broker: ``.bootstrap``, and ``.stop()`` / ``.start()`` to restart it."""
    external = os.environ.get("STREAMNB_TEST_BOOTSTRAP")
    if external:
        yield KafkaBroker(external)
        return
    broker = KafkaBroker.launch(tmp_path_factory.mktemp("kafka"))
    try:
        yield broker
    finally:
        broker.close()


@pytest.fixture(scope="session")
def schema_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SchemaRegistry]:
    """The session's Schema Registry (``.url``: its Confluent-compatible API; ``.request``),
    checking new versions for BACKWARD compatibility, as Confluent's does by default."""
    external = os.environ.get("STREAMNB_TEST_SCHEMA_REGISTRY")
    if external:
        yield SchemaRegistry(external)
        return
    registry = SchemaRegistry.launch(tmp_path_factory.mktemp("registry"))
    try:
        yield registry
    finally:
        registry.close()


@pytest.fixture(scope="session")
def bootstrap(kafka_broker: KafkaBroker) -> str:
    """``host:port`` of the broker; the same across ``kafka_broker.stop()`` / ``start()``."""
    return kafka_broker.bootstrap


@pytest.fixture(scope="session")
def kafka_config(bootstrap: str) -> dict[str, Any]:
    """Base client config: ``bootstrap.servers`` plus timeouts that fail in seconds."""
    return kafka.client_config(bootstrap)


@pytest.fixture(scope="session")
def kafka_admin(kafka_config: dict[str, Any]) -> AdminClient:
    return AdminClient(kafka_config)


@pytest.fixture
def make_topic(kafka_admin: AdminClient) -> Callable[..., str]:
    """``make_topic(partitions=1, *, name=None, config=None) -> name``: created and led."""
    return functools.partial(kafka.create_topic, kafka_admin)


@pytest.fixture
def topic(make_topic: Callable[..., str]) -> str:
    """A fresh, empty one-partition topic."""
    return make_topic()


@pytest.fixture
def produce(bootstrap: str) -> Callable[..., list[tuple[int, int]]]:
    """``produce(topic, values, key=None, partition=None, timestamp=None, headers=None)``.

    Dicts are sent as JSON; flushed before it returns the (partition, offset) of each record.
    """
    return functools.partial(kafka.produce, bootstrap)


@pytest.fixture
def consume_all(bootstrap: str) -> Callable[..., list[KafkaRecord]]:
    """``consume_all(topic, timeout=10.0, isolation="read_committed", min_count=0)``.

    Every record from the beginning to the end of each partition, as dicts with ``key``,
    ``value`` (bytes), ``partition``, ``offset``, ``timestamp`` and ``headers``.
    """
    return functools.partial(kafka.consume_all, bootstrap)
