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

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import polars as pl

from streamnb.columns import (
    DELETE,
    JOIN_ARRIVING,
    JOIN_RIGHT_ORDER,
    JOIN_RIGHT_SEQ,
    JOIN_RIGHT_TIME,
    JOIN_RIGHT_WATERMARK,
    JOIN_SEQ,
    JOIN_TIME,
    MARKER,
    MATCHED,
    ORDER,
    PARTITION,
    SEQ,
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

    def __init__(
        self, on: Sequence[str], how: How, table_schema: pl.Schema, directory: Path | None = None
    ) -> None:
        self.on, self.how = list(on), how
        self.keyed = KeyedTable(self.on, table_schema, directory)

    @property
    def table(self) -> pl.DataFrame:
        """The table's rows (what a checkpoint saves)."""
        return self.keyed.frame()

    @table.setter
    def table(self, frame: pl.DataFrame) -> None:
        self.keyed.load(frame)

    def parts(self, rows: int) -> Iterator[tuple[str, Any]]:
        yield "full", {"table": self.keyed.empty()}
        for part in self.keyed.store.slices(rows):
            yield "changes", {"rows": part, "deleted": None}

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
            .sort(ORDER, maintain_order=True)  # changes made by one window row: in order
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
        # SEQ keeps the stream's order, ties in ORDER included (window rows closed at one record)
        stream = stream.with_columns(latest.alias(VERSION), pl.int_range(stream.height).alias(SEQ))
        fresh = pl.col(VERSION).is_not_null()
        table = self.keyed.empty()
        upserts = versions.filter(~pl.col(DELETE)).select(*table.columns, VERSION)
        joined = pl.concat(
            [
                self._join(stream.filter(~fresh).drop(VERSION), self._rows_for(stream)),
                self._join(stream.filter(fresh), upserts, [*self.on, VERSION]).drop(VERSION),
            ],
            how="diagonal_relaxed",
        ).sort(SEQ)
        return joined.select(self._join(stream.clear().drop(VERSION, SEQ), table).columns)


class TableTableJoin(Operator):
    """Both inputs are tables keyed by ``on``; the output is a table keyed by ``on``."""

    state_fields: ClassVar[tuple[str, ...]] = ("states",)

    def __init__(
        self,
        on: Sequence[str],
        how: How,
        schemas: tuple[pl.Schema, pl.Schema],
        directory: Path | None = None,
    ) -> None:
        self.on, self.how = list(on), how
        self.tables = [KeyedTable(self.on, s, directory) for s in schemas]

    @property
    def states(self) -> list[pl.DataFrame]:
        """Both tables' rows (what a checkpoint saves)."""
        return [table.frame() for table in self.tables]

    @states.setter
    def states(self, frames: list[pl.DataFrame]) -> None:
        for table, frame in zip(self.tables, frames, strict=True):
            table.load(frame)

    def parts(self, rows: int) -> Iterator[tuple[str, Any]]:
        yield "full", {"states": [table.empty() for table in self.tables]}
        for side, table in enumerate(self.tables):
            for part in table.store.slices(rows):
                changes: list[dict[str, Any]] = [
                    {"rows": None, "deleted": None} for _ in self.tables
                ]
                changes[side]["rows"] = part
                yield "changes", changes

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


_CHUNK_ROWS = 16_384  # records appended to a buffer join its newest frame while it is smaller


class _Kept:
    """One side's records kept by an :class:`IntervalJoin`, in arrival order: frames, each
    with the range of its times (``JOIN_TIME``) and its first ``JOIN_SEQ``.

    A batch reads only the frames whose times can be within reach of its own; eviction
    drops the frames wholly past retention and filters only those that straddle it. Frames
    may differ in dtypes; they are read through ``empty``, the supertype of every frame
    appended (as one frame concatenated batch by batch would be)."""

    def __init__(self, empty: pl.DataFrame) -> None:
        self.empty = empty.clear()
        self.frames: list[pl.DataFrame] = []
        self.low: list[int] = []  # per frame: its earliest time
        self.high: list[int] = []  # per frame: its latest time
        self.first: list[int] = []  # per frame: a lower bound of its JOIN_SEQ

    def _concat(self, frames: list[pl.DataFrame]) -> pl.DataFrame:
        if len(frames) == 1 and frames[0].schema == self.empty.schema:
            return frames[0]
        return pl.concat([self.empty, *frames], how="vertical_relaxed")

    def frame(self) -> pl.DataFrame:
        """Every record kept."""
        return self._concat(self.frames)

    def load(self, frame: pl.DataFrame) -> None:
        """Keep ``frame``'s records and nothing else (a restore)."""
        self.empty = frame.clear()
        self.frames, self.low, self.high, self.first = [], [], [], []
        self.append(frame)

    def reaching(self, low: int, high: int) -> pl.DataFrame:
        """The records of every frame whose times overlap ``low``..``high`` (and maybe more)."""
        return self._concat(
            [
                f
                for f, lo, hi in zip(self.frames, self.low, self.high, strict=True)
                if hi >= low and lo <= high
            ]
        )

    def append(self, rows: pl.DataFrame) -> None:
        if rows.schema != self.empty.schema:
            self.empty = pl.concat([self.empty, rows.clear()], how="vertical_relaxed")
        if not rows.height:
            return
        times = rows.get_column(JOIN_TIME)
        low, high = int(times.min()), int(times.max())  # type: ignore[arg-type]
        first = int(rows.get_column(JOIN_SEQ).min())  # type: ignore[arg-type]
        if self.frames and self.frames[-1].height < _CHUNK_ROWS:
            last = self.frames[-1]
            if last.schema != rows.schema:
                last = pl.concat([self.empty, last], how="vertical_relaxed")
                rows = pl.concat([self.empty, rows], how="vertical_relaxed")
            self.frames[-1] = pl.concat([last, rows], rechunk=True)
            self.low[-1], self.high[-1] = min(self.low[-1], low), max(self.high[-1], high)
            self.first[-1] = min(self.first[-1], first)
            return
        self.frames.append(rows)
        self.low.append(low)
        self.high.append(high)
        self.first.append(first)

    def expire(self, until: int, *, take: bool) -> pl.DataFrame | None:
        """Forget the records of time ``until`` or earlier; return them when ``take``."""
        gone: list[pl.DataFrame] = []
        if not self.frames or min(self.low) > until:
            return self.empty if take else None
        frames, lows, highs, firsts = [], [], [], []
        for frame, low, high, first in zip(
            self.frames, self.low, self.high, self.first, strict=True
        ):
            if high <= until:
                gone.append(frame)
                continue
            if low <= until:
                past = pl.col(JOIN_TIME) <= until
                if take:
                    gone.append(frame.filter(past))
                frames.append(frame.filter(~past))
                lows.append(int(frames[-1].get_column(JOIN_TIME).min()))  # type: ignore[arg-type]
            else:
                frames.append(frame)
                lows.append(low)
            highs.append(high)
            firsts.append(first)
        self.frames, self.low, self.high, self.first = frames, lows, highs, firsts
        return self._concat(gone) if take and gone else (self.empty if take else None)


class IntervalJoin(Operator):
    """Stream–stream join of records whose event times differ by at most ``within``.

    Each side's records are kept in frames of arrival (:class:`_Kept`): a batch joins only
    those whose times can be within ``within`` of its own, and eviction filters only the
    frames that straddle retention. Whether a left record has found a partner (for a left
    join) is a flag in a numpy array indexed by ``JOIN_SEQ``, set by the pairs of a batch.
    """

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
        self.kept = [
            _Kept(
                schema.to_frame().with_columns(
                    pl.lit(None, pl.Int64).alias(JOIN_TIME), pl.lit(None, pl.Int64).alias(JOIN_SEQ)
                )
            )
            for schema in schemas
        ]
        self.flags = np.zeros(0, dtype=bool)  # left records matched, by JOIN_SEQ - flag_base
        self.flag_base = 0
        self.empty_right = schemas[1].to_frame()
        self.seq = 0

    @property
    def buffers(self) -> list[pl.DataFrame]:
        """Both sides' records kept, the left ones with ``MATCHED`` (what a checkpoint saves)."""
        left = self.kept[0].frame()
        matched = self._matched(left.get_column(JOIN_SEQ).to_numpy())
        return [left.with_columns(pl.Series(MATCHED, matched)), self.kept[1].frame()]

    @buffers.setter
    def buffers(self, frames: list[pl.DataFrame]) -> None:
        left = frames[0]
        self.kept[0].load(left.drop(MATCHED))
        self.kept[1].load(frames[1])
        self.flags = np.zeros(0, dtype=bool)
        self.flag_base = 0
        self._mark(left.filter(pl.col(MATCHED).fill_null(False)).get_column(JOIN_SEQ).to_numpy())

    def _mark(self, seqs: np.ndarray) -> None:
        """The left records ``seqs`` (their ``JOIN_SEQ``) have found a partner."""
        if not seqs.size:
            return
        low = int(seqs.min())
        if not self.flags.size:
            self.flag_base = low
        elif low < self.flag_base:  # a record kept from before the first flag set
            self.flags = np.concatenate([np.zeros(self.flag_base - low, dtype=bool), self.flags])
            self.flag_base = low
        index = seqs.astype(np.int64) - self.flag_base
        need = int(index.max()) + 1
        if need > self.flags.size:
            grown = np.zeros(max(need, 2 * self.flags.size), dtype=bool)
            grown[: self.flags.size] = self.flags
            self.flags = grown
        self.flags[index] = True

    def _matched(self, seqs: np.ndarray) -> np.ndarray:
        """Per left record of ``seqs``: whether it has found a partner."""
        index = seqs.astype(np.int64) - self.flag_base
        inside = (index >= 0) & (index < self.flags.size)
        out = np.zeros(seqs.size, dtype=bool)
        out[inside] = self.flags[index[inside]]
        return out

    def _trim_flags(self) -> None:
        """Forget the flags of left records no longer kept (once they are half the array)."""
        base = min(self.kept[0].first) if self.kept[0].first else self.seq
        drop = base - self.flag_base
        if drop > 0 and 2 * drop >= self.flags.size:
            self.flags = self.flags[drop:].copy()
            self.flag_base = base

    def _reaching(self, side: int, rows: pl.DataFrame) -> pl.DataFrame:
        """Side ``side``'s records kept that can be within ``within`` of ``rows``'s."""
        if not rows.height:
            return self.kept[side].empty
        times = rows.get_column(JOIN_TIME)
        low, high = int(times.min()), int(times.max())  # type: ignore[arg-type]
        return self.kept[side].reaching(low - self.within, high + self.within)

    def process_input(self, side: int, delta: Delta) -> Delta:
        et = self.times[side]
        rows, errors = split_valid(
            delta.rows, et.column, source="join", partitions=self.ctx.partitions
        )
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
        other = self._reaching(1 - side, live)
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
        self._mark(pairs.get_column(JOIN_SEQ).to_numpy())
        self.kept[side].append(live.drop(WATERMARK))
        out = [
            pairs.drop(
                JOIN_TIME,
                JOIN_SEQ,
                JOIN_RIGHT_TIME,
                JOIN_RIGHT_SEQ,
                WATERMARK,
                strict=False,
            )
        ]
        out.extend(self._evict(self.tracker.current))
        return Delta(pl.concat(out, how="diagonal_relaxed") if len(out) > 1 else out[0])

    def _as_right(self, frame: pl.DataFrame) -> pl.DataFrame:
        return frame.rename({JOIN_TIME: JOIN_RIGHT_TIME, JOIN_SEQ: JOIN_RIGHT_SEQ})

    def process_merged(self, parts: list[tuple[int, Delta]]) -> Delta:
        """Both inputs' records of a merged batch at once, as one after the other in ``ORDER``:
        each record's watermark is that of the merged sequence before it, and a record pairs
        with the partners that came before it (in earlier batches or earlier in this one)
        and were still kept at its moment. A window's final rows come at the place of the
        record that closed them (:mod:`streamnb.engine.windowing`), several at one place in
        their closing order."""
        sides: dict[int, pl.DataFrame] = {}
        for side, delta in parts:
            rows, errors = split_valid(
                delta.rows, self.times[side].column, source="join", partitions=self.ctx.partitions
            )
            if errors is not None:
                self.ctx.error(errors)
            if rows.height:
                sides[side] = rows
        if len(sides) < 2 or any(ORDER not in rows.columns for rows in sides.values()):
            return super().process_merged([(side, Delta(rows)) for side, rows in sides.items()])
        # the merged sequence: times, watermark before each record, arrival numbers. Rows
        # that share an ORDER (the final rows of windows that closed at one record) keep
        # their order, so each side's rows are stamped by position, not joined on ORDER.
        arrival = pl.concat(
            [
                sides[side].select(
                    ORDER,
                    self.times[side].values(sides[side]).alias(JOIN_TIME),
                    *([PARTITION] if PARTITION in sides[side].columns else []),
                )
                for side in (0, 1)
            ],
            how="diagonal_relaxed",
        )
        merged = np.argsort(arrival.get_column(ORDER).to_numpy(), kind="stable")
        sequence = arrival[merged]
        parts_column = sequence.get_column(PARTITION) if PARTITION in sequence.columns else None
        wm = self.tracker.before_each(sequence.get_column(JOIN_TIME), parts_column)
        self.ctx.watermarks[id(self)] = self.tracker.current
        place = np.empty(sequence.height, dtype=np.int64)  # arrival row -> merged place
        place[merged] = np.arange(sequence.height)
        stamps = pl.DataFrame(
            {
                JOIN_TIME: arrival.get_column(JOIN_TIME),
                WATERMARK: wm.gather(place),
                JOIN_SEQ: pl.Series(place + self.seq),
            }
        )
        self.seq += sequence.height
        late = pl.col(JOIN_TIME) + self.within + self.grace <= pl.col(WATERMARK)
        live = []
        offset = 0
        for side in (0, 1):
            rows = sides[side]
            stamped = (
                visible(rows)
                .with_columns(rows.get_column(ORDER))
                .hstack(stamps.slice(offset, rows.height))
            )
            offset += rows.height
            if MARKER in rows.columns:  # watermark-only rows: their times are taken in
                stamped = stamped.filter(~rows.get_column(MARKER).fill_null(False))
            if (gone := stamped.filter(late)).height:
                self.ctx.late.add(visible(gone))
            live.append(stamped.filter(~late))
        left, right = live
        keep = self.within + self.grace
        before = pl.lit(-1, pl.Int64).alias(ORDER)
        # left records arriving: right partners buffered, or earlier in the batch
        pool = pl.concat(
            [self._reaching(1, left).with_columns(before), right.drop(WATERMARK)],
            how="diagonal_relaxed",
        )
        by_left = left.join(
            self._as_right(pool).rename({ORDER: JOIN_RIGHT_ORDER}), on=self.on, suffix="_right"
        ).filter(
            (pl.col(JOIN_RIGHT_ORDER) < pl.col(ORDER))
            & ((pl.col(JOIN_TIME) - pl.col(JOIN_RIGHT_TIME)).abs() <= self.within)
            & (pl.col(JOIN_RIGHT_TIME) + keep > pl.col(WATERMARK))
        )
        # right records arriving: left partners buffered, or earlier in the batch
        pool = pl.concat(
            [self._reaching(0, right).with_columns(before), left.drop(WATERMARK)],
            how="diagonal_relaxed",
        )
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
                by_left.with_columns(pl.col(JOIN_SEQ).alias(JOIN_ARRIVING)),
                by_right.with_columns(pl.col(JOIN_RIGHT_SEQ).alias(JOIN_ARRIVING)),
            ],
            how="diagonal_relaxed",
        ).sort(JOIN_ARRIVING, JOIN_SEQ, JOIN_RIGHT_SEQ)  # by arriving record, then partner
        self._mark(pairs.get_column(JOIN_SEQ).to_numpy())
        self.kept[0].append(left.drop(WATERMARK, ORDER))
        self.kept[1].append(right.drop(WATERMARK, ORDER))
        out = [pairs.select(c for c in pairs.columns if not is_hidden(c))]
        out.extend(self._evict(self.tracker.current))
        return Delta(pl.concat(out, how="diagonal_relaxed") if len(out) > 1 else out[0])

    def _evict(self, watermark: int) -> list[pl.DataFrame]:
        """Drop records no partner can reach any more; a left join emits unmatched ones."""
        until = watermark - self.within - self.grace  # expired: JOIN_TIME <= until
        out = []
        gone = self.kept[0].expire(until, take=self.how == "left")
        self.kept[1].expire(until, take=False)
        if self.how == "left" and gone is not None and gone.height:
            matched = self._matched(gone.get_column(JOIN_SEQ).to_numpy())
            lonely = gone.filter(pl.Series(~matched)).sort(JOIN_TIME, JOIN_SEQ)
            if lonely.height:
                out.append(
                    lonely.drop(JOIN_TIME, JOIN_SEQ).join(
                        self.empty_right, on=self.on, how="left", suffix="_right"
                    )
                )
        self._trim_flags()
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
