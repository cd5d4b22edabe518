"""The test broker is a real Kafka: partitions, transactions and restarts work as in production."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import Producer

from tests.io.kafka.broker import (
    KAFKA_LOCAL,
    PRODUCER_DEFAULTS,
    KafkaBroker,
    KafkaRecord,
    client_config,
)

MakeTopic = Callable[..., str]
Produce = Callable[..., list[tuple[int, int]]]
ConsumeAll = Callable[..., list[KafkaRecord]]


def values_of(records: list[KafkaRecord]) -> list[Any]:
    return [json.loads(r["value"] or b"null") for r in records]


def test_thousand_json_records_over_three_partitions_come_back(
    make_topic: MakeTopic, produce: Produce, consume_all: ConsumeAll
) -> None:
    topic = make_topic(partitions=3)
    sent = [{"id": i, "user": f"u{i % 10}"} for i in range(1000)]
    acks = produce(topic, sent, key=[row["user"] for row in sent])

    assert {partition for partition, _ in acks} == {0, 1, 2}
    records = consume_all(topic)
    assert sorted(row["id"] for row in values_of(records)) == list(range(1000))
    for partition in range(3):
        in_partition = [r for r in records if r["partition"] == partition]
        assert [r["offset"] for r in in_partition] == list(range(len(in_partition)))
        ids = [row["id"] for row in values_of(in_partition)]
        assert ids == sorted(ids), "per-partition order is produce order"
    partition_of_key: dict[bytes | None, set[int]] = {}
    for r in records:
        partition_of_key.setdefault(r["key"], set()).add(r["partition"])
    assert all(len(p) == 1 for p in partition_of_key.values()), "a key stays on one partition"


def test_partition_timestamp_and_headers_are_kept(
    make_topic: MakeTopic, produce: Produce, consume_all: ConsumeAll
) -> None:
    topic = make_topic(partitions=2)
    produce(topic, ["a", b"b", None], partition=1, timestamp=1_700_000_000_000, headers={"h": "v"})

    records = consume_all(topic)
    assert [r["value"] for r in records] == [b"a", b"b", None]
    assert {(r["partition"], r["timestamp"]) for r in records} == {(1, 1_700_000_000_000)}
    assert all(r["headers"] == [("h", b"v")] for r in records)


def test_read_committed_sees_committed_transactions_only(
    bootstrap: str, topic: str, consume_all: ConsumeAll
) -> None:
    producer = Producer(
        client_config(bootstrap, PRODUCER_DEFAULTS, {"transactional.id": f"test-{uuid.uuid4()}"})
    )
    producer.init_transactions(15)

    def transaction(label: str, count: int, *, commit: bool) -> None:
        producer.begin_transaction()
        for i in range(count):
            producer.produce(topic, json.dumps({"tx": label, "i": i}).encode())
        if commit:
            producer.commit_transaction(10)
        else:
            producer.flush(10)  # the records reach the log before the abort marker
            producer.abort_transaction(10)

    transaction("first", 10, commit=True)
    transaction("aborted", 10, commit=False)
    transaction("second", 5, commit=True)
    producer.begin_transaction()
    producer.produce(topic, json.dumps({"tx": "open", "i": 0}).encode())
    producer.flush(10)

    committed = [row["tx"] for row in values_of(consume_all(topic))]
    assert committed == ["first"] * 10 + ["second"] * 5
    everything = [row["tx"] for row in values_of(consume_all(topic, isolation="read_uncommitted"))]
    assert everything == ["first"] * 10 + ["aborted"] * 10 + ["second"] * 5 + ["open"]

    producer.commit_transaction(10)
    committed = [row["tx"] for row in values_of(consume_all(topic))]
    assert committed == ["first"] * 10 + ["second"] * 5 + ["open"]


def test_kafka_local_reports_the_running_broker(kafka_broker: KafkaBroker) -> None:
    if kafka_broker.state_dir is None:
        pytest.skip("STREAMNB_TEST_BOOTSTRAP: there is no local broker to ask about")
    state_dir = str(kafka_broker.state_dir)
    for command, expected in [("bootstrap", kafka_broker.bootstrap), ("status", "running")]:
        done = subprocess.run(
            [str(KAFKA_LOCAL), command, "--dir", state_dir],
            capture_output=True,
            text=True,
            check=True,
        )
        assert expected in done.stdout


def test_records_survive_a_broker_restart(
    kafka_broker: KafkaBroker, bootstrap: str, topic: str, produce: Produce, consume_all: ConsumeAll
) -> None:
    produce(topic, [{"i": i} for i in range(100)])
    # a client that lives across the restart, as a running query's producer would
    producer = Producer(client_config(bootstrap, PRODUCER_DEFAULTS))

    kafka_broker.stop()
    kafka_broker.start()

    for i in range(100, 150):
        producer.produce(topic, json.dumps({"i": i}).encode())
    assert producer.flush(15) == 0
    assert [row["i"] for row in values_of(consume_all(topic))] == list(range(150))
