"""The headless worker on Schema Registry topics: Avro values framed by confluent-kafka's own
serializer in, windows out, exactly once; and the same query writing framed Avro itself.

The input and the query are those of ``test_exactly_once.py`` (keyed records over 3
partitions, tumbling 10 s windows of count and sum per key); only the value format differs.
The output is read ``read_committed`` and must equal the batch reference exactly.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from tests.io.kafka.registry import SchemaRegistry
from tests.worker.test_exactly_once import (
    MessageFeeder,
    Workers,
    assert_exact,
    committed_output,
    records,
    reference,
)

pytestmark = pytest.mark.slow  # worker processes against a broker and a registry

RECORD = {
    "type": "record",
    "name": "Reading",
    "namespace": "test",
    "fields": [
        {"name": "k", "type": "string"},
        {"name": "t", "type": "long"},
        {"name": "v", "type": "long"},
    ],
}

JOB = """
import os
import polars as pl
import streamnb as sn

stream = (
    sn.from_kafka(
        os.environ["EOS_INPUT"],
        bootstrap_servers=os.environ["EOS_BOOTSTRAP"],
        format="avro",
        schema_registry=os.environ["EOS_REGISTRY"],
        timestamp="t",
        start="earliest",
        config={"session.timeout.ms": 6000, "heartbeat.interval.ms": 500},
    )
    .window(sn.Tumbling("10s"), by="k")
    .agg(pl.len().alias("n"), pl.col("v").sum().alias("total"))
)
"""

FRAMED_OUT = (
    JOB
    + """
stream = stream.to_kafka(
    os.environ["EOS_OUTPUT"],
    bootstrap_servers=os.environ["EOS_BOOTSTRAP"],
    format="avro",
    schema_registry=os.environ["EOS_REGISTRY"],
)
"""
)


def avro_messages(topic: str, registry: str, n: int) -> list[tuple[str, bytes, int, bytes]]:
    """``records(n)`` as confluent-kafka's ``AvroSerializer`` frames them (registering the
    schema under ``<topic>-value``), keyed and partitioned like the JSON tests' records."""
    serialize = AvroSerializer(SchemaRegistryClient({"url": registry}), json.dumps(RECORD))
    ctx = SerializationContext(topic, MessageField.VALUE)
    return [
        (topic, k.encode(), p, serialize({"k": k, "t": t, "v": v}, ctx))
        for k, t, v, p in records(n).iter_rows()
    ]


def framed_output(bootstrap: str, topic: str, registry: str, want: int) -> list[tuple[Any, ...]]:
    """The output's framed Avro rows, read ``read_committed`` with confluent-kafka's own
    ``AvroDeserializer`` (the schema from the registry by the id in each value)."""
    deserialize = AvroDeserializer(SchemaRegistryClient({"url": registry}))
    ctx = SerializationContext(topic, MessageField.VALUE)

    return committed_output(
        bootstrap, topic, want, timeout=120, decode=lambda value: deserialize(value, ctx)
    )


def test_worker_reads_framed_avro_exactly_once(
    tmp_path: Path,
    bootstrap: str,
    make_topic: Callable[..., str],
    schema_registry: SchemaRegistry,
) -> None:
    topic, out = make_topic(3), make_topic(1)
    env = {"EOS_REGISTRY": schema_registry.url}
    w = Workers(tmp_path, bootstrap, topic, out, "exactly_once", JOB, env)
    try:
        feeder = MessageFeeder(bootstrap, avro_messages(topic, schema_registry.url, 6_000), 6_000)
        feeder.start()
        w.start()
        feeder.wait()
        want = reference(records(6_000))
        got = committed_output(bootstrap, out, sum(want.values()), timeout=120)
    finally:
        w.stop_all()
    assert_exact(got, want, w.logs())
    assert '"errors": 0' in w.logs(), w.logs()


def test_worker_writes_framed_avro(
    tmp_path: Path,
    bootstrap: str,
    make_topic: Callable[..., str],
    schema_registry: SchemaRegistry,
) -> None:
    topic, out = make_topic(3), make_topic(1)
    env = {"EOS_REGISTRY": schema_registry.url, "EOS_OUTPUT": out}
    w = Workers(tmp_path, bootstrap, topic, out, "exactly_once", FRAMED_OUT, env)
    w.sink = None  # the stream carries its own sink
    try:
        feeder = MessageFeeder(bootstrap, avro_messages(topic, schema_registry.url, 6_000), 6_000)
        feeder.start()
        w.start()
        feeder.wait()
        want = reference(records(6_000))
        got = framed_output(bootstrap, out, schema_registry.url, sum(want.values()))
    finally:
        w.stop_all()
    assert_exact(got, want, w.logs())
    subjects = SchemaRegistryClient({"url": schema_registry.url}).get_subjects()
    assert f"{out}-value" in subjects
