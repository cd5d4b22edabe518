"""Stateless operators and the running (un-windowed) aggregate."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import ClassVar

import polars as pl

from streamnb.columns import DELETE, MARKER, ORDER, SEQ
from streamnb.definitions.aggregates import Aggregation
from streamnb.engine.core import Context, Delta, Operator, Versioned
from streamnb.engine.eventtime import split_valid

Frame = pl.DataFrame | pl.LazyFrame
Transform = Callable[[pl.DataFrame], pl.DataFrame]


class MapOperator(Operator):
    """Applies a per-record transformation to each batch.

    On a table (an upsert changelog) the delete keys pass through ``on_keys`` (identity, or
    the rename that the rows received); a filter on a table turns rows that no longer pass
    into deletes of their keys, as a Kafka Streams ``KTable.filter`` does.
    """

    def __init__(
        self,
        fn: Transform,
        *,
        on_keys: Transform | None = None,
        table_keys: Sequence[str] | None = None,
        predicate: pl.Expr | None = None,
    ) -> None:
        self.fn = fn
        self.on_keys = on_keys
        self.table_keys = list(table_keys) if table_keys else None
        self.predicate = predicate

    def process(self, delta: Delta) -> Delta:
        deletes = delta.deletes
        if deletes is not None and self.on_keys is not None:
            deletes = self.on_keys(deletes)
        if self.predicate is not None and self.table_keys:
            keep = delta.rows.select(self.predicate.fill_null(False)).to_series()
            order = [ORDER] if ORDER in delta.rows.columns else []  # a table's versions
            dropped = delta.rows.filter(~keep).select(*self.table_keys, *order)
            deletes = dropped if deletes is None else pl.concat([deletes, dropped])
            return Delta(delta.rows.filter(keep), deletes)
        return Delta(self.fn(delta.rows), deletes)


class EventTimeOperator(Operator):
    """``with_watermark``: records without an event time go to the error side output."""

    def __init__(self, column: str, ctx: Context) -> None:
        self.column = column
        self.ctx = ctx

    def process(self, delta: Delta) -> Delta:
        rows, errors = split_valid(delta.rows, self.column, source="with_watermark")
        if errors is not None:
            self.ctx.error(errors)
        return Delta(rows, delta.deletes)


class GroupByOperator(Operator, Versioned):
    """A running aggregate: one live row per key, emitted as an upsert when it changes.

    With ``versions`` (it makes the table of a stream–table join that takes merged batches)
    it emits the row of each record's key as it was right after that record.
    """

    state_fields: ClassVar[tuple[str, ...]] = ("state", "seq")

    def __init__(self, keys: Sequence[str], agg: Aggregation) -> None:
        self.keys = list(keys)
        self.agg = agg
        self.state: pl.DataFrame | None = None
        self.seq = 0

    def process(self, delta: Delta) -> Delta:
        rows = delta.rows
        if MARKER in rows.columns:  # a running aggregate needs no watermark
            rows = rows.filter(~pl.col(MARKER).fill_null(False)).drop(MARKER)
            if rows.height == 0:
                return Delta(pl.DataFrame())
        rows = rows.with_columns(pl.int_range(self.seq, self.seq + rows.height).alias(SEQ))
        self.seq += rows.height
        prepared = self.agg.prepare(rows, self.keys)
        versions = None
        if self.versions and ORDER in rows.columns:
            versions = self.agg.running(prepared, self.state, self.keys).with_columns(
                rows.get_column(ORDER)
            )
        partial = self.agg.partial(prepared, self.keys)
        merged = partial if self.state is None else pl.concat([self.state, partial])
        self.state = self.agg.combine(merged, self.keys) if self.state is not None else partial
        if versions is not None:
            return Delta(versions)
        changed = self.state.join(
            partial.select(self.keys), on=self.keys, how="semi", nulls_equal=True
        )
        return Delta(changed.select(*self.keys, *self.agg.final_exprs()).sort(self.keys))

    def can_version(self) -> bool:
        return self.agg.runs


class TableOperator(Operator, Versioned):
    """Turns a table source's rows into an upsert changelog: tombstone rows become deletes.

    Only the last change of a key within a batch counts, so deletes and upserts of one batch
    never contradict each other; with ``versions``, every change counts, each numbered by
    its ``ORDER``.
    """

    def __init__(self, keys: Sequence[str]) -> None:
        self.keys = list(keys)

    def process(self, delta: Delta) -> Delta:
        rows = delta.rows
        if DELETE not in rows.columns:
            return delta
        if self.versions and ORDER in rows.columns:
            deleted = rows.get_column(DELETE).fill_null(False)
            return Delta(
                rows.filter(~deleted).drop(DELETE), rows.filter(deleted).select(*self.keys, ORDER)
            )
        rows = rows.unique(subset=self.keys, keep="last", maintain_order=True)
        deleted = rows.get_column(DELETE).fill_null(False)
        return Delta(rows.filter(~deleted).drop(DELETE), rows.filter(deleted).select(self.keys))
