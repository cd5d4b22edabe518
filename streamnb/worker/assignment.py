"""The tasks a worker runs, and how they follow the consumer group's assignment.

A task is one partition's share of the query: its own pipeline (operators, state, watermark).
When the group assigns a partition, :class:`Tasks` makes its task and restores it from the last
checkpoint (the group's committed offset, whose metadata points at a snapshot in the
changelog); a revoked task is kept aside until the rebalance ends, and reused unchanged if the
partition comes back with the same checkpoint. After an aborted transaction, :meth:`Tasks.rewind`
takes every task back to its last checkpoint, input included.

Without repartitioning, a task per input partition runs the whole plan. With it
(:mod:`.topology`), a task per input partition runs the upstream part (into the first
repartition topic) and, for each stage after a repartition, a task per partition of that
topic runs the stage (state; the last one makes the results).

An input task p reads partition p of every co-partitioned input topic; inputs that are not
co-partitioned get a task per partition of each topic. A stage's task q reads partition q of
each of its topics (two where such inputs meet).

What a task's merge holds back at a checkpoint: an input task commits, per partition, the
offset of the first record still held, and reads them again after a restore. A stage task
cannot (a repartition record carries a batch of rows under one offset, some of them maybe
released): its held rows go into its snapshot instead, and it commits where it has read.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from streamnb.columns import OFFSET, PARTITION
from streamnb.engine import checkpoint
from streamnb.engine.core import NEG_INF, Context, Delta, ListeningClock, Partitions
from streamnb.engine.executor import Pipeline, Step
from streamnb.engine.merge import DEFAULT_MAX_IDLE_MS, Merge
from streamnb.exceptions import SourceError
from streamnb.io.sources.kafka import KafkaReader
from streamnb.plan import JoinNode, Plan
from streamnb.worker.changelog import (
    METADATA_PREFIX,
    Changelog,
    Snapshot,
    parse_pointer,
    pointer,
)
from streamnb.worker.inputs import GlobalTable, is_table
from streamnb.worker.topology import RepartitionWriter, Split

log = logging.getLogger("streamnb.worker")

MAX_DELTAS = 16
"""Incremental checkpoints: at most this many deltas after a base (the offset metadata names
them all)."""

TP = tuple[str, int]
"""A task's key: its topic (input, or repartition) and partition."""


@dataclass(eq=False)
class Task:
    """One partition's share of the query.

    ``sources``: the source step each input topic's records go to (an input task: partition
    ``partition`` of every stream topic; a downstream task: its repartition partition);
    ``tables``: the source steps of the global tables. With several inputs, ``merge`` holds
    records back until their turn in event time (:mod:`streamnb.engine.merge`).
    """

    topic: str  # the first input topic, or the repartition topic
    partition: int
    pipeline: Pipeline
    ctx: Context
    sources: dict[str, Step]
    tables: list[tuple[GlobalTable, Step]]
    clock: ListeningClock  # the worker's listening clock (idle timeouts)
    changelog: Changelog | None = None  # where its snapshots go
    merge: Merge | None = None
    stage: int | None = None  # the stage after a repartition it runs; None: an input task
    pid: int = 0  # an input task's hidden partition id (its first topic's partition)
    as_one: bool = False  # its inputs' rows arrive as that one partition (several topics)
    positions: dict[TP, int | None] = field(default_factory=dict)  # next offsets to commit
    committed: dict[TP, int | None] = field(default_factory=dict)  # of the last checkpoint
    pointer: str = METADATA_PREFIX  # offset metadata: its chain, "sn1:<id>:<records>;..."
    snapshot_id: int = 0
    chain: list[Snapshot] = field(default_factory=list)  # its base, then the deltas after it
    sizes: list[int] = field(default_factory=list)  # their bytes
    dirty: bool = False
    last_input: float = 0.0  # the clock's reading when records last came
    idle_sent: bool = False  # an idle marker went downstream since

    @property
    def key(self) -> TP:
        return (self.topic, self.partition)

    def next_snapshot(self) -> tuple[bool, str]:
        """Whether the next snapshot is a base (none yet, :data:`MAX_DELTAS` deltas since
        the last, or deltas as large as it), and the slot its records are keyed in: bases
        alternate between two, so that compaction never drops a base a committed chain needs
        while the next is written; deltas go with their base's."""
        base = (
            not self.chain or len(self.chain) > MAX_DELTAS or sum(self.sizes[1:]) >= self.sizes[0]
        )
        if base:
            if self.chain and (self.snapshot_id + 1) % 2 == self.chain[0][0] % 2:
                self.snapshot_id += 1  # the other parity: the other slot
            return True, f"b{(self.snapshot_id + 1) % 2}"
        return False, f"d{self.chain[0][0] % 2}.{len(self.chain)}"

    def wrote(self, snapshot: Snapshot, size: int, *, base: bool) -> None:
        """A snapshot went to the changelog: the chain the next commit points at."""
        self.chain, self.sizes = (
            ([snapshot], [size]) if base else ([*self.chain, snapshot], [*self.sizes, size])
        )
        self.pointer = pointer(self.chain)

    def watermark(self) -> int:
        values = [w for w in self.ctx.watermarks.values() if w > NEG_INF]
        return max(values) if values else NEG_INF

    def offer(self, step: Step, rows: pl.DataFrame) -> None:
        """Records of one input: processed now, or queued for the event-time merge."""
        if self.merge is None:
            self.pipeline.push(step, self._as_one(rows))
        else:
            self.merge.offer(self.pipeline.sources.index(step), rows)
        self.dirty = True
        self.last_input, self.idle_sent = self.clock.now, False

    def send_idle(self) -> bool:
        """Tell the downstream tasks that this input task's partition is idle (once, until
        records come again); True if an idle marker went out."""
        writers = [
            s.op
            for s in self.pipeline.steps
            if isinstance(s.op, RepartitionWriter) and s.op.et is not None
        ]
        if self.idle_sent or not writers:
            return False
        for writer in writers:
            writer.send_idle(self.pid)
        self.idle_sent = True
        return True

    def _as_one(self, rows: pl.DataFrame) -> pl.DataFrame:
        """Several topics read by one task arrive as one partition: merged by event time,
        they have one watermark, as a Kafka Streams task has one stream time."""
        if not self.as_one:
            return rows
        return rows.with_columns(pl.lit(self.pid, pl.Int64).alias(PARTITION))

    def release(self, unread: Callable[[Step], bool]) -> None:
        """Process what the merge lets through (``unread``: an input has records to read)."""
        if self.merge is None:
            return
        steps = self.pipeline.sources
        released = self.merge.release([unread(step) for step in steps])
        if released:
            self.pipeline.deliver([(steps[i], self._as_one(rows)) for i, rows in released])

    def stream_inputs(self) -> list[int]:
        """The merge's inputs that this task's stream topics feed."""
        fed = {id(step) for step in self.sources.values()}
        return [i for i, step in enumerate(self.pipeline.sources) if id(step) in fed]

    def in_flight(self) -> Any:
        """What a stage task's merge holds back, for its snapshot (None: nothing to keep)."""
        if self.merge is None or self.stage is None:
            return None
        return self.merge.snapshot()

    def held(self, step: Step) -> dict[int, int]:
        """The first offset per hidden partition id of the records of ``step``'s input that
        an input task's merge still holds: where a restart must resume them."""
        if self.merge is None or self.stage is not None:
            return {}
        queue = self.merge.inputs[self.pipeline.sources.index(step)]
        if not queue.frames:
            return {}
        first = (
            pl.concat([f.select(PARTITION, OFFSET) for f in queue.frames])
            .group_by(PARTITION)
            .agg(pl.col(OFFSET).min())
        )
        return dict(first.iter_rows())


class Tasks:
    """The tasks of one worker: ``running`` ones, and ``suspended`` ones during a rebalance.

    ``ctx`` is the worker's context: tasks share its side outputs and partition ids, and write
    through its (current) producer. ``emit`` receives the results of the tasks that make them.
    ``groups``: the input topics an input task reads together (:attr:`Inputs.groups`). Tasks
    are keyed by the first topic they read and their partition; a task commits the offsets of
    each partition it reads, each with the pointer to its last snapshot.
    """

    def __init__(
        self,
        name: str,
        *,
        plan: Plan,
        split: Split | None,
        groups: list[tuple[str, ...]],
        partitions: int,
        tables: dict[int, GlobalTable],
        ctx: Context,
        changelogs: Callable[[str], Changelog],
        restorer: Any,
        emit: Callable[[Delta], None],
    ) -> None:
        self.name, self.plan, self.split = name, plan, split
        self.groups, self.partitions, self.tables = groups, partitions, tables
        self.topics = [t for group in groups for t in group]  # the input topics
        self.group = {t: group for group in groups for t in group}  # what a task reads
        for stage in split.stages if split is not None else ():
            self.group.update((t, stage.topics) for t in stage.topics)
        self.ctx, self.changelogs, self.restorer, self.emit = ctx, changelogs, restorer, emit
        self.running: dict[TP, Task] = {}
        self.suspended: dict[TP, Task] = {}  # revoked, kept in case they come back unchanged
        self.restores = 0
        self.restore_ms = 0.0  # the last restore of a task
        self.listening = ListeningClock(time.monotonic())  # ticked by the worker at each read

    def key_of(self, tp: TP) -> TP:
        """The task that reads partition ``tp``."""
        return (self.group[tp[0]][0], tp[1]) if tp[0] in self.group else tp

    def partitions_of(self, key: TP) -> list[TP]:
        """The partitions task ``key`` reads."""
        return [(t, key[1]) for t in self.group.get(key[0], (key[0],))]

    def inputs(self) -> list[Task]:
        """The running input tasks."""
        return [task for task in self.running.values() if task.stage is None]

    def assign(self, partitions: Sequence[TP], reader: KafkaReader) -> None:
        """The group gave us ``partitions``: reuse a suspended task if nobody moved it on,
        else restore it from the last checkpoint."""
        keys = sorted({self.key_of(tp) for tp in partitions})
        committed = self._committed([tp for key in keys for tp in self.partitions_of(key)])
        for key in keys:
            offsets, pointer = self._checkpoint_of(key, committed)
            kept = self.suspended.pop(key, None)
            if kept is not None and kept.committed == offsets and kept.pointer == pointer:
                if kept.merge is not None and kept.stage is None:
                    # what its streams held is read again from the commit; a global table's
                    # changes are not, and a stage task's held rows are in its snapshot
                    kept.merge.forget_queued(kept.stream_inputs())
                self.running[key] = kept
                continue
            self.running[key] = self._restore(key, offsets, pointer, reader)
        self.suspended.clear()
        for key in keys:  # forget positions from an earlier ownership
            for tp, offset in self.running[key].committed.items():
                reader.set_position(*tp, offset)
        log.info("%s: tasks %s", self.name, sorted(f"{t}/{p}" for t, p in self.running))

    def suspend(self, partitions: Sequence[TP]) -> None:
        """``partitions`` leave us (checkpointed by the caller): keep their tasks aside."""
        for key in {self.key_of(tp) for tp in partitions}:
            task = self.running.pop(key, None)
            if task is not None:
                self.suspended[key] = task

    def rewind(self, reader: KafkaReader, *, leaving: Sequence[TP] = ()) -> None:
        """Every task back to its last committed checkpoint, input included: each partition
        to its committed offset, or, never committed, to where its reading began (what was
        read since is read again). A seek that does not happen fails the worker (a restart
        resumes from the checkpoint): going on would skip records. Partitions ``leaving``
        (being revoked: a consumer may refuse their seeks then) are not sought: wherever
        they are assigned next, reading resumes from the commit."""
        gone = set(leaving)
        keys = list(self.running)
        self.running.clear()
        committed = self._committed([tp for key in keys for tp in self.partitions_of(key)])
        for key in keys:
            offsets, pointer = self._checkpoint_of(key, committed)
            self.running[key] = self._restore(key, offsets, pointer, reader)
            for tp, offset in offsets.items():
                back = offset if offset is not None else reader.origin(*tp)
                if back is not None and tp not in gone:  # None: nothing read, none to redo
                    reader.seek(*tp, back)

    def _checkpoint_of(
        self, key: TP, committed: dict[TP, tuple[int | None, str]]
    ) -> tuple[dict[TP, int | None], str]:
        """Task ``key``'s committed offsets, and the newest snapshot any of them points at
        (a checkpoint writes the same pointer with each)."""
        mine = {tp: committed[tp] for tp in self.partitions_of(key)}
        pointers = [pointer for _, pointer in mine.values()]
        newest = max(pointers, key=lambda p: ([(-1, 0), *parse_pointer(p)])[-1][0])
        return {tp: offset for tp, (offset, _) in mine.items()}, newest

    def _committed(self, partitions: Sequence[TP]) -> dict[TP, tuple[int | None, str]]:
        """The group's committed offset and its metadata (the snapshot pointer) per partition.

        A group coordinator that has just moved or restarted answers "not coordinator" (or
        is loading) for a while: those answers are retried for up to
        :data:`COMMITTED_SECONDS`, as Kafka's own clients do; any other error, or one that
        lasts longer, fails the query naming it."""
        from confluent_kafka import KafkaException, TopicPartition

        deadline, pause = time.monotonic() + COMMITTED_SECONDS, 0.1
        while True:
            try:
                found = self.restorer.committed(
                    [TopicPartition(t, p) for t, p in partitions], timeout=COMMITTED_SECONDS
                )
                break
            except KafkaException as exc:
                if not _passing(exc) or time.monotonic() + pause > deadline:
                    raise SourceError(
                        f"{self.name}: cannot read the group's committed offsets: {exc}"
                    ) from exc
                log.info("%s: reading the committed offsets again: %s", self.name, exc)
                time.sleep(pause)
                pause = min(pause * 2, 1.0)
        return {
            (tp.topic, tp.partition): (
                tp.offset if tp.offset >= 0 else None,
                tp.metadata or METADATA_PREFIX,
            )
            for tp in found
        }

    def _restore(
        self, key: TP, offsets: dict[TP, int | None], pointer: str, reader: KafkaReader
    ) -> Task:
        started = time.monotonic()
        task = self._new_task(key, reader)
        partition = task.partition
        task.committed, task.pointer, task.positions = dict(offsets), pointer, dict(offsets)
        chain = parse_pointer(pointer)
        if chain:
            task.snapshot_id = max(i for i, _ in chain)
            assert task.changelog is not None
            snapshots = task.changelog.read(partition, chain)
            task.chain, task.sizes = chain, [sum(map(len, one)) for one in snapshots]
            in_flight = checkpoint.restore(task.pipeline, snapshots)
            if in_flight is not None and task.merge is not None:
                task.merge.restore(in_flight)
            for step in task.pipeline.steps:  # the status shows the restored watermark
                tracker = getattr(step.op, "tracker", None)
                if tracker is not None:
                    task.ctx.watermarks[id(step.op)] = tracker.current
        for table, step in task.tables:  # the global tables as this worker holds them now
            rows = table.rows()
            if rows is not None:
                task.pipeline.push(step, rows)
                if task.merge is not None:
                    task.merge.note(task.pipeline.sources.index(step), rows)
        self.restores += 1
        self.restore_ms = (time.monotonic() - started) * 1000
        log.info(
            "%s: task %s/%d restored at offsets %s from %s in %.0f ms",
            self.name,
            task.topic,
            partition,
            offsets,
            pointer,
            self.restore_ms,
        )
        return task

    def _new_task(self, key: TP, reader: KafkaReader) -> Task:
        """The task of input partition ``key`` (upstream half when repartitioning), or of a
        repartition partition (downstream half: its watermark spans every input partition)."""
        topic, partition = key
        sink: Callable[[Delta], None]
        stage = None
        if topic not in self.topics:
            assert self.split is not None
            stage = self.split.index(topic)
        if stage is None:
            own = reader.partition_id(topic, partition)  # the task's rows arrive as this one
            if self.split is None:
                root, assigned, sink = self.plan.root, {own}, self.emit
            else:
                root, assigned, sink = self.split.upstream_of(topic), set(), _discard
        else:  # a stage after a repartition: its watermark spans the tasks that feed it
            assert self.split is not None
            last = stage == len(self.split.stages) - 1
            root, sink = self.split.stages[stage].root, self.emit if last else _discard
            if stage:
                feeding = self.split.stages[stage - 1].topic
                ids = self.ctx.partitions.id_for
                assigned = {ids("kafka", feeding, q) for q in range(self.partitions)}
            else:
                assigned = {pid for group in self.groups for pid in reader.partition_ids(group[0])}
            own = self.ctx.partitions.id_for("kafka", topic, partition)
        ctx = Context(
            late=self.ctx.late,
            errors=self.ctx.errors,
            error_listeners=self.ctx.error_listeners,
            producer=self.ctx.producer,
            state_dir=self.ctx.state_dir,
            partitions=Partitions(
                ids=self.ctx.partitions.ids, assigned=assigned, scopes=self.ctx.partitions.scopes
            ),
        )
        pipeline = Pipeline(root, ctx, sink)
        sources: dict[str, Step] = {}
        tables: list[tuple[GlobalTable, Step]] = []
        reads = self.group[topic]
        for step in pipeline.sources:
            source = getattr(step.node, "source", None)
            if is_table(source):
                tables.append((self.tables[id(source)], step))
                _forget_table(step)
            elif stage is None:
                sources.update((t, step) for t in getattr(source, "topics", ()) if t in reads)
            elif getattr(source, "topic", None) in reads:
                sources[source.topic] = step  # type: ignore[union-attr]
        if stage is not None:  # its rows go on as its own partition
            for step in pipeline.steps:
                if isinstance(step.op, RepartitionWriter):
                    step.op.pid = own
        merge = pipeline.merge(DEFAULT_MAX_IDLE_MS)
        if merge is not None:  # inputs that other tasks read (a topic read apart) hold nothing
            fed = {id(step) for step in [*sources.values(), *(s for _, s in tables)]}
            for i, step in enumerate(pipeline.sources):
                if id(step) not in fed:
                    merge.finish(i)
        return Task(
            topic,
            partition,
            pipeline,
            ctx,
            sources,
            tables,
            self.listening,
            changelog=self.changelogs(topic),
            merge=merge,
            stage=stage,
            pid=own,
            as_one=stage is None and len(reads) > 1,
            last_input=self.listening.now,
        )


def _forget_table(step: Step) -> None:
    """A global table's join keeps no state in checkpoints: a restored task gets the table
    from the worker."""
    while step.parent is not None:
        if step.side == 1 and isinstance(step.parent.node, JoinNode):
            step.parent.op.state_fields = ()  # type: ignore[misc, union-attr]
            return
        step = step.parent


def _discard(delta: Delta) -> None:
    """Upstream halves end in the repartition topic: nothing reaches the result."""


COMMITTED_SECONDS = 30.0
"""How long reading the group's committed offsets may take, retries of a coordinator that is
moving or loading included."""


def _passing(exc: Exception) -> bool:
    """Whether a Kafka error is one a coordinator gives while it moves or loads (retriable)."""
    from confluent_kafka import KafkaError

    error = exc.args[0] if exc.args else None
    if not isinstance(error, KafkaError):
        return False
    return error.retriable() or error.code() in (
        KafkaError.NOT_COORDINATOR,
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError._WAIT_COORD,
        KafkaError._TRANSPORT,
        KafkaError._TIMED_OUT,
    )
