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

from streamnb.columns import (
    COMPONENT,
    ROW,
    RUN,
    SEQ,
    SESSION_END,
    SUSPECT,
    TIME,
    TOUCHED,
    WAS_TOUCHED,
    WATERMARK,
    WINDOW_START,
)
from streamnb.engine.core import POS_INF, Delta
from streamnb.engine.windowing import WindowOperatorBase


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
        suspect = (pl.col(TIME) + self.grace < pl.col(WATERMARK)).alias(SUSPECT)
        flags = stamped.select(suspect).to_series()
        if not flags.any():
            self._merge(stamped, suspect=False)
        else:
            # Runs of ordinary records, each suspect a run of its own, in arrival order.
            run = (flags | flags.shift(1, fill_value=False)).cum_sum()
            for part in stamped.with_columns(run.alias(RUN)).partition_by(
                RUN, maintain_order=True, include_key=False
            ):
                lone = part.height == 1 and part[TIME][0] + self.grace < part[WATERMARK][0]
                self._merge(part, suspect=lone)
        out: list[pl.DataFrame] = []
        deletes = None
        if self.emit == "update" and self.state is not None:
            touched = self.state.filter(pl.col(TOUCHED))
            out.append(self._output(touched, pl.col(SESSION_END) + self.gap))
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
        watermark = records[WATERMARK][0]
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
            is_open = pl.col(SESSION_END) + self.gap + self.grace > watermark
            closed = affected.filter(~is_open)
            affected = affected.filter(is_open)
            rest = closed if rest is None else pl.concat([rest, closed])
        intervals = [
            records.select(
                *groups,
                pl.col(TIME).alias(WINDOW_START),
                pl.col(TIME).alias(SESSION_END),
                pl.col(SEQ).alias(ROW),
            )
        ]
        if affected is not None and affected.height:
            intervals.append(
                affected.select(
                    *groups, WINDOW_START, SESSION_END, pl.lit(None, pl.Int64).alias(ROW)
                )
            )
        links = pl.concat(intervals).sort([*groups, WINDOW_START])
        reach = pl.col(SESSION_END).cum_max().shift(1)
        if groups:
            reach = reach.over(groups)
        links = links.with_columns(
            (reach.is_null() | (pl.col(WINDOW_START) >= reach + self.gap))
            .cum_sum()
            .alias(COMPONENT)
        )
        record_comp = links.filter(pl.col(ROW).is_not_null()).select(
            pl.col(ROW).alias(SEQ), COMPONENT
        )
        records = records.join(record_comp, on=SEQ, how="left")
        if suspect:
            lone = links.group_by(COMPONENT).agg(pl.col(ROW).is_null().any().not_().alias("lone"))
            starts_new = lone.join(record_comp, on=COMPONENT).get_column("lone")[0]
            if starts_new and records.get_column(TIME)[0] + self.gap + self.grace <= watermark:
                self._late(records.drop(COMPONENT), pl.Series([True]))
                return
        parts = [
            self.agg.partial(
                self.agg.prepare(records, [COMPONENT, *groups]), [COMPONENT, *groups]
            ).join(
                records.group_by(COMPONENT).agg(
                    pl.col(TIME).min().alias(WINDOW_START), pl.col(TIME).max().alias(SESSION_END)
                ),
                on=COMPONENT,
            )
        ]
        if affected is not None and affected.height:
            session_comp = links.filter(pl.col(ROW).is_null()).select(
                *groups, WINDOW_START, COMPONENT
            )
            parts.append(
                affected.join(session_comp, on=[*groups, WINDOW_START], nulls_equal=True).drop(
                    TOUCHED, strict=False
                )
            )
        merged = pl.concat(parts, how="diagonal")
        combined = self.agg.combine(merged, [COMPONENT, *groups]).join(
            merged.group_by(COMPONENT).agg(pl.col(WINDOW_START).min(), pl.col(SESSION_END).max()),
            on=COMPONENT,
        )
        touched_comps = record_comp.get_column(COMPONENT).unique().implode()
        new_sessions = combined.with_columns(pl.col(COMPONENT).is_in(touched_comps).alias(TOUCHED))
        if affected is not None and self.emit == "update":
            # Untouched sessions keep the flag they had earlier in this batch.
            earlier = affected.select(*groups, WINDOW_START, pl.col(TOUCHED).alias(WAS_TOUCHED))
            new_sessions = (
                new_sessions.join(earlier, on=[*groups, WINDOW_START], how="left", nulls_equal=True)
                .with_columns(
                    (pl.col(TOUCHED) | pl.col(WAS_TOUCHED).fill_null(False)).alias(TOUCHED)
                )
                .drop(WAS_TOUCHED)
            )
        new_sessions = new_sessions.drop(COMPONENT)
        self.state = (
            pl.concat([rest, new_sessions], how="diagonal")
            if rest is not None and rest.height
            else new_sessions
        )

    def _close(self, watermark: int) -> list[pl.DataFrame]:
        if self.state is None:
            return []
        closes = pl.col(SESSION_END) + self.gap + self.grace <= watermark
        closed = self.state.filter(closes)
        self.state = self.state.filter(~closes)
        if self.emit == "final" and closed.height:
            return [self._output(closed, pl.col(SESSION_END) + self.gap)]
        return []

    def _keys(self, sessions: pl.DataFrame) -> pl.DataFrame:
        return sessions.select(*self.by, WINDOW_START, SESSION_END)

    def _key_output(self, keys: pl.DataFrame) -> pl.DataFrame:
        return keys.select(
            self.et.to_dtype(pl.col(WINDOW_START)).alias("window_start"),
            self.et.to_dtype(pl.col(SESSION_END) + self.gap).alias("window_end"),
            *self.by,
        )
