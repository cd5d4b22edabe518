"""``sn.from_kafka`` against a real broker: formats, start positions, partition watermarks,
bad records, unreachable brokers and a broker restart in the middle of a stream."""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import polars as pl
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

import streamnb as sn
from streamnb.engine.core import Context
from streamnb.io.sources.kafka.commits import COMMIT_INTERVAL, GroupCommits
from tests.io.kafka.broker import PRODUCER_DEFAULTS, KafkaBroker, KafkaRecord, client_config
from tests.threads import wait_until as wait_for

Produce = Callable[..., list[tuple[int, int]]]


def run_until(query: sn.Query, records: int, timeout: float = 30.0) -> sn.Query:
    try:
        wait_for(
            lambda: query.status()["records_in"] + query.status()["errors"] >= records, timeout
        )
    finally:
        query.stop()
    return query


def rows(n: int, start: int = 0) -> list[dict[str, Any]]:
    return [{"id": i, "k": f"k{i % 4}", "v": i * 10, "ts": 1_000 * i} for i in range(start, n)]


def test_json_round_trip_over_partitions(
    make_topic: Callable[..., str], produce: Produce, bootstrap: str
) -> None:
    topic = make_topic(partitions=3)
    data = rows(600)
    produce(topic, data, partition=[i % 3 for i in range(600)])
    stream = sn.from_kafka(topic, bootstrap_servers=bootstrap, start="earliest", timestamp="ts")
    assert stream.schema == pl.Schema(
        {"id": pl.Int64, "k": pl.String, "v": pl.Int64, "ts": pl.Int64}
    )
    query = run_until(stream.start(), 600)
    assert query.result().sort("id").to_dicts() == data
    assert query.status()["errors"] == 0


def test_a_one_partition_read_keeps_every_offset_across_transaction_markers(
    topic: str, produce: Produce, bootstrap: str, consume_all: Callable[..., list[KafkaRecord]]
) -> None:
    """A reader of one partition takes a fetch's offsets as a range when they have no gap;
    transaction markers and aborted records leave gaps inside a fetch, where each offset is
    read. Oracle: a plain read_committed consumer's offsets."""
    produce(topic, rows(20))
    producer = Producer(
        client_config(bootstrap, PRODUCER_DEFAULTS, {"transactional.id": f"t-{uuid.uuid4()}"})
    )
    producer.init_transactions(15)
    for start, count, commit in [(20, 10, True), (30, 10, False), (40, 5, True)]:
        producer.begin_transaction()
        for row in rows(start + count, start):
            producer.produce(topic, json.dumps(row).encode())
        if commit:
            producer.commit_transaction(10)
        else:
            producer.flush(10)
            producer.abort_transaction(10)
    produce(topic, rows(60, 45))
    expected = [(r["offset"], r["value"]) for r in consume_all(topic)]
    # gaps: two commit markers, ten aborted records and an abort marker
    assert len(expected) == 50 and expected[-1][0] == 62
    stream = sn.from_kafka(topic, bootstrap_servers=bootstrap, format="raw", start="earliest")
    query = stream.start()  # everything there already: the first fetches span the gaps
    try:
        wait_for(lambda: query.status()["records_in"] >= len(expected), 30)
        wait_for(lambda: query.status()["lag"] == 0, 10)  # positions past the last offset
    finally:
        query.stop()
    assert query.result().select("offset", "value").rows() == expected


def test_kafka_timestamp_is_the_default_event_time(
    topic: str, produce: Produce, bootstrap: str
) -> None:
    produce(topic, rows(5), timestamp=[1_700_000_000_000 + i for i in range(5)])
    stream = sn.from_kafka(topic, bootstrap_servers=bootstrap, start="earliest")
    assert stream.event_time == "timestamp"
    result = run_until(stream.start(), 5).result()
    assert result["timestamp"].dtype == pl.Datetime("ms", "UTC")
    assert result["timestamp"].cast(pl.Int64).to_list() == [1_700_000_000_000 + i for i in range(5)]


def test_raw_format_keeps_bytes_keys_and_metadata(
    topic: str, produce: Produce, bootstrap: str
) -> None:
    produce(topic, [b"\x00\x01", b"plain"], key=[b"a", None])
    result = run_until(
        sn.from_kafka(topic, bootstrap_servers=bootstrap, format="raw", start="earliest").start(),
        2,
    ).result()
    assert result.columns == ["key", "value", "topic", "partition", "offset", "timestamp"]
    assert result["value"].to_list() == [b"\x00\x01", b"plain"]
    assert result["key"].to_list() == [b"a", None]
    assert result["offset"].to_list() == [0, 1]
    assert result["topic"].to_list() == [topic, topic]


def test_start_positions(make_topic: Callable[..., str], produce: Produce, bootstrap: str) -> None:
    topic = make_topic(partitions=1)
    base = 1_700_000_000_000
    produce(topic, rows(10), timestamp=[base + 1000 * i for i in range(10)])

    def ids(expected: int, **kw: Any) -> list[int]:
        """The ids read from ``start``: once ``expected`` records are in (a loaded machine may
        take seconds to position a consumer), and whatever else comes within 0.5 s."""
        q = sn.from_kafka(topic, bootstrap_servers=bootstrap, timestamp="ts", **kw).start()
        wait_for(lambda: q.status()["records_in"] >= expected)
        time.sleep(0.5)
        q.stop()
        return sorted(q.result()["id"].to_list())

    assert ids(10, start="earliest") == list(range(10))
    assert ids(3, start={0: 7}) == [7, 8, 9]
    middle = datetime.fromtimestamp((base + 4_000) / 1000, tz=timezone.utc)
    assert ids(6, start=middle) == [4, 5, 6, 7, 8, 9]
    latest = sn.from_kafka(topic, bootstrap_servers=bootstrap, timestamp="ts").start()
    wait_for(lambda: latest.status()["lag"] is not None)  # assigned and positioned
    produce(topic, rows(12, start=10))
    run_until(latest, 2)
    assert sorted(latest.result()["id"].to_list()) == [10, 11]


def test_committed_offsets_resume_a_consumer_group(
    topic: str, produce: Produce, bootstrap: str
) -> None:
    produce(topic, rows(10))
    group = f"g-{topic}"
    first = sn.from_kafka(
        topic, bootstrap_servers=bootstrap, start="earliest", group_id=group, timestamp="ts"
    )
    assert sorted(run_until(first.start(), 10).result()["id"].to_list()) == list(range(10))
    produce(topic, rows(15, start=10))
    second = sn.from_kafka(
        topic, bootstrap_servers=bootstrap, start="committed", group_id=group, timestamp="ts"
    )
    assert sorted(run_until(second.start(), 5).result()["id"].to_list()) == list(range(10, 15))


class _CountedCommits:
    """A consumer whose ``commit`` calls are counted (everything else is the real one's)."""

    def __init__(self, consumer: Any) -> None:
        self.consumer, self.commits = consumer, 0

    def commit(self, *args: Any, **kwargs: Any) -> Any:
        self.commits += 1
        return self.consumer.commit(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.consumer, name)


def test_a_group_commits_what_was_processed_at_most_every_interval(
    topic: str, produce: Produce, bootstrap: str
) -> None:
    """A batch processed every 5 ms for a second, each sending its offsets: a commit per
    batch would be one per round trip to the coordinator (about a hundred here); at most one
    per ``COMMIT_INTERVAL`` goes out, and the group's offset still reaches the last batch's."""
    produce(topic, rows(300))
    group = f"g-{topic}"
    commits = GroupCommits("s", group, Context())
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "enable.auto.commit": False,
            "on_commit": commits.answered,
        }
    )
    try:
        consumer.assign([TopicPartition(topic, 0, 0)])
        # the group's coordinator ready first (a fresh broker makes __consumer_offsets now)
        consumer.commit(offsets=[TopicPartition(topic, 0, 0)], asynchronous=False)
        counted = commits.consumer = _CountedCommits(consumer)
        offset, started = 0, time.monotonic()
        while time.monotonic() - started < 1.0:
            offset += 1
            commits.note(topic, 0, offset)  # the batch up to offset, processed
            commits.release()
            commits.send()
            consumer.consume(1, 0.005)  # serves the commits' answers
        assert 5 <= counted.commits <= 1.0 / COMMIT_INTERVAL + 2, counted.commits
        deadline = time.monotonic() + 10
        while commits.processed or commits.in_flight:  # the last batches' offsets follow
            assert time.monotonic() < deadline
            commits.send()
            consumer.consume(1, 0.02)
        (tp,) = consumer.committed([TopicPartition(topic, 0)], timeout=10)
        assert tp.offset == offset
    finally:
        consumer.close()


def test_watermark_is_the_minimum_over_partitions_until_one_goes_idle(
    make_topic: Callable[..., str], produce: Produce, bootstrap: str
) -> None:
    topic = make_topic(partitions=2)
    fast = [{"id": i, "ts": 10_000 * i} for i in range(10)]  # partition 0 reaches 90 s
    slow = [{"id": 100 + i, "ts": 1_000 * i} for i in range(5)]  # partition 1 stops at 4 s
    produce(topic, fast, partition=0)
    produce(topic, slow, partition=1)
    stream = sn.from_kafka(
        topic, bootstrap_servers=bootstrap, start="earliest", timestamp="ts", idle_timeout="1500ms"
    )
    query = stream.window(sn.Tumbling("10s")).agg(pl.len().alias("n")).start()
    try:
        wait_for(lambda: query.status()["records_in"] == 15)
        # records_in counts a batch just before it is processed
        wait_for(lambda: query.status()["watermark"] is not None, timeout=1.0)
        assert query.status()["watermark"] == 4_000  # held back by the slow partition
        assert query.result().height == 0  # the window [0, 10 s) is still open
        time.sleep(2.0)  # partition 1 is now idle
        produce(topic, [{"id": 99, "ts": 95_000}], partition=0)
        wait_for(lambda: query.status()["watermark"] == 95_000)
        wait_for(lambda: query.result().height == 9)  # windows up to [80 s, 90 s) closed
        assert query.result()["n"].to_list() == [6, 1, 1, 1, 1, 1, 1, 1, 1]
    finally:
        query.stop()


def test_a_reader_does_not_take_its_own_stall_for_idle_partitions(
    make_topic: Callable[..., str], produce: Produce, bootstrap: str
) -> None:
    """A query that did not read for longer than ``idle_timeout`` (busy in a batch, its
    process starved) heard nothing because it did not listen, while records waited: its first
    read after the stall brings one partition's record, and the other partitions are not idle.
    A partition it hears nothing from while it reads goes idle after the timeout."""
    topic = make_topic(partitions=3)
    source = sn.from_kafka(
        topic, bootstrap_servers=bootstrap, start="earliest", timestamp="ts", idle_timeout="1s"
    ).plan.sources()[0]
    ctx = Context()
    reader = source.open(ctx)  # type: ignore[attr-defined]
    try:
        deadline = time.monotonic() + 30
        while not (reader._prefetch.inline and ctx.partitions.assigned):  # parked, quickly
            assert reader.read(1_000, 0.0) is None and time.monotonic() < deadline
        pids = [reader.partition_id(topic, p) for p in range(3)]
        produce(topic, [{"id": 0, "ts": 0}], partition=0)
        produce(topic, [{"id": 1, "ts": 0}], partition=1)
        time.sleep(1.5)  # the stall: nothing read
        first = reader.read(1, 1.0)  # one record, of partition 0 or 1
        assert first is not None and first.height == 1
        assert ctx.partitions.idle == set()
        second = reader.read(1, 1.0)
        assert second is not None and {first["id"][0], second["id"][0]} == {0, 1}
        while time.monotonic() < deadline and not ctx.partitions.idle:
            assert reader.read(1_000, 0.05) is None
        assert ctx.partitions.idle == {pids[2]}  # heard nothing for 1 s of reading
    finally:
        reader.close()


def test_each_window_waits_for_its_own_topics_partitions_only(
    make_topic: Callable[..., str], produce: Produce, bootstrap: str
) -> None:
    """A window join of two topics (Nexmark q8 from Kafka): each side's window closes on its
    own topic's watermark; the other topic's partitions never hold it back."""
    persons, auctions = make_topic(), make_topic(partitions=2)
    produce(persons, [{"id": i, "ts": 10_000 * i} for i in range(6)])
    produce(auctions, [{"seller": i, "ts": 10_000 * i + 5} for i in range(6)], partition=0)
    produce(auctions, [{"seller": 9, "ts": 10_000 * i + 7} for i in range(6)], partition=1)

    def windows(topic: str, key: str) -> sn.Stream:
        return (
            sn.from_kafka(topic, bootstrap_servers=bootstrap, start="earliest", timestamp="ts")
            .rename({key: "person"})
            .window(sn.Tumbling("10s"), by="person")
            .agg(pl.len().alias(topic[:4] if topic == persons else "auctions"))
        )

    joined = windows(persons, "id").join(windows(auctions, "seller"), on="person")
    query = joined.start()
    try:
        wait_for(lambda: query.status()["records_in"] == 18)
        wait_for(lambda: query.result().height == 5)  # windows [0, 10 s) ... [40 s, 50 s)
        assert sorted(query.result()["person"].to_list()) == [0, 1, 2, 3, 4]
    finally:
        query.stop()


def test_bad_records_go_to_errors_with_their_origin(
    topic: str, produce: Produce, bootstrap: str
) -> None:
    produce(topic, [{"id": 1, "ts": 1}])  # teaches the schema
    stream = sn.from_kafka(topic, bootstrap_servers=bootstrap, start="earliest", timestamp="ts")
    produce(topic, [b"{not json", {"id": "two", "ts": 2}, None, {"id": 4}, {"id": 5, "ts": 5}])
    query = run_until(stream.start(), 6)
    assert query.result()["id"].to_list() == [1, 5]
    errors = query.errors().sort("offset", nulls_last=True)
    assert query.status()["errors"] == 4
    assert errors["offset"].to_list()[:3] == [1, 2, 3]
    assert errors["raw"].to_list()[0] == b"{not json"
    assert errors["topic"].to_list()[:3] == [topic] * 3
    assert errors["partition"].to_list()[:3] == [0, 0, 0]
    reasons = errors["reason"].to_list()
    assert "not valid JSON" in reasons[0]
    assert "'id'" in reasons[1]
    assert "tombstone" in reasons[2]
    assert "event time" in reasons[3]


def test_unknown_topic_is_a_config_error(bootstrap: str) -> None:
    with pytest.raises(sn.ConfigError, match="'no-such-topic'"):
        sn.from_kafka("no-such-topic", bootstrap_servers=bootstrap)


def test_unreachable_broker_fails_fast_naming_the_address() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(sn.SourceError, match=f"127.0.0.1:{port}"):
        sn.from_kafka("t", bootstrap_servers=f"127.0.0.1:{port}", connect_timeout="2s")
    assert time.monotonic() - started < 8


def test_no_bootstrap_anywhere_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STREAMNB_KAFKA_BOOTSTRAP", raising=False)
    from streamnb.io.kafka import client

    monkeypatch.setattr(client, "_defaults", {})
    with pytest.raises(sn.ConfigError, match="bootstrap"):
        sn.from_kafka("t")


def test_topics_and_peek(make_topic: Callable[..., str], produce: Produce, bootstrap: str) -> None:
    topic = make_topic(partitions=2)
    produce(topic, rows(20), partition=[i % 2 for i in range(20)])
    listing = sn.kafka.topics(bootstrap).filter(pl.col("topic") == topic)
    assert listing.to_dicts() == [{"topic": topic, "partitions": 2, "records": 20}]
    recent = sn.kafka.peek(topic, 3, bootstrap_servers=bootstrap)
    assert recent.height == 6
    assert sorted(recent["id"].to_list()) == [14, 15, 16, 17, 18, 19]
    assert {"_partition", "_offset", "_timestamp"} <= set(recent.columns)


def test_a_broker_restart_mid_stream_loses_nothing(
    kafka_broker: KafkaBroker, make_topic: Callable[..., str], produce: Produce, bootstrap: str
) -> None:
    topic = make_topic(partitions=2)
    produce(topic, rows(200), partition=[i % 2 for i in range(200)])
    query = sn.from_kafka(
        topic, bootstrap_servers=bootstrap, start="earliest", timestamp="ts", group_id=f"g-{topic}"
    ).start()
    try:
        wait_for(lambda: query.status()["records_in"] == 200)
        kafka_broker.stop()
        time.sleep(1.0)
        kafka_broker.start()
        produce(topic, rows(400, start=200), partition=[i % 2 for i in range(200)])
        wait_for(lambda: query.status()["records_in"] >= 400, timeout=60)
        assert query.status()["state"] == "running"
    finally:
        query.stop()
    assert sorted(query.result()["id"].to_list()) == list(range(400))


class Owner:
    """A stand-in for the worker: records what the group gives and takes."""

    def __init__(self) -> None:
        self.events: list[tuple[str, list[Any]]] = []

    def assigned(self, parts: Any) -> None:
        self.events.append(("assigned", sorted(parts)))

    def revoked(self, parts: Any) -> None:
        self.events.append(("revoked", sorted(parts)))


def test_a_reader_under_an_owner_leaves_partitions_and_offsets_to_it(
    make_topic: Callable[..., str], produce: Produce, bootstrap: str
) -> None:
    from confluent_kafka import Consumer, TopicPartition

    from streamnb.columns import PARTITION
    from streamnb.engine.core import Context
    from streamnb.io.sources.kafka import KafkaSource

    topic, extra = make_topic(partitions=2), make_topic(partitions=2)
    produce(topic, rows(10), partition=[i % 2 for i in range(10)])
    produce(extra, [b"x", b"y"], partition=[0, 1])
    group = f"g-{topic}"
    source = KafkaSource(
        topic, bootstrap_servers=bootstrap, start="earliest", timestamp="ts", idle_timeout="100ms"
    ).in_group(group)
    assert source.list_parts() == [(topic, 0), (topic, 1)]
    owner, ctx = Owner(), Context()
    reader = source.open(ctx, owner=owner, extra_topics=[extra])
    got: list[tuple[int, tuple[str, int]]] = []
    extras: list[bytes] = []

    def read_until(n: int, m: int) -> None:
        deadline = time.monotonic() + 30
        while len(got) < n or len(extras) < m:
            assert time.monotonic() < deadline, (got, extras, owner.events)
            batch = reader.read(100, 0.2)
            if batch is not None:
                got.extend(
                    (i, reader.partition_of(pid))
                    for i, pid in batch.select("id", PARTITION).iter_rows()
                )
            extras.extend(m.value() for m in reader.extra_messages)

    read_until(10, 2)
    assert sorted(got) == [(i, (topic, i % 2)) for i in range(10)]
    assert sorted(extras) == [b"x", b"y"]  # undecoded, apart from the rows
    both = sorted([(topic, 0), (topic, 1), (extra, 0), (extra, 1)])
    assert owner.events == [("assigned", both)]
    assert dict(reader.positions) == {(topic, 0): 5, (topic, 1): 5, (extra, 0): 1, (extra, 1): 1}
    ids = reader.partition_ids(topic)
    assert ctx.partitions.assigned == set(ids)  # the extra topic's partitions carry no rows
    assert [reader.partition_of(pid) for pid in ids] == [(topic, 0), (topic, 1)]
    time.sleep(0.3)
    reader.read(100, 0.1)
    assert ctx.partitions.idle == set()  # the owner's tasks wait for no other partition

    reader.seek(topic, 1, 2)  # partition 1 again from offset 2: ids 5, 7, 9
    got.clear()
    read_until(3, 0)
    assert sorted(got) == [(5, (topic, 1)), (7, (topic, 1)), (9, (topic, 1))]
    assert reader.group_metadata() is not None
    reader.commit([TopicPartition(topic, 0, 3, metadata="sn1:7:1")])
    reader.close()
    assert owner.events[-1] == ("revoked", both)

    check = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        committed = check.committed([TopicPartition(t, p) for t, p in both], timeout=10)
    finally:
        check.close()
    # only what the owner committed: the reader commits nothing by itself
    assert {
        (tp.topic, tp.partition): (tp.offset, tp.metadata) for tp in committed if tp.offset >= 0
    } == {(topic, 0): (3, "sn1:7:1")}


def test_an_owner_needs_a_group(topic: str, bootstrap: str) -> None:
    from streamnb.engine.core import Context
    from streamnb.io.sources.kafka import KafkaSource

    source = KafkaSource(topic, bootstrap_servers=bootstrap, schema={"id": pl.Int64})
    with pytest.raises(sn.ConfigError, match="in_group"):
        source.open(Context(), owner=Owner())
    with pytest.raises(sn.ConfigError, match="extra_topics"):
        source.in_group("g").open(Context(), extra_topics=["other"])


def test_secrets_never_appear_in_reprs() -> None:
    from streamnb.io.kafka.client import redact

    shown = repr(redact({"sasl.password": "hunter2", "ssl.key.password": "x", "acks": "all"}))
    assert "hunter2" not in shown and "'x'" not in shown and "all" in shown
