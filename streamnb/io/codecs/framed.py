"""Values framed with a Schema Registry id (Avro, Protobuf, JSON Schema) → polars rows.

DECODE side (``from_kafka``). A batch is split by schema id (:func:`split_framed`); each id's
values are decoded at once with that id's writer schema (:class:`Writer`, fetched once per id
and cached), then resolved to the reader schema in polars: the reader's columns in the
reader's types, a column the writer lacks as null, a column only the writer has dropped —
unless the writer is a newer version of the subject than the reader (a larger id), when the
output schema grows by it (schema evolution while the query runs: the rows before have it
null). The original order of the messages is restored at the end.

Per record, only what cannot be vectorised: Protobuf parsing (:mod:`.protobuf`), and Avro
records of schemas with maps (polars' Avro reader cannot read maps: fastavro per record).

Every value that does not become a row goes to the error sink with a reason: not framed, an
id the registry does not know, a writer schema the reader schema cannot read (incompatible),
bytes that do not decode.
"""

from __future__ import annotations

import io
import json
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from streamnb.exceptions import ConfigError, SourceError
from streamnb.io.codecs import avro
from streamnb.io.codecs.json import ErrorSink, decode_ndjson
from streamnb.io.kafka.registry import client, redact_registry, split_framed, subject_name

SCHEMA_TYPES = {"avro": "AVRO", "protobuf": "PROTOBUF", "jsonschema": "JSON"}
"""The registry's schema type of each format."""

Decode = Callable[[list[bytes], ErrorSink], tuple[pl.DataFrame, list[int]]]

if TYPE_CHECKING:
    from polars._typing import PolarsDataType


@dataclass
class Writer:
    """One schema of the registry: its polars columns, how to decode values written with it,
    and (as a reader) which of its columns a writer must have (fields without a default)."""

    schema: pl.Schema
    decode: Decode
    required: frozenset[str] = field(default_factory=frozenset)


# -- decoding ---------------------------------------------------------------------------------
class FramedDecoder:
    """Decodes the framed values of one topic against a reader schema that may grow.

    ``reader``: the reader schema (Avro: a record schema dict or its JSON) instead of the
    subject's latest version at definition time; a given reader schema never grows.
    """

    def __init__(
        self, format: str, registry: Mapping[str, Any], topic: str, reader: Any = None
    ) -> None:
        self.format, self.registry = format, dict(registry)
        self.client = client(self.registry)
        self.subject = subject_name(topic)
        self._writers: dict[int, Writer | str] = {}  # a str: why its values are errors
        self._lock = threading.Lock()
        if reader is not None:
            if format != "avro":
                raise ConfigError(f"schema= (a reader schema) is for format='avro', not {format!r}")
            self.reader_id: int | None = None
            self.reader = avro_writer(reader if isinstance(reader, str) else json.dumps(reader))
        else:
            latest = self._latest()
            self.reader_id = latest.schema_id
            self.reader = self._build(latest.schema)
        self.schema = self.reader.schema

    def _latest(self) -> Any:
        from confluent_kafka.schema_registry.error import SchemaRegistryError

        try:
            return self.client.get_latest_version(self.subject)
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404:
                raise ConfigError(
                    f"subject {self.subject!r} has no schema in the registry at "
                    f"{redact_registry(self.registry)['url']}: produce with a registry "
                    "serializer first"
                    + (", or pass schema= (an Avro reader schema)" if self.format == "avro" else "")
                ) from None
            raise SourceError(f"Schema Registry: {exc}") from None
        except Exception as exc:  # unreachable, refused: name the registry, not its secrets
            raise SourceError(
                f"Schema Registry at {redact_registry(self.registry)['url']}: {exc}"
            ) from None

    def decode(self, values: list[bytes], on_error: ErrorSink) -> tuple[pl.DataFrame, list[int]]:
        """Rows (in :attr:`schema`, which may have grown) of the values that decode, and the
        index of each row's value."""
        ids, bodies = split_framed(values)
        for i in np.flatnonzero(ids < 0).tolist():
            on_error(i, values[i], _not_framed(values[i]))
        frames: list[pl.DataFrame] = []
        index: list[np.ndarray] = []
        for schema_id in np.unique(ids[ids >= 0]).tolist():
            at = np.flatnonzero(ids == schema_id)
            writer = self._writer(schema_id)
            if isinstance(writer, str):
                for i in at.tolist():
                    on_error(i, values[i], writer)
                continue

            def report(
                j: int, doc: bytes, reason: str, at: np.ndarray = at, schema_id: int = schema_id
            ) -> None:
                on_error(int(at[j]), values[int(at[j])], f"schema id {schema_id}: {reason}")

            mine = bodies if len(at) == len(bodies) else [bodies[i] for i in at.tolist()]
            df, kept = writer.decode(mine, report)
            frames.append(df)
            index.append(at[np.asarray(kept, dtype=np.int64)])
        if not frames:
            return self.schema.to_frame(), []
        # the schema may have grown after an earlier id's frame: conform them all at the end
        rows = pl.concat([conform(f, self.schema) for f in frames])
        order = np.concatenate(index)
        if len(frames) > 1:
            sort = np.argsort(order, kind="stable")
            rows, order = rows[sort], order[sort]
        return rows, order.tolist()

    def _writer(self, schema_id: int) -> Writer | str:
        """The writer of ``schema_id`` (fetched once), or why its values are errors."""
        with self._lock:
            found = self._writers.get(schema_id)
            if found is None:
                found = self._writers[schema_id] = self._resolve(schema_id)
            return found

    def _resolve(self, schema_id: int) -> Writer | str:
        from confluent_kafka.schema_registry.error import SchemaRegistryError

        try:
            schema = self.client.get_schema(schema_id)
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404:
                return f"schema id {schema_id} is not in the Schema Registry"
            raise SourceError(f"Schema Registry, schema id {schema_id}: {exc}") from None
        want = SCHEMA_TYPES[self.format]
        if (schema.schema_type or "AVRO") != want:
            return f"schema id {schema_id} is a {schema.schema_type} schema, not {want}"
        try:
            writer = self._build(schema)
        except ConfigError as exc:
            return f"schema id {schema_id}: {exc}"
        problem = incompatibility(writer, self.reader)
        if problem is not None:
            return f"schema id {schema_id} is incompatible with the reader schema: {problem}"
        if self.reader_id is not None and schema_id > self.reader_id:  # a newer version
            added = {c: t for c, t in writer.schema.items() if c not in self.schema}
            if added:
                self.schema = pl.Schema({**self.schema, **added})
        return writer

    def _build(self, schema: Any) -> Writer:
        if self.format == "avro":
            return avro_writer(schema.schema_str)
        if self.format == "jsonschema":
            return json_writer(schema.schema_str)
        from streamnb.io.codecs.protobuf import protobuf_writer

        return protobuf_writer(schema, self.client)


def _not_framed(value: bytes | None) -> str:
    if not value:
        return "empty message (not a Schema Registry framed value)"
    if len(value) < 5:
        return f"{len(value)} bytes: too short for a Schema Registry framed value"
    return f"not a Schema Registry framed value (magic byte {value[0]}, not 0)"


# -- resolution to the reader schema ----------------------------------------------------------
_PROMOTIONS = {
    (pl.Int32, pl.Int64),
    (pl.Int32, pl.Float32),
    (pl.Int32, pl.Float64),
    (pl.Int64, pl.Float32),
    (pl.Int64, pl.Float64),
    (pl.Float32, pl.Float64),
    (pl.String, pl.Binary),
    (pl.Binary, pl.String),
}
"""Avro's type promotions (what a reader may read a writer's value as)."""


def incompatibility(writer: Writer, reader: Writer) -> str | None:
    """Why values of ``writer`` cannot be read as ``reader``'s columns (None: they can): a
    field the reader requires (no default) that the writer lacks, or a type that does not
    promote."""
    for name, dtype in reader.schema.items():
        if name not in writer.schema:
            if name in reader.required:
                return f"field {name!r} is missing and the reader schema has no default for it"
            continue
        problem = _type_problem(writer.schema[name], dtype)
        if problem is not None:
            return f"field {name!r}: {problem}"
    return None


def _type_problem(w: PolarsDataType, r: PolarsDataType) -> str | None:
    if w == r or (w.base_type(), r.base_type()) in _PROMOTIONS:
        return None
    if isinstance(w, pl.Struct) and isinstance(r, pl.Struct):
        have = {f.name: f.dtype for f in w.fields}
        for f in r.fields:
            if f.name in have:
                problem = _type_problem(have[f.name], f.dtype)
                if problem is not None:
                    return f"{f.name}: {problem}"
        return None
    if isinstance(w, pl.List) and isinstance(r, pl.List):
        return _type_problem(w.inner, r.inner)
    if (isinstance(w, pl.Decimal) and isinstance(r, pl.Decimal)) or (
        isinstance(w, pl.Datetime) and isinstance(r, pl.Datetime)
    ):
        return None
    return f"{w} in the writer schema cannot be read as {r}"


def conform(df: pl.DataFrame, schema: pl.Schema) -> pl.DataFrame:
    """``df`` (a writer's columns) as ``schema``'s columns: cast, missing ones null, others
    dropped (only called once :func:`incompatibility` found nothing)."""
    if df.schema == schema:
        return df
    return df.select(
        _as(pl.col(c), df.schema[c], t).alias(c) if c in df.schema else pl.lit(None, t).alias(c)
        for c, t in schema.items()
    )


def _as(expr: pl.Expr, w: PolarsDataType, r: PolarsDataType) -> pl.Expr:
    if w == r:
        return expr
    if isinstance(w, pl.Struct) and isinstance(r, pl.Struct):
        have = {f.name: f.dtype for f in w.fields}
        fields = [
            _as(expr.struct.field(f.name), have[f.name], f.dtype).alias(f.name)
            if f.name in have
            else pl.lit(None, f.dtype).alias(f.name)
            for f in r.fields
        ]
        return pl.when(expr.is_null()).then(pl.lit(None, r)).otherwise(pl.struct(fields))
    if isinstance(w, pl.List) and isinstance(r, pl.List):
        return expr.list.eval(_as(pl.element(), w.inner, r.inner))
    return expr.cast(r)


# -- Avro -------------------------------------------------------------------------------------
def avro_writer(schema_str: str) -> Writer:
    """An Avro schema as a :class:`Writer`: values decoded as one Avro block by polars, or
    per record by fastavro when the schema has maps (polars cannot read them) or the block
    does not decode (to find the bad records)."""
    record = json.loads(schema_str)
    parsed = avro.parse_schema(record)
    schema = avro.polars_schema(parsed)
    required = frozenset(f["name"] for f in record["fields"] if "default" not in f)

    def per_record(bodies: list[bytes], on_error: ErrorSink) -> tuple[pl.DataFrame, list[int]]:
        return avro.decode(bodies, parsed, schema, on_error)

    if avro.has_maps(record):
        return Writer(schema, per_record, required)
    header = _container_header(json.dumps(_inline(record, {}, set())))
    sentinel = _encode(parsed, _sentinel(record, {}))
    try:
        expected = _read_block(header, [sentinel], schema)
    except (Exception, pl.exceptions.PanicException):  # a schema polars cannot read
        return Writer(schema, per_record, required)

    def block(bodies: list[bytes], on_error: ErrorSink) -> tuple[pl.DataFrame, list[int]]:
        if all(bodies):
            try:
                df = _read_block(header, [*bodies, sentinel], schema)
            except (Exception, pl.exceptions.PanicException):  # polars panics on some bytes
                df = None
            # a record with bytes left over (or missing) shifts every later one: then the
            # last record read is not the sentinel, and the batch goes record by record
            if df is not None and df.tail(1).equals(expected):
                return df.head(len(bodies)), list(range(len(bodies)))
        return per_record(bodies, on_error)

    return Writer(schema, block, required)


def _read_block(header: bytes, bodies: list[bytes], schema: pl.Schema) -> pl.DataFrame:
    df = pl.read_avro(io.BytesIO(_container(header, bodies)))
    return df.cast(dict(schema))  # type: ignore[arg-type]  # enums: polars reads Categorical


def _encode(parsed: Any, value: Any) -> bytes:
    import fastavro

    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, parsed, value)
    return buffer.getvalue()


_SENTINELS: dict[str, Any] = {
    "null": None,
    "boolean": True,
    "int": -1_234_567,
    "long": -1_234_567_890_123,
    "float": -0.375,
    "double": -1.2345e-7,
    "string": "\x00streamnb sentinel",
    "bytes": b"\x00streamnb\xff",
}


def _sentinel(node: Any, names: dict[str, Any]) -> Any:
    """A distinctive value of an Avro schema, appended to every block: a record that
    shifted the ones after it is found by the last one read not being this."""
    if isinstance(node, list):
        return _sentinel(next((t for t in node if t != "null"), "null"), names)
    if isinstance(node, str):
        return _SENTINELS[node] if node in _SENTINELS else _sentinel(names[node], names)
    kind, logical = node.get("type"), node.get("logicalType")
    if kind in ("record", "enum", "fixed") and "name" in node:
        names[node["name"]] = names[node["name"].split(".")[-1]] = node
        if node.get("namespace"):
            names[f"{node['namespace']}.{node['name']}"] = node
    if logical == "decimal":
        from decimal import Decimal

        return Decimal(-12345).scaleb(-node.get("scale", 0))
    if logical == "uuid":
        return "00000000-0000-4000-8000-00000000a5a5"
    if kind == "record":
        return {f["name"]: _sentinel(f["type"], names) for f in node["fields"]}
    if kind == "enum":
        return node["symbols"][-1]
    if kind == "fixed":
        return b"\xa5" * node["size"]
    if kind == "array":
        return [_sentinel(node["items"], names)]
    return _sentinel(kind, names)  # a primitive, with or without a logical type


def _inline(node: Any, defs: dict[str, Any], seen: set[str], namespace: str = "") -> Any:
    """An Avro schema with every named type written out where it is used (polars' reader
    does not resolve references to named types); a repeated definition is renamed, which
    changes nothing in the binary encoding. Fields keep only their name and type."""
    if isinstance(node, list):
        return [_inline(n, defs, seen, namespace) for n in node]
    if isinstance(node, str):
        if node not in defs:
            return node
        node = defs[node]
    if not isinstance(node, Mapping):
        return node
    out = dict(node)
    if out.get("type") in ("record", "enum", "fixed") and "name" in out:
        namespace = out.get("namespace", namespace)
        full = out["name"] if "." in out["name"] else f"{namespace}.{out['name']}".lstrip(".")
        defs[full] = defs[full.split(".")[-1]] = node
        if full in seen:
            out["name"] = f"{out['name'].split('.')[-1]}_{len(seen)}"
            out.pop("namespace", None)
        seen.add(out["name"] if out["name"] != node["name"] else full)
    if out.get("type") == "record":  # defaults and docs do not matter to the writer's own
        out["fields"] = [  # schema, and polars' parser refuses some (a double's 0.0)
            {"name": f["name"], "type": _inline(f["type"], defs, seen, namespace)}
            for f in out["fields"]
        ]
    elif out.get("type") in ("array", "map"):
        key = "items" if out["type"] == "array" else "values"
        out[key] = _inline(out[key], defs, seen, namespace)
    return out


def zigzag(n: int) -> bytes:
    """``n`` as Avro's (and Protobuf's message indexes') zigzag varint."""
    n = (n << 1) ^ (n >> 63)
    out = bytearray()
    while n & ~0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


SYNC = os.urandom(16)


def _container_header(schema_json: str) -> bytes:
    """The head of an Avro object container file holding values of ``schema_json``."""

    def text(b: bytes) -> bytes:
        return zigzag(len(b)) + b

    meta = zigzag(2) + text(b"avro.schema") + text(schema_json.encode())
    meta += text(b"avro.codec") + text(b"null") + zigzag(0)
    return b"Obj\x01" + meta + SYNC


def _container(header: bytes, bodies: list[bytes]) -> bytes:
    """Schemaless Avro bodies as one block of an object container file (what polars reads)."""
    data = b"".join(bodies)
    return header + zigzag(len(bodies)) + zigzag(len(data)) + data + SYNC


# -- JSON Schema ------------------------------------------------------------------------------
def json_writer(schema_str: str) -> Writer:
    """A JSON Schema (an object's properties) as a :class:`Writer`; values decoded as one
    batch of JSON lines. Values are not validated against the JSON Schema (only their
    columns' types are checked, as for ``format="json"``)."""
    document = json.loads(schema_str)
    if document.get("type") != "object" or "properties" not in document:
        raise ConfigError("a JSON Schema of an object with properties is needed")
    schema = pl.Schema(
        {name: _json_dtype(spec, name) for name, spec in document["properties"].items()}
    )

    def batch(bodies: list[bytes], on_error: ErrorSink) -> tuple[pl.DataFrame, list[int]]:
        return decode_ndjson(bodies, schema, on_error)

    return Writer(schema, batch, frozenset(document.get("required", ())))


_JSON_TYPES: dict[str, pl.DataType] = {
    "integer": pl.Int64(),
    "number": pl.Float64(),
    "string": pl.String(),
    "boolean": pl.Boolean(),
}


def _json_dtype(spec: Any, name: str) -> pl.DataType:
    alternatives = spec.get("oneOf", spec.get("anyOf")) if isinstance(spec, Mapping) else None
    if isinstance(alternatives, list):  # [{"type": "null"}, T] (what to_kafka writes): T
        kinds = [
            a for a in alternatives if not (isinstance(a, Mapping) and a.get("type") == "null")
        ]
        if len(kinds) != 1:
            raise ConfigError(f"JSON Schema property {name!r}: only unions with null are supported")
        return _json_dtype(kinds[0], name)
    kind = spec.get("type") if isinstance(spec, Mapping) else None
    if isinstance(kind, list):  # ["null", T]: a nullable T
        kinds = [k for k in kind if k != "null"]
        if len(kinds) != 1:
            raise ConfigError(f"JSON Schema property {name!r}: only unions with null are supported")
        return _json_dtype({**spec, "type": kinds[0]}, name)
    if kind == "array":
        return pl.List(_json_dtype(spec.get("items", {}), name))
    if kind == "object":
        props = spec.get("properties", {})
        return pl.Struct({k: _json_dtype(v, k) for k, v in props.items()})
    if kind in _JSON_TYPES:
        return _JSON_TYPES[kind]
    raise ConfigError(f"JSON Schema property {name!r}: {spec!r} is not supported")
