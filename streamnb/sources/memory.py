"""``sn.from_records``: a bounded stream replayed from Python data in the given order."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import polars as pl

from streamnb.engine.core import Context, error_from_python
from streamnb.engine.eventtime import EventTime, split_valid, units_per_ms
from streamnb.exceptions import ConfigError
from streamnb.sources.base import Reader, Source

_INFER_ROWS = 100


POSITION = "__sn_pos"


def dicts_to_frame(
    rows: list[Any], schema: pl.Schema, *, first_position: int, source: str, ctx: Context
) -> pl.DataFrame:
    """Build a frame from dicts, with each row's source position in ``POSITION``.

    A row that does not fit the schema goes to the errors. The whole batch is built in one
    call; only when that fails is it split in halves to find the offending rows (rare), so
    good data never pays for the error path.
    """
    try:
        df = pl.from_dicts(rows, schema=schema, strict=False)
        return df.with_columns(
            pl.int_range(first_position, first_position + df.height, dtype=pl.Int64).alias(POSITION)
        )
    except Exception as exc:  # polars raises several types for values that do not fit
        if len(rows) == 1:
            reason = _mismatch(rows[0], schema) or str(exc).splitlines()[0]
            ctx.error(error_from_python(source, first_position, reason, rows[0]))
            return schema.to_frame().with_columns(pl.lit(None, pl.Int64).alias(POSITION))
        half = len(rows) // 2
        left = dicts_to_frame(
            rows[:half], schema, first_position=first_position, source=source, ctx=ctx
        )
        right = dicts_to_frame(
            rows[half:], schema, first_position=first_position + half, source=source, ctx=ctx
        )
        return pl.concat([left, right])


def _mismatch(row: Any, schema: pl.Schema) -> str | None:
    """Why one record does not fit the schema, naming the column."""
    if not isinstance(row, Mapping):
        return f"record is not a mapping but {type(row).__name__}"
    for key, value in row.items():
        if key in schema:
            try:
                pl.from_dicts([{key: value}], schema={key: schema[key]}, strict=False)
            except Exception:
                return f"column {key!r}: value {value!r} ({type(value).__name__}) is not {schema[key]}"
    return None


def infer_schema(rows: list[Any]) -> pl.Schema:
    """Column types from sample dicts: each column takes the type of its first non-null value
    (ints widen to floats when floats appear); a later value of another type is an error
    record, not a reason to turn the whole column into strings."""
    sample: dict[str, Any] = {}
    for row in rows:
        if not isinstance(row, Mapping):
            continue
        for key, value in row.items():
            current = sample.get(key)
            if current is None or (type(current) is int and type(value) is float):
                sample[key] = value
    return pl.from_dicts([sample]).schema if sample else pl.Schema()


def check_timestamp(timestamp: str | None, schema: pl.Schema | None, what: str) -> EventTime | None:
    """Validate ``timestamp=`` against a known schema; the event time it defines."""
    if timestamp is None:
        return None
    if schema is None:
        return EventTime(timestamp, 0, pl.Int64())
    if timestamp not in schema:
        raise ConfigError(
            f"timestamp={timestamp!r}: {what} has no column {timestamp!r}; columns are "
            f"{list(schema.names())}"
        )
    dtype = schema[timestamp]
    units_per_ms(timestamp, dtype)
    return EventTime(timestamp, 0, dtype)


class RecordsSource(Source):
    """Replays dicts or DataFrames (a list, one DataFrame, or any iterable of either)."""

    def __init__(
        self,
        data: Any,
        *,
        timestamp: str | None,
        batch_size: int,
        schema: Mapping[str, pl.DataType] | None = None,
    ) -> None:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size={batch_size!r} must be a positive integer")
        self.name = "records"
        self.bounded = True
        self.batch_size = batch_size
        self._items, first = self._normalise(data)
        if schema is not None:
            self.schema: pl.Schema | None = pl.Schema(schema)
        elif isinstance(first, pl.DataFrame):
            self.schema = first.schema
        elif first:
            self.schema = infer_schema(first[:_INFER_ROWS])
        else:
            self.schema = pl.Schema()
        self.event_time = check_timestamp(timestamp, self.schema, "the data")

    @staticmethod
    def _normalise(data: Any) -> tuple[Iterable[Any], pl.DataFrame | list[Any]]:
        """The items to replay, and a first sample to learn the schema from."""
        if isinstance(data, pl.DataFrame):
            return [data], data
        if isinstance(data, list):
            if data and isinstance(data[0], pl.DataFrame):
                return data, data[0]
            return [data], data
        if isinstance(data, (str, bytes, Mapping)) or not isinstance(data, Iterable):
            raise ConfigError(
                f"from_records(data=...) needs a list of dicts, a pl.DataFrame or an iterable of "
                f"either; got {type(data).__name__}"
            )
        iterator = iter(data)
        head = list(itertools.islice(iterator, _INFER_ROWS))
        if head and isinstance(head[0], pl.DataFrame):
            return itertools.chain(head, iterator), head[0]
        # an iterable of dicts: replay in chunks, without materialising it
        return _chunks(itertools.chain(head, iterator)), head

    def open(self, ctx: Context) -> Reader:
        return _RecordsReader(self, ctx)


def _chunks(rows: Iterator[Any], size: int = 10_000) -> Iterator[list[Any]]:
    while chunk := list(itertools.islice(rows, size)):
        yield chunk


class _RecordsReader(Reader):
    def __init__(self, source: RecordsSource, ctx: Context) -> None:
        self.source = source
        self.ctx = ctx
        self.items = iter(source._items)
        self.current: pl.DataFrame | list[Any] = []
        self.offset = 0  # into ``current``
        self.position = 0  # records read so far

    def read(self, max_records: int, timeout: float) -> pl.DataFrame | None:
        limit = min(max_records, self.source.batch_size)
        while self.offset >= len(self.current):
            item = next(self.items, None)
            if item is None:
                self.done = True
                return None
            self.current, self.offset = item, 0
        chunk = self.current[self.offset : self.offset + limit]
        self.offset += len(chunk)
        first = self.position
        self.position += len(chunk)
        if isinstance(chunk, pl.DataFrame):
            df = chunk.with_columns(
                pl.int_range(first, first + chunk.height, dtype=pl.Int64).alias(POSITION)
            )
        else:
            assert self.source.schema is not None
            df = dicts_to_frame(
                chunk, self.source.schema, first_position=first, source="records", ctx=self.ctx
            )
        positions = df.get_column(POSITION)
        df = df.drop(POSITION)
        et = self.source.event_time
        if et is not None:
            df, errors = split_valid(df, et.column, source="records", positions=positions)
            if errors is not None:
                self.ctx.error(errors)
        return df
