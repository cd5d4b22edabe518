"""Stateless operators and the running (un-windowed) aggregate."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import polars as pl

from streamnb.columns import DELETE, MARKER, ORDER, SEQ, SLOT
from streamnb.definitions.aggregates import LATER, Aggregation
from streamnb.engine.core import Context, Delta, Operator, Versioned
from streamnb.engine.eventtime import split_valid
from streamnb.engine.state import KeyedState, key_hashes, worth_keying

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
        rows, errors = split_valid(
            delta.rows, self.column, source="with_watermark", partitions=self.ctx.partitions
        )
        if errors is not None:
            self.ctx.error(errors)
        return Delta(rows, delta.deletes)


def fold(
    store: KeyedState, partial: pl.DataFrame, keys: Sequence[str], agg: Aggregation
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Fold one batch's partials (unique ``keys``) into ``store``: the changed groups'
    partials (in ``partial``'s order), and the found groups' partials before the batch.
    O(batch)."""
    keys = list(keys)
    key_frame = partial.select(keys)
    hashes = key_hashes(key_frame, keys)
    found = store.lookup(key_frame, hashes)
    columns = [c for c in partial.columns if c not in keys]
    new = np.ones(partial.height, dtype=bool)
    new[found.index] = False
    hit = partial[found.index]
    combined = hit.select(columns)
    if hit.height:
        pair = agg.pair_exprs()
        if pair is not None:  # the state's row and the batch's, side by side
            later = hit.select(pl.col(c).alias(c + LATER) for c in columns)
            combined = found.rows.select(columns).hstack(later).select(pair)
        else:
            slot = pl.int_range(hit.height, dtype=pl.Int64).alias(SLOT)
            both = pl.concat(
                [found.rows.with_columns(slot), hit.with_columns(slot)],
                how="vertical_relaxed",
            )
            combined = agg.combine(both, [SLOT]).sort(SLOT).select(columns)
        store.update(found, combined, columns)
    fresh = partial.filter(pl.Series(new))
    store.insert(fresh, hashes[new], found.stops[new])
    changed = pl.concat([hit.select(keys).hstack(combined), fresh], how="vertical_relaxed")
    if hit.height and fresh.height:  # back in partial's order: found ones first, then new
        order = np.empty(partial.height, dtype=np.int64)
        order[found.index] = np.arange(hit.height)
        order[new] = np.arange(hit.height, partial.height)
        changed = changed[order]
    return changed, found.rows


class GroupByOperator(Operator, Versioned):
    """A running aggregate: one live row per key, emitted as an upsert when it changes.

    With ``versions`` (it makes the table of a stream–table join that takes merged batches)
    it emits the row of each record's key as it was right after that record.

    While it holds few groups, their partials are one frame, merged with each batch's by a
    group_by (O(state) per batch, the fastest while the state is small). Once it holds many
    more than a batch brings (:func:`~streamnb.engine.state.worth_keying`), they move to a
    :class:`~streamnb.engine.state.KeyedState`, where a batch looks up and updates only its
    own groups, whatever the number held.
    """

    state_fields: ClassVar[tuple[str, ...]] = ("state", "seq")

    def __init__(
        self, keys: Sequence[str], agg: Aggregation, directory: Path | None = None
    ) -> None:
        self.keys = list(keys)
        self.agg = agg
        self.directory = directory  # keyed state in files under it (None: in memory)
        self.whole: pl.DataFrame | None = None  # while the state is small
        self.store: KeyedState | None = None  # once it is not
        self.seq = 0

    @property
    def state(self) -> pl.DataFrame | None:
        """The groups' partials, one row per group (what a checkpoint saves)."""
        return self.store.frame() if self.store is not None else self.whole

    @state.setter
    def state(self, frame: pl.DataFrame | None) -> None:
        self.whole, self.store = frame, None
        if frame is not None and worth_keying(frame.height, 0):
            self.whole, self.store = None, KeyedState.of(frame, self.keys, self.directory)

    def process(self, delta: Delta) -> Delta:
        rows = delta.rows
        if MARKER in rows.columns:  # a running aggregate needs no watermark
            rows = rows.filter(~pl.col(MARKER).fill_null(False)).drop(MARKER)
            if rows.height == 0:
                return Delta(pl.DataFrame())
        if self.agg.needs_seq:
            rows = rows.with_columns(pl.int_range(self.seq, self.seq + rows.height).alias(SEQ))
        self.seq += rows.height
        prepared = self.agg.prepare(rows, self.keys)
        keyed = self.store is not None  # its changes come out in the partials' order
        partial = self.agg.partial(prepared, self.keys, ordered=keyed)
        before: pl.DataFrame | None
        if self.store is not None:
            changed, before = self._update(partial)
        else:
            changed, before = self._update_whole(partial)
        if self.versions and ORDER in rows.columns:
            versions = self.agg.running(prepared, before, self.keys)
            return Delta(versions.with_columns(rows.get_column(ORDER)))
        out = changed.select(*self.keys, *self.agg.final_exprs())
        # in key order (a batch's changes, whatever the state's form): sorted already if keyed
        return Delta(out if keyed else out.sort(self.keys, multithreaded=False))

    def _update(self, partial: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
        assert self.store is not None
        return fold(self.store, partial, self.keys, self.agg)

    def _update_whole(self, partial: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame | None]:
        """:meth:`_update` for a small state, one frame re-grouped with each batch."""
        before = self.whole
        if before is None:
            self.whole = partial
        else:
            self.whole = self.agg.combine(pl.concat([before, partial]), self.keys)
        changed = self.whole.join(
            partial.select(self.keys), on=self.keys, how="semi", nulls_equal=True
        )
        if worth_keying(self.whole.height, partial.height):
            self.store, self.whole = KeyedState.of(self.whole, self.keys, self.directory), None
        return changed, before

    def parts(self, rows: int) -> Iterator[tuple[str, Any]]:
        if self.store is None:
            yield "full", self.snapshot()
            return
        yield "full", {"state": None, "seq": self.seq}
        for part in self.store.slices(rows):
            yield "changes", {"seq": self.seq, "rows": part}

    def changes(self) -> Any:
        """The groups changed since the last checkpoint (while keyed; a small state is saved
        whole)."""
        if self.store is None:
            return None
        rows, _ = self.store.changes()  # a running aggregate never deletes a group
        return {"seq": self.seq, "rows": rows}

    def apply_changes(self, changes: Any) -> None:
        self.seq = changes["seq"]
        rows = changes["rows"]
        if rows is None:
            return
        if self.store is not None:
            self.store.upsert(rows, key_hashes(rows, self.keys))
        elif self.whole is None:
            self.state = rows
        else:
            kept = self.whole.join(
                rows.select(self.keys), on=self.keys, how="anti", nulls_equal=True
            )
            self.state = pl.concat([kept, rows], how="vertical_relaxed")

    def settle(self) -> None:
        if self.store is not None:
            self.store.settle()

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
