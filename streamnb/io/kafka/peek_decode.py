"""Decoding a peek's values: JSON, or framed values each by its writer schema.

Both decoders give one row per value, in order: a value that does not decode keeps its row,
with null fields and the reason in ``_error``.

JSON is decoded as the query path does (``streamnb.io.codecs.json``). ``sn.kafka.peek`` reads
a few records (``n`` per partition), so each framed value is decoded on its own: Avro and
JSON Schema with confluent-kafka's own deserializers, Protobuf with a message class built from
the writer's schema (confluent's ``ProtobufDeserializer`` needs the class of the message,
which a notebook exploring a topic does not have). The query path (``streamnb.io.sources``)
decodes whole batches instead. Each schema id is looked up once: its type, and the subject
and version it is registered under (the ``<topic>-value`` subject preferred when the same
schema is under several).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import polars as pl

from streamnb.exceptions import ConfigError, DecodeError
from streamnb.io.kafka.registry import client, redact_url, scrub, split_framed, subject_name

__all__ = ["SCHEMA_TYPES", "decode_framed", "decode_json"]

SCHEMA_TYPES = {"avro": "AVRO", "protobuf": "PROTOBUF", "jsonschema": "JSON"}
"""peek's ``format=`` for each registry schema type."""


BY_ID_ALONE = {"subject.name.strategy": lambda context, record_name: None}
"""The deserializers' subject strategy: none, so the writer's schema is fetched by its id
alone, whatever subject it was registered under, and no reader schema is looked up."""


@dataclass(frozen=True)
class _SchemaInfo:
    """What the registry says about one schema id (``error``: why its values cannot be read)."""

    schema_type: str | None = None
    subject: str | None = None
    version: int | None = None
    error: str | None = None


def decode_json(values: list[bytes]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The fields of JSON ``values`` (one row each, nulls where a value did not decode) and,
    when one did not, ``_error`` alongside (no column otherwise: a clean topic's peek has the
    columns it always had)."""
    from streamnb.io.codecs.json import decode_ndjson, infer_json_schema

    errors: list[str | None] = [None] * len(values)

    def failed(index: int, doc: bytes, why: str) -> None:
        errors[index] = why

    decoded, kept = decode_ndjson(values, infer_json_schema(values), failed)
    if len(kept) == len(values):
        return decoded, pl.DataFrame()
    position = pl.DataFrame({"_i": pl.Series(range(len(values)), dtype=pl.Int64)})
    fields = position.join(
        decoded.with_columns(_i=pl.Series(kept, dtype=pl.Int64)), on="_i", how="left"
    ).drop("_i")
    return fields, pl.DataFrame({"_error": pl.Series(errors, dtype=pl.String)})


def decode_framed(
    values: Sequence[bytes | None],
    topic: str,
    registry: Mapping[str, Any],
    format: str | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The decoded fields of ``values`` (one row each, nulls where a value did not decode)
    and, alongside, ``_subject``, ``_schema_id``, ``_version`` and ``_error``.

    ``format`` (``"avro"``, ``"protobuf"``, ``"jsonschema"``) makes a value written with a
    schema of another type an error; ``None`` decodes each by its schema's type.
    """
    sr = client(registry)
    ids, _ = split_framed(values)
    infos: dict[int, _SchemaInfo] = {}
    decoder = _Decoder(sr, topic)
    rows: list[dict[str, Any]] = []
    columns: dict[str, list[Any]] = {"_subject": [], "_schema_id": [], "_version": []}
    errors: list[str | None] = []
    for value, schema_id in zip(values, ids.tolist(), strict=True):
        info = _SchemaInfo(error=_not_framed(value))
        if schema_id >= 0:
            if schema_id not in infos:
                infos[schema_id] = _schema_info(sr, registry, topic, schema_id)
            info = infos[schema_id]
        row, error = _decode_one(decoder, value or b"", schema_id, info, format)
        rows.append(row)
        errors.append(error)
        columns["_subject"].append(info.subject)
        columns["_schema_id"].append(schema_id if schema_id >= 0 else None)
        columns["_version"].append(info.version)
    fields = pl.from_dicts(rows, infer_schema_length=None, strict=False)
    registry_columns = pl.DataFrame(
        {**columns, "_error": errors},
        schema={
            "_subject": pl.String,
            "_schema_id": pl.Int64,
            "_version": pl.Int64,
            "_error": pl.String,
        },
    )
    return fields, registry_columns


def _not_framed(value: bytes | None) -> str:
    """Why ``value`` has no schema id (only called for values ``split_framed`` refused)."""
    if not value:
        return "not framed: an empty value (a tombstone?) has no schema id"
    if len(value) < 5:
        return f"not framed: {len(value)} bytes, shorter than the 5-byte header"
    return (
        f"not framed: the first byte is 0x{value[0]:02x}, not the magic byte 0x00 (written "
        "without a Schema Registry serializer?)"
    )


def _decode_one(
    decoder: _Decoder, value: bytes, schema_id: int, info: _SchemaInfo, format: str | None
) -> tuple[dict[str, Any], str | None]:
    """``value``'s fields and ``None``, or no fields and why."""
    if info.error is not None:
        return {}, info.error
    expected = SCHEMA_TYPES.get(format or "")
    if expected is not None and info.schema_type != expected:
        return {}, f"schema {schema_id} is {info.schema_type}, not {expected} (format={format!r})"
    try:
        decoded = decoder.decode(str(info.schema_type), value)
    except Exception as exc:  # whatever the deserializer raises: the record keeps its row
        return {}, f"cannot decode with schema {schema_id} ({info.schema_type}): {exc}"
    return (decoded if isinstance(decoded, dict) else {"value": decoded}), None


def _schema_info(sr: Any, registry: Mapping[str, Any], topic: str, schema_id: int) -> _SchemaInfo:
    """The type of schema ``schema_id`` and its subject and version; an id the registry does
    not know is an error of its records; a registry that does not answer raises."""
    from confluent_kafka.schema_registry import SchemaRegistryError

    try:
        schema = sr.get_schema(schema_id)
    except SchemaRegistryError as exc:
        if exc.http_status_code == 404:
            return _SchemaInfo(
                error=f"unknown schema id {schema_id}: the Schema Registry at "
                f"{redact_url(str(registry['url']))} does not have it"
            )
        raise _unanswered(registry, exc) from None
    except Exception as exc:  # transport: refused, TLS, timeout
        raise _unanswered(registry, exc) from None
    subject, version = _subject_version(sr, topic, schema_id, schema)
    return _SchemaInfo(schema.schema_type or "AVRO", subject, version)


def _unanswered(registry: Mapping[str, Any], exc: Exception) -> ConfigError:
    return ConfigError(
        f"the Schema Registry at {redact_url(str(registry['url']))} did not answer: "
        f"{scrub(str(exc), registry)}"
    )


def _subject_version(
    sr: Any, topic: str, schema_id: int, schema: Any
) -> tuple[str | None, int | None]:
    """Where ``schema_id`` is registered: ``GET /schemas/ids/{id}/versions`` (Confluent,
    Apicurio), preferring ``<topic>-value``; else a look-up of the schema under that subject."""
    from confluent_kafka.schema_registry import SchemaRegistryError

    preferred = subject_name(topic)
    try:
        pairs = sr.get_schema_versions(schema_id)
    except SchemaRegistryError:
        pairs = []
    if pairs:
        best = min(pairs, key=lambda p: p.subject != preferred)
        return best.subject, best.version
    try:
        found = sr.lookup_schema(preferred, schema)
    except SchemaRegistryError:
        return None, None
    return found.subject, found.version


class _Decoder:
    """Decodes one framed value of a given schema type; builds each deserializer (and each
    Protobuf message class) once per peek."""

    def __init__(self, sr: Any, topic: str) -> None:
        from confluent_kafka.serialization import MessageField, SerializationContext

        self.sr = sr
        self.context = SerializationContext(topic, MessageField.VALUE)
        self._avro: Any = None
        self._json: Any = None
        self._messages: dict[tuple[int, tuple[int, ...]], Any] = {}

    def decode(self, schema_type: str, value: bytes) -> Any:
        if schema_type == "AVRO":
            from confluent_kafka.schema_registry.avro import AvroDeserializer

            self._avro = self._avro or AvroDeserializer(self.sr, conf=BY_ID_ALONE)
            return self._avro(value, self.context)
        if schema_type == "JSON":
            from confluent_kafka.schema_registry.json_schema import JSONDeserializer

            self._json = self._json or JSONDeserializer(
                None, schema_registry_client=self.sr, conf=BY_ID_ALONE
            )
            return self._json(value, self.context)
        if schema_type == "PROTOBUF":
            return self._protobuf(value)
        raise DecodeError(f"schema type {schema_type!r} is not AVRO, PROTOBUF or JSON")

    def _protobuf(self, value: bytes) -> dict[str, Any]:
        from confluent_kafka.schema_registry.serde import SchemaId

        framing = SchemaId("PROTOBUF")
        payload = framing.from_bytes(io.BytesIO(value))
        indexes = tuple(framing.message_indexes or [0])
        key = (int(framing.id or 0), indexes)
        if key not in self._messages:
            self._messages[key] = _message_class(self.sr, key[0], indexes)
        message = self._messages[key]()
        message.ParseFromString(payload.read())
        return _message_dict(message)


def _message_class(sr: Any, schema_id: int, indexes: tuple[int, ...]) -> Any:
    """The class of the message at ``indexes`` (top-level, then nested) in the writer's
    Protobuf schema ``schema_id``, built in a pool of its own with its references."""
    from google.protobuf import descriptor_pool
    from google.protobuf.message_factory import GetMessageClass

    pool = descriptor_pool.DescriptorPool()
    _add_well_known(pool)
    schema = sr.get_schema(schema_id, fmt="serialized")
    file = _add_file(pool, sr, schema, None)
    message = file.message_type[indexes[0]]
    names = [message.name]
    for index in indexes[1:]:
        message = message.nested_type[index]
        names.append(message.name)
    full_name = ".".join([file.package, *names] if file.package else names)
    return GetMessageClass(pool.FindMessageTypeByName(full_name))


def _add_file(pool: Any, sr: Any, schema: Any, name: str | None) -> Any:
    """Add ``schema`` (and, first, the schemas it imports) to ``pool``; its file proto."""
    from google.protobuf import descriptor_pb2

    for ref in schema.references or []:
        try:
            pool.FindFileByName(ref.name)
        except KeyError:
            registered = sr.get_version(ref.subject, ref.version, fmt="serialized")
            _add_file(pool, sr, registered.schema, ref.name)
    try:
        raw = base64.b64decode(schema.schema_str, validate=True)
    except (binascii.Error, ValueError):  # not base64
        raise DecodeError(
            "the registry gave this Protobuf schema as .proto text, which peek does not "
            "compile (it reads the serialized form a registry gives with ?format=serialized)"
        ) from None
    file = descriptor_pb2.FileDescriptorProto.FromString(raw)
    if name is not None:  # imports name the file by its reference's name
        file.name = name
    pool.Add(file)
    return file


def _add_well_known(pool: Any) -> None:
    """Google's well-known types, which Confluent's serializers import without registering."""
    from google.protobuf import (
        any_pb2,
        descriptor_pb2,
        duration_pb2,
        empty_pb2,
        field_mask_pb2,
        struct_pb2,
        timestamp_pb2,
        wrappers_pb2,
    )

    for module in (
        any_pb2,
        duration_pb2,
        empty_pb2,
        field_mask_pb2,
        struct_pb2,
        timestamp_pb2,
        wrappers_pb2,
    ):
        file = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(file)
        pool.Add(file)


def _message_dict(message: Any) -> dict[str, Any]:
    """A Protobuf message as plain values: nested messages as dicts (unset ones null), enums
    by name, maps as lists of ``{key, value}``, ``Timestamp`` as a UTC datetime; 64-bit
    integers stay integers (``MessageToDict`` would make them strings)."""
    out: dict[str, Any] = {}
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        entry = field.message_type
        if entry is not None and entry.GetOptions().map_entry:
            value_field = entry.fields_by_name["value"]
            out[field.name] = [
                {"key": k, "value": _field_value(value_field, v)} for k, v in value.items()
            ]
        elif field.is_repeated:
            out[field.name] = [_field_value(field, v) for v in value]
        elif field.has_presence and not message.HasField(field.name):
            out[field.name] = None
        else:
            out[field.name] = _field_value(field, value)
    return out


def _field_value(field: Any, value: Any) -> Any:
    if field.message_type is not None:
        if field.message_type.full_name == "google.protobuf.Timestamp":
            return value.ToDatetime(tzinfo=dt.timezone.utc)
        return _message_dict(value)
    if field.enum_type is not None:
        known = field.enum_type.values_by_number.get(value)
        return known.name if known is not None else value
    return value
