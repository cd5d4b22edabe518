"""Event-time merging of a query's inputs (docs/semantics.md §3.9), vectorised.

Record-at-a-time, Kafka Streams merges the partitions of a task by always taking the record
at the head with the smallest timestamp (ties: table updates first, then input order). That
order is a stable sort of every input's records by the *running maximum* of their input's
event times: an out-of-order record goes right after the record that raised its input's
maximum, as it leaves the head of its queue right after it. The sort key of a record never
decreases along its input, so a record may be released as soon as no input that may still
send can send anything before it: input ``j`` will only ever send records whose key is at
least its running maximum ``M_j`` (minus infinity before its first record). A record of input
``i`` with key ``k`` is released once ``(k, rank_i) < (M_j, rank_j)`` for every other input
``j`` still able to send. Per input, the released records are a prefix, found by a binary
search; the prefixes of all inputs form one merged batch.

An input with nothing buffered holds the others back while it is known to have unread
records (a bounded source until its end; Kafka while a position is below its end offset),
and for at most ``max_idle`` of wall clock otherwise. An input without an event time is not
synchronised: its records go at once, in arrival order.
"""

from __future__ import annotations

import time
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import numpy as np
import polars as pl

from streamnb.columns import ORDER
from streamnb.definitions.eventtime import EventTime
from streamnb.engine.core import NEG_INF
from streamnb.types import HeldBack

DEFAULT_MAX_IDLE_MS = 100
"""How long an input with nothing buffered and nothing known to be unread holds the others."""

_NS_PER_MS = 1_000_000

Hold = tuple[int, int]
"""What an input may still send: nothing before ``(key, rank)``."""


@dataclass(eq=False)
class Input:
    """One input of the merge: its queue of records not yet released."""

    name: str
    time: EventTime | None  # None: not synchronised
    rank: int  # tie-break at equal keys: tables first, then input order
    max_idle: float  # seconds
    frames: list[pl.DataFrame] = field(default_factory=list)
    keys: list[np.ndarray] = field(default_factory=list)
    latest: int = NEG_INF  # the running maximum of its event times (ns)
    released_latest: int = NEG_INF  # the same up to its last released record
    finished: bool = False
    empty_since: float | None = None  # when its queue ran empty while it could still send

    @property
    def buffered(self) -> int:
        return sum(len(k) for k in self.keys)

    def sort_keys(self, rows: pl.DataFrame) -> np.ndarray:
        """The records' merge keys: the running maximum of the input's event times, in ns.

        A record without an event time takes the key of the record before it (it is an
        error further on, never late)."""
        assert self.time is not None
        scale = _NS_PER_MS // self.time.per_ms
        times = self.time.values(rows)
        keys = (
            (times * scale)
            .fill_null(NEG_INF)
            .cum_max()
            .clip(lower_bound=self.latest)
            .to_numpy(allow_copy=True)
        )
        self.latest = int(keys[-1])
        return keys


@dataclass(frozen=True)
class Holder:
    """The input that holds the others back, why, and since when (monotonic seconds)."""

    name: str
    reason: Literal["unread records", "max_idle"]
    since: float


class Merge:
    """Merges the records of several inputs in event-time order, a batch at a time."""

    def __init__(self, inputs: Sequence[Input]) -> None:
        self.inputs = list(inputs)
        self.order = 0  # the ORDER of the next released record
        self.holder: Holder | None = None

    def held_by(self) -> HeldBack | None:
        """The input that holds the others back, why, and for how long (``status()``)."""
        holder = self.holder
        if holder is None:
            return None
        return {
            "input": holder.name,
            "reason": holder.reason,
            "ms": round((time.monotonic() - holder.since) * 1000, 1),
        }

    def offer(self, i: int, rows: pl.DataFrame) -> None:
        """Queue input ``i``'s newly read records."""
        inp = self.inputs[i]
        if rows.height == 0:
            return
        inp.empty_since = None
        inp.frames.append(rows)
        if inp.time is None:
            inp.keys.append(np.full(rows.height, NEG_INF, dtype=np.int64))
        else:
            inp.keys.append(inp.sort_keys(rows))

    def note(self, i: int, rows: pl.DataFrame) -> None:
        """Input ``i``'s records went through without the merge (a table bootstrapping):
        only its running maximum moves."""
        inp = self.inputs[i]
        if rows.height and inp.time is not None:
            inp.sort_keys(rows)

    def forget_queued(self, inputs: Iterable[int]) -> None:
        """Drop the queued records of ``inputs`` (they will be read again: a worker resuming a
        task from its last commit); each one's running maximum goes back to its last released
        record, so the records come back with the same keys."""
        for i in inputs:
            inp = self.inputs[i]
            inp.frames, inp.keys, inp.latest = [], [], inp.released_latest

    def snapshot(self) -> dict[str, Any]:
        """The queued records and where each input stands (for a checkpoint that keeps what
        cannot be read again from an offset)."""
        return {
            "order": self.order,
            "inputs": [
                (
                    pl.concat(inp.frames, how="vertical_relaxed") if inp.frames else None,
                    np.concatenate(inp.keys) if inp.keys else None,
                    inp.latest,
                    inp.released_latest,
                )
                for inp in self.inputs
            ],
        }

    def restore(self, saved: dict[str, Any]) -> None:
        """Back to what :meth:`snapshot` saved."""
        self.order = saved["order"]
        for inp, (frame, keys, latest, released) in zip(self.inputs, saved["inputs"], strict=True):
            inp.frames = [frame] if frame is not None else []
            inp.keys = [keys] if keys is not None else []
            inp.latest, inp.released_latest = latest, released

    def finish(self, i: int) -> None:
        self.inputs[i].finished = True

    def release(
        self, unread: Sequence[bool], now: float | None = None
    ) -> list[tuple[int, pl.DataFrame]]:
        """The records that nothing can precede any more, per input (in merged order: each
        carries its place in the merged order as the hidden column ``ORDER``).

        ``unread[i]``: input ``i`` is known to have records not yet read.
        """
        now = time.monotonic() if now is None else now
        holds = [self._hold(i, unread[i], now) for i in range(len(self.inputs))]
        taken: list[tuple[int, pl.DataFrame, np.ndarray]] = []
        blocked: tuple[Hold, int] | None = None  # the hold that kept records back
        for i, inp in enumerate(self.inputs):
            if not inp.keys:
                continue
            keys = np.concatenate(inp.keys) if len(inp.keys) > 1 else inp.keys[0]
            bound = min((h for j, h in enumerate(holds) if j != i and h is not None), default=None)
            if inp.time is None or bound is None:
                n = len(keys)
            else:
                # (key, rank_i) < (M, rank_j): key < M, or key == M and rank_i < rank_j
                side: Literal["left", "right"] = "right" if inp.rank < bound[1] else "left"
                n = int(np.searchsorted(keys, bound[0], side=side))
            if n < len(keys) and bound is not None and (blocked is None or bound < blocked[0]):
                blocked = (bound, holds.index(bound))
            if n == 0:
                continue
            rows = (
                pl.concat(inp.frames, how="vertical_relaxed")
                if len(inp.frames) > 1
                else inp.frames[0]
            )
            taken.append((i, rows.head(n), keys[:n]))
            inp.released_latest = int(keys[n - 1])
            inp.frames = [rows.slice(n)] if n < len(keys) else []
            inp.keys = [keys[n:]] if n < len(keys) else []
        self._note_holder(blocked, unread, now)
        return self._ordered(taken)

    def _hold(self, i: int, unread: bool, now: float) -> Hold | None:
        """What input ``i`` may still send, or ``None`` when it holds nothing back."""
        inp = self.inputs[i]
        if inp.time is None or inp.finished:
            return None
        if inp.keys or unread:
            inp.empty_since = None
            return (inp.latest, inp.rank)
        if inp.empty_since is None:
            inp.empty_since = now
        if now - inp.empty_since < inp.max_idle:
            return (inp.latest, inp.rank)
        return None  # idle: it no longer holds the others

    def _note_holder(
        self, blocked: tuple[Hold, int] | None, unread: Sequence[bool], now: float
    ) -> None:
        if blocked is None:
            self.holder = None
            return
        j = blocked[1]
        name = self.inputs[j].name
        reason: Literal["unread records", "max_idle"] = (
            "unread records" if unread[j] or self.inputs[j].keys else "max_idle"
        )
        if self.holder is None or self.holder.name != name or self.holder.reason != reason:
            self.holder = Holder(name, reason, now)

    def _ordered(
        self, taken: list[tuple[int, pl.DataFrame, np.ndarray]]
    ) -> list[tuple[int, pl.DataFrame]]:
        """Number the released records in merged order (``ORDER``), per input.

        Every input's keys are sorted, so a record's place is its index in its input plus,
        for every other input, how many of its records come first: a binary search (those
        with a smaller key, and those with an equal one when that input ranks first)."""
        out = []
        for i, rows, keys in taken:
            place = np.arange(len(keys), dtype=np.int64) + self.order
            rank = self.inputs[i].rank
            for j, _, other in taken:
                if j != i:
                    side: Literal["left", "right"] = (
                        "right" if self.inputs[j].rank < rank else "left"
                    )
                    place += np.searchsorted(other, keys, side=side)
            out.append((i, rows.with_columns(pl.Series(ORDER, place))))
        self.order += sum(len(keys) for _, _, keys in taken)
        return out


K = TypeVar("K", bound=Hashable)


def runs(released: list[tuple[K, pl.DataFrame]]) -> list[tuple[K, pl.DataFrame]]:
    """The released records as runs of one input each, in merged order (for pipelines whose
    operators cannot take a merged batch at once)."""
    if len(released) <= 1:
        return [(i, rows.drop(ORDER)) for i, rows in released]
    index = (
        pl.concat(
            [
                rows.select(ORDER, pl.lit(n, pl.Int32).alias("input"))
                for n, (_, rows) in enumerate(released)
            ]
        )
        .sort(ORDER)
        .with_row_index("at")
    )
    starts = index.filter(pl.col("input").ne_missing(pl.col("input").shift(1)))
    frames = [rows.drop(ORDER) for _, rows in released]
    taken = [0] * len(frames)  # rows of each input already in a run
    out = []
    ats = starts.get_column("at").to_list()
    for n, at, end in zip(
        starts.get_column("input").to_list(), ats, [*ats[1:], index.height], strict=True
    ):
        out.append((released[n][0], frames[n].slice(taken[n], end - at)))
        taken[n] += end - at
    return out
