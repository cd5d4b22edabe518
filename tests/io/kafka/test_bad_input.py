"""Bad input on a real broker loses nothing (issue 14, API.md §7).

The matrix: for every format (json, raw, avro) one topic holds, for every kind of bad record
that applies to the format, a segment of five good records and then the bad one. With
``errors="keep"`` one query reads the whole topic: ``records_in`` = good + errors, every error
row keeps the original bytes, topic, partition, offset and reason, and the dead-letter topic
holds the original bytes with ``reason``, ``topic``, ``partition`` and ``offset`` headers. With
``errors="fail"`` a query starts at a kind's segment, processes the five good records and fails
naming the bad one (which also reaches the dead-letter topic).

The tests after the matrix pin the issue's other source-side points: a schema learnt from bad
samples, an empty topic, the first of two bad records, event times at the Int64 limits.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterator
from typing import Any

import polars as pl
import pytest
from confluent_kafka.admin import AdminClient

import streamnb as sn
from tests.io.kafka import broker as kafka

fastavro = pytest.importorskip("fastavro")

Produce = Callable[..., list[tuple[int, int]]]

SCHEMA = {"id": pl.Int64, "k": pl.String, "ts": pl.Int64}
AVRO = {
    "type": "record",
    "name": "R",
    "fields": [
        {"name": "id", "type": "long"},
        {"name": "k", "type": "string"},
        {"name": "ts", "type": ["null", "long"]},
    ],
}
INT64_MAX, INT64_MIN = 2**63 - 1, -(2**63)
SEGMENT = 6  # five good records, then the bad one


def avro_bytes(record: dict[str, Any], schema: dict[str, Any] = AVRO) -> bytes:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, fastavro.parse_schema(schema), record)
    return buffer.getvalue()


def good(i: int) -> dict[str, Any]:
    return {"id": i, "k": f"k{i % 2}", "ts": 1_000 * i}


def json_bytes(record: dict[str, Any]) -> bytes:
    import json

    return json.dumps(record).encode()


# format -> kind -> (the bad value, a timestamp for the Kafka record or None, reason part)
BAD: dict[str, dict[str, tuple[bytes | None, int | None, str]]] = {
    "json": {
        "empty": (b"", None, "empty message"),
        "blank": (b"  \t ", None, "blank message"),
        "not_json": (b"{not json", None, "not valid JSON"),
        "bom": (b"\xef\xbb\xbf" + json_bytes(good(50)), None, "byte-order mark"),
        "not_object": (b"[1, 2]", None, "not a JSON object"),
        "wrong_type": (json_bytes({"id": "two", "k": "a", "ts": 1}), None, "'id'"),
        "nested": (json_bytes({"id": 3, "k": {"x": 1}, "ts": 1}), None, "'k'"),
        "missing_time": (json_bytes({"id": 3, "k": "a"}), None, "event time"),
        "null_time": (json_bytes({"id": 3, "k": "a", "ts": None}), None, "event time"),
        "time_max": (json_bytes({"id": 3, "k": "a", "ts": INT64_MAX}), None, "event time"),
        "time_min": (json_bytes({"id": 3, "k": "a", "ts": INT64_MIN}), None, "event time"),
        "tombstone": (None, None, "tombstone"),
    },
    "avro": {
        "empty": (b"", None, "empty message"),
        "blank": (b"   ", None, "not Avro"),
        "foreign": (
            avro_bytes(
                {"id": "seven"},
                {"type": "record", "name": "R", "fields": [{"name": "id", "type": "string"}]},
            ),
            None,
            "not Avro",
        ),
        "trailing": (avro_bytes(good(50)) + b"\x02", None, "left over"),
        "truncated": (avro_bytes(good(50))[:2], None, "not Avro"),
        "null_time": (avro_bytes({"id": 3, "k": "a", "ts": None}), None, "event time"),
        "time_max": (avro_bytes({"id": 3, "k": "a", "ts": INT64_MAX}), None, "event time"),
        "time_min": (avro_bytes({"id": 3, "k": "a", "ts": INT64_MIN}), None, "event time"),
        "tombstone": (None, None, "tombstone"),
    },
    # raw values are never bad; its event time is the Kafka record's timestamp
    "raw": {"time_max": (b"v", INT64_MAX, "event time")},
}
CASES = [(fmt, kind) for fmt, kinds in BAD.items() for kind in kinds]


def encoded(fmt: str, record: dict[str, Any]) -> bytes:
    return avro_bytes(record) if fmt == "avro" else json_bytes(record)


def bad_offset(fmt: str, kind: str) -> int:
    return list(BAD[fmt]).index(kind) * SEGMENT + SEGMENT - 1


@pytest.fixture(scope="module")
def matrix_topics(kafka_admin: AdminClient, bootstrap: str) -> dict[str, str]:
    """One topic per format: a segment per kind, five good records and the bad one."""
    topics = {}
    for fmt, kinds in BAD.items():
        # a broker takes a timestamp far from now only where the topic allows it
        topic = kafka.create_topic(
            kafka_admin, config={"message.timestamp.after.max.ms": str(INT64_MAX)}
        )
        values: list[bytes | None] = []
        stamps: list[int | None] = []
        for j, (value, stamp, _) in enumerate(kinds.values()):
            values += [encoded(fmt, good(SEGMENT * j + i)) for i in range(SEGMENT - 1)] + [value]
            stamps += [None] * (SEGMENT - 1) + [stamp]
        kafka.produce(bootstrap, topic, values, timestamp=stamps)
        topics[fmt] = topic
    return topics


def source(topic: str, fmt: str, bootstrap: str, start: Any = "earliest") -> sn.Stream:
    if fmt == "raw":
        return sn.from_kafka(topic, bootstrap_servers=bootstrap, format="raw", start=start).select(
            "value", "offset"
        )
    return sn.from_kafka(
        topic,
        bootstrap_servers=bootstrap,
        format=fmt,
        schema=AVRO if fmt == "avro" else SCHEMA,
        timestamp="ts",
        start=start,
    )


def wait_for(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)


def run(query: sn.Query, records: int, timeout: float = 20.0) -> sn.Query:
    """Let ``query`` read ``records`` records (or give up after ``timeout``), then stop it."""
    try:
        wait_for(lambda: query.status()["records_in"] >= records, timeout)
        time.sleep(0.2)  # anything more would show too
    finally:
        query.stop()
    return query


def to_dead_letters(stream: sn.Stream, fmt: str, out: str, dlq: str, bootstrap: str) -> sn.Stream:
    return stream.to_kafka(
        out,
        bootstrap_servers=bootstrap,
        format="raw" if fmt == "raw" else "json",
        errors=f"dlq:{dlq}",
    )


def check_error(row: dict[str, Any], topic: str, fmt: str, kind: str) -> None:
    """An error row keeps the bad record's bytes, origin and reason, and no hidden column."""
    value, _, reason = BAD[fmt][kind]
    assert row["raw"] == value
    assert (row["topic"], row["partition"], row["offset"]) == (topic, 0, bad_offset(fmt, kind))
    assert reason in row["reason"]
    assert "__sn_" not in (row["record"] or "")


def check_dead_letter(letter: kafka.KafkaRecord, topic: str, fmt: str, kind: str) -> None:
    """A dead letter is the original bytes (a tombstone's: empty) with its origin in headers:
    enough to replay it."""
    value, _, reason = BAD[fmt][kind]
    assert letter["value"] == (value or b"")
    sent = dict(letter["headers"])
    origin = (topic.encode(), b"0", str(bad_offset(fmt, kind)).encode())
    assert (sent["topic"], sent["partition"], sent["offset"]) == origin
    assert reason.encode() in (sent["reason"] or b"")


@pytest.fixture(scope="module")
def kept(
    matrix_topics: dict[str, str], kafka_admin: AdminClient, bootstrap: str
) -> dict[str, tuple[sn.Query, list[kafka.KafkaRecord]]]:
    """Per format: a query with ``errors="keep"`` that read the whole topic, and the
    dead-letter topic's records."""
    runs = {}
    for fmt, topic in matrix_topics.items():
        out, dlq = kafka.create_topic(kafka_admin), kafka.create_topic(kafka_admin)
        stream = to_dead_letters(source(topic, fmt, bootstrap), fmt, out, dlq, bootstrap)
        query = run(stream.start(errors="keep"), SEGMENT * len(BAD[fmt]))
        runs[fmt] = (query, kafka.consume_all(bootstrap, dlq, min_count=len(BAD[fmt])))
    return runs


@pytest.mark.parametrize("fmt", list(BAD))
def test_keep_reconciles(
    fmt: str, kept: dict[str, tuple[sn.Query, list[kafka.KafkaRecord]]]
) -> None:
    query, letters = kept[fmt]
    kinds = len(BAD[fmt])
    status = query.status()
    assert (status["records_in"], status["errors"]) == (SEGMENT * kinds, kinds)
    assert query.result().height == (SEGMENT - 1) * kinds
    assert query.errors()["offset"].to_list() == [bad_offset(fmt, k) for k in BAD[fmt]]
    assert len(letters) == kinds


@pytest.mark.parametrize(("fmt", "kind"), CASES, ids=[f"{f}-{k}" for f, k in CASES])
def test_keep(
    fmt: str,
    kind: str,
    matrix_topics: dict[str, str],
    kept: dict[str, tuple[sn.Query, list[kafka.KafkaRecord]]],
) -> None:
    query, letters = kept[fmt]
    offset = bad_offset(fmt, kind)
    [row] = query.errors().filter(pl.col("offset") == offset).to_dicts()
    check_error(row, matrix_topics[fmt], fmt, kind)
    [letter] = [r for r in letters if dict(r["headers"])["offset"] == str(offset).encode()]
    check_dead_letter(letter, matrix_topics[fmt], fmt, kind)


@pytest.mark.parametrize(("fmt", "kind"), CASES, ids=[f"{f}-{k}" for f, k in CASES])
def test_fail(
    fmt: str,
    kind: str,
    matrix_topics: dict[str, str],
    make_topic: Callable[..., str],
    consume_all: Callable[..., list[kafka.KafkaRecord]],
    bootstrap: str,
) -> None:
    topic, offset = matrix_topics[fmt], bad_offset(fmt, kind)
    out, dlq = make_topic(), make_topic()
    stream = source(topic, fmt, bootstrap, start={0: offset - SEGMENT + 1})
    query = to_dead_letters(stream, fmt, out, dlq, bootstrap).start(errors="fail")
    with pytest.raises(sn.QueryFailed, match=f"offset {offset}") as failed:
        query.wait(timeout=20)
    assert BAD[fmt][kind][2] in str(failed.value)
    status = query.status()
    assert (status["state"], status["records_in"], status["errors"]) == ("failed", SEGMENT, 1)
    assert query.result().height == SEGMENT - 1  # the records before the bad one
    check_error(query.errors().row(0, named=True), topic, fmt, kind)
    [letter] = consume_all(dlq, min_count=1)
    check_dead_letter(letter, topic, fmt, kind)


# -- the other source-side points ---------------------------------------------------
@pytest.fixture
def empty_topic(make_topic: Callable[..., str]) -> Iterator[str]:
    yield make_topic()


def test_garbage_first_message_does_not_poison_the_learnt_schema(
    empty_topic: str, produce: Produce, bootstrap: str
) -> None:
    """Point 3: a first batch of garbage froze an empty schema (21 errors, 0 rows)."""
    stream = sn.from_kafka(empty_topic, bootstrap_servers=bootstrap, timestamp="ts")
    query = stream.start()
    try:
        time.sleep(1.0)  # the consumer is at the end: what comes next is read
        produce(empty_topic, [b"garbage"])
        wait_for(lambda: query.status()["records_in"] >= 1)  # a batch of its own
        produce(empty_topic, [good(i) for i in range(20)])
        wait_for(lambda: query.status()["records_in"] >= 21)
    finally:
        query.stop()
    assert query.status()["errors"] == 1
    assert query.result()["id"].to_list() == list(range(20))


def test_one_bad_record_in_the_sample_does_not_turn_int64_into_string(
    empty_topic: str, produce: Produce, bootstrap: str
) -> None:
    """Point 3: one {"id": "two"} among the sampled records made ``id`` a String."""
    records: list[Any] = [good(i) for i in range(10)]
    records.insert(3, {"id": "two", "k": "a", "ts": 1})
    produce(empty_topic, records)
    stream = sn.from_kafka(
        empty_topic, bootstrap_servers=bootstrap, timestamp="ts", start="earliest"
    )
    assert stream.schema == pl.Schema(SCHEMA)
    query = run(stream.start(), 11)
    assert query.result()["id"].to_list() == list(range(10))
    [error] = query.errors().to_dicts()
    assert error["offset"] == 3 and "'id'" in error["reason"]


def test_a_window_by_key_on_an_empty_topic(
    empty_topic: str, produce: Produce, bootstrap: str
) -> None:
    """Point 3: ``window(..., by="k")`` on a topic with no records yet was refused
    (``unable to find column "k"``). It runs when the output types do not depend on the
    columns' types, and asks for ``schema=`` when they do."""
    stream = sn.from_kafka(
        empty_topic, bootstrap_servers=bootstrap, timestamp="ts", start="earliest"
    )
    counts = stream.window(sn.Tumbling("5s"), by="k").agg(pl.len().alias("n"))
    with pytest.raises(sn.ConfigError, match="schema="):
        stream.window(sn.Tumbling("5s"), by="k").agg(pl.col("id").sum().alias("total"))
    query = counts.start()
    try:
        produce(empty_topic, [good(i) for i in range(12)])
        wait_for(lambda: query.result().height >= 4)  # windows [0, 5 s) and [5 s, 10 s)
    finally:
        query.stop()
    assert query.exception is None
    result = query.result().sort("window_start", "k")
    assert result["k"].to_list()[:4] == ["k0", "k1", "k0", "k1"]
    assert result["n"].to_list()[:4] == [3, 2, 2, 3]


def test_fail_names_the_first_bad_record_after_processing_those_before(
    empty_topic: str, produce: Produce, bootstrap: str
) -> None:
    """Point 9: with bad records at offsets 5 (an event-time error) and 9 (not JSON) in one
    batch, ``errors="fail"`` named offset 9 and processed nothing of 0-4."""
    records: list[Any] = [good(i) for i in range(12)]
    records[5] = {"id": 5, "k": "a", "ts": None}
    records[9] = b"{not json"
    produce(empty_topic, records)
    stream = sn.from_kafka(
        empty_topic, bootstrap_servers=bootstrap, schema=SCHEMA, timestamp="ts", start="earliest"
    )
    query = stream.start(errors="fail")
    with pytest.raises(sn.QueryFailed, match="offset 5"):
        query.wait(timeout=20)
    assert query.result()["id"].to_list() == [0, 1, 2, 3, 4]
    assert query.errors()["offset"].to_list() == [5]


def test_event_times_at_the_int64_limits_are_errors_not_wrapped_windows(
    empty_topic: str, produce: Produce, bootstrap: str
) -> None:
    """Point 10: a record at Int64 max gave a window whose end wrapped below its start."""
    records = [good(1), {"id": 2, "k": "a", "ts": INT64_MAX}, {"id": 3, "k": "a", "ts": INT64_MIN}]
    produce(empty_topic, [*records, good(4)])
    stream = sn.from_kafka(
        empty_topic, bootstrap_servers=bootstrap, schema=SCHEMA, timestamp="ts", start="earliest"
    )
    windows = stream.window(sn.Tumbling("10s"), emit="update").agg(pl.len().alias("n"))
    query = run(windows.start(), 4)
    result = query.result()
    assert (result["window_end"] > result["window_start"]).all()
    assert result["n"].to_list() == [2]
    errors = query.errors()
    assert errors["offset"].to_list() == [1, 2]
    assert all("outside the supported range" in r for r in errors["reason"])


def test_records_with_times_at_the_int64_limits_are_errors() -> None:
    """Point 10 without Kafka: the same check guards every source."""
    data = [{"t": 1_000}, {"t": INT64_MAX}, {"t": INT64_MIN}, {"t": 2_000}]
    windows = (
        sn.from_records(data, timestamp="t").window(sn.Tumbling("10s")).agg(pl.len().alias("n"))
    )
    query = windows.start()
    query.wait(timeout=20)
    assert query.result()["n"].to_list() == [2]
    assert query.status()["errors"] == 2
    assert query.status()["records_in"] == 4
