"""The worker's runtime for a query over Kafka: one task per input partition, checkpointed.

This is Kafka Streams' model. Each partition of the input topic is a *task*: its own operators,
watermark and state. Workers started with the same ``--group-id`` form one consumer group and
share the partitions; when a partition moves, its new owner restores the task's state from
Kafka and carries on, so any worker on any host can take over.

Every ``--checkpoint-interval`` the worker checkpoints: each task whose state changed writes a
snapshot of its operators (:mod:`streamnb.engine.checkpoint`) to its partition of the changelog
topic ``<group>-changelog``, and the consumed input offsets are committed with, as offset
metadata, where that snapshot starts (``sn1:<offset>:<records>``). A new owner reads the
group's committed offset and metadata, restores the snapshot, and consumes from that offset.

* ``exactly_once``: the output records, the changelog records and the input offsets of one
  checkpoint are one Kafka transaction (a transactional producer that sinks share,
  ``send_offsets_to_transaction`` with the consumer's group metadata; input and changelog are
  read ``read_committed``). A worker killed mid-transaction leaves it open: its restart (the
  same instance id, see :class:`~.changelog.Instance`) aborts it at once, and so does the
  transaction timeout otherwise. A worker that lost its partitions is fenced: its commit fails
  and it rewinds to the last checkpoint instead of writing twice.
* ``at_least_once``: output and changelog are flushed, then offsets committed; after a crash
  some output may repeat, none is lost.

This module holds :class:`TaskWorker`: the read loop, the routing of rows to tasks, and the
``Query`` API (start, stop, wait, status, result). The other parts are its components:
:mod:`.assignment` (which tasks run, restored from the changelog), :mod:`.transactions`
(checkpoints and their commit), :mod:`.admin` (topics), :mod:`.topology` (repartitioning) and
:mod:`.changelog` (snapshots in Kafka, the worker's instance id).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import shutil
import threading
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, cast

import polars as pl

from streamnb.columns import PARTITION, visible
from streamnb.engine import heap, lookup
from streamnb.engine.core import NEG_INF, Context, Delta
from streamnb.engine.executor import (
    DEFAULT_LATENCY_MS,
    DEFAULT_MAX_BATCH,
    BatchBudget,
    Pipeline,
    RateMeter,
    Step,
)
from streamnb.engine.result import ResultTable
from streamnb.engine.source import Part
from streamnb.exceptions import ConfigError, QueryFailed, SinkError
from streamnb.io.kafka.client import client_config
from streamnb.io.sinks.kafka import KafkaSink
from streamnb.io.sinks.parquet import ParquetSink
from streamnb.io.sources.kafka import KafkaReader
from streamnb.plan import Plan
from streamnb.types import Guarantee, HeldBack, QueryState, Status
from streamnb.worker import topology
from streamnb.worker.admin import CHANGELOG_CONFIG, REPARTITION_CONFIG, Purger, ensure_topics
from streamnb.worker.assignment import TP, Task, Tasks
from streamnb.worker.changelog import Instance
from streamnb.worker.inputs import GlobalTable, inputs
from streamnb.worker.transactions import Checkpoints

log = logging.getLogger("streamnb.worker")


class WorkerStatus(Status):
    """``TaskWorker.status()``: a query's status, and the worker's tasks and checkpoints."""

    tasks: list[int]  # the input partitions this worker owns
    checkpoints: int
    checkpoint_ms: float  # the last checkpoint: snapshots and commit
    commit_ms: float  # of which the commit (transaction or offsets)
    restores: int
    restore_ms: float  # the last restore of a task
    snapshot_bytes: int  # written by the last checkpoint
    lag_by_partition: dict[int, int]


class TaskWorker:
    """Runs ``plan`` (Kafka topics) as tasks in a background thread; a ``Query``'s API.

    It is the :class:`~streamnb.engine.source.PartOwner` of its Kafka reader: the group's
    assignments and revocations come to :meth:`assigned` and :meth:`revoked`.
    """

    def __init__(
        self,
        plan: Plan,
        *,
        name: str,
        group_id: str,
        guarantee: Guarantee,
        checkpoint_interval_ms: int,
        state_dir: Path,
        max_batch: int = DEFAULT_MAX_BATCH,
        disk_state: bool = False,
    ) -> None:
        from confluent_kafka import Consumer

        self.name, self.plan, self.group = name, plan, group_id
        self.exception: BaseException | None = None
        self.views: dict[str, Any] = {}
        self.exactly_once = guarantee == "exactly_once"
        self.interval = checkpoint_interval_ms / 1000
        self.max_batch = max_batch
        self.budget = BatchBudget(DEFAULT_LATENCY_MS / 1000, max_batch)
        self.inputs = inputs(plan)
        streams = [s.in_group(group_id) for s in self.inputs.streams]
        self.source, self.members = streams[0], streams[1:]
        self.topic = self.source.topics[0]
        self.partitions = self.inputs.partitions
        # several partitions and state: key the state by repartitioning (one task per
        # repartition partition holds it); otherwise each input partition's task holds its own
        self.split = topology.for_inputs(plan.root, self.inputs, f"{group_id}-repartition")
        self.repartitions = self.split.topics if self.split is not None else []
        self.idle_after = min(s.idle_ms for s in self.inputs.streams) / 1000
        self.purgers = [Purger(self.source, topic) for topic in self.repartitions]
        self.instance = Instance(state_dir, group_id)
        # reads committed offsets (with their metadata) and the changelog; never subscribes
        self.restorer = Consumer(
            client_config(
                self.source.bootstrap,
                self.source.config,
                **{
                    "group.id": group_id,
                    "enable.auto.commit": False,
                    "isolation.level": "read_committed",
                    "enable.partition.eof": True,
                    "fetch.wait.max.ms": 10,
                },
            )
        )
        # keyed state in files under the instance's directory (a killed predecessor's files
        # go: its state comes back from the changelog), or in memory
        keyed = self.instance.path / "state" if disk_state else None
        if keyed is not None:
            shutil.rmtree(keyed, ignore_errors=True)
        self.ctx = Context(state_dir=keyed)
        self.global_tables: dict[int, GlobalTable] = {}  # by id of the plan's table source
        self.checkpoints = Checkpoints(
            name,
            source=self.source,
            transactional_id=f"{group_id}-{self.instance.id}" if self.exactly_once else None,
            changelog_topic=f"{group_id}-changelog",
            restorer=self.restorer,
            ctx=self.ctx,
        )
        self.tasks = Tasks(
            name,
            plan=plan,
            split=self.split,
            groups=self.inputs.groups,
            partitions=self.partitions,
            tables=self.global_tables,
            ctx=self.ctx,
            changelogs=lambda topic: self.checkpoints.changelog_named(self._changelog_of(topic)),
            restorer=self.restorer,
            emit=self._emit,
        )
        self.table = ResultTable(plan.schema, plan.keys, 100_000)
        self.partition_lag: dict[int, int] = {}  # per input partition, as last measured
        self.records_in = 0
        self._state: QueryState = "running"
        self._stop = threading.Event()
        self._done = threading.Event()
        self.rates = RateMeter()
        self.reader: KafkaReader | None = None
        self._bootstrapped = False
        self._checkpointed = 0.0  # time.monotonic() at the last checkpoint
        self._thread = threading.Thread(target=self._run, name=f"streamnb:{name}", daemon=True)

    # -- Query API -----------------------------------------------------------------------------
    def start(self) -> TaskWorker:
        """Check the topics (a missing output topic raises here), then run in the background."""
        try:
            internal = {self._changelog_of(self.topic): CHANGELOG_CONFIG}
            for topic in self.repartitions:
                internal[topic] = REPARTITION_CONFIG
                internal[self._changelog_of(topic)] = CHANGELOG_CONFIG
            ensure_topics(self.plan, self.source, internal, self.partitions)
        except BaseException:
            self._close()
            raise
        self._thread.start()
        return self

    def _changelog_of(self, topic: str) -> str:
        """The changelog topic of the tasks that read ``topic``: one per stateful stage (the
        input tasks, or the first stage after a repartition, use ``<group>-changelog``)."""
        stage = self.repartitions.index(topic) if topic in self.repartitions else 0
        return f"{self.group}-changelog" + (f"-{stage + 1}" if stage else "")

    def stop(self, timeout: float | None = 60.0) -> None:
        """Stop after the current batch, checkpoint, and wait for the thread to end."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the worker ends; True if it did within ``timeout``.

        Raises :class:`QueryFailed` if it failed (as ``Query.wait`` does).
        """
        ended = self._done.wait(timeout)
        if self._state == "failed":
            raise QueryFailed(f"query {self.name!r} failed: {self.exception}") from self.exception
        return ended

    def result(self) -> pl.DataFrame:
        return self.table.frame()

    def state(self, key: Any = None) -> pl.DataFrame:
        """``Query.state()`` over the tasks: each task's stateful operator read between its
        own batches (a key lives in one task: its partition's, or its repartition
        partition's)."""
        return lookup.state_frame(self._pipelines(), self.name, key)

    def windows(self, key: Any = None) -> pl.DataFrame:
        """``Query.windows()`` over the tasks."""
        return lookup.windows_frame(self._pipelines(), self.name, key)

    def _pipelines(self) -> list[Pipeline]:
        """The running tasks' pipelines (the dict changes only in a rebalance: read again)."""
        for _ in range(100):
            try:
                return [task.pipeline for task in list(self.tasks.running.values())]
            except RuntimeError:  # changed size while it was read
                continue
        return []

    def status(self) -> WorkerStatus:
        lag, checkpoints = self.partition_lag, self.checkpoints
        return {
            "name": self.name,
            "state": self._state,
            "records_in": self.records_in + self.ctx.rejected,
            "records_out": self.table.rows_out,
            "late": self.ctx.late.count,
            "errors": self.ctx.errors.count,
            "watermark": self._watermark(),
            "lag": sum(lag.values()) if lag else None,
            "rate": round(self.rates.rate(), 1),
            "loading": {
                t.source.name: t.reader.bootstrap_progress()
                for t in self.global_tables.values()
                if not self._bootstrapped
            },
            "held_by": self._held_by(),
            "tasks": sorted({task.partition for task in self.tasks.inputs()}),
            "checkpoints": checkpoints.count,
            "checkpoint_ms": round(checkpoints.checkpoint_ms, 2),
            "commit_ms": round(checkpoints.commit_ms, 2),
            "restores": self.tasks.restores,
            "restore_ms": round(self.tasks.restore_ms, 2),
            "snapshot_bytes": checkpoints.snapshot_bytes,
            "lag_by_partition": dict(lag),
        }

    def _held_by(self) -> HeldBack | None:
        """The input held back longest by a task's event-time merge."""
        held = [
            h
            for task in list(self.tasks.running.values())
            if task.merge is not None and (h := task.merge.held_by()) is not None
        ]
        return max(held, key=lambda h: h["ms"], default=None)

    def _watermark(self) -> datetime | int | None:
        """The minimum over the tasks that have one, as the query's event time shows it."""
        known = [w for w in (t.watermark() for t in self.tasks.running.values()) if w > NEG_INF]
        if not known:
            return None
        et = self.plan.status_time
        return et.as_time(min(known)) if et is not None else min(known)

    # -- the group's assignment (PartOwner) ----------------------------------------------------
    def assigned(self, parts: Sequence[Part]) -> None:
        """The group gave us ``parts``: their tasks, restored from the last checkpoint."""
        assert self.reader is not None  # called back from the reader's reads
        self.tasks.assign(cast(Sequence[TP], parts), self.reader)

    def revoked(self, parts: Sequence[Part]) -> None:
        """``parts`` leave us: checkpoint them before they go."""
        self.checkpoint(leaving=cast(Sequence[TP], parts))
        self.tasks.suspend(cast(Sequence[TP], parts))

    def checkpoint(self, leaving: Sequence[TP] = ()) -> None:
        """Checkpoint every task. If the transaction aborts instead (its commit failed, or it
        refused a write of the checkpoint), the tasks go back to the last one
        (:meth:`_back_to_checkpoint`)."""
        assert self.reader is not None
        self._positions()
        try:
            committed = self.checkpoints.checkpoint(self.tasks.running, self.reader)
        except SinkError as exc:  # in a revocation too: the partitions leaving are spared
            self._abandon(exc, leaving)
            return
        if not committed:
            self._back_to_checkpoint(leaving)
        else:
            for purger in self.purgers:
                purger.purge(
                    {
                        partition: offset
                        for task in self.tasks.running.values()
                        for (t, partition), offset in task.committed.items()
                        if t == purger.topic and offset is not None
                    }
                )

    def _abandon(self, failure: SinkError, leaving: Sequence[TP] = ()) -> None:
        """A write failed: if the open transaction refused it, the transaction is aborted and
        the tasks go back to the last checkpoint; any other failure is raised."""
        if not self.checkpoints.abandon(failure):
            raise failure
        self._back_to_checkpoint(leaving)

    def _back_to_checkpoint(self, leaving: Sequence[TP] = ()) -> None:
        """After an aborted transaction: every task restored from its last checkpoint and its
        input sought back to it. The input of the partitions ``leaving`` stays where it is:
        their next owner, this worker included, reads from the commit."""
        assert self.reader is not None
        self.tasks.rewind(self.reader, leaving=leaving)

    # -- the loop ------------------------------------------------------------------------------
    def _run(self) -> None:
        heap.freeze()
        try:
            self.checkpoints.begin()
            self._bootstrap()
            self.reader = reader = self.source.open(
                self.ctx, owner=self, extra_topics=self.repartitions, members=self.members
            )
            self._checkpointed = time.monotonic()
            while not self._stop.is_set():
                try:
                    self._step(reader)
                except SinkError as exc:
                    self._abandon(exc)
            self.checkpoint()
            self._state = "stopped"
        except BaseException as exc:  # reported by status()/exception, never silent
            self.exception = exc
            self._state = "failed"
            log.error("query %s failed: %r", self.name, exc)
        finally:
            self._close()
            heap.thaw()
            self._done.set()

    def _step(self, reader: KafkaReader) -> None:
        """One batch: read, process, let the tasks release what their merges hold; then a
        checkpoint if one is due."""
        rows = reader.read(self.budget.records, 0.1 if not self.global_tables else 0.02)
        self.tasks.listening.tick(time.monotonic())
        started, records = time.perf_counter(), 0
        for frame in (rows, *reader.member_frames):
            if frame is not None and frame.height:
                self._process(frame)
                records += frame.height
        self.budget.took(records, time.perf_counter() - started)
        for table in self.global_tables.values():
            if (changes := table.read(self.max_batch)) is not None:
                self._offer_table(table, changes)
        if reader.extra_messages:
            for topic, repartitioned in topology.decode(reader.extra_messages).items():
                self._process_repartitioned(topic, repartitioned)
        for task in self.tasks.running.values():
            task.release(functools.partial(self._unread, task))
        self._idle_inputs()
        self.rates.note(self.records_in + self.ctx.rejected)
        self.partition_lag = self._lag_by_partition()
        if time.monotonic() - self._checkpointed >= self.interval:
            self.checkpoint()
            self._checkpointed = time.monotonic()

    def _bootstrap(self) -> None:
        """Read every global table up to the end offsets it had at the start (Kafka Streams
        reads its GlobalKTables before its tasks start)."""
        for source in self.inputs.tables:
            self.global_tables[id(source)] = GlobalTable(source, self.ctx)
        pending = list(self.global_tables.values())
        while pending and not self._stop.is_set():
            for table in pending:
                table.read(self.max_batch)
            pending = [t for t in pending if not t.loaded()]
        self._bootstrapped = True
        log.info("%s: %d global tables loaded", self.name, len(self.global_tables))

    def _idle_inputs(self) -> None:
        """Input tasks without records for the inputs' idle timeout send an idle marker
        downstream, so that their partition no longer holds the windows back (on the
        listening clock: a stall of this worker is not its partitions' silence)."""
        if self.split is None:
            return
        now = self.tasks.listening.now
        for task in self.tasks.inputs():
            if now - task.last_input > self.idle_after and task.send_idle():
                self.checkpoints.produced = True  # committed with the next checkpoint

    def _lag_by_partition(self) -> dict[int, int]:
        """Records not read yet per input partition number, over the input topics."""
        assert self.reader is not None
        topics, lag = set(self.inputs.topics), dict[int, int]()
        for (topic, partition), n in self.reader.lags.items():
            if topic in topics:
                lag[partition] = lag.get(partition, 0) + n
        return lag

    def _unread(self, task: Task, step: Step) -> bool:
        """Whether the input of ``step`` in ``task`` is known to have records to read."""
        assert self.reader is not None
        source = getattr(step.node, "source", None)
        for table, table_step in task.tables:
            if table_step is step:
                return table.reader.has_unread()
        topics = [t for t, s in task.sources.items() if s is step]
        return any(self.reader.has_unread_at(t, task.partition) for t in topics) or (source is None)

    def _close(self) -> None:
        self.checkpoints.finish(failed=self._state == "failed")
        if self.reader is not None:
            with contextlib.suppress(Exception):
                self.reader.close()  # leaves the group: the partitions move at once
        with contextlib.suppress(Exception):
            self.restorer.close()
        self.instance.release()

    def _process(self, rows: pl.DataFrame) -> None:
        """Records of the input topics, to the tasks of their partitions."""
        assert self.reader is not None
        self.records_in += rows.height
        for (pid,), part in rows.partition_by(PARTITION, as_dict=True, maintain_order=True).items():
            topic, partition = self.reader.partition_of(int(pid))
            task = self.tasks.running.get(self.tasks.key_of((topic, partition)))
            if task is None:  # records fetched before their partition was revoked
                continue
            task.offer(task.sources[topic], part)

    def _offer_table(self, table: GlobalTable, changes: pl.DataFrame) -> None:
        """A global table's changes, to every task (each holds the whole table)."""
        for task in self.tasks.running.values():
            for held, step in task.tables:
                if held is table:
                    task.offer(step, changes)

    def _process_repartitioned(self, topic: str, rows: pl.DataFrame) -> None:
        assert self.split is not None
        event_time = self.split.stages[self.split.index(topic)].event_time(topic)
        for (q,), part in rows.partition_by(
            topology.TASK, as_dict=True, maintain_order=True, include_key=False
        ).items():
            task = self.tasks.running.get(self.tasks.key_of((topic, int(q))))
            if task is None:  # records fetched before their partition was revoked
                continue
            if event_time is not None:
                part = topology.idle_markers(part, event_time, task.ctx.partitions)  # noqa: PLW2901
            if part.height:
                task.offer(task.sources[topic], part)

    def _positions(self) -> None:
        """Each task's next offsets to commit: where the reader is, or, for records its
        event-time merge still holds, the first of them."""
        assert self.reader is not None
        positions = self.reader.positions
        for task in self.tasks.running.values():
            for tp in task.positions:  # every partition the task reads, since its restore
                task.positions[tp] = positions.get(tp, task.positions[tp])
            for step in set(task.sources.values()):
                for pid, offset in task.held(step).items():
                    tp = self.reader.partition_of(int(pid))
                    if tp in task.positions:
                        task.positions[tp] = offset

    def _emit(self, delta: Delta) -> None:
        self.table.add(Delta(visible(delta.rows), delta.deletes))


def partitioned_source(plan: Plan) -> bool:
    """Whether the worker runs ``plan`` as tasks: its sources are Kafka topics (streams
    co-partitioned, tables global) and its sinks are not files."""
    try:
        inputs(plan)
    except ConfigError:
        return False
    return not any(isinstance(s, ParquetSink) for s in plan.sinks())


def has_kafka_sink(plan: Plan) -> bool:
    return any(isinstance(s, KafkaSink) for s in plan.sinks())
