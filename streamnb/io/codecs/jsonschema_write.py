"""Writing JSON Schema values: the JSON Schema of a stream's columns.

The values themselves are the JSON lines ``format="json"`` writes (polars'
``struct.json_encode``, one call per batch), so the schema describes what that encoder
emits: datetimes and dates as ISO text, decimals as text, every column possibly null.
"""

from __future__ import annotations

from typing import Any, cast

import polars as pl

from streamnb.exceptions import ConfigError

__all__ = ["schema_for"]

_JSON_OF: dict[type[pl.DataType], dict[str, Any]] = {
    pl.Boolean: {"type": "boolean"},
    **{
        t: {"type": "integer"}
        for t in (pl.Int8, pl.Int16, pl.Int32, pl.Int64, pl.UInt8, pl.UInt16, pl.UInt32, pl.UInt64)
    },
    pl.Float32: {"type": "number"},
    pl.Float64: {"type": "number"},
    pl.String: {"type": "string"},
    pl.Categorical: {"type": "string"},
    pl.Decimal: {"type": "string"},
    pl.Datetime: {"type": "string", "format": "date-time"},
    pl.Date: {"type": "string", "format": "date"},
    pl.Time: {"type": "string", "format": "time"},
    pl.Null: {"type": "null"},
}


def schema_for(columns: pl.Schema, title: str) -> dict[str, Any]:
    """A draft-07 object schema with a property per column (each may be null); ``title``
    is the record name the ``record`` subject strategy registers it under."""
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": title,
        **_object(columns),
    }


def _object(columns: pl.Schema) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {c: _nullable(t, c) for c, t in columns.items()},
    }


def _nullable(dtype: pl.DataType, column: str) -> dict[str, Any]:
    schema = _json_type(dtype, column)
    if schema.get("type") == "null":
        return schema
    return {"oneOf": [{"type": "null"}, schema]}


def _json_type(dtype: pl.DataType, column: str) -> dict[str, Any]:
    if type(dtype) in _JSON_OF:
        return dict(_JSON_OF[type(dtype)])
    if isinstance(dtype, pl.Enum):
        return {"type": "string", "enum": list(dtype.categories)}
    if isinstance(dtype, (pl.List, pl.Array)):
        return {"type": "array", "items": _nullable(cast(pl.DataType, dtype.inner), column)}
    if isinstance(dtype, pl.Struct):
        return _object(pl.Schema(dtype.to_schema()))
    raise ConfigError(
        f"column {column!r}: polars type {dtype} has no JSON form; cast it, or pass schema="
    )
