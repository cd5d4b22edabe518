"""Exploring topics whose values are framed by Schema Registry serializers: ``sn.kafka.peek``,
``sn.kafka.topics`` and ``sn.kafka.connect(schema_registry=...)``, against the real broker and
the real registry (Apicurio, Confluent-compatible API). The data is written with
confluent-kafka's own serializers, as a user's services would; the oracle is what they wrote.
"""

from __future__ import annotations

import datetime as dt
import json
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import polars as pl
import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.schema_registry.json_schema import JSONSerializer
from confluent_kafka.schema_registry.protobuf import ProtobufSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

import streamnb as sn
from streamnb.io.kafka import client as kafka_client
from streamnb.io.kafka import registry as registry_module
from streamnb.io.kafka.client import redact
from streamnb.io.kafka.registry import redact_registry, redact_url, scrub
from tests.io.kafka.registry import SchemaRegistry

Produce = Callable[..., list[tuple[int, int]]]

AVRO_V1 = json.dumps(
    {
        "type": "record",
        "name": "Trade",
        "namespace": "explore",
        "fields": [
            {"name": "id", "type": "long"},
            {"name": "symbol", "type": "string"},
            {"name": "price", "type": "double"},
            {"name": "side", "type": {"type": "enum", "name": "Side", "symbols": ["BUY", "SELL"]}},
            {"name": "tags", "type": {"type": "array", "items": "string"}},
        ],
    }
)
AVRO_V2 = json.dumps(
    {
        **json.loads(AVRO_V1),
        "fields": [
            *json.loads(AVRO_V1)["fields"],
            {"name": "venue", "type": ["null", "string"], "default": None},
        ],
    }
)
TRADES = [
    {"id": 1, "symbol": "ACME", "price": 10.5, "side": "BUY", "tags": ["a"]},
    {"id": 2, "symbol": "INIT", "price": 99.25, "side": "SELL", "tags": []},
    {"id": 3, "symbol": "ACME", "price": 11.0, "side": "SELL", "tags": ["b", "c"]},
]
JSON_SCHEMA = json.dumps(
    {
        "type": "object",
        "properties": {"id": {"type": "integer"}, "city": {"type": "string"}},
        "required": ["id", "city"],
    }
)
CITIES = [{"id": 1, "city": "Lyon"}, {"id": 2, "city": "Oslo"}]
AT = dt.datetime(2026, 12, 2, 12, 30, 5, tzinfo=dt.timezone.utc)
READINGS = [
    {"id": 7, "name": "a", "level": "HIGH", "at": AT, "tags": ["x"], "where": {"x": 1.5}},
    {"id": 8, "name": "b", "level": "LOW", "at": AT, "tags": [], "where": None},
]


def reading_class(imported: bool = False) -> Any:
    """A Protobuf message class built at run time: ``explore.Reading`` (the file's second
    message, so its values carry message index 1) with an enum, a Timestamp, a repeated
    field and a nested message; ``imported``: ``Position`` comes from a file of its own, which
    the serializer registers as a schema reference."""
    from google.protobuf import descriptor_pb2, descriptor_pool, timestamp_pb2
    from google.protobuf.message_factory import GetMessageClass

    pool = descriptor_pool.DescriptorPool()
    timestamp = descriptor_pb2.FileDescriptorProto()
    timestamp_pb2.DESCRIPTOR.CopyToProto(timestamp)
    pool.Add(timestamp)
    field = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(
        name="explore/reading.proto",
        package="explore",
        syntax="proto3",
        dependency=["google/protobuf/timestamp.proto"],
    )
    holder = file
    if imported:
        holder = descriptor_pb2.FileDescriptorProto(
            name="explore/position.proto", package="explore", syntax="proto3"
        )
        file.name = "explore/reading_imports.proto"
        file.dependency.append(holder.name)
    position = holder.message_type.add(name="Position")
    position.field.add(name="x", number=1, type=field.TYPE_DOUBLE, label=field.LABEL_OPTIONAL)
    if imported:
        pool.Add(holder)
    level = file.enum_type.add(name="Level")
    level.value.add(name="LOW", number=0)
    level.value.add(name="HIGH", number=1)
    reading = file.message_type.add(name="Reading")
    for number, (name, kind, type_name, label) in enumerate(
        [
            ("id", field.TYPE_INT64, None, field.LABEL_OPTIONAL),
            ("name", field.TYPE_STRING, None, field.LABEL_OPTIONAL),
            ("level", field.TYPE_ENUM, ".explore.Level", field.LABEL_OPTIONAL),
            ("at", field.TYPE_MESSAGE, ".google.protobuf.Timestamp", field.LABEL_OPTIONAL),
            ("tags", field.TYPE_STRING, None, field.LABEL_REPEATED),
            ("where", field.TYPE_MESSAGE, ".explore.Position", field.LABEL_OPTIONAL),
        ],
        start=1,
    ):
        reading.field.add(name=name, number=number, type=kind, label=label, type_name=type_name)
    pool.Add(file)
    return GetMessageClass(pool.FindMessageTypeByName("explore.Reading"))


def serialize(
    url: str,
    topic: str,
    format: str,
    records: list[dict[str, Any]],
    *,
    schema: str = "",
    imported: bool = False,
) -> list[bytes]:
    """``records`` as a service writes them: framed by confluent-kafka's serializer, which
    registers the schema under ``<topic>-value``."""
    registry = SchemaRegistryClient({"url": url})
    context = SerializationContext(topic, MessageField.VALUE)
    if format == "avro":
        avro = AvroSerializer(registry, schema or AVRO_V1)
        return [avro(r, context) for r in records]
    if format == "jsonschema":
        as_json = JSONSerializer(schema or JSON_SCHEMA, registry)
        return [as_json(r, context) for r in records]
    message = reading_class(imported)
    proto = ProtobufSerializer(message, registry, {"use.deprecated.format": False})
    out = []
    for r in records:
        m = message(id=r["id"], name=r["name"], level=r["level"], tags=r["tags"])
        m.at.FromDatetime(r["at"])
        if r["where"] is not None:
            m.where.x = r["where"]["x"]
        out.append(proto(m, context))
    return out


def schema_id(value: bytes) -> int:
    return int.from_bytes(value[1:5], "big")


@pytest.fixture
def no_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """No default broker or registry from another test, nor from the environment."""
    monkeypatch.delenv("STREAMNB_SCHEMA_REGISTRY", raising=False)
    monkeypatch.setattr(kafka_client, "_defaults", {})
    monkeypatch.setattr(registry_module, "_defaults", {})


def closed_url(userinfo: str = "") -> str:
    """A registry URL where nothing listens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://{userinfo}127.0.0.1:{port}/apis/ccompat/v7"


# -- peek -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("format", "records"),
    [("avro", TRADES), ("protobuf", READINGS), ("jsonschema", CITIES)],
)
def test_peek_decodes_each_format_and_names_subject_id_and_version(
    format: str,
    records: list[dict[str, Any]],
    make_topic: Callable[..., str],
    produce: Produce,
    bootstrap: str,
    schema_registry: SchemaRegistry,
    no_defaults: None,
) -> None:
    topic = make_topic()
    values = serialize(schema_registry.url, topic, format, records)
    produce(topic, values)
    (written,) = {schema_id(v) for v in values}
    for asked in (None, format):  # found by the schema's type, or as told
        peeked = sn.kafka.peek(
            topic, bootstrap_servers=bootstrap, schema_registry=schema_registry.url, format=asked
        )
        fields = list(records[0])
        assert peeked.select(fields).to_dicts() == records
        assert peeked.columns == [
            *fields,
            "_partition",
            "_offset",
            "_timestamp",
            "_subject",
            "_schema_id",
            "_version",
            "_error",
        ]
        assert peeked["_offset"].to_list() == list(range(len(records)))
        assert set(peeked["_subject"]) == {f"{topic}-value"}
        assert set(peeked["_schema_id"]) == {written}
        assert set(peeked["_version"]) == {1}
        assert peeked["_error"].null_count() == len(records)


def test_peek_decodes_protobuf_whose_schema_imports_another_registered_one(
    make_topic: Callable[..., str],
    produce: Produce,
    bootstrap: str,
    schema_registry: SchemaRegistry,
    no_defaults: None,
) -> None:
    topic = make_topic()
    values = serialize(schema_registry.url, topic, "protobuf", READINGS, imported=True)
    produce(topic, values)
    registry = SchemaRegistryClient({"url": schema_registry.url})
    references = registry.get_latest_version(f"{topic}-value").schema.references
    assert [r.name for r in references] == ["explore/position.proto"]  # really a reference
    peeked = sn.kafka.peek(topic, bootstrap_servers=bootstrap, schema_registry=schema_registry.url)
    assert peeked.select(list(READINGS[0])).to_dicts() == READINGS
    assert peeked["_error"].null_count() == len(READINGS)


def test_two_schema_versions_show_both_ids_and_versions(
    make_topic: Callable[..., str],
    produce: Produce,
    bootstrap: str,
    schema_registry: SchemaRegistry,
    no_defaults: None,
) -> None:
    topic = make_topic()
    old = serialize(schema_registry.url, topic, "avro", TRADES[:2])
    newer = [{**TRADES[2], "venue": "XPAR"}]
    new = serialize(schema_registry.url, topic, "avro", newer, schema=AVRO_V2)
    produce(topic, old + new)
    registry = SchemaRegistryClient({"url": schema_registry.url})
    ids = {v: registry.get_version(f"{topic}-value", v).schema_id for v in (1, 2)}
    assert ids[1] != ids[2] and {schema_id(old[0]), schema_id(new[0])} == set(ids.values())
    peeked = sn.kafka.peek(topic, bootstrap_servers=bootstrap, schema_registry=schema_registry.url)
    assert peeked.select("_schema_id", "_version").rows() == [(ids[1], 1), (ids[1], 1), (ids[2], 2)]
    assert peeked["venue"].to_list() == [None, None, "XPAR"]  # added in version 2
    assert peeked.drop("venue").select(list(TRADES[0])).to_dicts() == TRADES


def test_a_record_that_does_not_decode_keeps_its_row_with_the_reason(
    make_topic: Callable[..., str],
    produce: Produce,
    bootstrap: str,
    schema_registry: SchemaRegistry,
    no_defaults: None,
) -> None:
    topic = make_topic()
    (good,) = serialize(schema_registry.url, topic, "avro", TRADES[:1])
    unknown = b"\x00" + (2**31 - 5).to_bytes(4, "big") + b"\x02"
    truncated = good[:7]  # the schema's header, then a cut-off body
    produce(topic, [good, b'{"id": 9}', unknown, b"", truncated])
    peeked = sn.kafka.peek(topic, bootstrap_servers=bootstrap, schema_registry=schema_registry.url)
    assert peeked.height == 5
    assert peeked["id"].to_list() == [1, None, None, None, None]
    errors = peeked["_error"].to_list()
    assert errors[0] is None
    assert errors[1] is not None and "not framed: the first byte is 0x7b" in errors[1]
    assert errors[2] is not None and f"unknown schema id {2**31 - 5}" in errors[2]
    assert errors[3] is not None and "empty value" in errors[3]
    assert (
        errors[4] is not None and f"cannot decode with schema {schema_id(good)} (AVRO)" in errors[4]
    )
    assert peeked["_schema_id"].to_list() == [
        schema_id(good),
        None,
        2**31 - 5,
        None,
        schema_id(good),
    ]
    assert peeked["_offset"].to_list() == [0, 1, 2, 3, 4]
    # told the wrong format: each record says what its schema is
    wrong = sn.kafka.peek(
        topic, bootstrap_servers=bootstrap, schema_registry=schema_registry.url, format="protobuf"
    )
    assert (
        wrong["_error"][0] == f"schema {schema_id(good)} is AVRO, not PROTOBUF (format='protobuf')"
    )
    assert wrong.height == 5


def test_json_peek_keeps_a_bad_record_too(
    make_topic: Callable[..., str], produce: Produce, bootstrap: str, no_defaults: None
) -> None:
    topic = make_topic()
    produce(topic, [{"id": 1}, b"{not json", {"id": 3}])
    peeked = sn.kafka.peek(topic, bootstrap_servers=bootstrap)
    assert peeked["id"].to_list() == [1, None, 3]
    assert peeked["_error"].is_null().to_list() == [True, False, True]
    clean = make_topic()
    produce(clean, [{"id": 1}])
    assert sn.kafka.peek(clean, bootstrap_servers=bootstrap).columns == [
        "id",
        "_partition",
        "_offset",
        "_timestamp",
    ]


def test_framed_values_without_a_registry_say_what_is_missing(
    make_topic: Callable[..., str],
    produce: Produce,
    bootstrap: str,
    schema_registry: SchemaRegistry,
    no_defaults: None,
) -> None:
    topic = make_topic()
    values = serialize(schema_registry.url, topic, "avro", TRADES[:1])
    produce(topic, values)
    with pytest.raises(sn.ConfigError, match=r"framed with schema ids \[\d+\]") as raised:
        sn.kafka.peek(topic, bootstrap_servers=bootstrap)
    assert "schema_registry=" in str(raised.value) and "STREAMNB_SCHEMA_REGISTRY" in str(
        raised.value
    )
    with pytest.raises(sn.ConfigError, match="needs a Schema Registry"):
        sn.kafka.peek(topic, bootstrap_servers=bootstrap, format="avro")
    raw = sn.kafka.peek(topic, bootstrap_servers=bootstrap, format="raw")
    assert raw["value"].to_list() == values


# -- topics, connect ----------------------------------------------------------------------------


def test_topics_shows_each_topics_subjects(
    make_topic: Callable[..., str],
    produce: Produce,
    bootstrap: str,
    schema_registry: SchemaRegistry,
    no_defaults: None,
) -> None:
    framed, plain = make_topic(), make_topic()
    produce(framed, serialize(schema_registry.url, framed, "jsonschema", CITIES))
    keys = AvroSerializer(SchemaRegistryClient({"url": schema_registry.url}), '"string"')
    produce(
        framed,
        serialize(schema_registry.url, framed, "jsonschema", CITIES[:1]),
        key=keys("k1", SerializationContext(framed, MessageField.KEY)),
    )
    produce(plain, [{"id": 1}])
    listing = sn.kafka.topics(bootstrap, schema_registry=schema_registry.url)
    assert listing.columns == ["topic", "partitions", "records", "subject", "key_subject"]
    rows = {
        r["topic"]: r for r in listing.filter(pl.col("topic").is_in([framed, plain])).to_dicts()
    }
    assert rows[framed] == {
        "topic": framed,
        "partitions": 1,
        "records": 3,
        "subject": f"{framed}-value",
        "key_subject": f"{framed}-key",
    }
    assert rows[plain]["subject"] is None and rows[plain]["key_subject"] is None
    assert sn.kafka.topics(bootstrap).columns == ["topic", "partitions", "records"]


def test_connect_makes_the_registry_the_default_and_so_does_the_environment(
    make_topic: Callable[..., str],
    produce: Produce,
    bootstrap: str,
    schema_registry: SchemaRegistry,
    no_defaults: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    topic = make_topic()
    produce(topic, serialize(schema_registry.url, topic, "avro", TRADES))
    assert topic in sn.kafka.connect(bootstrap, schema_registry=schema_registry.url)
    assert sn.kafka.peek(topic)["symbol"].to_list() == ["ACME", "INIT", "ACME"]
    assert sn.kafka.topics().filter(pl.col("topic") == topic)["subject"][0] == f"{topic}-value"
    sn.kafka.connect(bootstrap)  # without schema_registry=: the default registry stays
    assert sn.kafka.peek(topic)["_subject"][0] == f"{topic}-value"

    monkeypatch.setattr(registry_module, "_defaults", {})
    monkeypatch.setenv("STREAMNB_SCHEMA_REGISTRY", schema_registry.url)
    assert sn.kafka.peek(topic)["price"].to_list() == [10.5, 99.25, 11.0]


# -- security: secrets never in output ------------------------------------------------------


@pytest.mark.parametrize(
    "registry",
    [
        {"url": closed_url("alice:s3cr3t-pw@"), "max.retries": 0},
        {"url": closed_url(), "basic.auth.user.info": "alice:s3cr3t-pw", "max.retries": 0},
        {"url": closed_url(), "bearer.auth.credentials.source": "STATIC_TOKEN",
         "bearer.auth.token": "s3cr3t-pw", "bearer.auth.logical.cluster": "lsrc-1",
         "bearer.auth.identity.pool.id": "pool-1", "max.retries": 0},
    ],
    ids=["url-user-info", "basic-auth", "bearer"],
)  # fmt: skip
def test_an_unreachable_registry_is_named_without_its_secret(
    registry: dict[str, Any], bootstrap: str, no_defaults: None
) -> None:
    host = registry["url"].split("@")[-1].split("//")[-1].split("/")[0]
    with pytest.raises(sn.ConfigError) as raised:
        sn.kafka.connect(bootstrap, schema_registry=registry)
    message = str(raised.value)
    assert "Schema Registry at http://" in message and host in message
    assert "s3cr3t" not in message and "does not answer GET /subjects" in message
    assert registry_module._defaults == {} and kafka_client._defaults == {}  # nothing half-set
    with pytest.raises(sn.ConfigError) as raised:
        sn.kafka.topics(bootstrap, schema_registry=registry)
    assert host in str(raised.value) and "s3cr3t" not in str(raised.value)


def test_a_refused_password_is_named_without_it(bootstrap: str, no_defaults: None) -> None:
    """The test registry runs without authentication, so a registry that refuses every
    request (HTTP 401, as one with basic auth does a wrong password) stands in for it here."""

    class Refuse(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps({"error_code": 401, "message": "Unauthorized"}).encode()
            self.send_response(401)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Refuse)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        with pytest.raises(sn.ConfigError) as raised:
            sn.kafka.connect(
                bootstrap, schema_registry={"url": url, "basic.auth.user.info": "bob:wr0ng-pw"}
            )
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    message = str(raised.value)
    assert url in message and "Unauthorized" in message and "401" in message
    assert "wr0ng-pw" not in message and "basic.auth.user.info" in message


def test_both_url_user_info_and_basic_auth_is_a_config_error_without_either_secret(
    bootstrap: str, no_defaults: None
) -> None:
    registry = {"url": closed_url("alice:pw-one@"), "basic.auth.user.info": "bob:pw-two"}
    with pytest.raises(sn.ConfigError) as raised:
        sn.kafka.connect(bootstrap, schema_registry=registry)
    message = str(raised.value)
    assert "basic.auth.user.info" in message and "pw-one" not in message
    assert "pw-two" not in message


def test_redaction_covers_kafka_and_registry_secrets() -> None:
    mixed = {
        "url": "https://alice:pw1@sr.example:8081",
        "basic.auth.user.info": "bob:pw2",
        "bearer.auth.token": "tok3",
        "bearer.auth.client.secret": "sec4",
        "ssl.key.password": "pw5",
        "sasl.password": "pw6",
        "sasl.oauthbearer.config": "clientSecret=pw7",
        "sasl.username": "carol",
        "security.protocol": "SASL_SSL",
    }
    kept = {"sasl.username": "carol", "security.protocol": "SASL_SSL"}
    for redacted in (redact(mixed), redact_registry(mixed)):
        assert redacted["url"] == "https://***@sr.example:8081"
        assert {k: v for k, v in redacted.items() if v != "***" and k != "url"} == kept
        assert not any(f"pw{i}" in repr(redacted) for i in range(1, 8))
    assert (
        redact_url("at http://u:p@h:1/x and https://h2/y") == "at http://***@h:1/x and https://h2/y"
    )
    text = "401 for bob:pw2 (pw2) at https://alice:pw1@sr.example:8081 with tok3"
    assert scrub(text, mixed) == "401 for *** (***) at https://***@sr.example:8081 with ***"
