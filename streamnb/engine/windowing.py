"""Tumbling and hopping window aggregation, exact per record, vectorised per batch.

For every record the watermark *before* it decides which of its windows are still open
(``window_end + grace > W``); the record is added to those, or is late if there are none.
Windows close at the end of a batch once ``W ≥ window_end + grace``: since a record is only
ever added to windows open at its own moment, closing later than record-at-a-time processing
would change nothing in the emitted rows (docs/semantics.md §3).

State is columnar: a short list of partial-aggregate frames keyed by (window start, keys),
compacted from time to time, so no per-record or per-window Python runs on the hot path.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

import polars as pl

from streamnb.columns import (
    MARKER,
    OPEN,
    PANE,
    PARTITION,
    SEQ,
    TIME,
    WATERMARK,
    WINDOW_START,
    visible,
)
from streamnb.definitions.aggregates import Aggregation
from streamnb.definitions.eventtime import EventTime
from streamnb.engine.core import POS_INF, Context, Delta, Operator
from streamnb.engine.eventtime import WatermarkTracker, split_valid
from streamnb.types import Emit

_COMPACT_AFTER = 16


class WindowOperatorBase(Operator):
    """What tumbling, hopping and session windows share: watermark, sequence, output."""

    state_fields: ClassVar[tuple[str, ...]] = ("tracker", "seq")

    def __init__(
        self,
        *,
        event_time: EventTime,
        by: Sequence[str],
        grace_ms: int,
        emit: Emit,
        agg: Aggregation,
        schema: pl.Schema,
        ctx: Context,
        scope: frozenset[tuple[object, ...]] | None = None,
    ) -> None:
        self.et = event_time
        self.by = list(by)
        self.grace = grace_ms * event_time.per_ms
        self.delay = event_time.delay
        self.emit = emit
        self.agg = agg
        self.schema = schema
        self.ctx = ctx
        self.tracker = WatermarkTracker(self.delay, ctx.partitions, scope)
        self.seq = 0

    @property
    def watermark(self) -> int:
        return self.tracker.current

    def _stamp(self, df: pl.DataFrame) -> pl.DataFrame:
        """Add event time, watermark-before and arrival number; advance the watermark."""
        df, errors = split_valid(df, self.et.column, source="window")
        if errors is not None:
            self.ctx.error(errors)
        times = self.et.values(df)
        parts = df.get_column(PARTITION) if PARTITION in df.columns else None
        wm = self.tracker.before_each(times, parts)
        self.ctx.watermarks[id(self)] = self.watermark
        if MARKER in df.columns:  # watermark-only rows: their times are taken in, no more
            data = ~df.get_column(MARKER).fill_null(False)
            df, times, wm = df.filter(data).drop(MARKER), times.filter(data), wm.filter(data)
        stamped = df.with_columns(
            times.alias(TIME),
            wm.alias(WATERMARK),
            pl.int_range(self.seq, self.seq + df.height).alias(SEQ),
        )
        self.seq += df.height
        return stamped

    def _late(self, stamped: pl.DataFrame, late: pl.Series) -> None:
        if late.any():
            self.ctx.late.add(visible(stamped.filter(late)))

    def _output(self, combined: pl.DataFrame, end: pl.Expr) -> pl.DataFrame:
        """Final rows: window_start, window_end, keys, aggregates; in closing order."""
        out = combined.select(
            self.et.to_dtype(pl.col(WINDOW_START)).alias("window_start"),
            self.et.to_dtype(end).alias("window_end"),
            *self.by,
            *self.agg.final_exprs(),
        )
        return out.sort(["window_end", "window_start", *self.by])


class WindowOperator(WindowOperatorBase):
    """Tumbling (``every == size``) and hopping windows."""

    state_fields: ClassVar[tuple[str, ...]] = (
        *WindowOperatorBase.state_fields,
        "frames",
        "min_start",
    )

    def __init__(self, *, size_ms: int, every_ms: int, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.size = size_ms * self.et.per_ms
        self.every = every_ms * self.et.per_ms
        self.per_record = -(-self.size // self.every)  # windows a record can belong to
        self.pane = math.gcd(self.size, self.every)  # windows are unions of whole panes
        self.groups = [WINDOW_START, *self.by]
        self.frames: list[pl.DataFrame] = []
        self.min_start: int | None = None

    def process(self, delta: Delta) -> Delta:
        stamped = self._stamp(delta.rows)
        if stamped.height == 0:  # the watermark may still have moved (marker rows)
            return self._advance(self.watermark, None)
        stamped = stamped.with_columns(self._open_windows().alias(OPEN))
        late = stamped.get_column(OPEN) == 0
        self._late(stamped, late)
        kept = stamped.filter(~late)
        partial = None
        if kept.height and self.per_record == 1:
            assigned = kept.with_columns(
                ((pl.col(TIME) // self.size) * self.size).alias(WINDOW_START)
            )
            partial = self.agg.partial(self.agg.prepare(assigned, self.groups), self.groups)
        elif kept.height:
            # Aggregate per pane first (records sharing a window set and the same number of
            # open windows), then spread the few pane rows over their windows.
            panes = kept.with_columns(((pl.col(TIME) // self.pane) * self.pane).alias(PANE))
            pane_groups = [PANE, OPEN, *self.by]
            by_pane = self.agg.partial(self.agg.prepare(panes, pane_groups), pane_groups)
            last_start = (pl.col(PANE) // self.every) * self.every
            spread = by_pane.with_columns(
                (last_start - pl.int_ranges(0, pl.col(OPEN)) * self.every).alias(WINDOW_START)
            ).explode(WINDOW_START)
            partial = self.agg.combine(spread.drop(PANE, OPEN), self.groups)
        if partial is not None:
            self.frames.append(partial)
            low = partial.get_column(WINDOW_START).min()
            assert isinstance(low, int)
            self.min_start = low if self.min_start is None else min(self.min_start, low)
        changed = None
        if self.emit == "update" and partial is not None:
            changed = partial.select(self.groups)
        return self._advance(self.watermark, changed)

    def _open_windows(self) -> pl.Expr:
        """How many of a record's windows are open, newest first (0: the record is late).

        A record at ``t`` is in the windows starting ``last − j·every`` (``last`` the newest
        start ≤ t) that still contain t; window j is open while its end + grace > W, and
        since starts decrease with j the open ones are exactly j < n.
        """
        last = (pl.col(TIME) // self.every) * self.every
        containing = (last + self.size - pl.col(TIME) + self.every - 1) // self.every
        room = last + self.size + self.grace - pl.col(WATERMARK)
        open_ = pl.min_horizontal((room + self.every - 1) // self.every, containing)
        return pl.when(room > 0).then(open_).otherwise(0)

    def finish(self) -> Delta | None:
        return self._advance(POS_INF, None)

    def _advance(self, watermark: int, changed: pl.DataFrame | None) -> Delta:
        """Emit updates and/or windows that closed at ``watermark``; forget closed ones."""
        out: list[pl.DataFrame] = []
        if changed is not None and changed.height:
            self.frames = [self._compact()]
            current = self.frames[0].join(changed, on=self.groups, how="semi", nulls_equal=True)
            out.append(self._output(current, pl.col(WINDOW_START) + self.size))
        closing = (
            self.min_start is not None and self.min_start + self.size + self.grace <= watermark
        )
        if closing:
            state = self._compact()
            closes = pl.col(WINDOW_START) + self.size + self.grace <= watermark
            if self.emit == "final":
                out.append(self._output(state.filter(closes), pl.col(WINDOW_START) + self.size))
            rest = state.filter(~closes)
            self.frames = [rest] if rest.height else []
            low = rest.get_column(WINDOW_START).min() if rest.height else None
            self.min_start = low if isinstance(low, int) else None
        elif len(self.frames) > _COMPACT_AFTER:
            self.frames = [self._compact()]
        return Delta(pl.concat(out) if out else self.schema.to_frame())

    def _compact(self) -> pl.DataFrame:
        if len(self.frames) == 1:
            return self.frames[0]
        return self.agg.combine(pl.concat(self.frames), self.groups)
