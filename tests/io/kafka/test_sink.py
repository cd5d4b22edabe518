"""``to_kafka`` against a real broker: JSON rows with keys, tables as upserts and tombstones,
and the dead-letter topic for error records."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import polars as pl
import pytest

import streamnb as sn
from tests.io.kafka.broker import KafkaRecord
from tests.io.kafka.test_source import run_until

Consume = Callable[..., list[KafkaRecord]]


def decoded(records: list[KafkaRecord]) -> list[Any]:
    return [None if r["value"] is None else json.loads(r["value"]) for r in records]


def test_window_results_round_trip_as_json_with_keys(
    topic: str, consume_all: Consume, bootstrap: str
) -> None:
    query = (
        sn.nexmark(events=50_000)
        .window(sn.Tumbling("1s"), by="channel")
        .agg(pl.len().alias("bids"), pl.col("price").max().alias("top"))
    )
    expected = query.collect()
    written = query.to_kafka(topic, bootstrap_servers=bootstrap, key="channel").collect()
    assert written.equals(expected)
    records = consume_all(topic, min_count=expected.height)
    assert len(records) == expected.height
    got = pl.DataFrame(decoded(records)).with_columns(
        pl.col("window_start", "window_end")
        .str.to_datetime(time_zone="UTC")
        .dt.cast_time_unit("ms")
    )
    assert got.sort(got.columns).equals(expected.sort(expected.columns))
    assert [r["key"] for r in records] == [k.encode() for k in expected["channel"].to_list()]


def test_a_table_is_written_as_upserts_keyed_by_its_keys(
    topic: str, consume_all: Consume, bootstrap: str
) -> None:
    data = [{"k": k, "v": v} for k, v in [("a", 1), ("b", 2), ("a", 3), ("c", 4), ("a", 5)]]
    table = sn.from_records(data, batch_size=2).group_by("k").agg(pl.col("v").sum().alias("s"))
    result = table.to_kafka(topic, bootstrap_servers=bootstrap).collect()
    latest: dict[str, Any] = {}
    for record in consume_all(topic, min_count=4):
        assert record["key"] is not None  # one key column: its value is the record key
        latest[record["key"].decode()] = json.loads(record["value"] or b"null")
    assert {k: v["s"] for k, v in latest.items()} == dict(
        zip(result["k"], result["s"], strict=True)
    )


def test_merged_sessions_become_tombstones(
    topic: str, consume_all: Consume, bootstrap: str
) -> None:
    data = [{"k": "a", "t": 0}, {"k": "a", "t": 2_000}, {"k": "a", "t": 1_000}]
    sessions = (
        sn.from_records(data, timestamp="t", batch_size=1)
        .window(sn.Session("1500ms"), by="k", emit="update")
        .agg(pl.len().alias("n"))
    )
    sessions.to_kafka(topic, bootstrap_servers=bootstrap).collect()
    records = consume_all(topic, min_count=4)
    tombstones = [json.loads(r["key"] or b"{}") for r in records if r["value"] is None]
    # [0 s] closed when the watermark reached 2 s; the late-ish record at 1 s then merged
    # into the open session [2 s], whose old row is retracted
    assert {(t["window_start"], t["window_end"]) for t in tombstones} == {(2000, 3500)}
    assert decoded(records)[-1] == {"window_start": 1000, "window_end": 3500, "k": "a", "n": 2}


def test_error_records_go_to_the_dead_letter_topic(
    make_topic: Callable[..., str], consume_all: Consume, bootstrap: str
) -> None:
    out, dlq = make_topic(), make_topic()
    data: list[Any] = [{"id": 1, "t": 1}, {"id": 2}, "not a record", {"id": 4, "t": 4}]
    stream = sn.from_records(data, timestamp="t").to_kafka(
        out, bootstrap_servers=bootstrap, errors=f"dlq:{dlq}"
    )
    query = run_until(stream.start(), 4)
    assert query.result()["id"].to_list() == [1, 4]
    dead = consume_all(dlq, min_count=2)
    reasons = sorted(dict(r["headers"])["reason"].decode() for r in dead)
    assert "event time" in reasons[0] and "not a mapping" in reasons[1]
    assert sorted(decoded(consume_all(out, min_count=2)), key=lambda r: r["id"]) == [
        {"id": 1, "t": 1},
        {"id": 4, "t": 4},
    ]


def test_bad_sink_arguments_are_config_errors(bootstrap: str) -> None:
    stream = sn.from_records([{"a": 1}])
    with pytest.raises(sn.ConfigError, match="format"):
        stream.to_kafka("t", bootstrap_servers=bootstrap, format="xml")
    with pytest.raises(sn.ConfigError, match="'nope'"):
        stream.to_kafka("t", bootstrap_servers=bootstrap, key="nope")
    with pytest.raises(sn.ConfigError, match="dlq"):
        stream.to_kafka("t", bootstrap_servers=bootstrap, errors="drop")


AVRO_SCHEMA = {
    "type": "record",
    "name": "Bid",
    "fields": [
        {"name": "auction", "type": "long"},
        {"name": "price", "type": ["null", "double"]},
        {"name": "channel", "type": "string"},
        {"name": "dateTime", "type": {"type": "long", "logicalType": "timestamp-millis"}},
    ],
}


def test_avro_round_trip_through_kafka(make_topic: Callable[..., str], bootstrap: str) -> None:
    topic = make_topic()
    bids = sn.nexmark(events=2_000).select(
        "auction", pl.col("price").cast(pl.Float64), "channel", "dateTime"
    )
    expected = bids.collect()
    bids.to_kafka(topic, bootstrap_servers=bootstrap, format="avro", schema=AVRO_SCHEMA).collect()
    back = sn.from_kafka(
        topic,
        bootstrap_servers=bootstrap,
        format="avro",
        schema=AVRO_SCHEMA,
        start="earliest",
        timestamp="dateTime",
    )
    assert back.schema == pl.Schema(
        {
            "auction": pl.Int64,
            "price": pl.Float64,
            "channel": pl.String,
            "dateTime": pl.Datetime("ms", "UTC"),
        }
    )
    got = run_until(back.start(), expected.height).result()
    assert got.equals(expected)


def test_undecodable_avro_goes_to_errors(
    topic: str, produce: Callable[..., Any], bootstrap: str
) -> None:
    produce(topic, [b"\x01"])
    stream = sn.from_kafka(
        topic,
        bootstrap_servers=bootstrap,
        format="avro",
        schema=AVRO_SCHEMA,
        start="earliest",
        timestamp="dateTime",
    )
    query = run_until(stream.start(), 1)
    assert query.errors()["reason"].str.contains("not Avro").to_list() == [True]
    assert query.errors()["raw"].to_list() == [b"\x01"]


def test_headers_come_from_columns(topic: str, consume_all: Consume, bootstrap: str) -> None:
    data = [{"id": 1, "origin": "web"}, {"id": 2, "origin": None}]
    sn.from_records(data).to_kafka(
        topic, bootstrap_servers=bootstrap, headers={"source": "origin"}
    ).collect()
    records = consume_all(topic, min_count=2)
    assert [r["headers"] for r in records] == [[("source", b"web")], [("source", None)]]
