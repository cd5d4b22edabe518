"""What flows between operators, and what operators report to their query."""

from __future__ import annotations

import json
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import polars as pl

from streamnb.columns import OFFSET, PARTITION, visible

ERROR_SCHEMA = pl.Schema(
    {
        "source": pl.String,
        "position": pl.Int64,
        "reason": pl.String,
        "record": pl.String,
        "raw": pl.Binary,
        "topic": pl.String,
        "partition": pl.Int32,
        "offset": pl.Int64,
    }
)
"""Columns of ``Query.errors()``: where the record came from (``source`` and ``position``;
for Kafka also ``topic``, ``partition``, ``offset``), why it failed, the record as text and,
when it arrived as bytes, the original bytes (``raw``)."""

NEG_INF = -(2**62)
"""Stands for a watermark of −∞ in Int64 arithmetic (no event seen yet)."""
POS_INF = 2**62
"""Stands for a watermark of +∞ (end of a bounded source)."""


@dataclass
class Delta:
    """A change to an operator's output.

    ``rows`` are appended records (plain streams, final windows) or upserts (tables, update
    windows); ``deletes`` holds the key columns of table rows that no longer exist (a session
    merged into another, a row that stopped passing a filter).
    """

    rows: pl.DataFrame
    deletes: pl.DataFrame | None = None

    def __bool__(self) -> bool:
        return self.rows.height > 0 or (self.deletes is not None and self.deletes.height > 0)


def error_rows(
    df: pl.DataFrame,
    reason: str | pl.Series,
    *,
    source: str,
    positions: pl.Series | None = None,
    partitions: Partitions | None = None,
) -> pl.DataFrame:
    """Error side-output rows for the records of ``df`` (already rows, no bytes left): each
    record as JSON of its visible columns, and the reason (one for all, or one per row).

    Records that carry their origin in hidden columns keep it: ``OFFSET`` gives the offset
    (and the position, unless ``positions`` says otherwise), ``PARTITION`` with
    ``partitions`` the topic and partition of a Kafka record.
    """
    n = df.height
    shown = visible(df)
    record = (
        shown.select(pl.struct(pl.all()).struct.json_encode()).to_series()
        if shown.width
        else pl.Series(["{}"] * n)
    )
    offsets = df.get_column(OFFSET) if OFFSET in df.columns else pl.Series([None] * n)
    topics: list[str | None] = [None] * n
    numbers: list[int | None] = [None] * n
    if PARTITION in df.columns and partitions is not None:
        origin = {pid: key for key, pid in partitions.ids.items() if key[0] == "kafka"}
        for i, pid in enumerate(df.get_column(PARTITION).to_list()):  # the bad rows only
            key = origin.get(pid)
            if key is not None:
                topics[i], numbers[i] = key[1], key[2]
    return pl.DataFrame(
        {
            "source": [source] * n,
            "position": positions if positions is not None else offsets,
            "reason": reason if isinstance(reason, pl.Series) else [reason] * n,
            "record": record,
            "raw": [None] * n,
            "topic": topics,
            "partition": numbers,
            "offset": offsets,
        },
        schema=ERROR_SCHEMA,
    )


def error_from_python(
    source: str,
    position: int | None,
    reason: str,
    record: Any,
    *,
    topic: str | None = None,
    partition: int | None = None,
    offset: int | None = None,
) -> pl.DataFrame:
    """One error row for a record that never became a polars row (undecodable, wrong type)."""
    raw = record if isinstance(record, bytes) else None
    if raw is not None:
        text = raw.decode("utf-8", errors="backslashreplace")
    else:
        try:
            text = json.dumps(record, default=str)
        except (TypeError, ValueError):
            text = repr(record)
    row = [source, position, reason, text, raw, topic, partition, offset]
    return pl.DataFrame([[v] for v in row], schema=ERROR_SCHEMA, orient="col")


class SideOutput:
    """A bounded, thread-safe list of frames: the newest ``keep`` rows, and the total count."""

    def __init__(self, keep: int | None, schema: pl.Schema | None = None) -> None:
        self._keep = keep
        self.schema = schema  # of an empty side output
        self._frames: deque[pl.DataFrame] = deque()
        self._rows = 0
        self.count = 0
        self._lock = threading.Lock()

    def add(self, df: pl.DataFrame) -> None:
        if df.height == 0:
            return
        with self._lock:
            self.count += df.height
            self._frames.append(df)
            self._rows += df.height
            while self._keep is not None and self._rows - self._frames[0].height >= self._keep:
                self._rows -= self._frames.popleft().height

    def frame(self) -> pl.DataFrame:
        with self._lock:
            frames = list(self._frames)
        if not frames:
            return pl.DataFrame(schema=self.schema)
        df = pl.concat(frames, how="diagonal_relaxed")
        return df.tail(self._keep) if self._keep is not None else df


@dataclass
class Partitions:
    """The source partitions of a query: stable small ids, which are assigned, which idle.

    Sources register what they read from; window operators take the watermark as the
    minimum over the assigned partitions that are not idle.
    """

    ids: dict[tuple[Any, ...], int] = field(default_factory=dict)
    assigned: set[int] = field(default_factory=set)
    idle: set[int] = field(default_factory=set)
    scopes: dict[int, tuple[Any, ...]] = field(default_factory=dict)
    """Which source a partition belongs to (``("kafka", topic)``, ``("records", uid)``)."""

    def id_for(self, *key: Any) -> int:
        """The id of partition ``key`` (e.g. ``("kafka", topic, partition)``), made on first use;
        ``key[:2]`` names its source."""
        pid = self.ids.setdefault(key, len(self.ids))
        self.scopes[pid] = key[:2]
        return pid

    def active(self, scope: frozenset[tuple[Any, ...]] | None = None) -> set[int]:
        """Assigned partitions that are not idle; with ``scope``, only those of these sources
        (an operator waits for the partitions of its own inputs, not of a query's others)."""
        live = self.assigned - self.idle
        if scope is None:
            return live
        return {p for p in live if p not in self.scopes or self.scopes[p] in scope}


LISTENING_STEP = 0.25
"""The most wall-clock seconds that one read of a reader's loop adds to a
:class:`ListeningClock` (a loop reads at least every 0.1 s when all is well)."""


class ListeningClock:
    """Seconds a reader has been listening: the clock that idle timeouts run on.

    A partition is idle after its ``idle_timeout`` without records. A process that did not read
    for a while (stopped, starved of CPU, stuck in one long batch) heard nothing from its
    partitions because it did not listen, while their records waited in the broker. On the
    wall clock, its first read after such a stall brings one partition's records before
    another's, and the other, idle by then, lets the watermark pass its waiting records, which
    come late (a worker stopped twice for 1.6 s with ``idle_timeout="1s"`` counted 83 and 541
    of 6 000 records late). This clock follows the wall clock from one read to the next, but
    a read adds at most :data:`LISTENING_STEP`, so a stall counts as a short silence.
    """

    def __init__(self, wall: float) -> None:
        self._wall = wall  # ``time.monotonic()`` at the last tick
        self.now = 0.0

    def tick(self, wall: float) -> float:
        """A read at ``wall`` (``time.monotonic()``): the listening time now."""
        self.now += min(max(wall - self._wall, 0.0), LISTENING_STEP)
        self._wall = max(self._wall, wall)
        return self.now


@dataclass
class Context:
    """Per-query services that operators report to (side outputs, counters, watermark)."""

    late: SideOutput = field(default_factory=lambda: SideOutput(10_000))
    errors: SideOutput = field(default_factory=lambda: SideOutput(10_000, ERROR_SCHEMA))
    fail_on_error: bool = False
    watermarks: dict[int, int] = field(default_factory=dict)
    partitions: Partitions = field(default_factory=Partitions)
    error_listeners: list[Callable[[pl.DataFrame], None]] = field(default_factory=list)
    rejected: int = 0
    """Records the sources read and rejected (see :meth:`reject`): part of ``records_in``."""
    state_dir: Path | None = None
    """Where keyed state keeps its rows: ``None`` in memory, else in files under this directory
    (``state="disk"``)."""
    producer: Any = None
    """A Kafka producer that sinks share instead of making their own: the worker's, which is
    transactional under exactly-once, so that output, state changelog and input offsets
    commit together."""
    deadline: float | None = None
    """Set when the query is asked to stop: the ``time.monotonic()`` by which its operators
    must have closed. A sink waiting for deliveries gives up in time to report what is left."""

    def reject(self, rows: pl.DataFrame) -> None:
        """Error rows for records a source read but could not turn into rows (undecodable,
        wrong type, bad event time): they count as records in (``rejected``), then as
        :meth:`error` s."""
        self.rejected += rows.height
        self.error(rows)

    def error(self, rows: pl.DataFrame) -> None:
        """Record error rows; with ``errors="fail"`` raise the first one's reason."""
        if rows.height == 0:
            return
        self.errors.add(rows)
        for listener in self.error_listeners:  # e.g. a dead-letter topic
            listener(rows)
        if self.fail_on_error:
            from streamnb.exceptions import DecodeError

            first = rows.row(0, named=True)
            where = f"source {first['source']}"
            if first["topic"] is not None:
                where = f"topic {first['topic']}, partition {first['partition']}"
            if first["offset"] is not None:
                where += f", offset {first['offset']}"
            elif first["position"] is not None:
                where += f", position {first['position']}"
            raise DecodeError(f"{first['reason']} ({where}, record {first['record']})")


class Operator:
    """A runtime operator: consumes deltas, produces deltas."""

    state_fields: ClassVar[tuple[str, ...]] = ()
    """The attributes that hold the operator's state: what a checkpoint saves and restores.
    Values are polars frames, plain Python data, or objects with ``snapshot``/``restore``."""

    def snapshot(self) -> dict[str, Any]:
        """The operator's state as picklable data (see :mod:`streamnb.engine.checkpoint`)."""
        state = {}
        for name in self.state_fields:
            value = getattr(self, name)
            state[name] = value.snapshot() if hasattr(value, "snapshot") else value
        return state

    def restore(self, state: dict[str, Any]) -> None:
        """Put back a state taken by :meth:`snapshot` (on a freshly built operator)."""
        for name in self.state_fields:
            current = getattr(self, name)
            if hasattr(current, "restore"):
                current.restore(state[name])
            else:
                setattr(self, name, state[name])

    def parts(self, rows: int) -> Iterator[tuple[str, Any]]:
        """The whole state, for a base: ``("full", state)`` for :meth:`restore`, then any
        ``("changes", changes)`` for :meth:`apply_changes` over it. Operators with keyed
        state give it in pieces of about ``rows`` rows, so that it is never whole in memory;
        others in one piece."""
        yield "full", self.snapshot()

    def changes(self) -> Any:
        """Incremental checkpoints: what changed in the state since :meth:`settle`, for
        :meth:`apply_changes`; ``None`` when this operator saves its whole state each time."""
        return None

    def apply_changes(self, changes: Any) -> None:
        """Replay :meth:`changes` over the restored state."""
        raise NotImplementedError

    def settle(self) -> None:
        """A checkpoint was taken: :meth:`changes` counts from here."""

    def process(self, delta: Delta) -> Delta:
        raise NotImplementedError

    def process_input(self, side: int, delta: Delta) -> Delta:
        """A delta from input ``side`` (joins tell their inputs apart; others need not)."""
        return self.process(delta)

    def process_merged(self, parts: list[tuple[int, Delta]]) -> Delta:
        """Several inputs' parts of one merged batch (``(side, delta)``, by side), their
        records numbered in merged order (``columns.ORDER``). Operators whose results depend
        on how their inputs interleave override this; the others take each part in turn."""
        out = [self.process_input(side, delta) for side, delta in parts]
        rows = [d.rows for d in out if d.rows.height]
        deletes = [d.deletes for d in out if d.deletes is not None and d.deletes.height]
        return Delta(
            pl.concat(rows, how="diagonal_relaxed") if rows else pl.DataFrame(),
            pl.concat(deletes, how="diagonal_relaxed") if deletes else None,
        )

    def finish(self) -> Delta | None:
        """The input ended (watermark +∞): emit what is left."""
        return None

    def tick(self) -> None:
        """Called on the query's thread a few times a second, whether batches arrive or not:
        for work due by the clock (a sink's timed flush, its delivery reports)."""

    def close(self) -> None:
        """The query ended or was stopped: release resources, flush buffered output."""


class Versioned:
    """An operator that makes a table, and can emit each of its versions in merged order.

    A stream–table join that takes a merged batch needs the table as it was at each stream
    record: with ``versions`` set, the operator emits one row per change (in order, each
    with the ``ORDER`` of the record that made it) instead of the last row per key.
    """

    versions: bool = False

    def can_version(self) -> bool:
        return True
