"""``to_kafka`` with a real Schema Registry: framed Avro, Protobuf and JSON Schema values
(and keys) read back by confluent-kafka's OWN deserializers, which are the oracle; subjects
by naming strategy; the registry refusing an incompatible schema; secrets kept out of output.
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import polars as pl
import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.schema_registry.json_schema import JSONDeserializer
from confluent_kafka.schema_registry.protobuf import ProtobufDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

import streamnb as sn
from streamnb.exceptions import SinkError
from tests.io.kafka.broker import KafkaRecord
from tests.io.kafka.registry import SchemaRegistry

Consume = Callable[..., list[KafkaRecord]]
UTC = dt.timezone.utc

ROWS = pl.DataFrame(
    {
        "id": [1, 2, 3],
        "price": [9.5, None, 0.25],
        "channel": ["web", "app", None],
        "tags": [["a", "b"], [], None],
        "bidder": [{"name": "ann", "age": 31}, None, {"name": None, "age": 7}],
    },
    schema={
        "id": pl.Int64,
        "price": pl.Float64,
        "channel": pl.String,
        "tags": pl.List(pl.String),
        "bidder": pl.Struct({"name": pl.String, "age": pl.Int32}),
    },
)


@pytest.fixture
def registry(schema_registry: SchemaRegistry) -> SchemaRegistryClient:
    return SchemaRegistryClient({"url": schema_registry.url})


def values(records: list[KafkaRecord], deserializer: Any, topic: str) -> list[Any]:
    context = SerializationContext(topic, MessageField.VALUE)
    return [deserializer(r["value"], context) for r in records]


def schema_id(record: KafkaRecord, field: str = "value") -> int:
    framed = record[field]  # type: ignore[literal-required]
    assert framed[0] == 0
    return int.from_bytes(framed[1:5], "big")


def test_avro_from_the_columns_reads_back_with_confluents_deserializer(
    topic: str, consume_all: Consume, bootstrap: str, schema_registry: SchemaRegistry, registry
) -> None:
    rows = ROWS.with_columns(
        placed=pl.Series(
            [
                dt.datetime(2024, 5, 1, 12, 0, 0, 123000, tzinfo=UTC),
                None,
                dt.datetime(1970, 1, 2, tzinfo=UTC),
            ],
            dtype=pl.Datetime("ms", "UTC"),
        ),
        day=pl.Series([dt.date(2024, 5, 1), dt.date(1999, 12, 31), None]),
        amount=pl.Series([Decimal("1.25"), Decimal("-3.50"), None], dtype=pl.Decimal(10, 2)),
    )
    sn.from_records(rows, batch_size=2).to_kafka(
        topic, bootstrap_servers=bootstrap, format="avro", schema_registry=schema_registry.url
    ).collect()
    records = consume_all(topic, min_count=3)
    assert values(records, AvroDeserializer(registry), topic) == rows.to_dicts()
    latest = registry.get_latest_version(f"{topic}-value")
    assert {schema_id(r) for r in records} == {latest.schema_id}


def test_jsonschema_from_the_columns_reads_back_with_confluents_deserializer(
    topic: str,
    consume_all: Consume,
    bootstrap: str,
    schema_registry: SchemaRegistry,
    registry,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STREAMNB_SCHEMA_REGISTRY", schema_registry.url)  # no argument needed
    sn.from_records(ROWS).to_kafka(
        topic, bootstrap_servers=bootstrap, format="jsonschema"
    ).collect()
    records = consume_all(topic, min_count=3)
    # the deserializer validates each value against the registered schema
    deserializer = JSONDeserializer(None, schema_registry_client=registry)
    assert values(records, deserializer, topic) == ROWS.to_dicts()
    assert registry.get_latest_version(f"{topic}-value").schema.schema_type == "JSON"


def message_class(file: descriptor_pb2.FileDescriptorProto, name: str) -> Any:
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(name))


def as_row(message: Any) -> dict[str, Any]:
    """A message's fields as a polars row: an unset optional field is null."""
    row: dict[str, Any] = {}
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        if field.is_repeated:
            row[field.name] = list(value)
        elif field.message_type is not None:
            row[field.name] = as_row(value) if message.HasField(field.name) else None
        else:
            row[field.name] = value if message.HasField(field.name) else None
    return row


def registered_deserializer(registry: SchemaRegistryClient, subject: str) -> Any:
    """confluent-kafka's Protobuf deserializer for the (one) message of the file registered
    under ``subject`` (the registry keeps it as a base64 ``FileDescriptorProto``)."""
    registered = registry.get_latest_version(subject).schema
    assert registered.schema_type == "PROTOBUF"
    file = descriptor_pb2.FileDescriptorProto.FromString(base64.b64decode(registered.schema_str))
    assert len(file.message_type) == 1
    cls = message_class(file, f"{file.package}.{file.message_type[0].name}")
    return ProtobufDeserializer(cls, {"use.deprecated.format": False})


def test_protobuf_from_the_columns_reads_back_with_confluents_deserializer(
    topic: str, consume_all: Consume, bootstrap: str, schema_registry: SchemaRegistry
) -> None:
    sn.from_records(ROWS).to_kafka(
        topic, bootstrap_servers=bootstrap, format="protobuf", schema_registry=schema_registry.url
    ).collect()
    records = consume_all(topic, min_count=3)
    deserializer = registered_deserializer(
        SchemaRegistryClient({"url": schema_registry.url}), f"{topic}-value"
    )
    got = [as_row(m) for m in values(records, deserializer, topic)]
    # a null list is an empty repeated field: Protobuf has no null list
    assert got == [{**r, "tags": r["tags"] or []} for r in ROWS.to_dicts()]


def test_protobuf_with_a_users_message_class(
    topic: str, consume_all: Consume, bootstrap: str, schema_registry: SchemaRegistry
) -> None:
    file = descriptor_pb2.FileDescriptorProto(
        name="shop/bid.proto", package="shop", syntax="proto3"
    )
    file.message_type.add(name="Other").field.add(name="x", number=1, type=3, label=1)
    bid = file.message_type.add(name="Bid")
    bid.field.add(name="id", number=1, type=3, label=1)  # int64
    bid.field.add(name="channel", number=2, type=9, label=1)  # string
    cls = message_class(file, "shop.Bid")
    rows = ROWS.select("id", pl.col("channel").fill_null(""))
    sn.from_records(rows).to_kafka(
        topic,
        bootstrap_servers=bootstrap,
        format="protobuf",
        schema=cls,
        schema_registry=schema_registry.url,
        subject_strategy="record",
    ).collect()
    records = consume_all(topic, min_count=3)
    deserializer = ProtobufDeserializer(cls, {"use.deprecated.format": False})
    got = [{"id": m.id, "channel": m.channel} for m in values(records, deserializer, topic)]
    assert got == rows.to_dicts()
    # the second message of its file: indexes [1] after the schema id
    assert {r["value"][5:7] for r in records} == {b"\x02\x02"}


def test_the_record_strategy_registers_under_the_records_full_name(
    make_topic: Callable[..., str], bootstrap: str, schema_registry: SchemaRegistry, registry
) -> None:
    topic = make_topic()
    user = {
        "type": "record",
        "name": "Bid",
        "namespace": f"shop.{topic.replace('-', '_')}",
        "fields": [{"name": "id", "type": "long"}],
    }
    sn.from_records(ROWS.select("id")).to_kafka(
        topic,
        bootstrap_servers=bootstrap,
        format="avro",
        schema=user,
        schema_registry=schema_registry.url,
        subject_strategy="record",
    ).collect()
    assert registry.get_latest_version(f"{user['namespace']}.Bid").version == 1
    assert f"{topic}-value" not in registry.get_subjects()
    derived = make_topic()
    sn.from_records(ROWS.select("id")).to_kafka(
        derived,
        bootstrap_servers=bootstrap,
        format="jsonschema",
        schema_registry=schema_registry.url,
        subject_strategy="topic_record",
    ).collect()
    name = "".join(w.capitalize() for w in derived.split("-"))
    assert f"{derived}-streamnb.{name}Value" in registry.get_subjects()


@pytest.mark.parametrize("key_format", ["avro", "jsonschema", "protobuf"])
def test_keys_are_framed_under_the_key_subject(
    key_format: str,
    topic: str,
    consume_all: Consume,
    bootstrap: str,
    schema_registry: SchemaRegistry,
    registry,
) -> None:
    sn.from_records(ROWS).to_kafka(
        topic,
        bootstrap_servers=bootstrap,
        key=["id", "channel"],
        key_format=key_format,
        schema_registry=schema_registry.url,
    ).collect()
    records = consume_all(topic, min_count=3)
    if key_format == "avro":
        deserializer = AvroDeserializer(registry)
    elif key_format == "jsonschema":
        deserializer = JSONDeserializer(None, schema_registry_client=registry)
    else:
        protobuf = registered_deserializer(registry, f"{topic}-key")
        deserializer = lambda value, context: as_row(protobuf(value, context))  # noqa: E731
    context = SerializationContext(topic, MessageField.KEY)
    assert [deserializer(r["key"], context) for r in records] == ROWS.select(
        "id", "channel"
    ).to_dicts()
    assert {schema_id(r, "key") for r in records} == {
        registry.get_latest_version(f"{topic}-key").schema_id
    }
    assert f"{topic}-value" not in registry.get_subjects()  # the values are plain JSON


def test_a_tables_tombstones_have_framed_keys(
    topic: str, consume_all: Consume, bootstrap: str, schema_registry: SchemaRegistry, registry
) -> None:
    data = [{"k": "a", "t": 0}, {"k": "a", "t": 2_000}, {"k": "a", "t": 1_000}]
    sessions = (
        sn.from_records(data, timestamp="t", batch_size=1)
        .window(sn.Session("1500ms"), by="k", emit="update")
        .agg(pl.len().alias("n"))
    )
    sessions.to_kafka(
        topic,
        bootstrap_servers=bootstrap,
        format="avro",
        key_format="avro",
        schema_registry=schema_registry.url,
    ).collect()
    records = consume_all(topic, min_count=4)
    keys = values([{**r, "value": r["key"]} for r in records], AvroDeserializer(registry), topic)
    tombstones = [k for k, r in zip(keys, records, strict=True) if r["value"] is None]
    # [2 s] was retracted when the record at 1 s merged it into [1 s, 3.5 s]
    assert tombstones == [{"window_start": 2000, "window_end": 3500, "k": "a"}]
    last = values(records[-1:], AvroDeserializer(registry), topic)
    assert last == [{"window_start": 1000, "window_end": 3500, "k": "a", "n": 2}]


def test_an_incompatible_schema_fails_the_start_naming_the_subject(
    topic: str, consume_all: Consume, bootstrap: str, schema_registry: SchemaRegistry, registry
) -> None:
    v1 = '{"type":"record","name":"V","fields":[{"name":"id","type":"long"}]}'
    registry.register_schema(f"{topic}-value", Schema(v1, "AVRO"))
    stream = sn.from_records(ROWS.select(pl.col("id").cast(pl.String))).to_kafka(
        topic, bootstrap_servers=bootstrap, format="avro", schema_registry=schema_registry.url
    )
    with pytest.raises(SinkError, match=f"subject '{topic}-value'") as failed:
        stream.collect()
    assert "HTTP 409" in str(failed.value)
    with pytest.raises(SinkError, match=f"subject '{topic}-value'"):
        stream.start()
    assert consume_all(topic) == []
    assert registry.get_latest_version(f"{topic}-value").version == 1


def test_a_row_that_does_not_fit_the_schema_goes_to_errors(
    topic: str, consume_all: Consume, bootstrap: str, schema_registry: SchemaRegistry, registry
) -> None:
    user = {"type": "record", "name": "V", "fields": [{"name": "channel", "type": "string"}]}
    query = (
        sn.from_records(ROWS.select("id", "channel"))
        .to_kafka(
            topic,
            bootstrap_servers=bootstrap,
            format="avro",
            schema=user,
            key="id",
            schema_registry=schema_registry.url,
        )
        .start()
    )
    query.wait(30)
    errors = query.errors()
    assert errors["record"].to_list() == ['{"id": 3, "channel": null}']
    assert "does not fit the Avro schema" in errors["reason"][0]
    records = consume_all(topic, min_count=2)
    assert [r["key"] for r in records] == [b"1", b"2"]
    assert values(records, AvroDeserializer(registry), topic) == [
        {"channel": "web"},
        {"channel": "app"},
    ]


@pytest.mark.parametrize(
    "config",
    [
        {"url": "http://ann:url-secret@127.0.0.1:9", "max.retries": 0},
        {"url": "http://127.0.0.1:9", "basic.auth.user.info": "ann:info-secret", "max.retries": 0},
    ],
)
def test_registry_secrets_never_show(config: dict[str, Any], bootstrap: str) -> None:
    stream = sn.from_records(ROWS.select("id")).to_kafka(
        "t", bootstrap_servers=bootstrap, format="jsonschema", schema_registry=config
    )
    with pytest.raises(SinkError, match="subject 't-value'") as failed:  # nothing listens there
        stream.collect()
    sink = stream._plan.root.sink  # type: ignore[attr-defined]
    for shown in (repr(stream), repr(sink), str(failed.value)):
        assert "secret" not in shown
    assert "127.0.0.1:9" in str(failed.value)


def test_a_bad_registry_setting_is_a_config_error_without_its_secrets(bootstrap: str) -> None:
    both = {"url": "http://ann:url-secret@127.0.0.1:9", "basic.auth.user.info": "ann:info-secret"}
    with pytest.raises(sn.ConfigError, match="userinfo") as failed:
        sn.from_records(ROWS.select("id")).to_kafka(
            "t", bootstrap_servers=bootstrap, format="avro", schema_registry=both
        )
    assert "secret" not in str(failed.value)


def test_registry_formats_need_a_registry(bootstrap: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STREAMNB_SCHEMA_REGISTRY", raising=False)
    stream = sn.from_records(ROWS.select("id"))
    for fmt in ("protobuf", "jsonschema", "avro"):  # avro: without schema=
        with pytest.raises(sn.ConfigError, match="Schema Registry"):
            stream.to_kafka("t", bootstrap_servers=bootstrap, format=fmt)  # type: ignore[arg-type]
    with pytest.raises(sn.ConfigError, match="key_format"):
        stream.to_kafka("t", bootstrap_servers=bootstrap, key_format="avro")
    with pytest.raises(sn.ConfigError, match="subject_strategy"):
        stream.to_kafka(
            "t",
            bootstrap_servers=bootstrap,
            format="jsonschema",
            schema_registry="http://x",
            subject_strategy="name",  # type: ignore[arg-type]
        )
