"""The offsets a :class:`~.reader.KafkaReader` without an owner commits for its group.

The processed batches' next offsets are committed asynchronously, at most every
:data:`COMMIT_INTERVAL` seconds and one commit in flight at a time: librdkafka answers every
commit (``on_commit``), and an answer that is an error puts its offsets back to be committed
with the next ones. Closing makes a last commit bounded in time (the query's stop deadline,
``ctx.deadline``): a commit sent while the group coordinator is unreachable would otherwise
wait up to ``session.timeout.ms`` and hold ``Consumer.close()`` that long. What cannot be
committed by then is reported in ``errors()``, never dropped silently: those records are read
again (at least once).
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from collections.abc import Callable
from typing import Any

from streamnb.engine.core import Context, error_from_python
from streamnb.io.kafka.client import kafka_reason

COMMIT_INTERVAL = 0.1
"""Seconds between two commits of a running reader (Kafka Streams' exactly-once default).
A commit per batch, as soon as the one before was answered, was one commit per round trip
to the coordinator (hundreds a second under a light load of small batches), each an append
to ``__consumer_offsets`` and an answer served under the GIL; a restart reads at most this
much again."""
COMMIT_SECONDS = 10.0
"""How long closing waits for the last commit when no stop deadline says otherwise."""
MIN_COMMIT_SECONDS = 0.05
"""What closing gives the last commit when the stop deadline has passed (the rest of
``stop()``'s timeout is for the readers' clients): enough for a broker that answers."""


def _locked(method: Callable[..., None]) -> Callable[..., None]:
    """``method`` under the instance's lock."""

    @functools.wraps(method)
    def locked(self: GroupCommits, *args: Any) -> None:
        with self._lock:
            method(self, *args)

    return locked


class GroupCommits:
    """Offsets read and processed, sent to the group's coordinator and answered.

    ``consumer`` is set once the reader has made it (its ``on_commit`` is :meth:`answered`).
    Callbacks are served by the consumer's own calls, on the thread that fetches (a reader's
    prefetching thread), while the query's thread notes and sends: a lock keeps them apart.
    """

    def __init__(self, source_name: str, group: str, ctx: Context) -> None:
        self.source_name, self.group, self.ctx = source_name, group, ctx
        self.consumer: Any = None
        self.noted: dict[tuple[str, int], int] = {}  # next offsets of the batch in progress
        self.processed: dict[tuple[str, int], int] = {}  # next offsets, not sent yet
        self.in_flight: dict[tuple[str, int], int] = {}  # sent, not answered yet
        self._last_error = ""
        self._sent_at = -COMMIT_INTERVAL  # ``time.monotonic()`` of the last commit sent
        self._lock = threading.RLock()  # a synchronous commit may serve on_commit itself

    @_locked
    def note(self, topic: str, partition: int, offset: int) -> None:
        """``offset`` is the next to read of ``partition`` once the current batch is done."""
        self.noted[(topic, partition)] = offset

    @_locked
    def release(self) -> None:
        """The batches noted so far are processed: their offsets may be sent."""
        self.processed.update(self.noted)
        self.noted = {}

    @_locked
    def send(self) -> None:
        """Commit what was processed, asynchronously, unless a commit is still unanswered
        (its answer is served by the next fetch) or the last was sent less than
        :data:`COMMIT_INTERVAL` ago."""
        if self.in_flight or not self.processed:
            return
        now = time.monotonic()
        if now - self._sent_at < COMMIT_INTERVAL:
            return
        from confluent_kafka import KafkaException

        self._sent_at = now
        self.in_flight, self.processed = self.processed, {}
        try:
            self.consumer.commit(offsets=self._partitions(self.in_flight), asynchronous=True)
        except KafkaException as exc:  # refused at once: no answer will come
            self._last_error = kafka_reason(exc)
            self._put_back(self.in_flight)
            self.in_flight = {}

    @_locked
    def revoked(self, partitions: list[tuple[str, int]]) -> None:
        """Partitions are being revoked: commit what was processed and wait for it, then
        forget them (an answer still to come for them is not retried). A failure means a
        rebalance moved the partition: its new owner resumes from its commit."""
        from confluent_kafka import KafkaException

        offsets, self.processed = self.processed, {}
        if offsets:
            with contextlib.suppress(KafkaException):
                self.consumer.commit(offsets=self._partitions(offsets), asynchronous=False)
        for key in partitions:
            self.in_flight.pop(key, None)

    @_locked
    def answered(self, err: Any, partitions: list[Any]) -> None:
        """The consumer's ``on_commit``: offsets committed, or put back to go with the next
        commit (newer offsets of the partition supersede them)."""
        failed = {}
        for tp in partitions:
            key = (tp.topic, tp.partition)
            if self.in_flight.get(key) != tp.offset:
                continue  # not ours (an owner's or a revocation's commit)
            del self.in_flight[key]
            error = tp.error or err
            if error is not None:
                self._last_error = error.str()
                failed[key] = tp.offset
        self._put_back(failed)

    @_locked
    def close(self) -> None:
        """Commit what is left and wait for the answer, by the stop deadline; report what is
        not committed by then, and forget it (so that ``Consumer.close()`` waits for none)."""
        self.release()  # a reader closes between batches
        now = time.monotonic()
        deadline = self.ctx.deadline
        end = now + COMMIT_SECONDS if deadline is None else max(deadline, now + MIN_COMMIT_SECONDS)
        if self.processed or self.in_flight:
            # answers are served by consume(): paused partitions bring no more records
            self.consumer.pause(self.consumer.assignment())
        sent = False
        while time.monotonic() < end:
            if not self.in_flight:
                if sent or not self.processed or not self._coordinator_answers(end):
                    break
                self.send()
                sent = True
            self.consumer.consume(num_messages=1, timeout=_left(end, 0.05))
        self._report({**self.in_flight, **self.processed}, end - now)
        self.processed, self.in_flight = {}, {}

    def _coordinator_answers(self, end: float) -> bool:
        """Whether the group's coordinator answers by ``end``: a commit sent to none would
        stay pending (and hold the consumer's close) for up to ``session.timeout.ms``."""
        from confluent_kafka import KafkaException

        try:
            self.consumer.committed(self._partitions(self.processed), timeout=_left(end, 10.0))
        except KafkaException as exc:
            self._last_error = f"the group coordinator did not answer: {kafka_reason(exc)}"
            return False
        return True

    def _report(self, offsets: dict[tuple[str, int], int], budget: float) -> None:
        if not offsets:
            return
        detail = self._last_error or f"no answer within {budget:.1f}s"
        for (topic, partition), offset in sorted(offsets.items()):
            reason = (
                f"offset {offset} not committed for group {self.group!r} when the source closed "
                f"({detail}): the group will read these records again, from its last commit"
            )
            self.ctx.errors.add(
                error_from_python(
                    self.source_name,
                    None,
                    reason,
                    None,
                    topic=topic,
                    partition=partition,
                    offset=offset,
                )
            )

    def _put_back(self, offsets: dict[tuple[str, int], int]) -> None:
        for key, offset in offsets.items():
            self.processed.setdefault(key, offset)  # one there is newer

    @staticmethod
    def _partitions(offsets: dict[tuple[str, int], int]) -> list[Any]:
        from confluent_kafka import TopicPartition

        return [TopicPartition(t, p, o) for (t, p), o in offsets.items()]


def _left(end: float, at_most: float) -> float:
    """Seconds until ``end`` (at least a millisecond), at most ``at_most``."""
    return max(min(end - time.monotonic(), at_most), 0.001)
