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
from typing import TYPE_CHECKING, Any, cast

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
}
_LOGICAL: dict[str, pl.DataType] = {
    "timestamp-millis": pl.Datetime("ms", "UTC"),
    "timestamp-micros": pl.Datetime("us", "UTC"),
    "date": pl.Date(),
}

if TYPE_CHECKING:
    from polars._typing import PolarsDataType


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
    """The polars columns of an Avro record schema.

    Records become Struct, arrays List, maps ``List(Struct{key, value})`` (polars has no map
    type), unions with null nullable columns, enums String (a String column stays the same
    type when a later schema version adds a symbol; a polars Enum would not), decimals
    Decimal, ``timestamp-millis``/``-micros`` Datetime UTC and ``date`` Date.
    """
    return _record_schema(avro, {})


def _record_schema(record: Mapping[str, Any], names: dict[str, Any]) -> pl.Schema:
    _name(record, names)
    return pl.Schema({f["name"]: _dtype(f["type"], f["name"], names) for f in record["fields"]})


def _name(named: Mapping[str, Any], names: dict[str, Any]) -> None:
    """Remember a named type under its full and its short name (later fields refer to it)."""
    if "name" in named:
        full = (
            named["name"]
            if "." in named["name"] or not named.get("namespace")
            else (f"{named['namespace']}.{named['name']}")
        )
        names[full] = names[full.split(".")[-1]] = named


def _dtype(avro_type: Any, name: str, names: dict[str, Any]) -> pl.DataType:
    if isinstance(avro_type, list):  # a union: ["null", T] is a nullable T
        kinds = [t for t in avro_type if t != "null"]
        if len(kinds) != 1:
            raise ConfigError(f"Avro field {name!r}: only unions with null are supported")
        return _dtype(kinds[0], name, names)
    if isinstance(avro_type, Mapping):
        logical = avro_type.get("logicalType")
        if logical in _LOGICAL:
            return _LOGICAL[logical]
        kind = avro_type.get("type")
        if logical == "decimal" and kind in ("bytes", "fixed"):
            _name(avro_type, names)
            return pl.Decimal(avro_type["precision"], avro_type.get("scale", 0))
        if kind == "record":
            return pl.Struct(_record_schema(avro_type, names))
        if kind == "array":
            return pl.List(_dtype(avro_type["items"], name, names))
        if kind == "map":
            value = _dtype(avro_type["values"], name, names)
            return pl.List(pl.Struct({"key": pl.String(), "value": value}))
        if kind in ("enum", "fixed"):
            _name(avro_type, names)
            return pl.String() if kind == "enum" else pl.Binary()
        return _dtype(kind, name, names)
    if isinstance(avro_type, str) and avro_type in names:  # a named type defined earlier
        return _dtype(names[avro_type], name, names)
    if avro_type in _PRIMITIVES:
        return _PRIMITIVES[avro_type]
    raise ConfigError(f"Avro field {name!r}: type {avro_type!r} is not supported")


def has_maps(avro: Any) -> bool:
    """Whether an Avro schema holds a map anywhere (fastavro's dicts then need
    :func:`rows_frame`'s conversion, and polars' Avro reader cannot read it)."""
    if isinstance(avro, Mapping):
        return avro.get("type") == "map" or any(has_maps(v) for v in avro.values())
    if isinstance(avro, list):
        return any(has_maps(v) for v in avro)
    return False


def rows_frame(rows: list[Any], schema: pl.Schema, maps: bool) -> pl.DataFrame:
    """fastavro's records as one frame; ``maps``: dicts of the map fields turned into
    ``[{key, value}, ...]`` lists first (the only per-record work besides fastavro's)."""
    if not rows:
        return schema.to_frame()
    if maps:
        rows = [_entries(row, pl.Struct(schema)) for row in rows]
    return pl.from_dicts(rows, schema=schema)


def _entries(value: Any, dtype: PolarsDataType) -> Any:
    if value is None:
        return None
    if isinstance(dtype, pl.Struct):
        return {f.name: _entries(value.get(f.name), f.dtype) for f in dtype.fields}
    if isinstance(dtype, pl.List):
        inner = dtype.inner
        if isinstance(value, Mapping):
            assert isinstance(inner, pl.Struct)
            item = inner.fields[1].dtype
            return [{"key": k, "value": _entries(v, item)} for k, v in value.items()]
        return [_entries(v, inner) for v in value]
    return value


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
    return rows_frame(rows, schema, has_maps(parsed)), kept


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
