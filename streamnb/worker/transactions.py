"""Checkpoints and their commit: the worker's producer, its transactions, and what happens
when a commit cannot complete.

A checkpoint writes a snapshot of each task whose state changed to the task's partition of the
changelog, then commits the tasks' input positions with, as offset metadata, where their
snapshot starts (:mod:`.changelog`).

* ``exactly_once``: the producer is transactional (``transactional.id`` = group and instance
  id); the output, the changelog records and the offsets (``send_offsets_to_transaction`` with
  the consumer's group metadata) of one checkpoint are one transaction. A fenced or failed
  transaction is aborted and :meth:`Checkpoints.checkpoint` returns False: the caller rewinds
  its tasks to the last checkpoint. Transactional calls run with hard deadlines
  (:func:`_bounded`): a producer stuck on a vanished coordinator is replaced by a new one with
  the same id, which fences it. A write that the transaction refuses before its commit (it
  failed in between: librdkafka then answers every ``produce`` "Erroneous state") aborts it
  the same way (:meth:`Checkpoints.abandon`), and the caller rewinds.
* ``at_least_once``: the producer retries until delivered; a checkpoint flushes it, then
  commits the offsets. A record that cannot be delivered fails the query with
  :class:`SinkError` before any offset moves past it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from streamnb.engine import checkpoint
from streamnb.engine.core import Context
from streamnb.exceptions import SinkError
from streamnb.io.kafka.client import client_config
from streamnb.io.sources.kafka import KafkaReader, KafkaSource
from streamnb.worker.admin import producer_only
from streamnb.worker.assignment import TP, Task
from streamnb.worker.changelog import TRANSACTION_TIMEOUT_MS, Changelog

log = logging.getLogger("streamnb.worker")


class Checkpoints:
    """The worker's producer (shared by sinks, repartitioning and the changelog) and its
    checkpoints. ``ctx.producer`` (the worker's context, which tasks write through) is kept
    pointing at the current producer, and so is the changelog's.

    The last checkpoint's figures, for ``status()`` and metrics: ``count``, ``checkpoint_ms``
    (snapshots and commit), ``commit_ms`` (the commit alone), ``snapshot_bytes``.
    """

    def __init__(
        self,
        name: str,
        *,
        source: KafkaSource,
        transactional_id: str | None,
        changelog_topic: str,
        restorer: Any,
        ctx: Context,
    ) -> None:
        from confluent_kafka import Producer

        self.name, self.ctx = name, ctx
        self.exactly_once = transactional_id is not None
        settings: dict[str, Any] = {
            "enable.idempotence": True,
            "linger.ms": 5,
            "compression.type": "lz4",
            "queue.buffering.max.kbytes": 65_536,  # a large snapshot waits, not piles up
            "delivery.report.only.error": True,
            "on_delivery": self._undelivered,
        }
        if transactional_id is not None:
            settings["transactional.id"] = transactional_id
            settings["transaction.timeout.ms"] = TRANSACTION_TIMEOUT_MS
        else:
            settings["message.timeout.ms"] = 0  # retry until delivered: lose nothing
        self._config = client_config(source.bootstrap, producer_only(source.config), **settings)
        self.producer = Producer(self._config)
        self.restorer = restorer
        self.changelog = Changelog(changelog_topic, self.producer, restorer)
        self.changelogs = {changelog_topic: self.changelog}
        ctx.producer = self.producer
        self.undelivered, self.last_delivery_error = 0, ""
        self.produced = False  # output written outside any offset move (idle markers)
        self.count = 0
        self.checkpoint_ms = 0.0
        self.commit_ms = 0.0
        self.snapshot_bytes = 0

    def changelog_named(self, topic: str) -> Changelog:
        """The changelog in ``topic`` (a chain of repartitions has one per stateful stage:
        their tasks share partition numbers)."""
        if topic not in self.changelogs:
            self.changelogs[topic] = Changelog(topic, self.producer, self.restorer)
        return self.changelogs[topic]

    def begin(self) -> None:
        """Start the first transaction (exactly_once): initialising the producer aborts the
        transaction a killed predecessor with the same id left open."""
        from confluent_kafka import KafkaException

        if not self.exactly_once:
            return
        try:
            self.producer.init_transactions(30)
        except KafkaException as exc:
            raise SinkError(f"{self.name}: cannot start the transactional producer: {exc}") from exc
        self.producer.begin_transaction()

    def checkpoint(self, tasks: Mapping[TP, Task], reader: KafkaReader) -> bool:
        """Snapshot the changed ``tasks`` to the changelog and commit them with their input
        positions. False when the transaction was aborted instead: nothing of it is visible,
        and the caller must rewind the tasks to their last checkpoint."""
        from confluent_kafka import TopicPartition

        started = time.monotonic()
        written = 0
        snapshots: set[TP] = set()
        for key, task in tasks.items():
            if not task.dirty:
                continue
            task.dirty = False
            if not checkpoint.stateful(task.pipeline):
                continue
            base, slot = task.next_snapshot()
            records = checkpoint.records(task.pipeline, task.in_flight(), base=base)
            task.snapshot_id += 1
            assert task.changelog is not None  # every task of a worker has one
            snapshot, size = task.changelog.write(task.partition, task.snapshot_id, records, slot)
            written += size
            task.wrote(snapshot, size, base=base)
            snapshots.add(key)
        # every partition of a task that moved or was snapshotted, each with the snapshot's
        # pointer (a restore takes the newest pointer among a task's partitions)
        moved = [
            (task, tp, position)
            for key, task in tasks.items()
            for tp, position in task.positions.items()
            if position is not None and (position != task.committed.get(tp) or key in snapshots)
        ]
        if not moved and not self.produced:
            return True
        committing = time.monotonic()
        committed = self._commit(
            [TopicPartition(*tp, position, metadata=task.pointer) for task, tp, position in moved],
            reader,
        )
        if committed:
            self.produced = False
            for task, tp, position in moved:
                task.committed[tp] = position
        done = time.monotonic()
        self.count += 1
        self.checkpoint_ms = (done - started) * 1000
        self.commit_ms = (done - committing) * 1000
        self.snapshot_bytes = written
        return committed

    def finish(self, *, failed: bool) -> None:
        """At the end of a run: abort the open transaction of a failed one, flush the rest."""
        if self.exactly_once and failed:
            with contextlib.suppress(Exception):
                self.producer.abort_transaction(10)
        with contextlib.suppress(Exception):
            self.producer.flush(10)

    def _undelivered(self, err: Any, msg: Any) -> None:
        self.undelivered += 1
        self.last_delivery_error = f"{msg.topic()}: {err.str()}"

    def _commit(self, offsets: list[Any], reader: KafkaReader) -> bool:
        from confluent_kafka import KafkaException

        if not self.exactly_once:
            left = self.producer.flush(60)
            if left or self.undelivered:
                raise SinkError(
                    f"{self.undelivered or left} output or changelog records not delivered "
                    f"({self.last_delivery_error or 'flush timed out'}); offsets not committed, "
                    "a restart resumes from the last checkpoint"
                )
            if offsets:
                reader.commit(offsets)
            return True
        metadata = reader.group_metadata()
        try:
            if offsets:
                _bounded(
                    lambda: self.producer.send_offsets_to_transaction(offsets, metadata, 30), 45
                )
            _bounded(lambda: self.producer.commit_transaction(60), 75)
        except _Stuck:
            # librdkafka can wait forever for a group coordinator that went away with a
            # restarted broker (confluentinc/librdkafka#5456, #5511): a new producer with the
            # same transactional.id fences this one and aborts its transaction
            log.warning("%s: the transactional producer is stuck; replacing it", self.name)
            self._replace_producer()
            return False
        except KafkaException as exc:
            error = exc.args[0]
            if not (error.txn_requires_abort() or error.retriable()):
                raise SinkError(
                    f"{self.name}: the transaction cannot commit: {error.str()}"
                ) from exc
            # fenced (the partitions moved) or the transaction failed: nothing of it is
            # visible; go back to the last checkpoint and redo the work
            log.warning("%s: transaction aborted (%s); rewinding", self.name, error.str())
            self._abort()
            return False
        self.producer.begin_transaction()
        return True

    def abandon(self, failure: BaseException) -> bool:
        """A write failed with ``failure``: if the open transaction refused it (it failed
        since it began: an abortable error, such as a sequence gap after the abort before,
        leaves the producer refusing every record with "Erroneous state"), abort it and
        begin the next; True, and the caller rewinds its tasks to the last checkpoint, as
        after a commit that failed. False for any other failure (the caller raises it)."""
        from confluent_kafka import KafkaError, KafkaException

        cause = failure if isinstance(failure, KafkaException) else failure.__cause__
        if not self.exactly_once or not isinstance(cause, KafkaException):
            return False
        error = cause.args[0] if cause.args else None
        if not isinstance(error, KafkaError) or not (
            error.txn_requires_abort() or error.code() == KafkaError._STATE
        ):
            return False
        log.warning("%s: transaction refused a write (%s); rewinding", self.name, error.str())
        self._abort()
        return True

    def _abort(self) -> None:
        """Abort the open transaction and begin the next; a producer that cannot is replaced
        (its successor, same id, fences it and aborts what it left open)."""
        from confluent_kafka import KafkaException

        try:
            _bounded(lambda: self.producer.abort_transaction(30), 45)
            self.producer.begin_transaction()
        except (_Stuck, KafkaException):
            self._replace_producer()

    def _replace_producer(self) -> None:
        """A new transactional producer in place of this one (same id: the old is fenced)."""
        from confluent_kafka import KafkaException, Producer

        self.producer = Producer(self._config)
        self.ctx.producer = self.producer
        for changelog in self.changelogs.values():
            changelog.producer = self.producer
        for attempt in range(20):
            try:
                self.producer.init_transactions(30)
                break
            except KafkaException as exc:
                if attempt == 19 or not exc.args[0].retriable():
                    raise SinkError(
                        f"{self.name}: cannot start a new transactional producer: {exc}"
                    ) from exc
                time.sleep(1)
        self.producer.begin_transaction()


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
