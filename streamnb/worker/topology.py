"""Repartitioning: a query over a topic of several partitions, cut below each of its stateful
operators, with a Kafka topic between the parts (Kafka Streams' repartition topics).

Upstream tasks (one per input partition) run the stateless operators and send each row to the
partition of the repartition topic that its grouping keys hash to, so that every key's state
lives in exactly one downstream task (one per repartition partition), whichever input
partition its records came from. Rows travel as Arrow IPC, one record per micro-batch and
target partition, with the hidden partition column of their input partition.

Watermarks: after its rows, each upstream batch sends every target partition a *marker* row
carrying the latest event time the upstream task has sent on; downstream operators take it in
like any record of that input partition, then drop it. A downstream watermark is so the
minimum over the input partitions, as in the notebook, never ahead of it. An upstream task
whose input had no records for its ``idle_timeout`` sends an *idle marker* (a marker without a
time): downstream tasks then leave its partition out of the minimum until it sends again, as
the notebook leaves out an idle Kafka partition.

A chain (a ``group_by`` of window results) repeats the cut: each stage after a repartition
runs one stateful operator and what follows it up to the next repartition topic; its rows go
on as its own task's partition, so the next stage's watermark spans the tasks that feed it.

Inputs that are not co-partitioned (topics of different partition counts) meet in the first
stage instead: each side of the operator they meet in (a window join, an interval join) is
cut below its own first stateful operator, or at the meeting by the join keys, into a
repartition topic of its own. Every topic has as many partitions as the widest input; task q
of the stage reads partition q of each side's topic and merges them by event time, so records
of equal keys meet whichever partition of whichever topic they came from.
"""

from __future__ import annotations

import dataclasses
import io
from typing import Any

import polars as pl

from streamnb.columns import MARKER, PARTITION, TARGET, TASK
from streamnb.definitions.eventtime import EventTime
from streamnb.engine.core import Context, Delta, Operator, Partitions
from streamnb.engine.source import PartOwner, Reader, Sink, Source
from streamnb.exceptions import ConfigError, SourceError
from streamnb.io.kafka.client import produce
from streamnb.plan import (
    GroupByNode,
    JoinNode,
    Node,
    SinkNode,
    SourceNode,
    WindowNode,
    source_nodes,
    walk,
)
from streamnb.worker.inputs import Inputs, is_table


@dataclasses.dataclass(frozen=True)
class Stage:
    """A part of a plan after a repartition: a task per partition of ``topics`` runs ``root``
    (repartition sources, a stateful operator, what follows it up to the next repartition or
    the end). Most stages read one topic; the stage where inputs that are not co-partitioned
    meet reads one per side, task q partition q of each."""

    topics: tuple[str, ...]
    root: Node
    event_times: tuple[EventTime | None, ...]  # per topic: the time of the markers it reads

    @property
    def topic(self) -> str:
        """Its first topic: its tasks are keyed by it."""
        return self.topics[0]

    def event_time(self, topic: str) -> EventTime | None:
        return self.event_times[self.topics.index(topic)]


@dataclasses.dataclass(frozen=True)
class Split:
    """A plan cut below each of its stateful operators (a chain of repartitions)."""

    upstream: Node  # sources, the merge, stateless operators, then the first repartition
    stages: tuple[Stage, ...]  # in data order
    sides: dict[str, Node] = dataclasses.field(default_factory=dict)
    """Inputs read apart (not co-partitioned) into a stage of several topics: per input topic,
    the upstream part its tasks run (its side's, into that side's repartition topic)."""

    @property
    def topics(self) -> list[str]:
        """Every repartition topic, in data order."""
        return [topic for stage in self.stages for topic in stage.topics]

    def index(self, topic: str) -> int:
        """The stage that reads ``topic``."""
        return next(i for i, stage in enumerate(self.stages) if topic in stage.topics)

    def upstream_of(self, topic: str) -> Node:
        """What the tasks of input topic ``topic`` run."""
        return self.sides.get(topic, self.upstream)


def for_inputs(root: Node, inputs: Inputs, topic: str) -> Split | None:
    """:func:`split` for a worker reading ``inputs``: none over topics of one partition; a
    plan that cannot be cut over topics that are not co-partitioned is a :class:`ConfigError`
    naming the topics and their partition counts."""
    if inputs.partitions == 1:
        return None
    try:
        return split(root, topic, inputs.partitions, apart=not inputs.copartitioned)
    except ConfigError as exc:
        if inputs.copartitioned:
            raise
        raise inputs.not_copartitioned(str(exc)) from exc


def split(root: Node, topic: str, partitions: int, *, apart: bool = False) -> Split | None:
    """``root`` cut for repartitioning through ``topic`` (and ``topic-2``, ``topic-3``, ... for
    a chain); None if it needs none. ``apart``: the inputs are not co-partitioned, so where
    they meet in a stateful operator, each side is repartitioned (:func:`_split_sides`).

    The first cut goes below the first stateful operator above the query's inputs: the chain
    from the root down to its first operator with several inputs (or its source). A
    stream–table join with a global table (``table_from_kafka``) is not in the way: every task
    holds the whole table. A query whose state all sits below the inputs' meeting point (a
    window join, an interval join) is not cut: its co-partitioned tasks hold that state. Each
    further stateful operator on the chain (a ``group_by`` of window results) gets a
    repartition of its own, by its own keys.
    """
    chain = _chain(root)
    meeting = chain[-1] if len(chain[-1].inputs) > 1 else None  # where the inputs meet
    ordered = [n for n in reversed(chain) if _stateful(n) and n is not meeting]  # data order
    if apart and meeting is not None and _stateful(meeting):
        return _split_sides(root, meeting, ordered, topic, partitions)
    if not ordered:
        return None
    (below,) = ordered[0].inputs
    inner = [n for n in walk(below) if _stateful(n)]
    if inner:
        raise ConfigError(
            f"{inner[0].describe()}: over topics of {partitions} partitions the worker "
            "repartitions before the windows and group_bys above where the inputs meet, not "
            "below; read topics of one partition"
        )
    topics = [topic, *(f"{topic}-{i + 1}" for i in range(1, len(ordered)))]
    scopes: frozenset[tuple[object, ...]] = frozenset().union(
        *(n.source.partition_scopes() for n in source_nodes(below) if not is_table(n.source))
    )
    upstream = SinkNode((below,), _sink(topics[0], partitions, ordered[0]))
    placeholder = SourceNode((), _Repartitioned(topics[0], scopes, _keys_and_time(ordered[0])[1]))
    first = dataclasses.replace(ordered[0], inputs=(placeholder,))
    return Split(upstream, _chain_stages(root, ordered, first, topics, partitions))


def _chain_stages(
    root: Node,
    ordered: list[Node],
    first: Node,
    topics: list[str],
    partitions: int,
) -> tuple[Stage, ...]:
    """The stages of the stateful operators ``ordered`` (in data order): the first one's body
    is ``first`` (its inputs already placeholders), each further one reads the stage before
    it through the next topic of ``topics``."""
    stages = []
    for i, op in enumerate(ordered):
        following = ordered[i + 1] if i + 1 < len(ordered) else None
        top = following.inputs[0] if following is not None else root
        body = _replace(top, op, first)
        if following is not None:
            body = SinkNode((body,), _sink(topics[i + 1], partitions, following))
            scopes = frozenset({("kafka", topics[i])})  # it reads this stage's tasks
            time = _keys_and_time(following)[1]
            placeholder = SourceNode((), _Repartitioned(topics[i + 1], scopes, time))
            first = dataclasses.replace(following, inputs=(placeholder,))
        times = tuple(
            n.source.event_time for n in source_nodes(body) if isinstance(n.source, _Repartitioned)
        )
        names = tuple(
            n.source.topic for n in source_nodes(body) if isinstance(n.source, _Repartitioned)
        )
        stages.append(Stage(names, body, times))
    return tuple(stages)


def _split_sides(
    root: Node, meeting: Node, ordered: list[Node], topic: str, partitions: int
) -> Split:
    """Inputs that are not co-partitioned meeting in a stateful operator (a window join, an
    interval join): each side is cut below its own first stateful operator (a window), or at
    the meeting by the join keys, into a topic of its own (``topic``, ``topic-right``); the
    first stage's tasks read partition q of both and merge them. Each side's keys hash by
    position, so that equal join keys meet whatever the columns are called."""
    assert isinstance(meeting, JoinNode)
    topics = [topic, *(f"{topic}-{i + 1}" for i in range(1, len(ordered) + 1))]
    side_topics = (topic, f"{topic}-right")
    sides: dict[str, Node] = {}
    upstreams: list[Node] = []
    cut_inputs = []
    for i, side in enumerate(meeting.inputs):
        chain = _chain(side)
        inner = [n for n in chain if _stateful(n)]
        op = inner[-1] if inner else None  # its first stateful operator, in data order
        below = op.inputs[0] if op is not None else side
        above = chain[: chain.index(op)] if op is not None else []
        deeper = [n for n in walk(below) if _stateful(n)]
        deeper += [n for n in above if global_join(n)]  # the stage would need the table
        if op is not None and len(op.inputs) > 1:
            deeper.insert(0, op)  # inputs meeting in state on one side
        if deeper:
            raise ConfigError(
                f"{deeper[0].describe()}: the worker repartitions each side of "
                f"{meeting.describe()} once, below its first stateful operator; this side "
                "needs more"
            )
        if op is not None:
            keys, time = _keys_and_time(op)
        else:
            keys, time = meeting.on, meeting.times[i] if meeting.times else None
        scopes = frozenset().union(
            *(n.source.partition_scopes() for n in source_nodes(below) if not is_table(n.source))
        )
        sink = RepartitionSink(side_topics[i], partitions, tuple(keys), time, positional=True)
        upstream = SinkNode((below,), sink)
        upstreams.append(upstream)
        streams = [n.source for n in source_nodes(below) if not is_table(n.source)]
        sides.update((t, upstream) for source in streams for t in getattr(source, "topics", ()))
        idle = [getattr(source, "max_idle_ms", None) for source in streams]
        max_idle = max((m for m in idle if m is not None), default=None)
        placeholder = SourceNode((), _Repartitioned(side_topics[i], scopes, time, max_idle))
        cut_inputs.append(
            _replace(side, op, dataclasses.replace(op, inputs=(placeholder,)))
            if op is not None
            else placeholder
        )
    first = dataclasses.replace(meeting, inputs=tuple(cut_inputs))
    stages = _chain_stages(root, [meeting, *ordered], first, topics, partitions)
    return Split(upstreams[0], stages, sides)


def _keys_and_time(op: Node) -> tuple[tuple[str, ...], EventTime | None]:
    if isinstance(op, WindowNode):
        return op.by, op.event_time
    assert isinstance(op, GroupByNode)
    return op.keys, None


def _sink(topic: str, partitions: int, op: Node) -> RepartitionSink:
    """The repartition in front of stateful operator ``op``: by its keys, markers in its time."""
    keys, event_time = _keys_and_time(op)
    return RepartitionSink(topic, partitions, keys, event_time)


def _chain(root: Node) -> list[Node]:
    """The nodes from the root down to the first that several inputs meet in (or a source);
    a global-table join is passed through on its stream side."""
    chain, node = [root], root
    while node.inputs and (len(node.inputs) == 1 or global_join(node)):
        node = node.inputs[0]
        chain.append(node)
    return chain


def global_join(node: Node) -> bool:
    """A stream–table join whose table is a ``table_from_kafka`` (every task holds it)."""
    return (
        isinstance(node, JoinNode)
        and node.kind == "stream_table"
        and all(is_table(n.source) for n in source_nodes(node.inputs[1]))
    )


def _stateful(node: Node) -> bool:
    return isinstance(node, (WindowNode, GroupByNode)) or (
        isinstance(node, JoinNode) and not global_join(node)
    )


def _replace(node: Node, old: Node, new: Node) -> Node:
    if node is old:
        return new
    return dataclasses.replace(node, inputs=tuple(_replace(n, old, new) for n in node.inputs))


class _Repartitioned(Source):
    """Placeholder source of a downstream half: the worker pushes the rows of ``topic`` itself;
    they carry the partitions (``scopes``) of the original sources, and merge with another
    side's by ``event_time``."""

    bounded = False
    schema = None

    def __init__(
        self,
        topic: str,
        scopes: frozenset[tuple[object, ...]],
        event_time: EventTime | None = None,
        max_idle_ms: int | None = None,
    ) -> None:
        self.topic, self.scopes = topic, scopes
        self.event_time, self.max_idle_ms = event_time, max_idle_ms
        self.name = f"repartition[{topic}]"

    def partition_scopes(self) -> frozenset[tuple[object, ...]]:
        return self.scopes

    def open(self, ctx: Context, *, owner: PartOwner | None = None) -> Reader:
        raise SourceError(
            "the repartitioned half of a query reads what the worker feeds it; it cannot be "
            "opened on its own"
        )


@dataclasses.dataclass(frozen=True)
class RepartitionSink(Sink):
    """The end of an upstream half: rows go to ``topic``, by the hash of ``keys``."""

    topic: str
    partitions: int
    keys: tuple[str, ...]
    event_time: EventTime | None
    positional: bool = False
    """Hash the keys by position, not name (the sides of a join meet by position)."""

    def describe(self) -> str:
        return f"repartition[{self.topic}, by={list(self.keys)}]"

    def open(self, ctx: Context) -> Operator:
        return RepartitionWriter(
            self.topic, self.partitions, self.keys, self.event_time, ctx, positional=self.positional
        )


class RepartitionWriter(Operator):
    """Sends rows to the repartition topic by the hash of their keys, then marker rows."""

    def __init__(
        self,
        topic: str,
        partitions: int,
        keys: tuple[str, ...],
        event_time: EventTime | None,
        ctx: Context,
        *,
        positional: bool = False,
    ) -> None:
        if ctx.producer is None:
            raise ConfigError(
                "repartitioning writes through the worker's producer: run the query with "
                "`streamnb run`"
            )
        self.topic, self.partitions, self.keys, self.et = topic, partitions, list(keys), event_time
        self.producer = ctx.producer
        self.positional = positional
        self.latest: int | None = None  # the latest event time sent on
        self.pid: int | None = None
        """The partition id its rows go out as: a later stage's task's own (its rows come out
        of a stateful operator, without the input's); None keeps the rows' own."""

    def process(self, delta: Delta) -> Delta:
        rows = delta.rows
        if rows.height == 0:
            return Delta(pl.DataFrame())
        if self.pid is not None:
            rows = rows.with_columns(pl.lit(self.pid, pl.Int64).alias(PARTITION))
        fields = (
            [pl.col(k).alias(f"_{i}") for i, k in enumerate(self.keys)]
            if self.positional
            else self.keys
        )
        target = (
            (pl.struct(fields).hash(seed=0) % self.partitions).cast(pl.Int32)
            if self.keys
            else pl.lit(0, pl.Int32)
        )
        parts = rows.with_columns(target.alias(TARGET)).partition_by(
            TARGET, as_dict=True, include_key=False
        )
        marker = self._marker(rows)
        for q in range(self.partitions):
            part = parts.get((q,))
            frames = [f for f in (part, marker) if f is not None]
            if frames:
                self._send(q, pl.concat(frames, how="diagonal_relaxed"))
        return Delta(pl.DataFrame())  # nothing flows further in this task

    def _marker(self, rows: pl.DataFrame) -> pl.DataFrame | None:
        """One row: this input partition's latest event time so far (None without time)."""
        if self.et is None or self.et.column not in rows.columns:
            return None
        latest = self.et.values(rows).max()
        if latest is None:
            return None
        assert isinstance(latest, int)
        self.latest = latest if self.latest is None else max(self.latest, latest)
        return rows.head(1).select(
            pl.lit(self.latest, pl.Int64).cast(rows.schema[self.et.column]).alias(self.et.column),
            pl.col(PARTITION),
            pl.lit(True).alias(MARKER),
        )

    def send_idle(self, pid: int) -> None:
        """Input partition ``pid`` has had no records for its idle timeout: tell every
        downstream task to stop waiting for it (a marker without a time); its next records
        make it count again."""
        if self.et is None:
            return
        idle = pl.DataFrame(
            {
                self.et.column: pl.Series([None], dtype=self.et.dtype),
                PARTITION: pl.Series([pid], dtype=pl.Int64),
                MARKER: [True],
            }
        )
        for q in range(self.partitions):
            self._send(q, idle)

    def _send(self, partition: int, frame: pl.DataFrame) -> None:
        buffer = io.BytesIO()
        frame.write_ipc(buffer)
        produce(self.producer, self.topic, buffer.getvalue(), partition=partition)


def idle_markers(rows: pl.DataFrame, event_time: EventTime, partitions: Partitions) -> pl.DataFrame:
    """A downstream task's repartitioned rows without their idle markers, which mark their
    input partitions idle in ``partitions``; a partition's records mark it live again. As in
    the notebook, windows take the lower watermark in with the next rows that come."""
    if MARKER not in rows.columns:
        return rows
    idle_rows = (
        rows.get_column(MARKER).fill_null(False) & rows.get_column(event_time.column).is_null()
    )
    if not idle_rows.any() and not partitions.idle:
        return rows
    last = (
        rows.select(PARTITION, idle_rows.alias("idle"))
        .group_by(PARTITION, maintain_order=True)
        .agg(pl.col("idle").last())
    )
    went_idle = set(last.filter("idle").get_column(PARTITION).to_list())
    live = set(last.filter(~pl.col("idle")).get_column(PARTITION).to_list())
    partitions.idle = (partitions.idle | went_idle) - live
    return rows.filter(~idle_rows)


def decode(messages: list[Any]) -> dict[str, pl.DataFrame]:
    """Repartition records back into rows per repartition topic, each with the partition it
    arrived on (``TASK``)."""
    frames: dict[str, list[pl.DataFrame]] = {}
    for m in messages:
        if m.value():
            frame = pl.read_ipc(io.BytesIO(m.value()))
            frames.setdefault(m.topic(), []).append(
                frame.with_columns(pl.lit(m.partition(), pl.Int32).alias(TASK))
            )
    return {t: pl.concat(f, how="diagonal_relaxed") for t, f in frames.items()}
