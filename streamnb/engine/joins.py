"""Joins of streams and tables, with Kafka Streams semantics, vectorised per batch.

* stream–table: each record joins the table row current at its arrival; table updates emit
  nothing (KStream–KTable).
* stream–stream interval join: pairs whose event times differ by at most ``within``. The
  watermark is that of the join's merged input (largest time seen − delay); a record is kept
  until ``W ≥ time + within + grace`` and is late if it arrives after that. A pair counts only
  if the buffered partner was still kept at the arriving record's moment, which makes the
  result independent of batch boundaries. Left joins emit an unmatched left record, with
  nulls, when it is dropped from the state.
* window join: two final window results joined on window_start, window_end and keys; a row
  waits until the other side has emitted a later window (windows close in end order).
* table–table: an upsert table that changes when either side changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import polars as pl

from streamnb.columns import (
    DELETE,
    JOIN_RIGHT_ORDER,
    JOIN_RIGHT_SEQ,
    JOIN_RIGHT_TIME,
    JOIN_RIGHT_WATERMARK,
    JOIN_SEQ,
    JOIN_SIDE,
    JOIN_TIME,
    MARKER,
    MATCHED,
    ORDER,
    PARTITION,
    VERSION,
    WATERMARK,
    is_hidden,
    visible,
)
from streamnb.definitions.eventtime import EventTime
from streamnb.engine.core import POS_INF, Context, Delta, Operator
from streamnb.engine.eventtime import WatermarkTracker, split_valid
from streamnb.engine.state import KeyedTable, worth_keying
from streamnb.types import How


def _apply(table: KeyedTable, delta: Delta) -> None:
    """A keyed table after a change: deleted keys removed, upserted rows replacing theirs."""
    if delta.deletes is not None and delta.deletes.height:
        table.delete(delta.deletes)
    table.upsert(visible(delta.rows))


class StreamTableJoin(Operator):
    """Input 0: the stream; input 1: the table (an upsert changelog keyed by ``on``).

    A merged batch (several inputs, :meth:`process_merged`) brings the table's every version
    numbered in merged order: each stream record joins the latest version of its key before
    it (an as-of join on ``ORDER``), or the table as it was before the batch.
    """

    state_fields: ClassVar[tuple[str, ...]] = ("table",)

    def __init__(self, on: Sequence[str], how: How, table_schema: pl.Schema) -> None:
        self.on, self.how = list(on), how
        self.keyed = KeyedTable(self.on, table_schema)

    @property
    def table(self) -> pl.DataFrame:
        """The table's rows (what a checkpoint saves)."""
        return self.keyed.frame()

    @table.setter
    def table(self, frame: pl.DataFrame) -> None:
        self.keyed.load(frame)

    def changes(self) -> Any:
        return self.keyed.changes()

    def apply_changes(self, changes: Any) -> None:
        self.keyed.apply(changes)

    def settle(self) -> None:
        self.keyed.settle()

    def process_input(self, side: int, delta: Delta) -> Delta:
        if side == 1:
            _apply(self.keyed, delta)
            return Delta(pl.DataFrame())
        return Delta(self._join(delta.rows, self._rows_for(delta.rows)))

    def _rows_for(self, stream: pl.DataFrame) -> pl.DataFrame:
        """The table's rows of ``stream``'s keys (a null key joins nothing); a small table
        whole."""
        if not worth_keying(len(self.keyed.store), stream.height):
            return self.keyed.frame()
        return self.keyed.rows_of(stream.select(self.on).drop_nulls().unique())

    def _join(
        self, rows: pl.DataFrame, table: pl.DataFrame, on: list[str] | None = None
    ) -> pl.DataFrame:
        return rows.join(
            table, on=on or self.on, how=self.how, maintain_order="left", suffix="_right"
        )

    def process_merged(self, parts: list[tuple[int, Delta]]) -> Delta:
        streams = [d.rows for side, d in parts if side == 0 and d.rows.height]
        changes = [d for side, d in parts if side == 1 and d]
        if not changes:
            return super().process_merged(parts)
        versions = self._versions(changes)
        out = pl.DataFrame()
        if streams:
            stream = pl.concat(streams, how="diagonal_relaxed") if len(streams) > 1 else streams[0]
            out = self._join_as_of(stream, versions)
        # the table after the batch: each key's last version
        last = versions.unique(subset=self.on, keep="last", maintain_order=True)
        deleted = last.get_column(DELETE)
        self.keyed.delete(last.filter(deleted))
        self.keyed.upsert(last.filter(~deleted).select(self.keyed.empty().columns))
        return Delta(out)

    def _versions(self, changes: list[Delta]) -> pl.DataFrame:
        """The table's changes in a merged batch, in merged order: its columns, ``ORDER``,
        ``DELETE`` (a tombstone) and ``VERSION`` (their number)."""
        empty = self.keyed.empty()
        columns = empty.columns
        return (
            pl.concat(
                [
                    empty.with_columns(  # every column, even without upserts
                        pl.lit(None, pl.Int64).alias(ORDER), pl.lit(False).alias(DELETE)
                    ),
                    *(
                        visible(d.rows)
                        .select(columns)
                        .with_columns(d.rows.get_column(ORDER), pl.lit(False).alias(DELETE))
                        for d in changes
                        if d.rows.height
                    ),
                    *(
                        d.deletes.select(*self.on, ORDER).with_columns(pl.lit(True).alias(DELETE))
                        for d in changes
                        if d.deletes is not None and d.deletes.height
                    ),
                ],
                how="diagonal_relaxed",
            )
            .sort(ORDER)
            .with_row_index(VERSION)
            .with_columns(pl.col(VERSION).cast(pl.Int64))
        )

    def _join_as_of(self, stream: pl.DataFrame, versions: pl.DataFrame) -> pl.DataFrame:
        """Each stream record joined with its key's latest version before it in the batch,
        or with the table as it was before the batch."""
        latest = (
            stream.select(*self.on, ORDER)
            .join_asof(
                versions.select(*self.on, ORDER, VERSION).drop_nulls(self.on),
                on=ORDER,
                by=self.on,
                strategy="backward",
                allow_exact_matches=False,
                check_sortedness=False,  # ORDER is sorted; polars cannot tell within groups
            )
            .get_column(VERSION)
        )
        stream = stream.with_columns(latest.alias(VERSION))
        fresh = pl.col(VERSION).is_not_null()
        table = self.keyed.empty()
        upserts = versions.filter(~pl.col(DELETE)).select(*table.columns, VERSION)
        joined = pl.concat(
            [
                self._join(stream.filter(~fresh).drop(VERSION), self._rows_for(stream)),
                self._join(stream.filter(fresh), upserts, [*self.on, VERSION]).drop(VERSION),
            ],
            how="diagonal_relaxed",
        ).sort(ORDER)
        return joined.select(self._join(stream.clear().drop(VERSION), table).columns)


class TableTableJoin(Operator):
    """Both inputs are tables keyed by ``on``; the output is a table keyed by ``on``."""

    state_fields: ClassVar[tuple[str, ...]] = ("states",)

    def __init__(self, on: Sequence[str], how: How, schemas: tuple[pl.Schema, pl.Schema]) -> None:
        self.on, self.how = list(on), how
        self.tables = [KeyedTable(self.on, schemas[0]), KeyedTable(self.on, schemas[1])]

    @property
    def states(self) -> list[pl.DataFrame]:
        """Both tables' rows (what a checkpoint saves)."""
        return [table.frame() for table in self.tables]

    @states.setter
    def states(self, frames: list[pl.DataFrame]) -> None:
        for table, frame in zip(self.tables, frames, strict=True):
            table.load(frame)

    def changes(self) -> Any:
        return [table.changes() for table in self.tables]

    def apply_changes(self, changes: Any) -> None:
        for table, change in zip(self.tables, changes, strict=True):
            table.apply(change)

    def settle(self) -> None:
        for table in self.tables:
            table.settle()

    def process_input(self, side: int, delta: Delta) -> Delta:
        _apply(self.tables[side], delta)
        touched = [
            f.select(self.on) for f in (delta.rows, delta.deletes) if f is not None and f.height
        ]
        if not touched:
            return Delta(pl.DataFrame())
        keys = pl.concat(touched).unique(maintain_order=True)
        left = self.tables[0].rows_of(keys)
        joined = left.join(
            self.tables[1].rows_of(keys.drop_nulls()),
            on=self.on,
            how=self.how,
            suffix="_right",
        )
        # keys with no joined row any more (deleted, or inner with no partner) are retracted
        gone = keys.join(joined.select(self.on), on=self.on, how="anti", nulls_equal=True)
        return Delta(joined, gone)


class IntervalJoin(Operator):
    """Stream–stream join of records whose event times differ by at most ``within``."""

    state_fields: ClassVar[tuple[str, ...]] = ("tracker", "buffers", "seq")

    def __init__(
        self,
        *,
        on: Sequence[str],
        how: How,
        within_ms: int,
        grace_ms: int,
        times: tuple[EventTime, EventTime],
        schemas: tuple[pl.Schema, pl.Schema],
        ctx: Context,
        scope: frozenset[tuple[object, ...]] | None = None,
    ) -> None:
        self.on, self.how, self.times, self.ctx = list(on), how, times, ctx
        per_ms = times[0].per_ms
        self.within, self.grace = within_ms * per_ms, grace_ms * per_ms
        self.tracker = WatermarkTracker(max(t.delay for t in times), ctx.partitions, scope)
        self.buffers = [
            schemas[0]
            .to_frame()
            .with_columns(
                pl.lit(None, pl.Int64).alias(JOIN_TIME),
                pl.lit(None, pl.Int64).alias(JOIN_SEQ),
                pl.lit(None, pl.Boolean).alias(MATCHED),
            ),
            schemas[1]
            .to_frame()
            .with_columns(
                pl.lit(None, pl.Int64).alias(JOIN_TIME), pl.lit(None, pl.Int64).alias(JOIN_SEQ)
            ),
        ]
        self.empty_right = schemas[1].to_frame()
        self.seq = 0

    def process_input(self, side: int, delta: Delta) -> Delta:
        et = self.times[side]
        rows, errors = split_valid(delta.rows, et.column, source="join")
        if errors is not None:
            self.ctx.error(errors)
        if rows.height == 0:
            return Delta(pl.DataFrame())
        times = et.values(rows)
        parts = rows.get_column(PARTITION) if PARTITION in rows.columns else None
        wm = self.tracker.before_each(times, parts)
        self.ctx.watermarks[id(self)] = self.tracker.current
        if MARKER in rows.columns:  # watermark-only rows: their times are taken in, no more
            data = ~rows.get_column(MARKER).fill_null(False)
            rows, times, wm = rows.filter(data), times.filter(data), wm.filter(data)
        stamped = visible(rows).with_columns(
            times.alias(JOIN_TIME), pl.int_range(self.seq, self.seq + rows.height).alias(JOIN_SEQ)
        )
        self.seq += rows.height
        late = (times + self.within + self.grace) <= wm
        if late.any():
            self.ctx.late.add(visible(rows.filter(late)))
        live = stamped.filter(~late).with_columns(wm.filter(~late).alias(WATERMARK))
        other = self.buffers[1 - side]
        # candidate pairs; the partner must still have been kept at the arriving record's moment
        if side == 0:
            pairs = live.join(self._as_right(other), on=self.on, how="inner", suffix="_right")
        else:
            pairs = other.join(self._as_right(live), on=self.on, how="inner", suffix="_right")
        partner_time = pl.col(JOIN_RIGHT_TIME) if side == 0 else pl.col(JOIN_TIME)
        pairs = pairs.filter(
            ((pl.col(JOIN_TIME) - pl.col(JOIN_RIGHT_TIME)).abs() <= self.within)
            & (partner_time + self.within + self.grace > pl.col(WATERMARK))
        ).sort(JOIN_SEQ if side == 0 else JOIN_RIGHT_SEQ, JOIN_RIGHT_SEQ if side == 0 else JOIN_SEQ)
        left_matched = pairs.get_column(JOIN_SEQ).unique().implode()
        if side == 0:
            self.buffers[0] = pl.concat(
                [
                    self.buffers[0],
                    live.drop(WATERMARK).with_columns(
                        pl.col(JOIN_SEQ).is_in(left_matched).alias(MATCHED)
                    ),
                ],
                how="vertical_relaxed",
            )
        else:
            self.buffers[0] = self.buffers[0].with_columns(
                (pl.col(MATCHED) | pl.col(JOIN_SEQ).is_in(left_matched)).alias(MATCHED)
            )
            self.buffers[1] = pl.concat(
                [self.buffers[1], live.drop(WATERMARK)], how="vertical_relaxed"
            )
        out = [
            pairs.drop(
                JOIN_TIME,
                JOIN_SEQ,
                JOIN_RIGHT_TIME,
                JOIN_RIGHT_SEQ,
                MATCHED,
                WATERMARK,
                strict=False,
            )
        ]
        out.extend(self._evict(self.tracker.current))
        return Delta(pl.concat(out, how="diagonal_relaxed") if len(out) > 1 else out[0])

    def _as_right(self, frame: pl.DataFrame) -> pl.DataFrame:
        return frame.drop(MATCHED, strict=False).rename(
            {JOIN_TIME: JOIN_RIGHT_TIME, JOIN_SEQ: JOIN_RIGHT_SEQ}
        )

    def process_merged(self, parts: list[tuple[int, Delta]]) -> Delta:
        """Both inputs' records of a merged batch at once, as one after the other in ``ORDER``:
        each record's watermark is that of the merged sequence before it, and a record pairs
        with the partners that came before it (in earlier batches or earlier in this one)
        and were still kept at its moment."""
        sides: dict[int, pl.DataFrame] = {}
        for side, delta in parts:
            rows, errors = split_valid(delta.rows, self.times[side].column, source="join")
            if errors is not None:
                self.ctx.error(errors)
            if rows.height:
                sides[side] = rows
        if len(sides) < 2 or any(ORDER not in rows.columns for rows in sides.values()):
            return super().process_merged([(side, Delta(rows)) for side, rows in sides.items()])
        # the merged sequence: times, watermark before each record, arrival numbers
        sequence = pl.concat(
            [
                rows.select(
                    ORDER,
                    self.times[side].values(rows).alias(JOIN_TIME),
                    *([PARTITION] if PARTITION in rows.columns else []),
                    pl.lit(side, pl.Int8).alias(JOIN_SIDE),
                )
                for side, rows in sides.items()
            ],
            how="diagonal_relaxed",
        ).sort(ORDER)
        parts_column = sequence.get_column(PARTITION) if PARTITION in sequence.columns else None
        wm = self.tracker.before_each(sequence.get_column(JOIN_TIME), parts_column)
        self.ctx.watermarks[id(self)] = self.tracker.current
        sequence = sequence.select(
            ORDER,
            JOIN_TIME,
            wm.alias(WATERMARK),
            pl.int_range(self.seq, self.seq + sequence.height).alias(JOIN_SEQ),
        )
        self.seq += sequence.height
        for side, rows in sides.items():  # watermark-only rows: their times are taken in
            if MARKER in rows.columns:
                sides[side] = rows.filter(~pl.col(MARKER).fill_null(False))
        late = pl.col(JOIN_TIME) + self.within + self.grace <= pl.col(WATERMARK)
        live = []
        for side in (0, 1):
            stamped = (
                visible(sides[side])
                .with_columns(sides[side].get_column(ORDER))
                .join(sequence, on=ORDER, how="left", maintain_order="left")
            )
            if (gone := stamped.filter(late)).height:
                self.ctx.late.add(visible(gone))
            live.append(stamped.filter(~late))
        left, right = live
        keep = self.within + self.grace
        buffered = [b.with_columns(pl.lit(-1, pl.Int64).alias(ORDER)) for b in self.buffers]
        # left records arriving: right partners buffered, or earlier in the batch
        pool = pl.concat([buffered[1], right.drop(WATERMARK)], how="diagonal_relaxed")
        by_left = left.join(
            self._as_right(pool).rename({ORDER: JOIN_RIGHT_ORDER}), on=self.on, suffix="_right"
        ).filter(
            (pl.col(JOIN_RIGHT_ORDER) < pl.col(ORDER))
            & ((pl.col(JOIN_TIME) - pl.col(JOIN_RIGHT_TIME)).abs() <= self.within)
            & (pl.col(JOIN_RIGHT_TIME) + keep > pl.col(WATERMARK))
        )
        # right records arriving: left partners buffered, or earlier in the batch
        pool = pl.concat([buffered[0].drop(MATCHED), left.drop(WATERMARK)], how="diagonal_relaxed")
        arriving = self._as_right(right).rename(
            {ORDER: JOIN_RIGHT_ORDER, WATERMARK: JOIN_RIGHT_WATERMARK}
        )
        by_right = pool.join(arriving, on=self.on, suffix="_right").filter(
            (pl.col(ORDER) < pl.col(JOIN_RIGHT_ORDER))
            & ((pl.col(JOIN_TIME) - pl.col(JOIN_RIGHT_TIME)).abs() <= self.within)
            & (pl.col(JOIN_TIME) + keep > pl.col(JOIN_RIGHT_WATERMARK))
        )
        pairs = pl.concat(
            [
                by_left.with_columns(pl.col(ORDER).alias(JOIN_SIDE)),
                by_right.with_columns(pl.col(JOIN_RIGHT_ORDER).alias(JOIN_SIDE)),
            ],
            how="diagonal_relaxed",
        ).sort(JOIN_SIDE, JOIN_SEQ, JOIN_RIGHT_SEQ)  # by arriving record, then partner
        matched = pairs.get_column(JOIN_SEQ).unique().implode()
        self.buffers[0] = pl.concat(
            [
                self.buffers[0].with_columns(
                    (pl.col(MATCHED) | pl.col(JOIN_SEQ).is_in(matched)).alias(MATCHED)
                ),
                left.drop(WATERMARK, ORDER).with_columns(
                    pl.col(JOIN_SEQ).is_in(matched).alias(MATCHED)
                ),
            ],
            how="vertical_relaxed",
        )
        self.buffers[1] = pl.concat(
            [self.buffers[1], right.drop(WATERMARK, ORDER)], how="vertical_relaxed"
        )
        out = [pairs.select(c for c in pairs.columns if not is_hidden(c))]
        out.extend(self._evict(self.tracker.current))
        return Delta(pl.concat(out, how="diagonal_relaxed") if len(out) > 1 else out[0])

    def _evict(self, watermark: int) -> list[pl.DataFrame]:
        """Drop records no partner can reach any more; a left join emits unmatched ones."""
        expired = pl.col(JOIN_TIME) + self.within + self.grace <= watermark
        out = []
        if self.how == "left":
            lonely = self.buffers[0].filter(expired & ~pl.col(MATCHED)).sort(JOIN_TIME, JOIN_SEQ)
            if lonely.height:
                out.append(
                    lonely.drop(JOIN_TIME, JOIN_SEQ, MATCHED).join(
                        self.empty_right, on=self.on, how="left", suffix="_right"
                    )
                )
        self.buffers = [b.filter(~expired) for b in self.buffers]
        return out

    def finish(self) -> Delta | None:
        out = self._evict(POS_INF)
        return Delta(out[0]) if out else None


class WindowJoin(Operator):
    """Two final window results joined on window_start, window_end and the keys."""

    state_fields: ClassVar[tuple[str, ...]] = ("buffers", "latest_end")

    def __init__(self, on: Sequence[str], how: How, schemas: tuple[pl.Schema, pl.Schema]) -> None:
        self.keys = ["window_start", "window_end", *on]
        self.how = how
        self.buffers = [schemas[0].to_frame(), schemas[1].to_frame()]
        self.latest_end: list[pl.Series | None] = [None, None]  # newest window_end per side

    def process_input(self, side: int, delta: Delta) -> Delta:
        rows = visible(delta.rows)
        if rows.height == 0:
            return Delta(pl.DataFrame())
        if side == 0:
            matched = rows.join(self.buffers[1], on=self.keys, how="inner", suffix="_right")
        else:
            matched = self.buffers[0].join(rows, on=self.keys, how="inner", suffix="_right")
        done = matched.select(self.keys)
        self.buffers[side] = pl.concat(
            [self.buffers[side], rows.join(done, on=self.keys, how="anti", nulls_equal=True)],
            how="vertical_relaxed",
        )
        self.buffers[1 - side] = self.buffers[1 - side].join(
            done, on=self.keys, how="anti", nulls_equal=True
        )
        self.latest_end[side] = rows.get_column("window_end").max()  # type: ignore[assignment]
        out = [matched, *self._evict()]
        return Delta(pl.concat(out, how="diagonal_relaxed") if len(out) > 1 else matched)

    def _evict(self, final: bool = False) -> list[pl.DataFrame]:
        """Rows whose partner can no longer come: the other side has emitted later windows."""
        out = []
        for side in (0, 1):
            other_end = self.latest_end[1 - side]
            if final:
                expired = pl.lit(True)
            elif other_end is None:
                continue
            else:
                expired = pl.col("window_end") < other_end
            gone = self.buffers[side].filter(expired)
            if side == 0 and self.how == "left" and gone.height:
                out.append(
                    gone.join(self.buffers[1].clear(), on=self.keys, how="left", suffix="_right")
                )
            self.buffers[side] = self.buffers[side].filter(~expired)
        return out

    def finish(self) -> Delta | None:
        out = self._evict(final=True)
        return Delta(out[0]) if out else None
