"""Why hasn't my window fired? ``Query.watermarks()``, ``lifecycle()`` and ``explain()``.

They read the query's pipeline under its lock (see :mod:`streamnb.engine.lookup`), so what
they show of the operators is as it stands between two batches: every input partition's
watermark (the event-time operator's own per-partition maxima), the next window to close and
the partitions or inputs that hold it back, and the records that went through each operator
(counted per batch by the pipeline).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np
import polars as pl

from streamnb.columns import SESSION_END, WINDOW_START
from streamnb.definitions.eventtime import EventTime
from streamnb.engine.core import NEG_INF, POS_INF
from streamnb.engine.executor import Pipeline, Runner, Step
from streamnb.engine.joins import IntervalJoin
from streamnb.engine.lookup import stateful_step
from streamnb.engine.sessions import SessionOperator
from streamnb.engine.windowing import WindowOperator, WindowOperatorBase
from streamnb.plan import SourceNode


# -- watermarks ------------------------------------------------------------------------------
@dataclass
class PartitionMark:
    """One input partition as the query's event-time operator sees it."""

    source: str
    partition: int | None
    watermark: int | None  # in the event time's unit; None: no record yet
    idle: bool
    lag: int | None
    active: bool = True  # its watermark counts towards the operator's (assigned, not idle)
    time: EventTime | None = None  # the event time its watermark is in


def _trackers(pipeline: Pipeline) -> list[Any]:
    """The operators that track a watermark (windows, sessions, interval joins), root first."""
    return [s.op for s in pipeline.steps if isinstance(s.op, (WindowOperatorBase, IntervalJoin))]


def _event_time(op: Any) -> EventTime:
    return op.et if isinstance(op, WindowOperatorBase) else op.times[0]


def partition_marks(runner: Runner, *, now: float | None = None) -> list[PartitionMark]:
    """Every input partition of ``runner`` (every Kafka partition, one row per other source)
    with its watermark, idleness and lag. Read under the pipeline's lock."""
    pipeline, ctx = runner.pipeline, runner.ctx
    now = time.monotonic() if now is None else now
    marks: list[PartitionMark] = []
    with pipeline.lock:
        trackers = _trackers(pipeline)
        idle = frozenset(ctx.partitions.idle)
        readers = dict((id(step), reader) for step, reader in runner.readers)
        for i, step in enumerate(pipeline.sources):
            assert isinstance(step.node, SourceNode)
            reader = readers.get(id(step))
            parts = reader.parts() if reader is not None else None
            if parts:
                for part in parts:
                    tracker = next((t for t in trackers if part.pid in t.tracker.part_max), None)
                    mark = None
                    if tracker is not None:
                        mark = tracker.tracker.part_max[part.pid] - tracker.tracker.delay
                    marks.append(
                        PartitionMark(
                            part.topic,
                            part.partition,
                            mark,
                            part.pid in idle,
                            part.lag,
                            active=part.pid not in idle,
                            time=_event_time(tracker or trackers[0]) if trackers else None,
                        )
                    )
                continue
            marks.append(_whole_source(runner, i, step, trackers, now))
    return marks


def _whole_source(
    runner: Runner, i: int, step: Step, trackers: list[Any], now: float
) -> PartitionMark:
    """A source read as one part: its watermark from the event-time merge of several inputs,
    else from the event-time operator (or the output's, for a plain stream)."""
    assert isinstance(step.node, SourceNode)
    name = step.node.source.name
    reader = next((r for s, r in runner.readers if s is step), None)
    lag = reader.lag() if reader is not None else None
    merge = runner.merge
    if merge is not None and merge.inputs[i].time is not None:
        inp = merge.inputs[i]
        assert inp.time is not None
        idle = (
            not inp.finished
            and not inp.keys
            and inp.empty_since is not None
            and now - inp.empty_since >= inp.max_idle
        )
        mark = None
        if inp.latest > NEG_INF:
            mark = inp.latest // (1_000_000 // inp.time.per_ms) - inp.time.delay
        return PartitionMark(name, None, mark, idle, lag, active=not idle, time=inp.time)
    tracker = trackers[0] if trackers else None
    if tracker is not None:
        latest = tracker.tracker.max_time
        mark = latest - tracker.tracker.delay if latest is not None else None
        return PartitionMark(name, None, mark, False, lag, time=_event_time(tracker))
    return PartitionMark(name, None, None, False, lag)


def _shown(value: int | None, et: EventTime | None) -> datetime | int | None:
    if value is None or et is None or value <= NEG_INF:
        return None
    if value >= POS_INF:
        return None
    return et.as_time(value)


def watermarks_frame(runner: Runner) -> pl.DataFrame:
    """``query.watermarks()``: ``source, partition, watermark, idle, lag``; ``watermark`` in
    the type of the event-time column (epoch ms for an integer one)."""
    marks = partition_marks(runner)
    dtypes = {m.time.dtype for m in marks if m.time is not None}
    raw = [
        m.watermark if m.watermark is not None and NEG_INF < m.watermark < POS_INF else None
        for m in marks
    ]
    if len(dtypes) == 1:
        watermark = pl.Series("watermark", raw, dtype=pl.Int64).cast(dtypes.pop())
    else:  # inputs with event times of different types: UTC datetimes
        shown = [_shown(m.watermark, m.time) for m in marks]
        times = [v.timestamp() * 1e6 if isinstance(v, datetime) else None for v in shown]
        watermark = pl.Series("watermark", times, dtype=pl.Float64).cast(pl.Datetime("us", "UTC"))
    return pl.DataFrame(
        {
            "source": pl.Series([m.source for m in marks], dtype=pl.String),
            "partition": pl.Series([m.partition for m in marks], dtype=pl.Int32),
            "watermark": watermark,
            "idle": pl.Series([m.idle for m in marks], dtype=pl.Boolean),
            "lag": pl.Series([m.lag for m in marks], dtype=pl.Int64),
        }
    )


# -- lifecycle: the next window and what holds it back ------------------------------------------
def _next_window(op: WindowOperatorBase) -> tuple[int, int] | None:
    """(start, end) of the open window that closes next (cheap: no scan of a tumbling or
    hopping window's state; sessions scan their closing times)."""
    if isinstance(op, WindowOperator):
        if op.min_start is None:
            return None
        return op.min_start, op.min_start + op.size
    assert isinstance(op, SessionOperator)
    if op.indexed:
        best: tuple[int, int] | None = None
        for run in op.sessions.runs:
            if not run.live:
                continue
            order = run.by_expiry[run.expired :]
            alive = np.flatnonzero(run.alive[order])
            if not alive.size:
                continue
            row = int(order[alive[0]])
            start = int(run.rows.item(row, WINDOW_START))
            end = int(run.rows.item(row, SESSION_END)) + op.gap
            if best is None or (end, start) < (best[1], best[0]):
                best = (start, end)
        return best
    if op.whole is None or not op.whole.height:
        return None
    first = (
        op.whole.select(pl.col(WINDOW_START), pl.col(SESSION_END) + op.gap)
        .sort(SESSION_END, WINDOW_START)
        .row(0)
    )
    return int(first[0]), int(first[1])


def lifecycle(runner: Runner, name: str, state: str) -> dict[str, Any]:
    """The next window to close and what holds it back, as data (for a UI panel; cheap
    enough to call ten times a second: no state is scanned for tumbling or hopping windows).

    Keys: ``query``, ``state``, ``operator`` (the window's plan node, or ``None``),
    ``watermark`` (the operator's), ``grace_ms``, ``open_windows`` (open sessions, for sessions),
    ``next_window`` (``{"window_start", "window_end", "closes_at"}`` or ``None``),
    ``waiting`` (``"watermark"`` while it waits, ``None`` without an open window), ``needs``
    (the event time an input must reach: ``closes_at`` + the watermark delay),
    ``pending`` (the watermark the next record brings, when partitions went idle since the
    last one: a watermark moves only with records; else ``None``), ``holding`` (the
    partitions or inputs at the watermark, each
    ``{"source", "partition", "watermark", "behind_ms", "lag", "reason"}`` with ``reason``
    ``"no records yet"`` or ``"behind"``), ``idle`` (idle partitions, ``{"source",
    "partition"}``), ``merge`` (the input the event-time merge of several inputs waits
    for, as ``status()["held_by"]``) and ``late_windows`` (late records per window, newest
    first, ``{"window_start", "window_end", "late"}``; tumbling and hopping windows).
    """
    pipeline = runner.pipeline
    marks = partition_marks(runner)
    with pipeline.lock:
        step = stateful_step(pipeline)
        op = step.op if step is not None else None
        out: dict[str, Any] = {
            "query": name,
            "state": state,
            "operator": step.node.describe() if step is not None else None,
            "watermark": None,
            "grace_ms": None,
            "open_windows": None,
            "next_window": None,
            "waiting": None,
            "needs": None,
            "pending": None,
            "holding": [],
            "idle": [{"source": m.source, "partition": m.partition} for m in marks if m.idle],
            "merge": runner.held_by(),
            "late_windows": [],
        }
        if not isinstance(op, WindowOperatorBase):
            return out
        et = op.et
        out["watermark"] = _shown(op.watermark, et)
        pending = _pending(marks)
        if pending is not None and pending > op.watermark:
            out["pending"] = _shown(pending, et)
        out["grace_ms"] = op.grace // et.per_ms
        out["open_windows"] = _count_open(op)
        out["late_windows"] = _late_windows(op)
        window = _next_window(op)
    if window is None:
        return out
    start, end = window
    out["next_window"] = {
        "window_start": et.as_time(start),
        "window_end": et.as_time(end),
        "closes_at": et.as_time(end + op.grace),
    }
    out["waiting"] = "watermark"
    out["needs"] = et.as_time(end + op.grace + op.delay)
    out["holding"] = _holding(marks, et)
    return out


def _late_windows(op: WindowOperatorBase, newest: int = 10) -> list[dict[str, Any]]:
    """Late records per window, newest window first (tumbling and hopping windows: a late
    record counts for the newest window it would have been in)."""
    if not isinstance(op, WindowOperator):
        return []
    et = op.et
    return [
        {
            "window_start": et.as_time(start),
            "window_end": et.as_time(start + op.size),
            "late": op.late_windows[start],
        }
        for start in sorted(op.late_windows, reverse=True)[:newest]
    ]


def _pending(marks: list[PartitionMark]) -> int | None:
    """The lowest watermark of the partitions that count, when every one has sent records."""
    live = [m.watermark for m in marks if m.active and m.time is not None]
    if not live or any(w is None for w in live):
        return None
    return min(w for w in live if w is not None)


def _count_open(op: WindowOperatorBase) -> int:
    """Open windows (sessions: open sessions); a keyed state knows, and so do a small state's
    frames per window; a small state of sessions (one frame) counts."""
    if isinstance(op, SessionOperator):
        if op.indexed:
            return len(op.sessions)
        return op.whole.height if op.whole is not None else 0
    assert isinstance(op, WindowOperator)
    return len(op.stores if op.stores is not None else op.partials)


def _holding(marks: list[PartitionMark], et: EventTime) -> list[dict[str, Any]]:
    """The partitions (or inputs) whose watermark is the lowest of those that count: they
    hold the query's watermark back."""
    live = [m for m in marks if m.active and m.time is not None]
    if not live:
        return []
    low = min(m.watermark if m.watermark is not None else NEG_INF for m in live)
    known = [m.watermark for m in live if m.watermark is not None]
    high = max(known) if known else None
    out = []
    for m in live:
        mark = m.watermark if m.watermark is not None else NEG_INF
        if mark != low:
            continue
        behind = None
        if m.watermark is not None and high is not None:
            behind = (high - m.watermark) / et.per_ms
        out.append(
            {
                "source": m.source,
                "partition": m.partition,
                "watermark": _shown(m.watermark, m.time),
                "behind_ms": behind,
                "lag": m.lag,
                "reason": "no records yet" if m.watermark is None else "behind",
            }
        )
    return out


# -- explain ---------------------------------------------------------------------------------
class Explanation(str):
    """``query.explain()``: a text (``str()`` is the text); a notebook shows it as is."""

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(str(self))

    def __repr__(self) -> str:
        return str(self)


def idle_timeouts(sources: Iterable[Any]) -> dict[str, int]:
    """How long a quiet partition holds the watermark, in ms, per Kafka topic of ``sources``
    (the ``idle_ms`` of :func:`explain` and :func:`why`)."""
    return {
        topic: getattr(source, "idle_ms", 0)
        for source in sources
        for topic in getattr(source, "topics", ())
    }


def explain(runner: Runner, name: str, state: str, idle_ms: Mapping[str, int]) -> Explanation:
    """The running plan, the output at the top, each operator with its records in / out,
    late and errors; then, for a window that has not fired, why."""
    pipeline = runner.pipeline
    lines = [f"query {name!r} ({state})"]
    with pipeline.lock:
        for step in pipeline.steps:
            label = step.node.describe()
            counts = f"in {step.records_in:,}, out {step.records_out:,}"
            if step.late:
                counts += f", late {step.late:,}"
            if step.errors:
                counts += f", errors {step.errors:,}"
            lines.append("  " * (step.depth + 1) + f"{label}  [{counts}]")
    info = lifecycle(runner, name, state)
    lines += ["", *why(info, idle_ms)]
    return Explanation("\n".join(lines))


def why(info: Mapping[str, Any], idle_ms: Mapping[str, int]) -> list[str]:
    """:func:`lifecycle`'s answer in words."""
    if info["operator"] is None:
        return ["no stateful operator: rows go out as they come"]
    window = info["next_window"]
    if window is None:
        if info["grace_ms"] is None:
            return [f"{info['operator']} holds a running aggregate (no windows to fire)"]
        return ["no window is open"]
    lines = [
        f"window {time_text(window['window_start'])}–{time_text(window['window_end'])} closes at "
        f"watermark {time_text(window['closes_at'])} (grace {duration_text(info['grace_ms'])}); "
        f"the watermark is {time_text(info['watermark'])}"
    ]
    if info["pending"] is not None:
        lines.append(
            f"the next record moves the watermark to {time_text(info['pending'])} (a partition "
            "went idle since the last one; a watermark moves only with records)"
        )
    for held in info["holding"]:
        where = where_text(held)
        if held["reason"] == "no records yet":
            wait = idle_ms.get(held["source"])
            after = f" or until it is idle ({duration_text(wait)} without records)" if wait else ""
            lines.append(f"{where} has sent no records yet: it holds the watermark{after}")
        elif held["behind_ms"]:
            lines.append(
                f"{where} is at {time_text(held['watermark'])}, "
                f"{duration_text(held['behind_ms'])} behind the others"
            )
        else:
            lines.append(
                f"{where} is at {time_text(held['watermark'])}: the window closes once an event "
                f"at or after {time_text(info['needs'])} arrives"
            )
    for idle in info["idle"]:
        lines.append(f"{where_text(idle)} is idle (it does not hold the watermark)")
    merge = info["merge"]
    if merge is not None:
        lines.append(
            f"input {merge['input']} holds the others back in the event-time merge "
            f"({merge['reason']}, {merge['ms']:.0f} ms)"
        )
    return lines


def where_text(part: Mapping[str, Any]) -> str:
    """``partition 3 of bids`` (Kafka), ``input nexmark[bid]`` (a source read as one part)."""
    if part["partition"] is None:
        return f"input {part['source']}"
    return f"partition {part['partition']} of {part['source']}"


def time_text(value: datetime | int | None) -> str:
    """An event time as :func:`why` words it: ``12:00:05`` (UTC; ms when there are some), an
    integer as is, ``None`` as −∞."""
    if value is None:
        return "−∞ (no event yet)"
    if isinstance(value, datetime):
        value = value.astimezone(timezone.utc)
        text = value.strftime("%H:%M:%S")
        if value.microsecond:
            text += f".{value.microsecond // 1000:03d}"
        return text
    return str(value)


def duration_text(ms: float | None) -> str:
    """Milliseconds in seconds: ``2 s``, ``0.25 s``."""
    if ms is None:
        return "?"
    if ms % 1000 == 0:
        return f"{int(ms // 1000)} s"
    return str(timedelta(milliseconds=ms).total_seconds()) + " s"
