"""Session windows, exact per record, vectorised per batch.

Open sessions live in one frame: keys, ``s`` (earliest time), ``m`` (latest time) and the
partial aggregates. A batch is cut at *suspects*, records with ``time + grace < W`` (W the
watermark just before them). A record that is not a suspect can neither be late nor link to a
session that has closed (a closed session ends at ``m + gap`` with ``m + gap + grace ≤ W``, so
linking to it needs ``time < m + gap ≤ W − grace``). Between suspects, then, record-at-a-time
processing builds exactly the connected components of "less than ``gap`` apart" over the open
sessions and the new records, which one sort and one cumulative max compute for the whole
run. Each suspect (rare: out of order by more than delay + grace) is handled alone against
the sessions open at its moment. Sessions close at the end of the batch.
"""

from __future__ import annotations

from typing import ClassVar

import polars as pl

from streamnb.aggregates import SEQ
from streamnb.engine.core import POS_INF, Delta
from streamnb.engine.windowing import START, TIME, WM, WindowOperatorBase

S, M = START, "__sn_m"
COMP, TOUCHED = "__sn_comp", "__sn_touched"


class SessionOperator(WindowOperatorBase):
    """Per-key sessions with inactivity gap ``gap_ms``."""

    state_fields: ClassVar[tuple[str, ...]] = (*WindowOperatorBase.state_fields, "state")

    def __init__(self, *, gap_ms: int, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.gap = gap_ms * self.et.per_ms
        self.state: pl.DataFrame | None = None  # open sessions

    def process(self, delta: Delta) -> Delta:
        stamped = self._stamp(delta.rows)
        if stamped.height == 0:  # the watermark may still have moved (marker rows)
            closed = self._close(self.watermark)
            return Delta(pl.concat(closed) if closed else self.schema.to_frame())
        before = (
            self._keys(self.state) if self.emit == "update" and self.state is not None else None
        )
        if self.state is not None and self.emit == "update":
            self.state = self.state.with_columns(pl.lit(False).alias(TOUCHED))
        suspect = (pl.col(TIME) + self.grace < pl.col(WM)).alias("__sn_suspect")
        flags = stamped.select(suspect).to_series()
        if not flags.any():
            self._merge(stamped, suspect=False)
        else:
            # Runs of ordinary records, each suspect a run of its own, in arrival order.
            run = (flags | flags.shift(1, fill_value=False)).cum_sum()
            for part in stamped.with_columns(run.alias("__sn_run")).partition_by(
                "__sn_run", maintain_order=True, include_key=False
            ):
                lone = part.height == 1 and part[TIME][0] + self.grace < part[WM][0]
                self._merge(part, suspect=lone)
        out: list[pl.DataFrame] = []
        deletes = None
        if self.emit == "update" and self.state is not None:
            touched = self.state.filter(pl.col(TOUCHED))
            out.append(self._output(touched, pl.col(M) + self.gap))
            if before is not None:
                gone = before.join(
                    self._keys(self.state), on=list(before.columns), how="anti", nulls_equal=True
                )
                deletes = self._key_output(gone)
        out.extend(self._close(self.watermark))
        return Delta(pl.concat(out) if out else self.schema.to_frame(), deletes)

    def finish(self) -> Delta | None:
        closed = self._close(POS_INF)
        return Delta(pl.concat(closed) if closed else self.schema.to_frame())

    def _merge(self, records: pl.DataFrame, *, suspect: bool) -> None:
        """Add a run of records (or one suspect) to the sessions open before its first record.

        Sessions that closed before the run are set aside: nothing in the run can link to
        them, but they may lie within ``gap`` of sessions opened since (closing is deferred
        to the end of the batch), and must not be chained to those.
        """
        groups = self.by
        watermark = records[WM][0]
        keys = records.select(groups).unique() if groups else None
        state = self.state
        if state is None:
            affected, rest = None, None
        elif keys is not None:
            affected = state.join(keys, on=groups, how="semi", nulls_equal=True)
            rest = state.join(keys, on=groups, how="anti", nulls_equal=True)
        else:
            affected, rest = state, None
        if affected is not None:
            is_open = pl.col(M) + self.gap + self.grace > watermark
            closed = affected.filter(~is_open)
            affected = affected.filter(is_open)
            rest = closed if rest is None else pl.concat([rest, closed])
        intervals = [
            records.select(
                *groups, pl.col(TIME).alias(S), pl.col(TIME).alias(M), pl.col(SEQ).alias("__sn_row")
            )
        ]
        if affected is not None and affected.height:
            intervals.append(
                affected.select(*groups, S, M, pl.lit(None, pl.Int64).alias("__sn_row"))
            )
        links = pl.concat(intervals).sort([*groups, S])
        reach = pl.col(M).cum_max().shift(1)
        if groups:
            reach = reach.over(groups)
        links = links.with_columns(
            (reach.is_null() | (pl.col(S) >= reach + self.gap)).cum_sum().alias(COMP)
        )
        record_comp = links.filter(pl.col("__sn_row").is_not_null()).select(
            pl.col("__sn_row").alias(SEQ), COMP
        )
        records = records.join(record_comp, on=SEQ, how="left")
        if suspect:
            lone = links.group_by(COMP).agg(pl.col("__sn_row").is_null().any().not_().alias("lone"))
            starts_new = lone.join(record_comp, on=COMP).get_column("lone")[0]
            if starts_new and records.get_column(TIME)[0] + self.gap + self.grace <= watermark:
                self._late(records.drop(COMP), pl.Series([True]))
                return
        parts = [
            self.agg.partial(self.agg.prepare(records, [COMP, *groups]), [COMP, *groups]).join(
                records.group_by(COMP).agg(
                    pl.col(TIME).min().alias(S), pl.col(TIME).max().alias(M)
                ),
                on=COMP,
            )
        ]
        if affected is not None and affected.height:
            session_comp = links.filter(pl.col("__sn_row").is_null()).select(*groups, S, COMP)
            parts.append(
                affected.join(session_comp, on=[*groups, S], nulls_equal=True).drop(
                    TOUCHED, strict=False
                )
            )
        merged = pl.concat(parts, how="diagonal")
        combined = self.agg.combine(merged, [COMP, *groups]).join(
            merged.group_by(COMP).agg(pl.col(S).min(), pl.col(M).max()), on=COMP
        )
        touched_comps = record_comp.get_column(COMP).unique().implode()
        new_sessions = combined.with_columns(pl.col(COMP).is_in(touched_comps).alias(TOUCHED))
        if affected is not None and self.emit == "update":
            # Untouched sessions keep the flag they had earlier in this batch.
            earlier = affected.select(*groups, S, pl.col(TOUCHED).alias("__sn_was"))
            new_sessions = (
                new_sessions.join(earlier, on=[*groups, S], how="left", nulls_equal=True)
                .with_columns(
                    (pl.col(TOUCHED) | pl.col("__sn_was").fill_null(False)).alias(TOUCHED)
                )
                .drop("__sn_was")
            )
        new_sessions = new_sessions.drop(COMP)
        self.state = (
            pl.concat([rest, new_sessions], how="diagonal")
            if rest is not None and rest.height
            else new_sessions
        )

    def _close(self, watermark: int) -> list[pl.DataFrame]:
        if self.state is None:
            return []
        closes = pl.col(M) + self.gap + self.grace <= watermark
        closed = self.state.filter(closes)
        self.state = self.state.filter(~closes)
        if self.emit == "final" and closed.height:
            return [self._output(closed, pl.col(M) + self.gap)]
        return []

    def _keys(self, sessions: pl.DataFrame) -> pl.DataFrame:
        return sessions.select(*self.by, S, M)

    def _key_output(self, keys: pl.DataFrame) -> pl.DataFrame:
        return keys.select(
            self.et.to_dtype(pl.col(S)).alias("window_start"),
            self.et.to_dtype(pl.col(M) + self.gap).alias("window_end"),
            *self.by,
        )
