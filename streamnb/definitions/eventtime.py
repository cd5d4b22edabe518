"""Event time: the column, its unit, and how out of order it may be.

Event-time columns are ``pl.Datetime`` (any unit, any time zone) or integers holding epoch
milliseconds. Internally every time is an Int64 in the column's own unit (so nanosecond
timestamps keep their precision) and durations are converted into that unit.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

import polars as pl

from streamnb.exceptions import ConfigError

_UNITS_PER_MS = {"ms": 1, "us": 1_000, "ns": 1_000_000}


def units_per_ms(column: str, dtype: pl.DataType) -> int:
    """How many of the column's time units make a millisecond; rejects non-time types."""
    if isinstance(dtype, pl.Datetime):
        return _UNITS_PER_MS[dtype.time_unit or "us"]
    if dtype.is_integer():
        return 1
    raise ConfigError(
        f"event-time column {column!r} has type {dtype}; expected pl.Datetime or integer "
        "epoch milliseconds (convert it first, e.g. with .str.to_datetime())"
    )


@dataclass(frozen=True)
class EventTime:
    """Where a stream's event time lives and how out of order it may be."""

    column: str
    delay_ms: int
    dtype: pl.DataType

    @property
    def per_ms(self) -> int:
        return units_per_ms(self.column, self.dtype)

    @property
    def delay(self) -> int:
        """The delay in the column's unit."""
        return self.delay_ms * self.per_ms

    def values(self, df: pl.DataFrame) -> pl.Series:
        """The event times of ``df`` as Int64 in the column's unit."""
        return df.get_column(self.column).cast(pl.Int64)

    def to_dtype(self, expr: pl.Expr) -> pl.Expr:
        """Turn Int64 times back into the column's type (for ``window_start`` and friends)."""
        return expr.cast(self.dtype) if isinstance(self.dtype, pl.Datetime) else expr

    def as_time(self, value: int) -> datetime | int:
        """An Int64 time (a watermark) as the column shows it: a UTC ``datetime`` for
        ``pl.Datetime`` columns, epoch milliseconds for integer ones."""
        if isinstance(self.dtype, pl.Datetime):
            return datetime.fromtimestamp(value / self.per_ms / 1000, tz=timezone.utc)
        return value
