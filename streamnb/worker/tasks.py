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
  same instance id, see :class:`Instance`) aborts it at once, and so does the transaction
  timeout otherwise. A worker that lost its partitions is fenced: its commit fails and it
  rewinds to the last checkpoint instead of writing twice.
* ``at_least_once``: output and changelog are flushed, then offsets committed; after a crash
  some output may repeat, none is lost.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import compress
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from streamnb.engine import checkpoint
from streamnb.engine.core import NEG_INF, PARTITION, Context, Delta, Partitions, visible
from streamnb.engine.executor import DEFAULT_MAX_BATCH, Pipeline, RateMeter, Step
from streamnb.exceptions import ConfigError, SourceError
from streamnb.kafka import client_config
from streamnb.plan import nodes
from streamnb.sinks.memory import ResultTable
from streamnb.sources.kafka import KafkaSource, _KafkaReader
from streamnb.worker import topology
from streamnb.worker.changelog import (
    METADATA_PREFIX,
    TRANSACTION_TIMEOUT_MS,
    Changelog,
    Instance,
    parse_pointer,
)

log = logging.getLogger("streamnb.worker")

TP = tuple[str, int]
"""A task's key: its topic (input, or repartition) and partition."""


@dataclass(eq=False)
class Task:
    """One input partition's share of the query."""

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


class _TaskReader(_KafkaReader):
    """The Kafka reader, with assignment changes and commits handed to the worker; with a
    repartition topic, it reads that topic too (Arrow IPC, see :mod:`.topology`)."""

    def __init__(
        self, source: KafkaSource, ctx: Context, worker: TaskWorker, repartition: str | None
    ) -> None:
        self.worker, self.repartition = worker, repartition
        self.repartitioned: pl.DataFrame | None = None  # from the last read
        super().__init__(source, ctx)
        if repartition is not None:
            self.consumer.subscribe(
                [*source.topics, repartition], on_assign=self._on_assign, on_revoke=self._on_revoke
            )

    def read(self, max_records: int, timeout: float) -> pl.DataFrame | None:
        from confluent_kafka import Message

        messages = self._messages(max_records, timeout)
        self.repartitioned = None
        if self.repartition is not None and messages:
            topics = np.array(list(map(Message.topic, messages)), dtype=object)
            ours = topics == self.repartition
            if ours.any():
                mine = list(compress(messages, ours))
                messages = list(compress(messages, ~ours))
                for m in mine:
                    self.positions[(self.repartition, m.partition())] = m.offset() + 1
                self.repartitioned = topology.decode(mine)
        return self._frame(messages)

    def _assigned(self, partitions: list[tuple[str, int]]) -> None:
        super()._assigned([(t, p) for t, p in partitions if t in self.lut])

    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        super()._on_assign(consumer, partitions)
        self.worker.assigned([(tp.topic, tp.partition) for tp in partitions])

    def _on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        self.worker.revoked([(tp.topic, tp.partition) for tp in partitions])
        ids = {int(self.lut[tp.topic][tp.partition]) for tp in partitions if tp.topic in self.lut}
        self.ctx.partitions.assigned -= ids

    def _commit(self, *, asynchronous: bool) -> None:
        """Offsets are committed by the worker's checkpoints, never here."""

    def _mark_idle(self, now: float, pids: Any) -> None:
        """Each task reads one partition: there is no other partition to wait for."""


@dataclass
class Timings:
    checkpoints: int = 0
    checkpoint_ms: float = 0.0  # the last checkpoint: snapshots and commit
    commit_ms: float = 0.0  # of which the commit (transaction or offsets)
    restores: int = 0
    restore_ms: float = 0.0  # the last restore of a task
    snapshot_bytes: int = 0  # of the last checkpoint
    lag: dict[int, int] = field(default_factory=dict)


class TaskWorker:
    """Runs ``stream`` (one Kafka source) as tasks in a background thread; a ``Query``'s API."""

    def __init__(
        self,
        stream: Any,
        *,
        name: str,
        group_id: str,
        guarantee: str,
        checkpoint_interval_ms: int,
        state_dir: Path,
        max_batch: int = DEFAULT_MAX_BATCH,
    ) -> None:
        from confluent_kafka import Consumer, Producer

        self.name, self.stream, self.group = name, stream, group_id
        self.exactly_once = guarantee == "exactly_once"
        self.interval = checkpoint_interval_ms / 1000
        self.max_batch = max_batch
        self.source = _kafka_source(stream._node).in_group(group_id)
        self.topic = self.source.topics[0]
        self.partitions = len(self.source.partitions[self.topic])
        # several partitions and state: key the state by repartitioning (one task per
        # repartition partition holds it); otherwise each input partition's task holds its own
        self.split = (
            topology.split(stream._node, f"{group_id}-repartition", self.partitions)
            if self.partitions > 1
            else None
        )
        self.repartition = self.split.upstream.topic if self.split is not None else None  # type: ignore[attr-defined]
        self.instance = Instance(state_dir, group_id)
        bootstrap, config = self.source.bootstrap, self.source.config
        producer_config: dict[str, Any] = {
            "enable.idempotence": True,
            "linger.ms": 5,
            "compression.type": "lz4",
            "delivery.report.only.error": True,
            "on_delivery": self._undelivered,
        }
        self.undelivered, self.last_delivery_error = 0, ""
        if self.exactly_once:
            producer_config["transactional.id"] = f"{group_id}-{self.instance.id}"
            producer_config["transaction.timeout.ms"] = TRANSACTION_TIMEOUT_MS
        else:
            producer_config["message.timeout.ms"] = 0  # retry until delivered: lose nothing
        self._producer_config = client_config(bootstrap, _producer_only(config), **producer_config)
        self.producer = Producer(self._producer_config)
        # reads committed offsets (with their metadata) and the changelog; never subscribes
        self.restorer = Consumer(
            client_config(
                bootstrap,
                config,
                **{
                    "group.id": group_id,
                    "enable.auto.commit": False,
                    "isolation.level": "read_committed",
                    "enable.partition.eof": True,
                    "fetch.wait.max.ms": 10,
                },
            )
        )
        self.changelog = Changelog(f"{group_id}-changelog", self.producer, self.restorer)
        self.ctx = Context(producer=self.producer)
        self.table = ResultTable(stream.schema, stream.keys, 100_000)
        self.tasks: dict[TP, Task] = {}
        self.suspended: dict[TP, Task] = {}  # revoked, kept in case they come back unchanged
        self.timings = Timings()
        self.records_in = 0
        self.exception: BaseException | None = None
        self._state = "running"
        self._stop = threading.Event()
        self._done = threading.Event()
        self.rates = RateMeter()
        self.reader: _TaskReader | None = None
        self._thread = threading.Thread(target=self._run, name=f"streamnb:{name}", daemon=True)

    # -- Query API -----------------------------------------------------------------------------
    def start(self) -> TaskWorker:
        """Check the topics (a missing output topic raises here), then run in the background."""
        try:
            self._ensure_changelog()
        except BaseException:
            self._close()
            raise
        self._thread.start()
        return self

    def stop(self, timeout: float | None = 60.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    def result(self) -> pl.DataFrame:
        return self.table.frame()

    def status(self) -> dict[str, Any]:
        watermarks = [t.watermark() for t in self.tasks.values()]
        known = [w for w in watermarks if w > NEG_INF]
        lag = self.timings.lag
        return {
            "name": self.name,
            "state": self._state,
            "records_in": self.records_in,
            "records_out": self.table.rows_out,
            "late": self.ctx.late.count,
            "errors": self.ctx.errors.count,
            "watermark": _as_time(min(known), self.stream) if known else None,
            "lag": sum(lag.values()) if lag else None,
            "rate": round(self.rates.rate(), 1),
            "tasks": sorted(p for t, p in self.tasks if t == self.topic),
            "checkpoints": self.timings.checkpoints,
            "checkpoint_ms": round(self.timings.checkpoint_ms, 2),
            "commit_ms": round(self.timings.commit_ms, 2),
            "restores": self.timings.restores,
            "restore_ms": round(self.timings.restore_ms, 2),
            "snapshot_bytes": self.timings.snapshot_bytes,
            "lag_by_partition": dict(lag),
        }

    # -- the loop ------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            if self.exactly_once:
                self.producer.init_transactions(30)
                self.producer.begin_transaction()
            self.reader = _TaskReader(self.source, self.ctx, self, self.repartition)
            last = time.monotonic()
            while not self._stop.is_set():
                rows = self.reader.read(self.max_batch, 0.1)
                if rows is not None and rows.height:
                    self._process(rows)
                if self.reader.repartitioned is not None:
                    self._process_repartitioned(self.reader.repartitioned)
                self.rates.note(self.records_in)
                lags = self.reader.lags.items()
                self.timings.lag = {p: lag for (t, p), lag in lags if t == self.topic}
                if time.monotonic() - last >= self.interval:
                    self.checkpoint()
                    last = time.monotonic()
            self.checkpoint()
            self._state = "stopped"
        except BaseException as exc:  # reported by status()/exception, never silent
            self.exception = exc
            self._state = "failed"
            log.error("query %s failed: %r", self.name, exc)
        finally:
            self._close()
            self._done.set()

    def _close(self) -> None:
        if self.exactly_once and self._state == "failed":
            with contextlib.suppress(Exception):
                self.producer.abort_transaction(10)
        with contextlib.suppress(Exception):
            self.producer.flush(10)
        if self.reader is not None:
            with contextlib.suppress(Exception):
                self.reader.close()  # leaves the group: the partitions move at once
        with contextlib.suppress(Exception):
            self.restorer.close()
        self.instance.release()

    def _process(self, rows: pl.DataFrame) -> None:
        assert self.reader is not None
        self.records_in += rows.height
        for (pid,), part in rows.partition_by(PARTITION, as_dict=True, maintain_order=True).items():
            self._push((self.topic, self._partition_of(int(pid))), part)
        self._positions()

    def _process_repartitioned(self, rows: pl.DataFrame) -> None:
        assert self.repartition is not None
        for (q,), part in rows.partition_by(
            topology.TASK, as_dict=True, maintain_order=True, include_key=False
        ).items():
            self._push((self.repartition, int(q)), part)
        self._positions()

    def _push(self, key: TP, rows: pl.DataFrame) -> None:
        task = self.tasks.get(key)
        if task is None:  # records fetched before their partition was revoked
            return
        task.pipeline.push(task.source, rows)
        task.dirty = True

    def _positions(self) -> None:
        assert self.reader is not None
        for key, task in self.tasks.items():
            position = self.reader.positions.get(key)
            if position is not None:
                task.position = position

    def _partition_of(self, pid: int) -> int:
        assert self.reader is not None
        lut = self.reader.lut[self.topic]
        return int((lut == pid).nonzero()[0][0])

    def _emit(self, delta: Delta) -> None:
        self.table.add(Delta(visible(delta.rows), delta.deletes))

    # -- tasks ---------------------------------------------------------------------------------
    def _new_task(self, key: TP) -> Task:
        """The task of input partition ``key`` (upstream half when repartitioning), or of a
        repartition partition (downstream half: its watermark spans every input partition)."""
        assert self.reader is not None
        topic, partition = key
        inputs = {int(pid) for pid in self.reader.lut[self.topic]}
        if self.split is None:
            root, assigned, sink = (
                self.stream._node,
                inputs & {int(self.reader.lut[topic][partition])},
                self._emit,
            )
        elif topic == self.topic:
            root, assigned, sink = self.split.upstream, set(), _discard
        else:
            root, assigned, sink = self.split.downstream, inputs, self._emit
        ctx = Context(
            late=self.ctx.late,
            errors=self.ctx.errors,
            error_listeners=self.ctx.error_listeners,
            producer=self.producer,
            partitions=Partitions(
                ids=self.ctx.partitions.ids, assigned=assigned, scopes=self.ctx.partitions.scopes
            ),
        )
        pipeline = Pipeline(root, ctx, sink)
        return Task(topic, partition, pipeline, ctx, pipeline.sources[0])

    def assigned(self, partitions: list[TP]) -> None:
        """The group gave us ``partitions``: reuse a suspended task if nobody moved it on,
        else restore it from the last checkpoint."""
        committed = self._committed(partitions)
        for key in partitions:
            offset, pointer = committed[key]
            kept = self.suspended.pop(key, None)
            if kept is not None and kept.committed == offset and kept.pointer == pointer:
                self.tasks[key] = kept
                continue
            self.tasks[key] = self._restore(key, offset, pointer)
        self.suspended.clear()
        assert self.reader is not None
        for key in partitions:  # forget positions from an earlier ownership
            offset = self.tasks[key].committed
            if offset is None:
                self.reader.positions.pop(key, None)
            else:
                self.reader.positions[key] = offset
        log.info("%s: tasks %s", self.name, sorted(f"{t}/{p}" for t, p in self.tasks))

    def revoked(self, partitions: list[TP]) -> None:
        """``partitions`` leave us: checkpoint them before they go."""
        self.checkpoint()
        for key in partitions:
            task = self.tasks.pop(key, None)
            if task is not None:
                self.suspended[key] = task

    def _committed(self, partitions: list[TP]) -> dict[TP, tuple[int | None, str]]:
        from confluent_kafka import TopicPartition

        found = self.restorer.committed([TopicPartition(t, p) for t, p in partitions], timeout=30)
        return {
            (tp.topic, tp.partition): (
                tp.offset if tp.offset >= 0 else None,
                tp.metadata or METADATA_PREFIX,
            )
            for tp in found
        }

    def _restore(self, key: TP, offset: int | None, pointer: str) -> Task:
        started = time.monotonic()
        task = self._new_task(key)
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
        self.timings.restores += 1
        self.timings.restore_ms = (time.monotonic() - started) * 1000
        log.info(
            "%s: task %s/%d restored at offset %s from %s in %.0f ms",
            self.name,
            task.topic,
            partition,
            offset,
            pointer,
            self.timings.restore_ms,
        )
        return task

    # -- checkpoints ---------------------------------------------------------------------------
    def checkpoint(self) -> None:
        """Snapshot the changed tasks to the changelog and commit them with the offsets."""
        from confluent_kafka import TopicPartition

        started = time.monotonic()
        written = 0
        snapshots: set[TP] = set()
        for key, task in self.tasks.items():
            if not task.dirty:
                continue
            task.dirty = False
            if not checkpoint.stateful(task.pipeline):
                continue
            data = checkpoint.snapshot(task.pipeline)
            records = checkpoint.chunks(data)
            written += len(data)
            task.snapshot_id += 1
            task.pointer = self.changelog.write(task.partition, task.snapshot_id, records)
            snapshots.add(key)
        moved = [
            (task, task.position)
            for task in self.tasks.values()
            if task.position is not None
            and (task.position != task.committed or (task.topic, task.partition) in snapshots)
        ]
        if not moved:
            return
        committing = time.monotonic()
        self._commit(
            [
                TopicPartition(task.topic, task.partition, position, metadata=task.pointer)
                for task, position in moved
            ]
        )
        for task, position in moved:
            task.committed = position
        done = time.monotonic()
        self.timings.checkpoints += 1
        self.timings.checkpoint_ms = (done - started) * 1000
        self.timings.commit_ms = (done - committing) * 1000
        self.timings.snapshot_bytes = written

    def _undelivered(self, err: Any, msg: Any) -> None:
        self.undelivered += 1
        self.last_delivery_error = f"{msg.topic()}: {err.str()}"

    def _commit(self, offsets: list[Any]) -> None:
        from confluent_kafka import KafkaException

        assert self.reader is not None
        consumer = self.reader.consumer
        if not self.exactly_once:
            left = self.producer.flush(60)
            if left or self.undelivered:
                raise SourceError(
                    f"{self.undelivered or left} output or changelog records not delivered "
                    f"({self.last_delivery_error or 'flush timed out'}); offsets not committed, "
                    "a restart resumes from the last checkpoint"
                )
            consumer.commit(offsets=offsets, asynchronous=False)
            return
        metadata = consumer.consumer_group_metadata()
        try:
            _bounded(lambda: self.producer.send_offsets_to_transaction(offsets, metadata, 30), 45)
            _bounded(lambda: self.producer.commit_transaction(60), 75)
        except _Stuck:
            # librdkafka can wait forever for a group coordinator that went away with a
            # restarted broker (confluentinc/librdkafka#5456, #5511): a new producer with the
            # same transactional.id fences this one and aborts its transaction
            log.warning("%s: the transactional producer is stuck; replacing it", self.name)
            self._replace_producer()
            self._rewind()
            return
        except KafkaException as exc:
            error = exc.args[0]
            if not (error.txn_requires_abort() or error.retriable()):
                raise
            # fenced (the partitions moved) or the transaction failed: nothing of it is
            # visible; go back to the last checkpoint and redo the work
            log.warning("%s: transaction aborted (%s); rewinding", self.name, error.str())
            try:
                _bounded(lambda: self.producer.abort_transaction(30), 45)
                self.producer.begin_transaction()
            except (_Stuck, KafkaException):
                self._replace_producer()
            self._rewind()
            return
        self.producer.begin_transaction()

    def _replace_producer(self) -> None:
        """A new transactional producer in place of this one (same id: the old is fenced)."""
        from confluent_kafka import KafkaException, Producer

        self.producer = Producer(self._producer_config)
        self.changelog.producer = self.ctx.producer = self.producer
        for attempt in range(20):
            try:
                self.producer.init_transactions(30)
                break
            except KafkaException as exc:
                if attempt == 19 or not exc.args[0].retriable():
                    raise
                time.sleep(1)
        self.producer.begin_transaction()

    def _rewind(self) -> None:
        """Every task back to its last committed checkpoint, input included."""
        from confluent_kafka import TopicPartition

        assert self.reader is not None
        partitions = list(self.tasks)
        self.tasks.clear()
        committed = self._committed(partitions)
        for key in partitions:
            offset, pointer = committed[key]
            self.tasks[key] = self._restore(key, offset, pointer)
            if offset is not None:
                with contextlib.suppress(Exception):
                    self.reader.consumer.seek(TopicPartition(*key, offset))
                    self.reader.positions[key] = offset

    # -- helpers -------------------------------------------------------------------------------
    def _ensure_changelog(self) -> None:
        """Create the changelog topic if needed; check that the output topics exist (a record
        for a missing topic would fail only at delivery)."""
        from confluent_kafka.admin import AdminClient, NewTopic

        from streamnb.plan import KafkaSinkNode

        admin = AdminClient(
            client_config(self.source.bootstrap, _producer_only(self.source.config))
        )
        known = admin.list_topics(timeout=30).topics
        for node in nodes(self.stream._node):
            if isinstance(node, KafkaSinkNode):
                for name in filter(None, (node.topic, node.dlq)):
                    if name not in known:
                        raise ConfigError(
                            f"output topic {name!r} does not exist at {node.bootstrap}: "
                            "create it before starting the worker"
                        )
        internal = {
            self.changelog.topic: {"cleanup.policy": "compact", "segment.bytes": str(2**26)},
        }
        if self.repartition is not None:
            internal[self.repartition] = {"cleanup.policy": "delete", "retention.ms": "-1"}
        topics = [
            NewTopic(name, num_partitions=self.partitions, replication_factor=-1, config=config)
            for name, config in internal.items()
        ]
        for name, future in admin.create_topics(topics, request_timeout=30).items():
            try:
                future.result(30)
            except Exception as exc:
                if "TOPIC_ALREADY_EXISTS" not in str(exc) and "already exists" not in str(exc):
                    raise SourceError(f"cannot create topic {name}: {exc}") from exc


class _Stuck(Exception):
    """A client call did not return within its deadline."""


def _bounded(call: Callable[[], object], seconds: float) -> None:
    """Run ``call`` with a hard deadline (in a thread: a blocked C call cannot be interrupted;
    it is left behind if it overruns, and :class:`_Stuck` raised)."""
    done = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:  # handed to the caller
            failure.append(exc)
        finally:
            done.set()

    threading.Thread(target=run, name="streamnb:kafka-call", daemon=True).start()
    if not done.wait(seconds):
        raise _Stuck(f"no answer within {seconds:g} s")
    if failure:
        raise failure[0]


def _discard(delta: Delta) -> None:
    """Upstream halves end in the repartition topic: nothing reaches the result."""


def _kafka_source(node: Any) -> KafkaSource:
    from streamnb.plan import SourceNode

    sources = [n.source for n in nodes(node) if isinstance(n, SourceNode)]
    assert len(sources) == 1 and isinstance(sources[0], KafkaSource)
    return sources[0]


_CONSUMER_ONLY = (
    "group.",
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "max.poll.interval.ms",
    "auto.offset.reset",
    "enable.auto.",
    "auto.commit.",
    "isolation.level",
    "fetch.",
    "queued.",
    "partition.assignment.strategy",
    "enable.partition.eof",
)


def _producer_only(config: dict[str, Any]) -> dict[str, Any]:
    """The source's client settings without the consumer's own (librdkafka warns on them)."""
    return {k: v for k, v in config.items() if not k.startswith(_CONSUMER_ONLY)}


def partitioned_source(stream: Any) -> bool:
    """Whether the worker runs ``stream`` as tasks: its only source is one Kafka topic."""
    from streamnb.plan import ParquetNode, SourceNode

    plan = nodes(stream._node)
    sources = [n.source for n in plan if isinstance(n, SourceNode)]
    return (
        len(sources) == 1
        and isinstance(sources[0], KafkaSource)
        and len(sources[0].topics) == 1
        and not any(isinstance(n, ParquetNode) for n in plan)
    )


def has_kafka_sink(stream: Any) -> bool:
    from streamnb.plan import KafkaSinkNode

    return any(isinstance(n, KafkaSinkNode) for n in nodes(stream._node))


def _as_time(watermark: int, stream: Any) -> Any:
    from datetime import datetime, timezone

    et = stream._result_time
    if et is not None and isinstance(et.dtype, pl.Datetime):
        return datetime.fromtimestamp(watermark / et.per_ms / 1000, tz=timezone.utc)
    return watermark
