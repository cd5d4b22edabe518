"""Event time at run time: records without one, and the watermark before each record.

Event-time columns are ``pl.Datetime`` (any unit, any time zone) or integers holding epoch
milliseconds. Internally every time is an Int64 in the column's own unit (so nanosecond
timestamps keep their precision) and durations are converted into that unit.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from streamnb.definitions.eventtime import units_per_ms
from streamnb.engine.core import NEG_INF, POS_INF, Partitions, error_rows

TIME_LIMIT_MS = POS_INF // 1_000_000
"""Event times must lie strictly within ±this many ms of the epoch (about the years 1824 to
2116): the range in which every time, window end and watermark, in every unit down to ns,
stays clear of the −∞/+∞ watermarks and of Int64 overflow. Times outside it are errors."""


def time_problems(df: pl.DataFrame, column: str) -> pl.Series | None:
    """Why each record's event time is unusable (null where it is fine), or ``None`` if every
    one is: null or missing, or outside ±:data:`TIME_LIMIT_MS` (a window's end would wrap)."""
    if column not in df.columns:
        return pl.Series("reason", [f"record lacks the event-time column {column!r}"] * df.height)
    times = df.get_column(column)
    dtype = times.dtype
    if (isinstance(dtype, pl.Datetime) or dtype.is_integer()) and not times.null_count():
        # the usual batch, by its bounds: no expression to run (each costs a query plan)
        limit = TIME_LIMIT_MS * units_per_ms(column, dtype)
        physical = times.cast(pl.Int64, strict=False)
        lo, hi = physical.min(), physical.max()
        if physical.null_count() == 0 and (lo is None or (-limit < lo and hi < limit)):
            return None
    ints = None  # not a time column: its cast reports that
    bad = times.is_null()
    if isinstance(dtype, pl.Datetime) or dtype.is_integer():
        limit = TIME_LIMIT_MS * units_per_ms(column, dtype)
        ints = times.cast(pl.Int64, strict=False)
        bad = bad | (ints >= limit) | (ints <= -limit)
    if not bad.any():
        return None
    where = bad.arg_true()
    unit = f"{dtype.time_unit} since 1970" if isinstance(dtype, pl.Datetime) else "ms since 1970"
    reasons = [  # the bad records only
        f"null or missing event time in column {column!r}"
        if t is None
        else f"event time {t} ({unit}) in column {column!r} is outside the supported range "
        f"(within ±{TIME_LIMIT_MS} ms of 1970, about the years 1824 to 2116)"
        for t in (ints if ints is not None else times).gather(where).to_list()
    ]
    return (
        pl.repeat(None, df.height, dtype=pl.String, eager=True)
        .alias("reason")
        .scatter(where, reasons)
    )


def split_valid(
    df: pl.DataFrame,
    column: str,
    *,
    source: str,
    positions: pl.Series | None = None,
    partitions: Partitions | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame | None]:
    """Separate records whose event time is unusable (:func:`time_problems`: errors) from the
    rest. Operators pass their query's ``partitions`` so that a Kafka record's error row names
    its topic and partition."""
    reasons = time_problems(df, column)
    if reasons is None:
        return df, None
    bad = reasons.is_not_null()
    rows = error_rows(
        df.filter(bad),
        reasons.filter(bad),
        source=source,
        positions=positions.filter(bad) if positions is not None else None,
        partitions=partitions,
    )
    return (df.clear() if column not in df.columns else df.filter(~bad)), rows


class WatermarkTracker:
    """The watermark of one operator's input, record by record.

    Without partitions: ``W = max(times seen) − delay``. With a ``PARTITION`` column (Kafka,
    or a replay with ``partition=``): each partition has its own maximum and ``W`` is the
    minimum over the partitions that are assigned and not idle (a partition that has sent
    nothing yet holds it at −∞), minus the delay. ``W`` never goes back.
    """

    def __init__(
        self, delay: int, partitions: Partitions, scope: frozenset[tuple[Any, ...]] | None = None
    ) -> None:
        self.delay = delay
        self.partitions = partitions
        self.scope = scope  # the sources feeding this operator (None: every source)
        self.max_time: int | None = None
        self.part_max: dict[int, int] = {}
        self.current = NEG_INF

    def snapshot(self) -> tuple[int | None, dict[int, int], int]:
        return self.max_time, dict(self.part_max), self.current

    def restore(self, state: tuple[int | None, dict[int, int], int]) -> None:
        self.max_time, self.part_max, self.current = state[0], dict(state[1]), state[2]

    def before_each(self, times: pl.Series, parts: pl.Series | None) -> pl.Series:
        """The watermark just before each record; advances the tracker past them all."""
        if times.len() == 0:
            return pl.Series(dtype=pl.Int64)
        if parts is None:
            wm = watermarks_before(times, self.max_time, self.delay)
        else:
            wm = self._partitioned(times, parts)
        batch_max = times.max()
        assert isinstance(batch_max, int)
        self.max_time = batch_max if self.max_time is None else max(self.max_time, batch_max)
        if parts is None:
            self.current = self.max_time - self.delay
        return wm

    def _partitioned(self, times: pl.Series, parts: pl.Series) -> pl.Series:
        active = self.partitions.active(self.scope)
        if times.null_count() or parts.null_count():
            return self._partitioned_exprs(times, parts, active)
        t = times.cast(pl.Int64).to_numpy()
        at = parts.cast(pl.Int64).to_numpy()
        present = set(np.unique(at).tolist())
        n = len(t)
        # the minimum over the partitions of each one's maximum before each record (numpy: a
        # batch costs microseconds per partition, not a query plan per expression)
        low = np.full(n, _NONE, dtype=np.int64)
        masks = {}
        for p in sorted(active | present):
            mine = masks[p] = at == p
            running = np.maximum.accumulate(np.where(mine, t, NEG_INF))
            before = np.empty(n, dtype=np.int64)
            before[0] = NEG_INF
            before[1:] = running[:-1]
            if p in active:  # a partition with nothing yet holds W at its maximum so far
                before = np.maximum(before, self.part_max.get(p, NEG_INF))
            else:  # one that is not assigned counts only once it has sent a record
                before[before == NEG_INF] = _NONE
            np.minimum(low, before, out=low)
        wm = np.where((low > NEG_INF) & (low != _NONE), low - self.delay, NEG_INF)
        wm = np.maximum(np.maximum.accumulate(wm), self.current)
        for p in present:
            self.part_max[p] = max(self.part_max.get(p, NEG_INF), int(t[masks[p]].max()))
        after = min(self.part_max.get(p, NEG_INF) for p in active | present)
        if after > NEG_INF:
            self.current = max(self.current, after - self.delay)
        return pl.Series("watermark", wm, dtype=pl.Int64)

    def _partitioned_exprs(self, times: pl.Series, parts: pl.Series, active: set[int]) -> pl.Series:
        """:meth:`_partitioned` by polars expressions (a batch with null partitions)."""
        present = set(parts.unique().to_list())
        frame = pl.DataFrame({"t": times, "p": parts})
        columns = []
        for p in sorted(active | present):
            # the maximum of partition p over the records before each one (null: none yet)
            running = pl.when(pl.col("p") == p).then(pl.col("t")).cum_max().forward_fill().shift(1)
            if p in active:
                start = self.part_max.get(p, NEG_INF)
                running = running.fill_null(start).clip(lower_bound=start)
            columns.append(running)
        low = pl.min_horizontal(columns)
        wm = pl.when(low > NEG_INF).then(low - self.delay).otherwise(NEG_INF).fill_null(NEG_INF)
        wm_series = frame.select(wm.cum_max()).to_series().clip(lower_bound=self.current)
        for p, t in frame.group_by("p").agg(pl.col("t").max()).iter_rows():
            if p is not None:
                self.part_max[p] = max(self.part_max.get(p, NEG_INF), t)
        after = min(self.part_max.get(p, NEG_INF) for p in active | present)
        if after > NEG_INF:
            self.current = max(self.current, after - self.delay)
        return wm_series


_NONE = np.iinfo(np.int64).max
"""No partition counts yet (the minimum over none)."""


def watermarks_before(times: pl.Series, prev_max: int | None, delay: int) -> pl.Series:
    """The watermark just before each record: ``max(prev_max, times[:i]) - delay``.

    −∞ (no record seen yet) is represented by ``NEG_INF``.
    """
    if times.null_count():
        seen = times.cum_max().shift(1)
        if prev_max is not None:
            seen = seen.fill_null(prev_max).clip(lower_bound=prev_max)
        return (seen - delay).fill_null(NEG_INF)
    t = times.cast(pl.Int64).to_numpy()  # numpy: no query plan per step on a small batch
    before = np.empty(len(t), dtype=np.int64)
    before[0] = NEG_INF if prev_max is None else prev_max
    before[1:] = np.maximum.accumulate(t)[:-1]
    if prev_max is not None:
        np.maximum(before, prev_max, out=before)
    wm = np.where(before == NEG_INF, NEG_INF, before - delay)
    return pl.Series(times.name, wm, dtype=pl.Int64)
