"""Avro values (schemaless binary, with a schema given by the user) ⇄ polars rows.

Uses ``fastavro`` (``pip install 'streamnb[avro]'``). Avro has no columnar batch decoder in
Python, so each message is decoded by fastavro's C reader and the batch is then built in one
``pl.from_dicts`` call; a message that does not decode goes to the error side output.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any, cast

import polars as pl

from streamnb.exceptions import ConfigError
from streamnb.io._extras import require

_PRIMITIVES: dict[str, pl.DataType] = {
    "boolean": pl.Boolean(),
    "int": pl.Int32(),
    "long": pl.Int64(),
    "float": pl.Float32(),
    "double": pl.Float64(),
    "string": pl.String(),
    "bytes": pl.Binary(),
    "enum": pl.String(),
}
_LOGICAL: dict[str, pl.DataType] = {
    "timestamp-millis": pl.Datetime("ms", "UTC"),
    "timestamp-micros": pl.Datetime("us", "UTC"),
    "date": pl.Date(),
}


def _fastavro() -> ModuleType:
    """fastavro, or a ConfigError naming ``pip install 'streamnb[avro]'``."""
    return require("fastavro", "avro", feature="format='avro'")


def parse_schema(schema: Any) -> Any:
    """A fastavro parsed schema from a dict or its JSON text."""
    fastavro = _fastavro()
    if isinstance(schema, str):
        schema = json.loads(schema)
    if not isinstance(schema, Mapping) or schema.get("type") != "record":
        raise ConfigError("format='avro' needs schema= an Avro record schema (dict or JSON)")
    try:
        return fastavro.parse_schema(dict(schema))
    except Exception as exc:
        raise ConfigError(f"schema= is not a valid Avro schema: {exc}") from None


def polars_schema(avro: Mapping[str, Any]) -> pl.Schema:
    """The polars columns of an Avro record schema."""
    return pl.Schema({f["name"]: _dtype(f["type"], f["name"]) for f in avro["fields"]})


def _dtype(avro_type: Any, name: str) -> pl.DataType:
    if isinstance(avro_type, list):  # a union: ["null", T] is a nullable T
        kinds = [t for t in avro_type if t != "null"]
        if len(kinds) != 1:
            raise ConfigError(f"Avro field {name!r}: only unions with null are supported")
        return _dtype(kinds[0], name)
    if isinstance(avro_type, Mapping):
        logical = avro_type.get("logicalType")
        if logical in _LOGICAL:
            return _LOGICAL[logical]
        kind = avro_type.get("type")
        if kind == "record":
            return pl.Struct(polars_schema(avro_type))
        if kind == "array":
            return pl.List(_dtype(avro_type["items"], name))
        return _dtype(kind, name)
    key = avro_type.split(".")[-1] if isinstance(avro_type, str) else avro_type
    if key in _PRIMITIVES:
        return _PRIMITIVES[key]
    raise ConfigError(f"Avro field {name!r}: type {avro_type!r} is not supported")


def decode(
    values: list[bytes],
    parsed: Any,
    schema: pl.Schema,
    on_error: Callable[[int, bytes, str], None],
) -> tuple[pl.DataFrame, list[int]]:
    """Rows of the messages that decode, and the index of each row's message.

    Strict: a message must be exactly one record of the schema. Bytes left over after the
    record mean it was written with another schema (a string where a long is expected reads
    as a small number followed by the string's bytes), so the message is an error, never a
    wrong value.
    """
    schemaless_reader = _fastavro().schemaless_reader
    rows: list[Any] = []
    kept: list[int] = []
    for i, value in enumerate(values):
        if not value:
            on_error(i, value, "empty message")
            continue
        buffer = io.BytesIO(value)
        try:
            row = schemaless_reader(buffer, parsed, None)
        except Exception as exc:  # truncated or foreign bytes
            on_error(i, value, f"not Avro of the given schema: {exc!r}")
            continue
        left = len(value) - buffer.tell()
        if left:
            on_error(
                i,
                value,
                f"not Avro of the given schema: {left} bytes left over after the record "
                "(written with another schema?)",
            )
            continue
        rows.append(row)
        kept.append(i)
    frame = pl.from_dicts(rows, schema=schema) if rows else schema.to_frame()
    return frame, kept


def encode(
    rows: pl.DataFrame, parsed: Any, *, prefix: bytes = b""
) -> tuple[list[bytes], list[tuple[int, str]]]:
    """Each row as ``prefix`` (a registry's frame header, or nothing) and its schemaless Avro
    bytes; a row that does not fit the schema is listed with its reason (index, reason) and
    its place in the values holds ``b""``.

    The rows are written one after another into one buffer (fastavro's C writer, one call
    per row: Avro has no batch writer in Python), then cut at the recorded ends."""
    schemaless_writer = _fastavro().schemaless_writer
    buffer = io.BytesIO()
    ends: list[int] = []
    failed: list[tuple[int, str]] = []
    for i, row in enumerate(rows.iter_rows(named=True)):
        start = buffer.tell()
        try:
            schemaless_writer(buffer, parsed, row)
        except Exception as exc:  # a null where the schema has none, a wrong type
            buffer.seek(start)
            buffer.truncate()
            failed.append((i, f"does not fit the Avro schema: {exc!r}"))
        ends.append(buffer.tell())
    data = buffer.getvalue()
    starts = [0, *ends[:-1]]
    return [prefix + data[a:b] for a, b in zip(starts, ends, strict=True)], failed


# -- writing framed values: an Avro schema for a stream's columns ----------------------------

_AVRO_OF: dict[type[pl.DataType], str] = {
    pl.Boolean: "boolean",
    pl.Int8: "int",
    pl.Int16: "int",
    pl.Int32: "int",
    pl.UInt8: "int",
    pl.UInt16: "int",
    pl.Int64: "long",
    pl.UInt32: "long",
    pl.UInt64: "long",
    pl.Float32: "float",
    pl.Float64: "double",
    pl.String: "string",
    pl.Categorical: "string",
    pl.Binary: "bytes",
}
_AVRO_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def schema_for(columns: pl.Schema, name: str, namespace: str = "streamnb") -> dict[str, Any]:
    """The Avro record schema of ``columns``: every field nullable (``["null", T]``, default
    null), as any polars column may hold nulls; structs become records named after their
    path, lists arrays, datetimes timestamps, decimals bytes+decimal, enums enums."""
    return {"type": "record", "name": name, "namespace": namespace, **_record(columns, name)}


def _record(columns: pl.Schema, path: str) -> dict[str, Any]:
    return {
        "fields": [
            {"name": column, "type": _nullable(dtype, f"{path}_{column}"), "default": None}
            for column, dtype in columns.items()
        ]
    }


def _nullable(dtype: pl.DataType, path: str) -> Any:
    avro_type = _avro_type(dtype, path)
    return "null" if avro_type == "null" else ["null", avro_type]


def _avro_type(dtype: pl.DataType, path: str) -> Any:
    if type(dtype) in _AVRO_OF:
        return _AVRO_OF[type(dtype)]
    if isinstance(dtype, pl.Null):
        return "null"
    if isinstance(dtype, pl.Datetime):
        logical = "timestamp-millis" if dtype.time_unit == "ms" else "timestamp-micros"
        return {"type": "long", "logicalType": logical}
    if isinstance(dtype, pl.Date):
        return {"type": "int", "logicalType": "date"}
    if isinstance(dtype, pl.Time):
        return {"type": "long", "logicalType": "time-micros"}
    if isinstance(dtype, pl.Decimal):
        precision = dtype.precision or 38
        return {
            "type": "bytes",
            "logicalType": "decimal",
            "precision": precision,
            "scale": dtype.scale,
        }
    if isinstance(dtype, pl.Enum):
        symbols = list(dtype.categories)
        if all(_AVRO_NAME.fullmatch(s) for s in symbols):
            return {"type": "enum", "name": path, "symbols": symbols}
        return "string"  # Avro enum symbols are names; these are not
    if isinstance(dtype, (pl.List, pl.Array)):
        return {"type": "array", "items": _nullable(cast(pl.DataType, dtype.inner), f"{path}_item")}
    if isinstance(dtype, pl.Struct):
        return {"type": "record", "name": path, **_record(pl.Schema(dtype.to_schema()), path)}
    raise ConfigError(
        f"column {path!r}: polars type {dtype} has no Avro form; cast it, or pass schema="
    )
