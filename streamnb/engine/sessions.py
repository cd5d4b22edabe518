"""Session windows, exact per record, vectorised per batch.

Open sessions live in one frame: keys, ``s`` (earliest time), ``m`` (latest time) and the
partial aggregates. A batch is cut at *suspects*, records with ``time + grace < W`` (W the
watermark just before them). A record that is not a suspect can neither be late nor link to a
session that has closed (a closed session ends at ``m + gap`` with ``m + gap + grace ≤ W``, so
linking to it needs ``time < m + gap ≤ W − grace``). Between suspects, then, record-at-a-time
processing builds exactly the connected components of "less than ``gap`` apart" over the open
sessions and the new records, which one sort and one cumulative max compute for the whole
run. A suspect (rare: out of order by more than delay + grace) that can neither open a
session nor reach one within ``gap`` is late whatever comes before it: all such are set aside
in one vectorised pass (a clock far behind makes many). Each other suspect is a run of its
own, taken against the sessions of its key open at its moment. Keys never share a session,
so the runs are taken in *steps*, each holding every key's next run: a batch costs as many
steps as its busiest key has runs. Sessions close at the end of the batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar

import numpy as np
import polars as pl

from streamnb.columns import (
    COMPONENT,
    HIT,
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
from streamnb.engine.index import HashRuns
from streamnb.engine.state import key_hashes, worth_keying
from streamnb.engine.windowing import WindowOperatorBase


class SessionOperator(WindowOperatorBase):
    """Per-key sessions with inactivity gap ``gap_ms``.

    While few sessions are open, they are one frame, joined with each run of records and
    filtered to close (O(state) per batch, the fastest while the state is small). Once they
    are many more than a batch brings (:func:`worth_indexing`), they move for good to a
    :class:`~streamnb.engine.index.HashRuns`, under the hash of their keys and expiring at
    their closing time (``m + gap + grace``): a run of records reads and rewrites only its
    own keys' sessions, and closing takes only the sessions due, so a batch costs
    O(batch · log state), not O(state).
    """

    state_fields: ClassVar[tuple[str, ...]] = (*WindowOperatorBase.state_fields, "state")

    def __init__(self, *, gap_ms: int, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.gap = gap_ms * self.et.per_ms
        self.whole: pl.DataFrame | None = None  # open sessions, while few
        self.sessions = HashRuns(pl.DataFrame())  # open sessions, once many
        self.indexed = False  # whether they are many (in ``sessions``, not ``whole``)
        self.replaced: list[pl.DataFrame] = []  # this batch: earlier sessions merged away
        self.late_rows: list[pl.DataFrame] = []  # this batch: its late records so far

    @property
    def state(self) -> pl.DataFrame | None:
        """The open sessions (what a checkpoint saves)."""
        if self.indexed:
            return self.sessions.frame() if len(self.sessions) else None
        return self.whole.drop(TOUCHED, strict=False) if self.whole is not None else None

    @state.setter
    def state(self, frame: pl.DataFrame | None) -> None:
        # one frame; the next batch moves it to the index if it is worth it
        self.whole = frame.drop(TOUCHED, strict=False) if frame is not None else None
        self.indexed = False
        self.sessions = HashRuns(pl.DataFrame())

    def _index(self) -> None:
        """Move the open sessions from one frame to an index (for good)."""
        frame, self.whole, self.indexed = self.whole, None, True
        self.sessions = HashRuns(pl.DataFrame())
        if frame is not None and frame.height:
            frame = frame.drop(TOUCHED, strict=False)
            self.sessions.add(frame, self._hashes(frame), self._closing(frame))

    def _hashes(self, frame: pl.DataFrame) -> np.ndarray:
        if not self.by:
            return np.zeros(frame.height, dtype=np.uint64)
        return key_hashes(frame, self.by)

    def _closing(self, sessions: pl.DataFrame) -> np.ndarray:
        """When each session closes: once the watermark reaches ``m + gap + grace``."""
        return (sessions.get_column(SESSION_END).to_numpy() + (self.gap + self.grace)).astype(
            np.int64
        )

    def process(self, delta: Delta) -> Delta:
        try:
            return self._process(self._stamp(delta.rows))
        finally:
            self._report_late()

    def _late(self, stamped: pl.DataFrame, late: pl.Series) -> None:
        """Late records are set aside during a batch and reported at its end in arrival
        order (:meth:`_report_late`): lone late suspects go first, in bulk."""
        if late.any():
            self.late_rows.append(stamped.filter(late))

    def _report_late(self) -> None:
        if self.late_rows:
            rows = pl.concat(self.late_rows, how="diagonal_relaxed").sort(SEQ)
            self.late_rows = []
            super()._late(rows, pl.Series(np.ones(rows.height, dtype=bool)))

    def _process(self, stamped: pl.DataFrame) -> Delta:
        stamped = self._without_lone_late(stamped)
        if not self.indexed:
            result = self._process_whole(stamped)
            if self.whole is not None and worth_indexing(self.whole.height, stamped.height):
                self._index()
            return result
        if stamped.height == 0:  # the watermark may still have moved (marker rows)
            closed = self._close(self.watermark)
            return Delta(pl.concat(closed) if closed else self.nothing())
        had_sessions = len(self.sessions) > 0
        mark = self.sessions.mark()
        self.replaced = []
        for part in self._steps(stamped):
            self._merge(part, mark=mark)
        out: list[pl.DataFrame] = []
        deletes = None
        if self.emit == "update" and len(self.sessions):
            touched = self.sessions.since(mark)
            out.append(self._output(touched, pl.col(SESSION_END) + self.gap))
            if had_sessions:
                before = pl.concat(self.replaced) if self.replaced else None
                gone = self._keys(before if before is not None else touched.clear()).join(
                    self._keys(touched),
                    on=[*self.by, WINDOW_START, SESSION_END],
                    how="anti",
                    nulls_equal=True,
                )
                deletes = self._key_output(gone)
        self.replaced = []
        out.extend(self._close(self.watermark))
        self.sessions.compact()
        return Delta(pl.concat(out) if out else self.nothing(), deletes)

    def finish(self) -> Delta | None:
        self.closing = None  # emitted after every record
        closed = self._close(POS_INF) if self.indexed else self._close_whole(POS_INF)
        return Delta(pl.concat(closed) if closed else self.nothing())

    def _merge(self, records: pl.DataFrame, *, mark: int) -> None:
        """Add a step (per key, a run of records or one suspect) to the sessions open before
        each key's run.

        Sessions that closed before a run are left alone: nothing in the run can link to
        them, but they may lie within ``gap`` of sessions opened since (closing is deferred
        to the end of the batch), and must not be chained to those.
        """
        groups = self.by
        affected, hits = None, None
        if len(self.sessions):
            starts = self._run_watermarks(records)
            hits = self.sessions.find(self._hashes(starts))
            affected = hits.rows.with_row_index(HIT)
            # open at the run's start (null: another key under the same hash)
            affected = affected.filter(self._open_at(affected, starts).fill_null(False))
        components = self._link(records, affected)
        if components is None:
            return
        links, record_comp, parts = components
        if hits is not None and affected is not None and affected.height:
            # the sessions that records link to are replaced; the others stay as they are
            session_comp = links.filter(pl.col(ROW).is_null()).select(
                *groups, WINDOW_START, COMPONENT
            )
            touched_comps = record_comp.get_column(COMPONENT).unique().implode()
            linked = affected.join(
                session_comp, on=[*groups, WINDOW_START], nulls_equal=True
            ).filter(pl.col(COMPONENT).is_in(touched_comps))
            index = linked.get_column(HIT).to_numpy()
            if self.emit == "update":
                older = hits.older(mark)[index]
                self.replaced.append(self._keys(linked.filter(pl.Series(older))))
            self.sessions.kill(hits, index)
            parts.append(linked.drop(HIT))
        merged = pl.concat(parts, how="diagonal")
        new_sessions = (
            self.agg.combine(merged, [COMPONENT, *groups])
            .join(
                merged.group_by(COMPONENT).agg(
                    pl.col(WINDOW_START).min(), pl.col(SESSION_END).max()
                ),
                on=COMPONENT,
            )
            .drop(COMPONENT)
        )
        self.sessions.add(new_sessions, self._hashes(new_sessions), self._closing(new_sessions))

    def _without_lone_late(self, stamped: pl.DataFrame) -> pl.DataFrame:
        """The batch without its *lone late* suspects, which are set aside as late.

        A suspect at ``t`` (watermark ``W`` before it) with ``t + gap + grace ≤ W`` cannot open
        a session of its own (it would be closed already), so it is late unless it links to a
        session open at its moment. Every such session is a chain of the batch's records and
        the held sessions, less than ``gap`` apart, so linking to it needs a record of the
        batch (before or after it: the test is conservative) or a held session of the same
        key within ``gap`` of ``t``. Without one, the suspect is late whatever the batch does
        before it, and changes nothing: all of them are found in one vectorised pass, where
        the runs would take each alone (about 18 polars queries each). The others stay
        suspects (:meth:`_steps`). Keys are compared by hash (a collision only keeps a
        suspect)."""
        if not stamped.height:
            return stamped
        times = stamped.get_column(TIME).to_numpy()
        watermarks = stamped.get_column(WATERMARK).to_numpy()
        lone = times + (self.gap + self.grace) <= watermarks  # suspects that cannot open one
        if not lone.any():
            return stamped
        hashes = self._hashes(stamped)
        if self.indexed:
            held = self.sessions.find(hashes[lone]).rows if len(self.sessions) else None
        else:
            held = self.whole
        if held is not None and held.height:
            starts = held.get_column(WINDOW_START).to_numpy()
            ends = held.get_column(SESSION_END).to_numpy()
            held_hashes = self._hashes(held)
        else:
            starts = ends = np.empty(0, dtype=np.int64)
            held_hashes = np.empty(0, dtype=np.uint64)
        low = min(int(times.min()), int(starts.min()) if starts.size else int(times.min()))
        high = max(int(times.max()), int(ends.max()) if ends.size else int(times.max()))
        span = high - low + 2 * self.gap + 2  # one key's stretch of the number line
        ids = np.unique(np.concatenate([hashes, held_hashes]), return_inverse=True)[1]
        if (int(ids.max()) + 1) * span >= 2**62:
            return stamped  # the codes would not fit: every suspect is taken alone
        base = ids.astype(np.int64) * span - low  # a time t of a key codes as base + t
        code = base[: stamped.height] + times
        wanted = np.flatnonzero(lone)
        at = code[wanted]
        points = np.sort(code)  # the batch's records, each a point
        near = np.searchsorted(points, at + self.gap, side="left") - np.searchsorted(
            points, at - self.gap, side="right"
        )
        links = near > 1  # itself excluded
        if starts.size:
            # held sessions [s, m], by s: the latest m among those with s < t + gap
            held_base = base[stamped.height :]
            order = np.argsort(held_base + starts, kind="stable")
            firsts = (held_base + starts)[order]
            reach = np.maximum.accumulate((held_base + ends)[order])
            reached = np.searchsorted(firsts, at + self.gap, side="left")
            found = reached > 0
            links[found] |= reach[reached[found] - 1] > at[found] - self.gap
        late = np.zeros(stamped.height, dtype=bool)
        late[wanted[~links]] = True
        if not late.any():
            return stamped
        mask = pl.Series(late)
        self._late(stamped, mask)
        return stamped.filter(~mask)

    def _steps(self, stamped: pl.DataFrame) -> Iterator[pl.DataFrame]:
        """A batch cut into steps. Per key, its records are cut into runs of ordinary records,
        each suspect a run of its own, in arrival order; step ``i`` holds every key's ``i``-th
        run. Keys never meet in a session, so a step takes all its keys' runs at once, and a
        batch takes as many steps as its busiest key has runs, not as many as it has suspects.
        A step with suspects marks them (column ``SUSPECT``)."""
        suspect = (pl.col(TIME) + self.grace < pl.col(WATERMARK)).alias(SUSPECT)
        flags = stamped.select(suspect).to_series()
        if not flags.any():
            yield stamped
            return
        starts = pl.col(SUSPECT) | pl.col(SUSPECT).shift(1, fill_value=False)
        run = starts.cum_sum().over(self.by) if self.by else starts.cum_sum()
        steps = stamped.with_columns(flags).with_columns(run.alias(RUN))
        parts = steps.partition_by(RUN, as_dict=True, maintain_order=True, include_key=False)
        for _, part in sorted(parts.items()):  # a key's runs in its order
            yield part if part.get_column(SUSPECT).any() else part.drop(SUSPECT)

    def _run_watermarks(self, records: pl.DataFrame) -> pl.DataFrame:
        """Each key of a step with the watermark before its run (``WATERMARK``)."""
        if not self.by:
            return records.select(pl.col(WATERMARK).first())
        return records.group_by(self.by, maintain_order=True).agg(pl.col(WATERMARK).first())

    def _open_at(self, sessions: pl.DataFrame, starts: pl.DataFrame) -> pl.Series:
        """Whether each of ``sessions`` (of a step's keys) is open when its key's run begins
        (``starts``: :meth:`_run_watermarks`); null for the sessions of keys not in the step."""
        if self.by:
            at = sessions.join(
                starts, on=self.by, how="left", nulls_equal=True, maintain_order="left"
            ).get_column(WATERMARK)
        else:
            at = pl.repeat(starts.item(), sessions.height, dtype=pl.Int64, eager=True)
        ends = sessions.get_column(SESSION_END)
        return ends + (self.gap + self.grace) > at

    def _link(
        self, records: pl.DataFrame, affected: pl.DataFrame | None
    ) -> tuple[pl.DataFrame, pl.DataFrame, list[pl.DataFrame]] | None:
        """The connected components of a step's records and the open sessions ``affected``
        (less than ``gap`` apart, per key): the links (records and sessions, each with its
        ``COMPONENT``), each record's component, and the records' partials per component.
        A suspect that would open a session already closed is set aside as late; ``None``
        when no record is left."""
        groups = self.by
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
        reach = _reach(links, groups)
        links = links.with_columns(
            (reach.is_null() | (pl.col(WINDOW_START) >= reach + self.gap))
            .cum_sum()
            .alias(COMPONENT)
        )
        record_comp = links.filter(pl.col(ROW).is_not_null()).select(
            pl.col(ROW).alias(SEQ), COMPONENT
        )
        records = records.join(record_comp, on=SEQ, how="left")
        if SUSPECT in records.columns:
            # a suspect is a run of its own: its component holds a session, or only itself
            linked = links.filter(pl.col(ROW).is_null()).get_column(COMPONENT).unique()
            late = records.select(
                pl.col(SUSPECT)
                & ~pl.col(COMPONENT).is_in(linked.implode())
                & (pl.col(TIME) + (self.gap + self.grace) <= pl.col(WATERMARK))
            ).to_series()
            records = records.drop(SUSPECT)
            if late.any():
                self._late(records.drop(COMPONENT), late)
                records = records.filter(~late)
                if not records.height:
                    return None
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
        return links, record_comp, parts

    def _close(self, watermark: int) -> list[pl.DataFrame]:
        if not len(self.sessions):
            return []
        closed = self.sessions.expire(watermark, take=self.emit == "final")
        if self.emit == "final" and closed is not None and closed.height:
            return [self._output(closed, pl.col(SESSION_END) + self.gap)]
        return []

    # -- while few sessions are open: one frame (f4df2aa's code, reach by :func:`_reach`) -------
    def _process_whole(self, stamped: pl.DataFrame) -> Delta:
        if stamped.height == 0:  # the watermark may still have moved (marker rows)
            closed = self._close_whole(self.watermark)
            return Delta(pl.concat(closed) if closed else self.nothing())
        before = (
            self._keys(self.whole) if self.emit == "update" and self.whole is not None else None
        )
        if self.whole is not None and self.emit == "update":
            self.whole = self.whole.with_columns(pl.lit(False).alias(TOUCHED))
        for part in self._steps(stamped):
            self._merge_whole(part)
        out: list[pl.DataFrame] = []
        deletes = None
        if self.emit == "update" and self.whole is not None:
            touched = self.whole.filter(pl.col(TOUCHED))
            out.append(self._output(touched, pl.col(SESSION_END) + self.gap))
            if before is not None:
                gone = before.join(
                    self._keys(self.whole), on=list(before.columns), how="anti", nulls_equal=True
                )
                deletes = self._key_output(gone)
        out.extend(self._close_whole(self.watermark))
        return Delta(pl.concat(out) if out else self.nothing(), deletes)

    def _merge_whole(self, records: pl.DataFrame) -> None:
        """:meth:`_merge` on the frame of open sessions (see there)."""
        groups = self.by
        state = self.whole
        if state is None:
            affected, rest = None, None
        else:
            is_open = self._open_at(state, self._run_watermarks(records)).fill_null(False)
            affected, rest = state.filter(is_open), state.filter(~is_open)
        components = self._link(records, affected)
        if components is None:
            return
        links, record_comp, parts = components
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
        self.whole = (
            pl.concat([rest, new_sessions], how="diagonal")
            if rest is not None and rest.height
            else new_sessions
        )

    def _close_whole(self, watermark: int) -> list[pl.DataFrame]:
        if self.whole is None:
            return []
        closes = pl.col(SESSION_END) + self.gap + self.grace <= watermark
        closed = self.whole.filter(closes)
        self.whole = self.whole.filter(~closes)
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


def worth_indexing(held: int, batch: int) -> bool:
    """Whether ``held`` open sessions are worth an index for batches of ``batch`` records:
    :func:`~streamnb.engine.state.worth_keying` of ``held`` for 16 batches (beyond
    :data:`~streamnb.engine.state.KEYED_MIN` and 64 batches at the defaults). Measured with
    ``bench/keyed_sessions.py``'s workload (wall and CPU time, 2 busy cores): by batches of
    50 K records the frame is faster at every size measured, 1 K to 1 M open sessions (20
    batches; 1 M: 410 K vs 243 K records/s); by batches of 5 K, the frame is faster at 100 K
    open (20 batches), even at 300 K (60), and the index faster at 1 M (200: 192 K vs 113 K).
    """
    return worth_keying(held, 16 * batch)


def _reach(links: pl.DataFrame, groups: list[str]) -> pl.Expr:
    """Per link (sorted by key, then start): the latest end among the key's links before it
    (null for a key's first).

    A cumulative max over each key (``over``) costs a hash of the keys per batch; on links
    sorted by key, one cumulative max of ``end + key number · span`` (``span`` more than the
    ends' range, so a key's values all exceed the keys' before) gives the same, when the
    products fit in 62 bits."""
    end = pl.col(SESSION_END)
    if not groups:
        return end.cum_max().shift(1)
    low, high = links.get_column(SESSION_END).min(), links.get_column(SESSION_END).max()
    if not isinstance(low, int) or not isinstance(high, int):
        return end.cum_max().shift(1).over(groups)
    span = high - low + 1
    if span * (links.height + 1) >= 2**62:
        return end.cum_max().shift(1).over(groups)
    key = pl.struct(groups).rle_id().cast(pl.Int64)
    offset = key * span - low
    running = ((end + offset).cum_max() - offset).shift(1)
    return pl.when(key == key.shift(1)).then(running)
