"""A record-at-a-time reference of docs/semantics.md §3, written to be obviously correct, not fast.

Each record is processed alone, in arrival order, with plain Python: the watermark before
it, the windows it joins, lateness, closing. Aggregates are then computed by polars over
each window's member rows, so the reference and the engine agree on what ``mean`` or
``n_unique`` mean and differ only in how membership is decided.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import polars as pl

R = TypeVar("R")


def merged(
    inputs: Sequence[Sequence[R]],
    time: Callable[[R], int | None],
    ranks: Sequence[int] | None = None,
) -> list[tuple[int, R]]:
    """Several inputs merged record by record as Kafka Streams' ``PartitionGroup`` does
    (docs/semantics.md §3.9): the next record is always the head with the smallest event time;
    ties go to the smaller rank (default: input order; tables rank before streams). A record
    without an event time has its input's latest event time. Returns ``(input, record)``."""
    ranks = list(ranks) if ranks is not None else list(range(len(inputs)))
    heads = [0] * len(inputs)
    latest = [-math.inf] * len(inputs)
    out: list[tuple[int, R]] = []
    while True:
        best = None
        for i, records in enumerate(inputs):
            if heads[i] < len(records):
                t = time(records[heads[i]])
                key = (latest[i] if t is None else t, ranks[i])
                if best is None or key < best[0]:
                    best = (key, i)
        if best is None:
            return out
        i = best[1]
        record = inputs[i][heads[i]]
        t = time(record)
        latest[i] = max(latest[i], t if t is not None else -math.inf)
        out.append((i, record))
        heads[i] += 1


def interval_reference(
    order: list[tuple[int, dict[str, Any]]], *, within: int, grace: int, delay: int, how: str
) -> tuple[list[dict[str, Any]], list[dict]]:
    """An interval join record by record over ``(side, record)`` in order: the joined rows
    and the late records."""
    seen = -math.inf
    buffers: list[list[dict[str, Any]]] = [[], []]
    matched: dict[int, bool] = {}
    out: list[dict[str, Any]] = []
    late: list[dict] = []
    for side, row in order:
        w = seen - delay
        t = row["t"]
        if t + within + grace <= w:
            late.append(row)
        else:
            for partner in buffers[1 - side]:
                kept = partner["t"] + within + grace > w
                if (
                    kept
                    and row["k"] is not None
                    and partner["k"] == row["k"]
                    and abs(partner["t"] - t) <= within
                ):
                    left, right = (row, partner) if side == 0 else (partner, row)
                    out.append({**left, "t_right": right["t"], "x": right["x"]})
                    matched[id(left)] = True
            buffers[side].append(row)
            matched.setdefault(id(row), False)
        seen = max(seen, t)
        w = seen - delay
        for s in (0, 1):
            for gone in [r for r in buffers[s] if r["t"] + within + grace <= w]:
                buffers[s].remove(gone)
                if s == 0 and how == "left" and not matched[id(gone)]:
                    out.append({**gone, "t_right": None, "x": None})
    if how == "left":
        out += [{**r, "t_right": None, "x": None} for r in buffers[0] if not matched[id(r)]]
    return out, late


@dataclass
class Result:
    emitted: pl.DataFrame  # final rows in emission order
    late: list[int]  # arrival indices of late records
    closed_at: list[int] = field(default_factory=list)
    """Per emitted row: the arrival index of the record whose processing closed its window
    (the input's length for the end of input): where it goes on, downstream."""


@dataclass
class _Session:
    start: int
    last: int
    members: list[int] = field(default_factory=list)


def _windows_of(t: int, size: int, every: int) -> list[int]:
    """Starts of the windows [k·every, k·every + size) that contain t."""
    first = (t - size) // every + 1
    return [k * every for k in range(first, t // every + 1) if k * every <= t < k * every + size]


def reference(
    df: pl.DataFrame,
    *,
    time: str,
    kind: str,
    size: int = 0,
    every: int = 0,
    gap: int = 0,
    delay: int = 0,
    grace: int = 0,
    by: list[str],
    aggs: list[pl.Expr],
    partition: str | None = None,
) -> Result:
    """Windows of ``df`` (rows in arrival order); ``time`` holds integer times.

    With ``partition``, each partition keeps its own maximum time and the watermark is the
    minimum over all partitions of the data (−∞ until each has sent a record), never
    going back.
    """
    times = df.get_column(time).to_list()
    parts = df.get_column(partition).to_list() if partition else [None] * df.height
    part_max = dict.fromkeys(parts, -math.inf)
    keys = df.select(by).rows() if by else [()] * df.height
    watermark = -math.inf
    late: list[int] = []
    closed: list[tuple[int, int, tuple, list[int]]] = []  # (start, end, key, members)
    closed_at: list[int] = []
    windows: dict[tuple[int, tuple], list[int]] = {}
    sessions: dict[tuple, list[_Session]] = {}

    def close_windows(w: float, at: int) -> None:
        batch = []
        if kind == "session":
            for key, open_sessions in sessions.items():
                for s in [s for s in open_sessions if s.last + gap + grace <= w]:
                    open_sessions.remove(s)
                    batch.append((s.start, s.last + gap, key, s.members))
        else:
            for start, key in [wk for wk in windows if wk[0] + size + grace <= w]:
                batch.append((start, start + size, key, windows.pop((start, key))))
        closed.extend(sorted(batch, key=lambda r: (r[1], r[0], *(_order(k) for k in r[2]))))
        closed_at.extend([at] * len(batch))

    for i, (t, key, part) in enumerate(zip(times, keys, parts, strict=True)):
        if kind == "session":
            open_sessions = sessions.setdefault(key, [])
            linked = [s for s in open_sessions if s.start - gap < t < s.last + gap]
            if linked:
                merged = _Session(
                    min(t, *(s.start for s in linked)),
                    max(t, *(s.last for s in linked)),
                    sorted([i, *(m for s in linked for m in s.members)]),
                )
                for s in linked:
                    open_sessions.remove(s)
                open_sessions.append(merged)
            elif t + gap + grace <= watermark:
                late.append(i)
            else:
                open_sessions.append(_Session(t, t, [i]))
        else:
            starts = [s for s in _windows_of(t, size, every) if s + size + grace > watermark]
            if not starts:
                late.append(i)
            for s in starts:
                windows.setdefault((s, key), []).append(i)
        part_max[part] = max(part_max[part], t)
        watermark = max(watermark, min(part_max.values()) - delay)
        close_windows(watermark, i)
    close_windows(math.inf, df.height)
    return Result(_aggregate(df, closed, by, aggs), late, closed_at)


def _order(value: object) -> tuple[bool, object]:
    """Sort key putting nulls first, as polars does by default."""
    return (value is not None, value)


def _aggregate(df: pl.DataFrame, closed: list, by: list[str], aggs: list[pl.Expr]) -> pl.DataFrame:
    rows = []
    for start, end, key, members in closed:
        values = df[members].select(aggs).row(0, named=True)
        rows.append(
            {"window_start": start, "window_end": end, **dict(zip(by, key, strict=True)), **values}
        )
    schema = {
        "window_start": pl.Int64,
        "window_end": pl.Int64,
        **{b: df.schema[b] for b in by},
        **df.select(aggs).schema,
    }
    return pl.DataFrame(rows, schema=schema, orient="row")
