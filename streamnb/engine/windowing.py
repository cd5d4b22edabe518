"""Tumbling and hopping window aggregation, exact per record, vectorised per batch.

For every record the watermark *before* it decides which of its windows are still open
(``window_end + grace > W``); the record is added to those, or is late if there are none.
Windows close at the end of a batch once ``W ≥ window_end + grace``: since a record is only
ever added to windows open at its own moment, closing later than record-at-a-time processing
would change nothing in the emitted rows (docs/semantics.md §3).

*When* a row is emitted matters downstream, though: record by record, a window's row reaches
the next operator right after the record that closed it, before the records that follow it.
In a merged batch (several inputs, records numbered in merged order by ``ORDER``), each final
row therefore carries the ``ORDER`` of the record whose arrival raised the watermark to its
window's end + grace (one binary search of the batch's watermarks per batch), and operators
with several inputs (interval and stream–table joins, unions) take it at that place, with the
watermark that stood there, not after the batch's last record (docs/semantics.md §3.3).

State is columnar: while small, a short list of partial-aggregate frames keyed by (window
start, keys), compacted from time to time; once large, a keyed state per open window, so that a
batch costs O(batch) and a window's close O(its groups). No per-record Python runs on the hot
path, and per-window Python only for the few windows a batch touches or closes.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import polars as pl

from streamnb import frames
from streamnb.columns import (
    MARKER,
    OPEN,
    ORDER,
    PANE,
    PARTITION,
    SEQ,
    TIME,
    WATERMARK,
    WINDOW_START,
    visible,
    with_series,
)
from streamnb.definitions.aggregates import Aggregation
from streamnb.definitions.eventtime import EventTime
from streamnb.engine.core import POS_INF, Context, Delta, Operator
from streamnb.engine.eventtime import WatermarkTracker, split_valid
from streamnb.engine.operators import fold
from streamnb.engine.state import KeyedState, key_hashes, worth_keying
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
        self._none = schema.to_frame()  # what a batch emits when it emits nothing
        self.ctx = ctx
        self.tracker = WatermarkTracker(self.delay, ctx.partitions, scope)
        self.seq = 0
        self.closing: tuple[np.ndarray, np.ndarray] | None = None
        """In a merged batch: the watermark after each record, and the record's ``ORDER``
        (where each window that closes in the batch closed); ``None`` outside one."""

    @property
    def watermark(self) -> int:
        return self.tracker.current

    def nothing(self) -> pl.DataFrame:
        """No rows, with the output's columns (a copy: 1 us, where making one takes 50)."""
        return self._none.clone()

    def _stamp(self, df: pl.DataFrame) -> pl.DataFrame:
        """Add event time, watermark-before and arrival number; advance the watermark."""
        df, errors = split_valid(
            df, self.et.column, source="window", partitions=self.ctx.partitions
        )
        if errors is not None:
            self.ctx.error(errors)
        times = self.et.values(df)
        parts = df.get_column(PARTITION) if PARTITION in df.columns else None
        wm = self.tracker.before_each(times, parts)
        self.ctx.watermarks[id(self)] = self.watermark
        self.closing = None
        orders = df.get_column(ORDER) if ORDER in df.columns else None
        if orders is not None and orders.null_count() < orders.len():
            # the watermark after record i is the one before record i + 1; a row without a
            # place (a watermark-only row from a repartition topic) takes its neighbour's
            after = np.append(wm.to_numpy()[1:], self.watermark)
            placed = orders.forward_fill().backward_fill().cast(pl.Int64).to_numpy()
            self.closing = (after, placed)
        if MARKER in df.columns:  # watermark-only rows: their times are taken in, no more
            data = ~df.get_column(MARKER).fill_null(False)
            df, times, wm = df.filter(data).drop(MARKER), times.filter(data), wm.filter(data)
        stamped = with_series(
            df,
            [
                times.alias(TIME),
                wm.alias(WATERMARK),
                pl.Series(SEQ, np.arange(self.seq, self.seq + df.height), dtype=pl.Int64),
            ],
        )
        self.seq += df.height
        return stamped

    def _late(self, stamped: pl.DataFrame, late: pl.Series) -> None:
        if late.any():
            self.ctx.late.add(visible(stamped.filter(late)))

    def _output(
        self, combined: pl.DataFrame, end: pl.Expr, order: Sequence[str] | None = None
    ) -> pl.DataFrame:
        """Final rows: window_start, window_end, keys, aggregates; in closing order (or by
        ``order``: one window's rows by key, a sort of one column instead of three). In a
        merged batch, final rows carry the ``ORDER`` of the record that closed them."""
        out = combined.select(
            self.et.to_dtype(pl.col(WINDOW_START)).alias("window_start"),
            self.et.to_dtype(end).alias("window_end"),
            *self.by,
            *self.agg.final_exprs(),
        )
        if self.emit == "final" and self.closing is not None:
            out = out.with_columns(self._closed_by(combined.select(end + self.grace).to_series()))
        return out.sort(order or ["window_end", "window_start", *self.by])

    def _closed_by(self, due: pl.Series) -> pl.Series:
        """The ``ORDER`` of the record whose arrival closed each window (``due``: its end +
        grace)."""
        return pl.Series(ORDER, self._closers(due.to_numpy()), dtype=pl.Int64)

    def _closers(self, due: np.ndarray) -> np.ndarray:
        """:meth:`_closed_by` on numbers: the first record whose watermark after it reaches
        ``due`` (watermarks never go back)."""
        assert self.closing is not None
        after, orders = self.closing
        return orders[np.minimum(np.searchsorted(after, due), after.size - 1)]


LATE_WINDOWS = 100
"""How many windows :attr:`WindowOperator.late_windows` keeps late counts of (the newest)."""


class WindowOperator(WindowOperatorBase):
    """Tumbling (``every == size``) and hopping windows.

    While the state is small, each open window holds a short list of frames of its partials
    (by key; without keys, a row with the window's start), each frame holding its groups once.
    A window's frames are merged by a group_by: with ``emit="update"`` at every batch that
    touches the window; with ``emit="final"`` the newer frames every :data:`_COMPACT_AFTER`
    batches, and all of them once the newer weigh a quarter of the first. A window closes by
    merging its own frames, whatever the other windows hold: the fastest while the state is
    small (one group_by of one window's keys, where filtering a list of frames of all windows
    cost two polars calls per frame).
    Once it holds many more (window, key) groups than a batch brings
    (:func:`~streamnb.engine.state.worth_keying`), each open window gets a
    :class:`~streamnb.engine.state.KeyedState` of its keys: a batch looks up and updates only
    its own groups, and a window closes by dropping its own state.
    """

    state_fields: ClassVar[tuple[str, ...]] = (*WindowOperatorBase.state_fields, "state")

    def __init__(self, *, size_ms: int, every_ms: int, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.size = size_ms * self.et.per_ms
        self.every = every_ms * self.et.per_ms
        self.per_record = -(-self.size // self.every)  # windows a record can belong to
        self.pane = math.gcd(self.size, self.every)  # windows are unions of whole panes
        self.groups = [WINDOW_START, *self.by]
        self.keys = self.by or [WINDOW_START]
        """What one window's partials are grouped by: its keys (without keys: its start, so
        that a window's partials are one row)."""
        self.partials: dict[int, list[pl.DataFrame]] = {}
        """While small: per open window (its start), its frames of partials (``keys``)."""
        self.starts: list[int] = []
        """The starts of the open windows (of ``partials``, or of ``stores`` once keyed), a
        heap: a close pops the windows it closes, however many are open."""
        self.loose: set[int] = set()
        """The windows of ``partials`` whose frames are not merged into one yet."""
        self.rows = 0
        """The rows of all frames in ``partials`` (a group held twice counts twice)."""
        self.stores: dict[int, KeyedState] | None = None  # once large: per window start
        self.late_windows: dict[int, int] = {}
        """Late records per window start (the newest window each would have been in), for
        the newest :data:`LATE_WINDOWS` such windows: what ``lifecycle()`` shows."""

    def _late(self, stamped: pl.DataFrame, late: pl.Series) -> None:
        super()._late(stamped, late)
        if not late.any():
            return
        times = stamped.get_column(TIME).filter(late).to_numpy()
        starts, counts = np.unique(times // self.every * self.every, return_counts=True)
        for start, count in zip(starts.tolist(), counts.tolist(), strict=True):  # per window
            self.late_windows[start] = self.late_windows.get(start, 0) + count
        for start in sorted(self.late_windows)[:-LATE_WINDOWS]:
            del self.late_windows[start]

    @property
    def min_start(self) -> int | None:
        """The oldest open window's start (``None``: none is open)."""
        return self.starts[0] if self.starts else None

    @property
    def state(self) -> pl.DataFrame | None:
        """The partials of every open window, one row per (window, key): what a checkpoint
        saves."""
        if self.stores is not None:
            frames = [self._rows(start, store) for start, store in self.stores.items()]
        else:
            frames = [
                self._started(self._combined(held), start)
                for start, held in sorted(self.partials.items())
            ]
        held = [f for f in frames if f is not None and f.height]
        return pl.concat(held, how="vertical_relaxed") if held else None

    @state.setter
    def state(self, frame: pl.DataFrame | None) -> None:
        self.partials, self.starts, self.loose, self.rows = {}, [], set(), 0
        self.stores = None
        if frame is not None and frame.height:
            self.partials = {start: [part] for start, part in self._split(frame).items()}
            self.rows = frame.height
            self.starts = sorted(self.partials)  # a sorted list is a heap
            self._keying(0)

    def _split(self, frame: pl.DataFrame) -> dict[int, pl.DataFrame]:
        """Partials of several windows (``groups``) by window: ``keys`` each."""
        windows = frame.partition_by(WINDOW_START, as_dict=True, include_key=not self.by)
        return {start: part for (start,), part in windows.items()}

    def _started(self, frame: pl.DataFrame, start: int) -> pl.DataFrame:
        """One window's partials with its start as the first column (``groups``)."""
        return started(frame, start) if self.by else frame

    def _keying(self, batch: int) -> None:
        """Move to a keyed state per window once that pays for batches of ``batch`` groups
        (:attr:`rows` counts: a group held twice waits for its merge)."""
        if not self.by:  # without keys: a row per window
            return
        if self.emit == "update":
            # a small state costs two passes per batch here (the merge and the changed rows),
            # so keying pays from about the batch's size, a quarter of what a running
            # aggregate needs (bench/keyed_windows.py, 100 K keys in batches of 50 K: 2.3
            # CPU-s keyed, 4.0 small; with emit="final" the small state stays faster)
            batch //= 4
        if worth_keying(self.rows, batch):
            self._key(self.state)

    def _key(self, frame: pl.DataFrame | None) -> None:
        """Move the partials ``frame`` of all open windows into a keyed state per window."""
        self.partials, self.starts, self.loose, self.rows, self.stores = {}, [], set(), 0, {}
        if frame is not None and frame.height:
            windows = frame.partition_by(WINDOW_START, as_dict=True, include_key=False)
            for (start,), part in windows.items():
                assert isinstance(start, int)
                self.stores[start] = KeyedState.of(part, self.by)
        self.starts = sorted(self.stores)

    @staticmethod
    def _rows(start: int, store: KeyedState) -> pl.DataFrame | None:
        """A window's partials from its keyed state, with its start (None: none)."""
        frame = store.frame()
        return None if frame is None else started(frame, start)

    def process(self, delta: Delta) -> Delta:
        stamped = self._stamp(delta.rows)
        if stamped.height == 0:  # the watermark may still have moved (marker rows)
            return self._advance(self.watermark, None, 0)
        times = stamped.get_column(TIME).to_numpy()
        opened = self._open_windows(times, stamped.get_column(WATERMARK).to_numpy())
        stamped = with_series(stamped, [pl.Series(OPEN, opened, dtype=pl.Int64)])
        on_time = opened > 0
        late = pl.Series(~on_time)
        self._late(stamped, late)
        kept = stamped if on_time.all() else stamped.filter(~late)
        windows: dict[int, pl.DataFrame] = {}  # the batch's partials, by window
        if kept.height and self.per_record == 1:
            starts = times[on_time] // self.size * self.size
            if self.by and (starts == starts[0]).all():
                # one window (a small batch, as a rule): grouped by its keys alone, a quarter
                # of the cost of grouping by the window too (15 records: 47 us against 180)
                prepared = self.agg.prepare(kept, self.by)
                windows = {int(starts[0]): self.agg.partial(prepared, self.by)}
            else:
                assigned = with_series(kept, [pl.Series(WINDOW_START, starts, dtype=pl.Int64)])
                prepared = self.agg.prepare(assigned, self.groups)
                windows = self._split(self.agg.partial(prepared, self.groups))
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
            windows = self._split(self.agg.combine(spread.drop(PANE, OPEN), self.groups))
        current = None  # with emit="update": the changed groups' partials after the batch
        groups = sum(part.height for part in windows.values())
        if windows:
            if self.stores is not None:
                current = self._fold(windows, self.stores)
            else:
                current = self._add(windows, groups)
        return self._advance(self.watermark, current, groups)

    def _add(self, windows: dict[int, pl.DataFrame], batch: int) -> pl.DataFrame | None:
        """Add a batch's partials to their windows' frames; with ``emit="update"``, the
        changed groups' partials after the batch."""
        changed = []
        merged = False  # a window's frames were merged into one: time to see about keying
        for start, part in windows.items():
            frames = self.partials.get(start)
            if frames is None:  # a new window
                frames = self.partials[start] = []
                heapq.heappush(self.starts, start)
            frames.append(part)
            self.rows += part.height
            if self.emit == "update":
                self._replace(frames, [whole := self._combined(frames)])
                keys = part.select(self.keys)
                rows = whole.join(keys, on=self.keys, how="semi", nulls_equal=True)
                changed.append(self._started(rows, start))
                merged = True
            elif len(frames) > 1:
                self.loose.add(start)
                if len(frames) > _COMPACT_AFTER:
                    merged = self._settle(start) or merged
        if self.loose:
            # the windows before the batch's: done with, as a rule (in-order input), so
            # merged now rather than when they close, where it is latency (730 keys: 0.6 ms)
            low = min(windows)
            for start in [s for s in self.loose if s < low]:
                frames = self.partials[start]
                self._replace(frames, [self._combined(frames)])
                self.loose.discard(start)
                merged = True
        if merged:  # after the loop: keying moves every window's frames
            self._keying(batch)
        return pl.concat(changed, how="vertical_relaxed") if changed else None

    def _fold(
        self, windows: dict[int, pl.DataFrame], stores: dict[int, KeyedState]
    ) -> pl.DataFrame | None:
        """Fold a batch's partials into the keyed states of their windows; with
        ``emit="update"``, the changed groups' partials after the batch."""
        changed = []
        for start, part in windows.items():
            store = stores.get(start)
            if store is None:  # a new window
                stores[start] = KeyedState.of(part, self.by)
                heapq.heappush(self.starts, start)
                rows = part
            else:
                rows, _ = fold(store, part, self.by, self.agg)
            if self.emit == "update":
                changed.append(started(rows, start))
        return pl.concat(changed, how="vertical_relaxed") if changed else None

    def _open_windows(self, times: np.ndarray, watermarks: np.ndarray) -> np.ndarray:
        """How many of each record's windows are open, newest first (0: the record is late).

        A record at ``t`` is in the windows starting ``last − j·every`` (``last`` the newest
        start ≤ t) that still contain t; window j is open while its end + grace > W, and
        since starts decrease with j the open ones are exactly j < n. (numpy, floor division
        as polars': a few microseconds a batch, where expressions cost a query plan.)
        """
        last = times // self.every * self.every
        containing = (last + self.size - times + self.every - 1) // self.every
        room = last + self.size + self.grace - watermarks
        opened = np.minimum((room + self.every - 1) // self.every, containing)
        return np.where(room > 0, opened, 0)

    def finish(self) -> Delta | None:
        self.closing = None  # emitted after every record
        return self._advance(POS_INF, None, 0)

    def _advance(self, watermark: int, current: pl.DataFrame | None, batch: int) -> Delta:
        """Emit the updated groups (``current``) and/or the windows that closed at
        ``watermark``; forget closed ones. ``batch``: the batch's number of groups."""
        end = pl.col(WINDOW_START) + self.size
        out: list[pl.DataFrame] = []
        if current is not None and current.height:
            out.append(self._output(current, end))
        if self.starts and self.starts[0] + self.size + self.grace <= watermark:
            closed = []
            while self.starts and self.starts[0] + self.size + self.grace <= watermark:
                start = heapq.heappop(self.starts)
                if self.stores is not None:
                    closed.append((start, self.stores.pop(start).frame()))
                else:
                    closed.append((start, self._closed(start)))
            if self.stores is None:
                self._keying(batch)  # what the open windows hold, at each close
            if self.emit == "final":  # in closing order: by window, then by key
                out += [self._final(start, f) for start, f in closed if f is not None]
        return Delta(pl.concat(out, how="vertical_relaxed") if out else self.nothing())

    def _closed(self, start: int) -> pl.DataFrame | None:
        """A closing window's partials, its frames merged (``None``: not needed)."""
        frames = self.partials.pop(start)
        self.loose.discard(start)
        self.rows -= sum(f.height for f in frames)
        return self._combined(frames) if self.emit == "final" else None

    def _final(self, start: int, partials: pl.DataFrame) -> pl.DataFrame:
        """A closed window's final rows, by key, from its partials (by key, without the
        start): its start, end and closing record are one value each, so one ``select``
        makes them, where :meth:`_output` would add the start, then compute the end and the
        closing record per row (a close of 730 keys: two polars calls instead of five)."""
        end = start + self.size
        columns = [
            self.et.to_dtype(pl.lit(start, pl.Int64)).alias("window_start"),
            self.et.to_dtype(pl.lit(end, pl.Int64)).alias("window_end"),
            *self.by,
            *self.agg.final_exprs(),
        ]
        if self.closing is not None:
            closer = int(self._closers(np.array([end + self.grace]))[0])
            columns.append(pl.lit(closer, pl.Int64).alias(ORDER))
        out = frames.select(partials, columns)
        if not self.by or out.height < 2:
            return out
        # a window's keys are unique: the sort has no ties, on the pool or off it
        return out.sort(self.by, multithreaded=out.height > frames.SMALL_ROWS)

    def _settle(self, start: int) -> bool:
        """Merge a window's frames that came after the first (the batches' partials, and the
        merge of earlier ones); into the first too once they weigh a quarter of it (then
        ``True``). A batch's groups so are combined a few times over (a geometric series),
        never the whole window per :data:`_COMPACT_AFTER` batches."""
        frames = self.partials[start]
        first, merged = frames[0], self._combined(frames[1:])
        if merged.height * 4 >= first.height:
            self._replace(frames, [self._combined([first, merged])])
            self.loose.discard(start)
            return True
        self._replace(frames, [first, merged])
        return False

    def _replace(self, frames: list[pl.DataFrame], merged: list[pl.DataFrame]) -> None:
        """A window's ``frames`` become ``merged`` (their merge), counted in :attr:`rows`."""
        self.rows += sum(f.height for f in merged) - sum(f.height for f in frames)
        frames[:] = merged

    def _combined(self, frames: list[pl.DataFrame]) -> pl.DataFrame:
        """One frame of the groups of ``frames`` (of one window): each holds its groups
        once, so one frame is its own combination."""
        held = [f for f in frames if f.height] or frames[:1]
        if len(held) == 1:
            return held[0]
        return self.agg.combine(pl.concat(held, how="vertical_relaxed"), self.keys)

    # -- incremental checkpoints (while keyed) -----------------------------------------------------
    def changes(self) -> Any:
        """The groups changed since the last checkpoint, per window (while keyed; a small
        state is saved whole). Closed windows need no tombstones: a restore drops every
        window that the restored watermark has closed."""
        if self.stores is None:
            return None
        windows = {start: store.changes()[0] for start, store in self.stores.items()}
        return {
            "tracker": self.tracker.snapshot(),
            "seq": self.seq,
            "windows": {start: rows for start, rows in windows.items() if rows is not None},
        }

    def apply_changes(self, changes: Any) -> None:
        self.tracker.restore(changes["tracker"])
        self.seq = changes["seq"]
        if self.stores is None:  # the base was small
            self._key(self.state)
        assert self.stores is not None
        for start in [s for s in self.stores if s + self.size + self.grace <= self.watermark]:
            del self.stores[start]
        for start, rows in changes["windows"].items():
            store = self.stores.get(start)
            if store is None:
                self.stores[start] = KeyedState.of(rows, self.by)
            else:
                store.upsert(rows, key_hashes(rows, self.by))
        self.starts = sorted(self.stores)

    def settle(self) -> None:
        for store in (self.stores or {}).values():
            store.settle()


def started(frame: pl.DataFrame, start: int) -> pl.DataFrame:
    """A window's partials (by key) with its start as the first column, as in ``state``."""
    return frame.select(pl.lit(start, dtype=pl.Int64).alias(WINDOW_START), pl.all())
