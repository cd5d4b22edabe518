"""The tasks a worker runs, and how they follow the consumer group's assignment.

A task is one partition's share of the query: its own pipeline (operators, state, watermark).
When the group assigns a partition, :class:`Tasks` makes its task and restores it from the last
checkpoint (the group's committed offset, whose metadata points at a snapshot in the
changelog); a revoked task is kept aside until the rebalance ends, and reused unchanged if the
partition comes back with the same checkpoint. After an aborted transaction, :meth:`Tasks.rewind`
takes every task back to its last checkpoint, input included.

Without repartitioning, a task per input partition runs the whole plan. With it
(:mod:`.topology`), a task per input partition runs the upstream half (into the repartition
topic) and a task per repartition partition the downstream half (state and results).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from streamnb.engine import checkpoint
from streamnb.engine.core import NEG_INF, Context, Delta, Partitions
from streamnb.engine.executor import Pipeline, Step
from streamnb.exceptions import SourceError
from streamnb.io.sources.kafka import KafkaReader
from streamnb.plan import Plan
from streamnb.worker.changelog import METADATA_PREFIX, Changelog, parse_pointer
from streamnb.worker.topology import Split

log = logging.getLogger("streamnb.worker")

TP = tuple[str, int]
"""A task's key: its topic (input, or repartition) and partition."""


@dataclass(eq=False)
class Task:
    """One partition's share of the query."""

    topic: str
    partition: int
    pipeline: Pipeline
    ctx: Context
    source: Step
    position: int | None = None  # next input offset to read, once known
    committed: int | None = None  # input offset of the last checkpoint
    pointer: str = METADATA_PREFIX  # offset metadata: the last snapshot, "sn1:<id>:<records>"
    snapshot_id: int = 0
    dirty: bool = False

    def watermark(self) -> int:
        values = [w for w in self.ctx.watermarks.values() if w > NEG_INF]
        return max(values) if values else NEG_INF


class Tasks:
    """The tasks of one worker: ``running`` ones, and ``suspended`` ones during a rebalance.

    ``ctx`` is the worker's context: tasks share its side outputs and partition ids, and write
    through its (current) producer. ``emit`` receives the results of the tasks that make them.
    """

    def __init__(
        self,
        name: str,
        *,
        plan: Plan,
        split: Split | None,
        topic: str,
        ctx: Context,
        changelog: Changelog,
        restorer: Any,
        emit: Callable[[Delta], None],
    ) -> None:
        self.name, self.plan, self.split, self.topic = name, plan, split, topic
        self.ctx, self.changelog, self.restorer, self.emit = ctx, changelog, restorer, emit
        self.running: dict[TP, Task] = {}
        self.suspended: dict[TP, Task] = {}  # revoked, kept in case they come back unchanged
        self.restores = 0
        self.restore_ms = 0.0  # the last restore of a task

    def assign(self, partitions: Sequence[TP], reader: KafkaReader) -> None:
        """The group gave us ``partitions``: reuse a suspended task if nobody moved it on,
        else restore it from the last checkpoint."""
        committed = self._committed(partitions)
        for key in partitions:
            offset, pointer = committed[key]
            kept = self.suspended.pop(key, None)
            if kept is not None and kept.committed == offset and kept.pointer == pointer:
                self.running[key] = kept
                continue
            self.running[key] = self._restore(key, offset, pointer, reader)
        self.suspended.clear()
        for key in partitions:  # forget positions from an earlier ownership
            reader.set_position(*key, self.running[key].committed)
        log.info("%s: tasks %s", self.name, sorted(f"{t}/{p}" for t, p in self.running))

    def suspend(self, partitions: Sequence[TP]) -> None:
        """``partitions`` leave us (checkpointed by the caller): keep their tasks aside."""
        for key in partitions:
            task = self.running.pop(key, None)
            if task is not None:
                self.suspended[key] = task

    def rewind(self, reader: KafkaReader) -> None:
        """Every task back to its last committed checkpoint, input included."""
        partitions = list(self.running)
        self.running.clear()
        committed = self._committed(partitions)
        for key in partitions:
            offset, pointer = committed[key]
            self.running[key] = self._restore(key, offset, pointer, reader)
            if offset is not None:
                with contextlib.suppress(Exception):
                    reader.seek(*key, offset)

    def _committed(self, partitions: Sequence[TP]) -> dict[TP, tuple[int | None, str]]:
        """The group's committed offset and its metadata (the snapshot pointer) per partition."""
        from confluent_kafka import KafkaException, TopicPartition

        try:
            found = self.restorer.committed(
                [TopicPartition(t, p) for t, p in partitions], timeout=30
            )
        except KafkaException as exc:
            raise SourceError(
                f"{self.name}: cannot read the group's committed offsets: {exc}"
            ) from exc
        return {
            (tp.topic, tp.partition): (
                tp.offset if tp.offset >= 0 else None,
                tp.metadata or METADATA_PREFIX,
            )
            for tp in found
        }

    def _restore(self, key: TP, offset: int | None, pointer: str, reader: KafkaReader) -> Task:
        started = time.monotonic()
        task = self._new_task(key, reader)
        partition = task.partition
        task.committed, task.pointer, task.position = offset, pointer, offset
        where = parse_pointer(pointer)
        if where is not None:
            task.snapshot_id = where[0]
            checkpoint.restore(task.pipeline, self.changelog.read(partition, *where))
            for step in task.pipeline.steps:  # the status shows the restored watermark
                tracker = getattr(step.op, "tracker", None)
                if tracker is not None:
                    task.ctx.watermarks[id(step.op)] = tracker.current
        self.restores += 1
        self.restore_ms = (time.monotonic() - started) * 1000
        log.info(
            "%s: task %s/%d restored at offset %s from %s in %.0f ms",
            self.name,
            task.topic,
            partition,
            offset,
            pointer,
            self.restore_ms,
        )
        return task

    def _new_task(self, key: TP, reader: KafkaReader) -> Task:
        """The task of input partition ``key`` (upstream half when repartitioning), or of a
        repartition partition (downstream half: its watermark spans every input partition)."""
        topic, partition = key
        inputs = set(reader.partition_ids(self.topic))
        sink: Callable[[Delta], None]
        if self.split is None:
            root, assigned, sink = (
                self.plan.root,
                inputs & {reader.partition_id(topic, partition)},
                self.emit,
            )
        elif topic == self.topic:
            root, assigned, sink = self.split.upstream, set(), _discard
        else:
            root, assigned, sink = self.split.downstream, inputs, self.emit
        ctx = Context(
            late=self.ctx.late,
            errors=self.ctx.errors,
            error_listeners=self.ctx.error_listeners,
            producer=self.ctx.producer,
            partitions=Partitions(
                ids=self.ctx.partitions.ids, assigned=assigned, scopes=self.ctx.partitions.scopes
            ),
        )
        pipeline = Pipeline(root, ctx, sink)
        return Task(topic, partition, pipeline, ctx, pipeline.sources[0])


def _discard(delta: Delta) -> None:
    """Upstream halves end in the repartition topic: nothing reaches the result."""
