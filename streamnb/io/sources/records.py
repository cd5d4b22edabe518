"""``sn.from_records``: a bounded stream replayed from Python data in the given order."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from typing import Any

import polars as pl

from streamnb.columns import PARTITION, POSITION, ROW_INDEX
from streamnb.definitions.eventtime import EventTime, units_per_ms
from streamnb.engine.core import Context, error_from_python
from streamnb.engine.eventtime import split_valid
from streamnb.engine.source import PartOwner, Reader, Source, refuse_owner
from streamnb.exceptions import ConfigError

_INFER_ROWS = 100
_STRING_TYPES = frozenset({str, type(None)})


def dicts_to_frame(
    rows: list[Any], schema: pl.Schema, *, first_position: int, source: str, ctx: Context
) -> pl.DataFrame:
    """Build a frame from dicts, with each row's source position in ``POSITION``.

    Values must have the schema's types (an int where a string is expected is an error, not
    silently converted). The batch is built in one vectorised call and its inferred types
    compared with the schema; only a batch that does not fit is checked row by row (rare),
    and its offending rows go to the errors.
    """
    try:
        df = pl.from_dicts(rows, infer_schema_length=None)
        fits = all(_frame_fits(df.schema.get(c), t) for c, t in schema.items())
        # polars turns numbers mixed into a string column into strings: check those columns
        strings = [c for c, t in schema.items() if t == pl.String]
        if fits and strings:
            fits = all(type(row.get(c)) in _STRING_TYPES for row in rows for c in strings)
    except Exception:  # polars raises several types for values it cannot combine
        fits = False
    if fits:
        return df.select(
            *(
                (pl.col(c) if c in df.columns else pl.lit(None)).cast(t).alias(c)
                for c, t in schema.items()
            ),
            pl.int_range(first_position, first_position + df.height, dtype=pl.Int64).alias(
                POSITION
            ),
        )
    good, positions = [], []
    for position, row in enumerate(rows, start=first_position):
        reason = _mismatch(row, schema)
        if reason is None:
            good.append(row)
            positions.append(position)
        else:
            ctx.reject(error_from_python(source, position, reason, row))
    frame = pl.from_dicts(good, schema=schema) if good else schema.to_frame()
    return frame.with_columns(pl.Series(POSITION, positions, dtype=pl.Int64))


def _frame_fits(inferred: pl.DataType | None, target: pl.DataType) -> bool:
    """Whether a column inferred from the data can take the schema's type losslessly."""
    if inferred is None or inferred in (pl.Null, target):
        return True
    if inferred.is_integer() and target.is_float():
        return True
    return isinstance(inferred, pl.Datetime) and isinstance(target, pl.Datetime)


def _value_fits(value: Any, dtype: pl.DataType) -> bool:
    if value is None:
        return True
    if isinstance(value, bool):
        return dtype == pl.Boolean
    if dtype.is_integer():
        return isinstance(value, int)
    if dtype.is_float():
        return isinstance(value, (int, float))
    if dtype == pl.String:
        return isinstance(value, str)
    if isinstance(dtype, pl.Datetime):
        return isinstance(value, datetime)
    try:
        pl.from_dicts([{"v": value}], schema={"v": dtype}, strict=True)
    except Exception:
        return False
    return True


def conform(
    df: pl.DataFrame, schema: pl.Schema, *, first_position: int, source: str, ctx: Context
) -> pl.DataFrame:
    """``df`` in the stream's schema, with ``POSITION``; rows whose values do not convert
    go to the errors, naming the column (missing columns become null, extras are dropped)."""
    positions = pl.int_range(first_position, first_position + df.height, dtype=pl.Int64)
    if df.schema == schema:
        return df.with_columns(positions.alias(POSITION))
    columns = [
        pl.col(c) if c in df.columns else pl.lit(None, dtype).alias(c)
        for c, dtype in schema.items()
    ]
    raw = df.select(columns).with_columns(positions.alias(POSITION))
    cast = raw.with_columns(pl.col(c).cast(t, strict=False) for c, t in schema.items())
    lost = [c for c in schema if raw[c].dtype != schema[c]]
    bad = pl.any_horizontal(
        [cast[c].is_null() & raw[c].is_not_null() for c in lost] or [pl.lit(False)]
    )
    if not cast.select(bad.any()).item():
        return cast
    for row_index in cast.with_row_index(ROW_INDEX).filter(bad)[ROW_INDEX]:
        row = raw.row(row_index, named=True)
        column = next(c for c in lost if row[c] is not None and cast[c][row_index] is None)
        ctx.reject(
            error_from_python(
                source,
                row[POSITION],
                f"column {column!r}: value {row[column]!r} is not {schema[column]}",
                {k: v for k, v in row.items() if k != POSITION},
            )
        )
    return cast.filter(~bad)


def _mismatch(row: Any, schema: pl.Schema) -> str | None:
    """Why one record does not fit the schema, naming the column; None if it fits."""
    if not isinstance(row, Mapping):
        return f"record is not a mapping but {type(row).__name__}"
    for key, value in row.items():
        if key in schema and not _value_fits(value, schema[key]):
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
        partition: str | None = None,
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
        if partition is not None and partition not in self.schema:
            raise ConfigError(
                f"partition={partition!r}: the data has no column {partition!r}; columns are "
                f"{list(self.schema.names())}"
            )
        self.partition = partition

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

    def partition_scopes(self) -> frozenset[tuple[object, ...]]:
        return frozenset({("records", id(self))}) if self.partition is not None else frozenset()

    def open(self, ctx: Context, *, owner: PartOwner | None = None) -> Reader:
        refuse_owner(self, owner)
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
        if source.partition is not None and isinstance(source._items, list):
            # materialised data: every partition is known (and holds the watermark) up front
            for value in _distinct(source._items, source.partition):
                ctx.partitions.assigned.add(ctx.partitions.id_for("records", id(source), value))

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
            assert self.source.schema is not None
            df = conform(
                chunk, self.source.schema, first_position=first, source="records", ctx=self.ctx
            )
        else:
            assert self.source.schema is not None
            df = dicts_to_frame(
                chunk, self.source.schema, first_position=first, source="records", ctx=self.ctx
            )
        positions = df.get_column(POSITION)
        df = df.drop(POSITION)
        if self.source.partition is not None:
            df = self._tag_partitions(df, self.source.partition)
        et = self.source.event_time
        if et is not None:
            df, errors = split_valid(df, et.column, source="records", positions=positions)
            if errors is not None:
                self.ctx.reject(errors)
        return df

    def _tag_partitions(self, df: pl.DataFrame, column: str) -> pl.DataFrame:
        """Add the hidden partition id of each record (one id per distinct value)."""
        partitions = self.ctx.partitions
        values = df.get_column(column).unique()
        ids = [partitions.id_for("records", id(self.source), v) for v in values.to_list()]
        partitions.assigned.update(ids)
        mapping = pl.DataFrame([values, pl.Series(PARTITION, ids, dtype=pl.Int64)])
        return df.join(mapping, on=column, how="left", nulls_equal=True, maintain_order="left")


def _distinct(items: list[Any], column: str) -> list[Any]:
    values: set[Any] = set()
    for item in items:
        if isinstance(item, pl.DataFrame):
            values.update(item.get_column(column).unique().to_list())
        else:
            values.update(row.get(column) for row in item if isinstance(row, Mapping))
    return list(values)
