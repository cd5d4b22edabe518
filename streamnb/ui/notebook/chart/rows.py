"""Result rows as JSON for the chart's views: :func:`json_rows`.

This module owns the conversion of a polars frame into JSON-safe dicts: temporal columns
become epoch milliseconds, NaN and infinities become null, categoricals strings, binaries hex;
nested values (lists, structs) get a Python pass that applies the same rules.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import date, datetime, timedelta, timezone
from datetime import time as dt_time
from decimal import Decimal
from typing import Any

import polars as pl

__all__ = ["json_rows"]

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _json_expr(name: str, dtype: pl.DataType) -> tuple[pl.Expr, bool]:
    """A JSON-safe version of a column, and whether it is nested (needs a Python pass)."""
    col = pl.col(name)
    if isinstance(dtype, pl.Datetime):
        return col.dt.epoch("ms"), False
    if isinstance(dtype, pl.Date):
        return col.cast(pl.Datetime("ms")).dt.epoch("ms"), False
    if isinstance(dtype, pl.Duration):
        return col.dt.total_milliseconds(), False
    if isinstance(dtype, pl.Time):
        return col.cast(pl.String), False
    if isinstance(dtype, pl.Decimal):
        dtype, col = pl.Float64(), col.cast(pl.Float64)
    if dtype.is_float():
        return pl.when(col.is_finite()).then(col).otherwise(None).alias(name), False
    if isinstance(dtype, (pl.Categorical, pl.Enum)):
        return col.cast(pl.String), False
    if isinstance(dtype, pl.Binary):
        return col.bin.encode("hex"), False
    if isinstance(dtype, pl.Object):
        return col.map_elements(str, return_dtype=pl.String), False
    return col, dtype.is_nested()


def _clean(value: Any) -> Any:
    """Make one (nested) Python value JSON-safe: temporals as epoch ms, no NaN."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, datetime):
        moment = value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)
        return (moment - _EPOCH) // timedelta(milliseconds=1)
    if isinstance(value, date):
        return (value - date(1970, 1, 1)).days * 86_400_000
    if isinstance(value, timedelta):
        return value // timedelta(milliseconds=1)
    if isinstance(value, dt_time):
        return value.isoformat()
    if isinstance(value, Decimal):
        return _clean(float(value))
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return str(value)


def json_rows(frame: pl.DataFrame) -> list[dict[str, Any]]:
    """The rows of ``frame`` as JSON-safe dicts; temporal columns as epoch milliseconds."""
    if frame.width == 0:
        return [{} for _ in range(frame.height)]
    exprs, nested = [], []
    for name, dtype in frame.schema.items():
        expr, is_nested = _json_expr(name, dtype)
        exprs.append(expr.alias(name))
        if is_nested:
            nested.append(name)
    rows = frame.select(exprs).to_dicts()
    if nested:
        for row in rows:
            for name in nested:
                row[name] = _clean(row[name])
    return rows
