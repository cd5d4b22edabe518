"""from_kafka of values framed with a Schema Registry id (Avro, Protobuf, JSON Schema).

The data is written by confluent-kafka's own serializers against the real registry (the
``schema_registry`` fixture, BACKWARD compatibility), as a user's services would; the
oracle is the records produced.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import date, datetime, timezone
from decimal import Decimal
from typing import Any

import polars as pl
import pytest

import streamnb as sn
from streamnb.exceptions import ConfigError
from streamnb.io.kafka.registry import frame_header
from tests.io.kafka.registry import SchemaRegistry
from tests.io.kafka.test_source import run_until
from tests.threads import wait_until

pytest.importorskip("confluent_kafka.schema_registry")
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.schema_registry.json_schema import JSONSerializer
from confluent_kafka.schema_registry.protobuf import ProtobufSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

Produce = Callable[..., list[tuple[int, int]]]

UTC = timezone.utc

BID = {
    "type": "record",
    "name": "Bid",
    "namespace": "nexmark",
    "fields": [
        {"name": "auction", "type": "long"},
        {
            "name": "price",
            "type": {"type": "bytes", "logicalType": "decimal", "precision": 10, "scale": 2},
        },
        {"name": "channel", "type": {"type": "enum", "name": "Channel", "symbols": ["WEB", "APP"]}},
        {"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "day", "type": {"type": "int", "logicalType": "date"}},
        {"name": "note", "type": ["null", "string"], "default": None},
        {"name": "tags", "type": {"type": "array", "items": "string"}},
        {
            "name": "bidder",
            "type": {
                "type": "record",
                "name": "Bidder",
                "fields": [{"name": "id", "type": "long"}, {"name": "name", "type": "string"}],
            },
        },
        {"name": "seller", "type": ["null", "Bidder"], "default": None},
    ],
}


def bid(i: int) -> dict[str, Any]:
    return {
        "auction": i,
        "price": Decimal(f"{i}.25"),
        "channel": "WEB" if i % 2 else "APP",
        "at": datetime(2026, 1, 1, 0, 0, i % 60, tzinfo=UTC),
        "day": date(2026, 1, 1 + i % 28),
        "note": None if i % 3 else f"n{i}",
        "tags": [f"t{j}" for j in range(i % 3)],
        "bidder": {"id": i * 10, "name": f"b{i}"},
        "seller": None if i % 2 else {"id": i, "name": f"s{i}"},
    }


@pytest.fixture
def registry(schema_registry: SchemaRegistry) -> SchemaRegistryClient:
    return SchemaRegistryClient({"url": schema_registry.url})


def serialize(serializer: Any, topic: str, records: list[Any]) -> list[bytes]:
    ctx = SerializationContext(topic, MessageField.VALUE)
    return [serializer(r, ctx) for r in records]


def avro_values(
    registry: SchemaRegistryClient, topic: str, schema: Any, records: list[Any]
) -> list[bytes]:
    return serialize(AvroSerializer(registry, json.dumps(schema)), topic, records)


def read(
    topic: str, bootstrap: str, registry_url: str, n: int, **options: Any
) -> tuple[pl.DataFrame, sn.Query]:
    stream = sn.from_kafka(
        topic,
        bootstrap_servers=bootstrap,
        schema_registry=registry_url,
        start="earliest",
        **options,
    )
    query = run_until(stream.start(), n)
    return query.result().drop("timestamp"), query


def test_avro_round_trip_nested_array_enum_decimal_timestamp_nullable_union(
    topic: str,
    produce: Produce,
    bootstrap: str,
    registry: SchemaRegistryClient,
    schema_registry: SchemaRegistry,
) -> None:
    records = [bid(i) for i in range(300)]
    produce(topic, avro_values(registry, topic, BID, records))
    got, query = read(topic, bootstrap, schema_registry.url, len(records), format="avro")
    assert got.schema == pl.Schema(
        {
            "auction": pl.Int64,
            "price": pl.Decimal(10, 2),
            "channel": pl.String,
            "at": pl.Datetime("ms", "UTC"),
            "day": pl.Date,
            "note": pl.String,
            "tags": pl.List(pl.String),
            "bidder": pl.Struct({"id": pl.Int64, "name": pl.String}),
            "seller": pl.Struct({"id": pl.Int64, "name": pl.String}),
        }
    )
    assert got.to_dicts() == records
    assert query.status()["errors"] == 0


def test_avro_maps_decode_per_record_as_key_value_lists(
    topic: str,
    produce: Produce,
    bootstrap: str,
    registry: SchemaRegistryClient,
    schema_registry: SchemaRegistry,
) -> None:
    schema = {
        "type": "record",
        "name": "M",
        "fields": [
            {"name": "id", "type": "long"},
            {"name": "counts", "type": {"type": "map", "values": "long"}},
        ],
    }
    records = [{"id": i, "counts": {f"k{j}": j for j in range(i % 3)}} for i in range(50)]
    produce(topic, avro_values(registry, topic, schema, records))
    got, _ = read(topic, bootstrap, schema_registry.url, len(records), format="avro")
    assert got["counts"].dtype == pl.List(pl.Struct({"key": pl.String, "value": pl.Int64}))
    assert [{e["key"]: e["value"] for e in row} for row in got["counts"].to_list()] == [
        r["counts"] for r in records
    ]


def _bid_proto() -> Any:
    """A Protobuf message class built at run time: a nested message, repeated fields, an
    enum and a google.protobuf.Timestamp (what protoc would generate)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, timestamp_pb2
    from google.protobuf.message_factory import GetMessageClass

    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(timestamp_pb2.DESCRIPTOR.serialized_pb)
    f = descriptor_pb2.FileDescriptorProto(
        name="bid.proto",
        package="nexmark",
        syntax="proto3",
        dependency=["google/protobuf/timestamp.proto"],
    )
    T = descriptor_pb2.FieldDescriptorProto
    person = f.message_type.add(name="Person")
    person.field.add(name="id", number=1, type=T.TYPE_INT64, label=T.LABEL_OPTIONAL)
    person.field.add(name="name", number=2, type=T.TYPE_STRING, label=T.LABEL_OPTIONAL)
    channel = f.enum_type.add(name="Channel")
    channel.value.add(name="WEB", number=0)
    channel.value.add(name="APP", number=1)
    msg = f.message_type.add(name="Bid")
    msg.field.add(name="auction", number=1, type=T.TYPE_INT64, label=T.LABEL_OPTIONAL)
    msg.field.add(name="price", number=2, type=T.TYPE_DOUBLE, label=T.LABEL_OPTIONAL)
    msg.field.add(
        name="channel",
        number=3,
        type=T.TYPE_ENUM,
        type_name=".nexmark.Channel",
        label=T.LABEL_OPTIONAL,
    )
    msg.field.add(
        name="at",
        number=4,
        type=T.TYPE_MESSAGE,
        type_name=".google.protobuf.Timestamp",
        label=T.LABEL_OPTIONAL,
    )
    msg.field.add(name="tags", number=5, type=T.TYPE_STRING, label=T.LABEL_REPEATED)
    msg.field.add(
        name="bidder",
        number=6,
        type=T.TYPE_MESSAGE,
        type_name=".nexmark.Person",
        label=T.LABEL_OPTIONAL,
    )
    msg.field.add(
        name="others",
        number=7,
        type=T.TYPE_MESSAGE,
        type_name=".nexmark.Person",
        label=T.LABEL_REPEATED,
    )
    pool.Add(f)
    # Bid is the second message of the file: the values carry message index [1]
    return GetMessageClass(pool.FindMessageTypeByName("nexmark.Bid"))


def test_protobuf_round_trip_nested_repeated_enum_timestamp(
    topic: str,
    produce: Produce,
    bootstrap: str,
    registry: SchemaRegistryClient,
    schema_registry: SchemaRegistry,
) -> None:
    Bid = _bid_proto()
    expected = []
    messages = []
    for i in range(200):
        at = datetime(2026, 1, 1, 0, 0, i % 60, i * 1000, tzinfo=UTC)
        m = Bid(auction=i, price=i / 4, channel=i % 2, tags=[f"t{j}" for j in range(i % 3)])
        m.at.FromDatetime(at)
        if i % 2:
            m.bidder.id, m.bidder.name = i, f"b{i}"
        m.others.add(id=i + 1, name="o")
        messages.append(m)
        expected.append(
            {
                "auction": i,
                "price": i / 4,
                "channel": ["WEB", "APP"][i % 2],
                "at": at,
                "tags": [f"t{j}" for j in range(i % 3)],
                "bidder": {"id": i, "name": f"b{i}"} if i % 2 else None,
                "others": [{"id": i + 1, "name": "o"}],
            }
        )
    serializer = ProtobufSerializer(Bid, registry, {"use.deprecated.format": False})
    produce(topic, serialize(serializer, topic, messages))
    got, query = read(topic, bootstrap, schema_registry.url, len(messages), format="protobuf")
    assert query.status()["errors"] == 0, query.errors()["reason"].to_list()[:3]
    assert got["at"].dtype == pl.Datetime("us", "UTC")
    assert got["bidder"].dtype == pl.Struct({"id": pl.Int64, "name": pl.String})
    assert got.to_dicts() == expected


def test_jsonschema_round_trip(
    topic: str,
    produce: Produce,
    bootstrap: str,
    registry: SchemaRegistryClient,
    schema_registry: SchemaRegistry,
) -> None:
    schema = {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": "Bid",
        "type": "object",
        "properties": {
            "auction": {"type": "integer"},
            "price": {"type": "number"},
            "note": {"type": ["null", "string"]},
            "tags": {"type": "array", "items": {"type": "string"}},
            "bidder": {"type": "object", "properties": {"id": {"type": "integer"}}},
        },
        "required": ["auction", "price"],
    }
    records = [
        {
            "auction": i,
            "price": i + 0.5,
            "note": None if i % 2 else "x",
            "tags": ["a"] * (i % 3),
            "bidder": {"id": i},
        }
        for i in range(200)
    ]
    serializer = JSONSerializer(json.dumps(schema), registry)
    produce(topic, serialize(serializer, topic, records))
    got, _ = read(topic, bootstrap, schema_registry.url, len(records), format="jsonschema")
    assert got.schema["auction"] == pl.Int64 and got.schema["bidder"] == pl.Struct({"id": pl.Int64})
    assert got.to_dicts() == records


V1 = {
    "type": "record",
    "name": "Event",
    "fields": [
        {"name": "id", "type": "long"},
        {"name": "comment", "type": ["null", "string"], "default": None},
    ],
}
V2 = {  # adds a field with a default
    "type": "record",
    "name": "Event",
    "fields": [*V1["fields"], {"name": "score", "type": "double", "default": 0.0}],
}
V3 = {  # removes the optional field
    "type": "record",
    "name": "Event",
    "fields": [V1["fields"][0], V2["fields"][2]],
}


def test_schema_evolution_mid_stream_adds_a_column_and_keeps_a_removed_one(
    topic: str,
    produce: Produce,
    bootstrap: str,
    registry: SchemaRegistryClient,
    schema_registry: SchemaRegistry,
) -> None:
    produce(
        topic, avro_values(registry, topic, V1, [{"id": i, "comment": f"c{i}"} for i in range(3)])
    )
    stream = sn.from_kafka(
        topic,
        bootstrap_servers=bootstrap,
        schema_registry=schema_registry.url,
        format="avro",
        start="earliest",
    )
    query = stream.start()
    # a stateful query over the same source: its output schema is its aggregation's
    counts = stream.group_by("comment").agg(pl.len().alias("n")).start()
    both = (query, counts)
    try:
        wait_until(lambda: all(q.status()["records_in"] >= 3 for q in both), 30)
        produce(topic, avro_values(registry, topic, V2, [{"id": 3, "comment": "c1", "score": 1.5}]))
        wait_until(lambda: all(q.status()["records_in"] >= 4 for q in both), 30)
        produce(topic, avro_values(registry, topic, V3, [{"id": 4, "score": 2.5}]))
        wait_until(lambda: all(q.status()["records_in"] >= 5 for q in both), 30)
        assert [q.status()["state"] for q in both] == ["running", "running"]
    finally:
        for q in both:
            q.stop()
    got = query.result().drop("timestamp")
    assert got.to_dicts() == [
        {"id": 0, "comment": "c0", "score": None},
        {"id": 1, "comment": "c1", "score": None},
        {"id": 2, "comment": "c2", "score": None},
        {"id": 3, "comment": "c1", "score": 1.5},
        {"id": 4, "comment": None, "score": 2.5},
    ]
    assert counts.result().sort("comment").to_dicts() == [
        {"comment": None, "n": 1},
        {"comment": "c0", "n": 1},
        {"comment": "c1", "n": 2},
        {"comment": "c2", "n": 1},
    ]
    assert query.status()["errors"] == counts.status()["errors"] == 0


def test_a_given_avro_reader_schema_picks_and_promotes_the_columns_and_never_grows(
    topic: str,
    produce: Produce,
    bootstrap: str,
    registry: SchemaRegistryClient,
    schema_registry: SchemaRegistry,
) -> None:
    produce(topic, avro_values(registry, topic, V2, [{"id": 1, "comment": "a", "score": 0.5}]))
    reader = {
        "type": "record",
        "name": "Event",
        "fields": [
            {"name": "id", "type": "double"},  # long promotes to double
            {"name": "label", "type": ["null", "string"], "default": None},  # not written
        ],
    }
    got, query = read(topic, bootstrap, schema_registry.url, 1, format="avro", schema=reader)
    assert got.to_dicts() == [{"id": 1.0, "label": None}]
    assert query.status()["errors"] == 0


def test_unknown_id_incompatible_writer_and_unframed_values_go_to_errors(
    topic: str,
    produce: Produce,
    bootstrap: str,
    registry: SchemaRegistryClient,
    schema_registry: SchemaRegistry,
) -> None:
    good = avro_values(registry, topic, V1, [{"id": i, "comment": None} for i in range(4)])
    # incompatible: registered under another subject (the topic's own refuses it), same name
    other = {"type": "record", "name": "Event", "fields": [{"name": "id", "type": "string"}]}
    incompatible = avro_values(registry, topic + "-other", other, [{"id": "x"}])
    incompatible = [frame_header(_id(v)) + v[5:] for v in incompatible]
    unknown = frame_header(987_654) + good[0][5:]
    values = [good[0], unknown, good[1], incompatible[0], b"plain text", b"", b"\x00\x01", good[2]]
    produce(topic, values)
    got, query = read(topic, bootstrap, schema_registry.url, len(values), format="avro")
    assert got["id"].to_list() == [0, 1, 2]
    errors = query.errors()
    assert errors["raw"].to_list() == [unknown, incompatible[0], b"plain text", b"", b"\x00\x01"]
    assert errors["offset"].to_list() == [1, 3, 4, 5, 6]
    assert errors["topic"].to_list() == [topic] * 5 and errors["partition"].to_list() == [0] * 5
    reasons = errors["reason"].to_list()
    assert "987654" in reasons[0] and "not in the Schema Registry" in reasons[0]
    assert "incompatible" in reasons[1] and "'id'" in reasons[1]
    assert all("framed" in r for r in reasons[2:])
    status = query.status()
    assert status["records_in"] == len(values) and status["errors"] == 5


def _id(value: bytes) -> int:
    return int.from_bytes(value[1:5], "big")


def test_a_missing_registry_is_a_config_error_naming_how_to_give_one(
    topic: str, bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("STREAMNB_SCHEMA_REGISTRY", raising=False)
    for fmt in ("avro", "protobuf", "jsonschema"):
        with pytest.raises(ConfigError, match=r"schema_registry=.*STREAMNB_SCHEMA_REGISTRY"):
            sn.from_kafka(topic, bootstrap_servers=bootstrap, format=fmt)  # type: ignore[arg-type]


def test_registry_credentials_never_appear(
    topic: str,
    produce: Produce,
    bootstrap: str,
    registry: SchemaRegistryClient,
    schema_registry: SchemaRegistry,
) -> None:
    produce(topic, [*avro_values(registry, topic, V1, [{"id": 1, "comment": None}]), b"junk"])
    config = {"url": schema_registry.url, "basic.auth.user.info": "user:s3cr3t"}
    stream = sn.from_kafka(
        topic, bootstrap_servers=bootstrap, schema_registry=config, format="avro", start="earliest"
    )
    source = stream.plan.root.source  # type: ignore[attr-defined]
    assert "s3cr3t" not in repr(source) and "***" in repr(source)
    query = run_until(stream.start(), 2)
    assert query.errors().height == 1
    assert "s3cr3t" not in str(query.errors().to_dicts())
