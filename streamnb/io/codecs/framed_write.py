"""Writing Confluent-framed values (or keys): a writer schema, its subject, and the encoding.

``to_kafka(format="avro"|"protobuf"|"jsonschema")`` with a Schema Registry makes a
:class:`FramedWriter` when the query is defined (the schema is the user's, or made from the
stream's columns; the subject follows the naming strategy), and :meth:`FramedWriter.register`
when it starts: the registry registers the schema (or finds it registered) and gives its id,
or refuses it, which fails the start with the registry's reason. Each batch is then encoded
with that id in every value's header (:func:`streamnb.io.kafka.registry.frame_header`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from streamnb.exceptions import ConfigError, SinkError
from streamnb.io.codecs import avro, jsonschema_write
from streamnb.io.codecs.json_write import json_lines
from streamnb.io.codecs.protobuf_write import ProtobufWriter, message_indexes
from streamnb.io.kafka.registry import client, frame_header, redact_registry, subject_name

__all__ = ["FramedEncoder", "FramedWriter", "record_name"]

SCHEMA_TYPES = {"avro": "AVRO", "protobuf": "PROTOBUF", "jsonschema": "JSON"}


def record_name(topic: str, *, is_key: bool = False) -> str:
    """The record name of a schema made from a stream's columns: the topic in CamelCase,
    then ``Value`` or ``Key`` (``bids.v1`` -> ``BidsV1Value``)."""
    words = [w for w in re.split(r"[^A-Za-z0-9]+", topic) if w]
    name = "".join(w[:1].upper() + w[1:] for w in words) or "Topic"
    if name[0].isdigit():
        name = f"T{name}"
    return f"{name}{'Key' if is_key else 'Value'}"


@dataclass(frozen=True)
class FramedWriter:
    """What a sink writes to one side of a record (the value, or the key): the format, the
    schema's text as it is registered, the subject, and the codec (a fastavro parsed schema,
    a :class:`ProtobufWriter`, or nothing for JSON Schema)."""

    format: str
    subject: str
    text: str = field(repr=False)
    codec: Any = field(repr=False)

    @classmethod
    def make(
        cls,
        format: str,
        topic: str,
        *,
        schema: Any,
        columns: pl.Schema | None,
        is_key: bool = False,
        strategy: str = "topic",
    ) -> FramedWriter:
        """The writer for ``format``: ``schema`` (the user's) or one made from ``columns``;
        raises :class:`ConfigError` when neither gives one."""
        if schema is None and columns is None:
            fix = "a key schema needs them" if is_key else "pass the value's schema as schema="
            raise ConfigError(
                f"to_kafka({'key_' if is_key else ''}format={format!r}): the stream's columns "
                f"are not known before it runs; {fix}"
            )
        name = record_name(topic, is_key=is_key)
        if format == "avro":
            text, codec, full = _avro(schema, columns, name)
        elif format == "protobuf":
            writer = (
                ProtobufWriter.for_class(schema)
                if schema is not None
                else ProtobufWriter.for_columns(columns or pl.Schema(), name)
            )
            text, codec, full = writer.file_text(), writer, writer.full_name
        elif format == "jsonschema":
            text, codec, full = _jsonschema(schema, columns, f"streamnb.{name}")
        else:
            raise ConfigError(f"format={format!r} is not a Schema Registry format")
        subject = subject_name(topic, is_key=is_key, strategy=strategy, record_name=full)
        return cls(format, subject, text, codec)

    def register(self, registry: Mapping[str, Any], *, where: str) -> FramedEncoder:
        """Register the schema under the subject (the registry gives the id of an identical
        schema already there) and return the encoder of its id; a registry that refuses it
        (incompatible with the subject's versions) or cannot be reached raises
        :class:`SinkError` naming the subject and the registry's reason."""
        from confluent_kafka.schema_registry import Schema

        try:
            schema_id = client(registry).register_schema(
                self.subject, Schema(self.text, SCHEMA_TYPES[self.format])
            )
        except ConfigError:  # a bad client setting (named without its secrets), or no extra
            raise
        except Exception as exc:  # SchemaRegistryError (409: incompatible), or no connection
            url = redact_registry(registry).get("url")
            raise SinkError(
                f"{where}: the Schema Registry at {url} did not register the {self.format} "
                f"schema under subject {self.subject!r}: {_reason(exc)}"
            ) from None
        prefix = frame_header(schema_id)
        if self.format == "protobuf":
            prefix += message_indexes(self.codec.message.DESCRIPTOR)
        return FramedEncoder(self, schema_id, prefix)


@dataclass(frozen=True)
class FramedEncoder:
    """A :class:`FramedWriter` registered: encodes rows as framed values with its id."""

    writer: FramedWriter
    schema_id: int
    prefix: bytes

    def encode(self, rows: pl.DataFrame) -> tuple[list[bytes], list[tuple[int, str]]]:
        """Each row framed (``prefix`` then the body), and the rows that do not fit the
        schema (index, reason; their places hold ``b""``). JSON Schema's bodies are the
        sink's JSON lines: one polars call per batch, then the header joined to each."""
        fmt, codec, prefix = self.writer.format, self.writer.codec, self.prefix
        if fmt == "avro":
            return avro.encode(rows, codec, prefix=prefix)
        if fmt == "protobuf":
            assert isinstance(codec, ProtobufWriter)
            return codec.encode(rows, prefix=prefix)
        lines = json_lines(rows)
        return [prefix + line for line in lines], []


def _avro(schema: Any, columns: pl.Schema | None, name: str) -> tuple[str, Any, str]:
    """The Avro schema's canonical-ish text (stable key order, so the registry sees the same
    text each run), its parsed form, and its full name."""
    if schema is None:
        assert columns is not None
        schema = avro.schema_for(columns, name)
    elif isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except ValueError as exc:
            raise ConfigError(f"schema= is not Avro schema JSON: {exc}") from None
    parsed = avro.parse_schema(schema)
    full = (
        schema["name"]
        if "." in schema["name"]
        else _dotted(schema.get("namespace"), schema["name"])
    )
    return json.dumps(schema, separators=(",", ":")), parsed, full


def _jsonschema(schema: Any, columns: pl.Schema | None, title: str) -> tuple[str, None, str]:
    """The JSON Schema's text and its record name (its ``title``)."""
    if schema is None:
        assert columns is not None
        schema = jsonschema_write.schema_for(columns, title)
    elif isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except ValueError as exc:
            raise ConfigError(f"schema= is not JSON Schema text: {exc}") from None
    if not isinstance(schema, Mapping):
        raise ConfigError("format='jsonschema' takes schema= a JSON Schema (dict or JSON text)")
    return json.dumps(schema, separators=(",", ":")), None, str(schema.get("title") or title)


def _dotted(namespace: str | None, name: str) -> str:
    return f"{namespace}.{name}" if namespace else name


def _reason(exc: Exception) -> str:
    """The registry's own message (a ``SchemaRegistryError`` carries it apart from its
    HTTP status), else the exception's text."""
    message = getattr(exc, "error_message", None)
    code = getattr(exc, "http_status_code", None)
    if message:
        return f"{message} (HTTP {code})" if code else str(message)
    return str(exc) or type(exc).__name__
