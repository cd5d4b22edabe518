"""Reading a Kafka source: :class:`KafkaReader`, what ``KafkaSource.open`` returns.

It owns the consumer: the assignment (every partition, or the group's share through its
rebalances, an owner told of each), the reading loop (``Consumer.consume(num_messages=...)``,
never one ``poll`` per record), hidden partition ids and idle partitions, the offsets
(committed once processed, unless an owner commits them) and the lag. Turning a fetch into a
frame is :mod:`.decode`'s.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from itertools import compress
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import polars as pl

from streamnb.engine.core import Context, error_from_python
from streamnb.engine.source import PartOwner, Reader
from streamnb.exceptions import ConfigError, SourceError
from streamnb.io.kafka.client import client_config, consume_available, kafka_reason
from streamnb.io.sources.kafka.commits import GroupCommits
from streamnb.io.sources.kafka.decode import MessageDecoder

if TYPE_CHECKING:
    from streamnb.io.sources.kafka.source import KafkaSource


class KafkaReader(Reader):
    """One read of a :class:`KafkaSource` (``source.open(ctx, ...)`` makes it).

    **On its own** (no ``owner``) it reads every partition of the topics, or, with the source's
    ``group_id``, the group's share of them; it commits the offsets of each batch once the next
    is asked for, and marks partitions that stay quiet for ``idle_timeout`` idle so that windows
    do not wait for them.

    **With an owner** (a :class:`~streamnb.engine.source.PartOwner`: the worker's runtime, one
    task per partition) it is a member of the source's consumer group that leaves the offsets
    to the owner:

    * the owner is told of every assignment and revocation, after the reader's own bookkeeping
      (:meth:`PartOwner.assigned`, :meth:`PartOwner.revoked`, with ``(topic, partition)``
      pairs);
    * it never commits by itself: the owner commits positions with the state they belong to,
      through :meth:`commit` or, in a producer's transaction, with :meth:`group_metadata`;
    * it marks no partition idle (each of the owner's tasks reads one partition);
    * ``extra_topics`` (the worker's repartition topic) are read in the same subscription and
      handed over undecoded in :attr:`extra_messages`;
    * ``members`` (the query's other Kafka sources) are read in the same subscription, so the
      group gives one member partition p of every co-partitioned topic (librdkafka's range
      assignor); each is decoded by its own source, into :attr:`member_frames`;

    What an owner uses: :meth:`read`, :attr:`extra_messages`, :attr:`positions`,
    :meth:`set_position`, :meth:`seek`, :meth:`partition_id`, :meth:`partition_ids`,
    :meth:`partition_of`, :meth:`commit`, :meth:`group_metadata` and :attr:`lags`.
    """

    def __init__(
        self,
        source: KafkaSource,
        ctx: Context,
        *,
        owner: PartOwner | None = None,
        extra_topics: Sequence[str] = (),
        members: Sequence[KafkaSource] = (),
    ) -> None:
        from confluent_kafka import Consumer

        if owner is not None and source.group_id is None:
            raise ConfigError(
                f"{source.name}: a reader whose partitions an owner manages is a consumer group "
                "member; use source.in_group(group_id)"
            )
        if (extra_topics or members) and owner is None:
            raise ConfigError(f"{source.name}: extra_topics and members are read under an owner")
        self.source, self.ctx = source, ctx
        self.sources = [source, *members]
        self._decoders = [MessageDecoder(s, ctx) for s in self.sources]
        self._decoder = self._decoders[0]
        self._source_of = {t: i for i, s in enumerate(self.sources) for t in s.topics}
        self.member_frames: list[pl.DataFrame | None] = [None] * len(members)
        """What the last :meth:`read` fetched of each member source, decoded."""
        self.extra_messages: list[Any] = []
        """The messages of ``extra_topics`` that the last :meth:`read` fetched, undecoded."""
        self.lags: dict[tuple[str, int], int] = {}
        """Records not read yet per ``(topic, partition)`` assigned, as last measured (every
        half second, on the reading thread: a consumer is not thread-safe)."""
        self._owner = owner
        self._extra = frozenset(extra_topics)
        group = source.group_id or f"streamnb-{uuid.uuid4()}"
        # offsets the reader commits itself: a group's, without an owner
        self._commits = (
            GroupCommits(source.name, group, ctx)
            if source.group_id is not None and owner is None
            else None
        )
        self._consumer = Consumer(
            client_config(
                source.bootstrap,
                source.config,
                **{
                    "group.id": group,
                    **CONSUMER_SETTINGS,
                    "auto.offset.reset": "latest" if source.start == "latest" else "earliest",
                    **({"on_commit": self._commits.answered} if self._commits else {}),
                },
            )
        )
        if self._commits is not None:
            self._commits.consumer = self._consumer
        # hidden partition ids: per topic, a lookup table from partition number to id
        self._lut = {
            t: np.array([ctx.partitions.id_for("kafka", t, p) for p in range(max(ps) + 1)])
            for s in self.sources
            for t, ps in s.partitions.items()
        }
        self._parts = {
            int(pid): (t, p) for t, lut in self._lut.items() for p, pid in enumerate(lut.tolist())
        }
        self._opened = time.monotonic()
        self._last_seen: dict[int, float] = {}
        self._positions: dict[tuple[str, int], int] = {}  # next offset to read, when known
        self._started: set[tuple[str, int]] = set()  # partitions given their start position
        self._lag: int | None = None
        self._last_records = 0.0  # when a fetch last brought records (monotonic)
        self._lag_measured = 0.0
        self._ends: dict[tuple[str, int], tuple[int, int]] | None = None  # (low, high) at start
        self._progress: float | None = None
        if source.group_id is not None:
            topics = [t for s in self.sources for t in s.topics]
            self._consumer.subscribe(
                [*topics, *sorted(self._extra - set(topics))],
                on_assign=self._on_assign,
                on_revoke=self._on_revoke,
            )
        else:
            self._assign(
                self._start_offsets([(t, p) for t, ps in source.partitions.items() for p in ps])
            )

    @property
    def schema(self) -> pl.Schema | None:
        """The value schema it decodes with (learnt from the first batch if the source had none)."""
        return self._decoder.schema

    # -- for an owner ------------------------------------------------------------------------
    @property
    def positions(self) -> Mapping[tuple[str, int], int]:
        """The next offset to read per ``(topic, partition)``, where known: after a read, or
        where an assignment or :meth:`set_position` said. What an owner commits."""
        return MappingProxyType(self._positions)

    def set_position(self, topic: str, partition: int, offset: int | None) -> None:
        """Record where ``partition`` resumes (``None``: not known) without seeking, for an
        owner that knows better than the reader (the group's commit it restored from)."""
        if offset is None:
            self._positions.pop((topic, partition), None)
        else:
            self._positions[(topic, partition)] = offset

    def seek(self, topic: str, partition: int, offset: int) -> None:
        """Read ``partition`` from ``offset`` next (an owner rewinding to its checkpoint)."""
        from confluent_kafka import TopicPartition

        self._consumer.seek(TopicPartition(topic, partition, offset))
        self._positions[(topic, partition)] = offset

    def partition_id(self, topic: str, partition: int) -> int:
        """The hidden partition id (the ``PARTITION`` column of the rows) of a partition."""
        return int(self._lut[topic][partition])

    def partition_ids(self, topic: str) -> list[int]:
        """The hidden partition ids of every partition of ``topic`` (one of the source's)."""
        return [int(pid) for pid in self._lut[topic]]

    def partition_of(self, pid: int) -> tuple[str, int]:
        """The ``(topic, partition)`` of a hidden partition id: where rows came from."""
        return self._parts[pid]

    def commit(self, offsets: Sequence[Any]) -> None:
        """Commit ``offsets`` for the group now: confluent_kafka ``TopicPartition`` s holding
        the next offset to read, and any metadata to keep with it. For an owner that commits
        outside a transaction; raises :class:`SourceError` if the group refuses them."""
        from confluent_kafka import KafkaException

        try:
            self._consumer.commit(offsets=list(offsets), asynchronous=False)
        except KafkaException as exc:
            raise SourceError(
                f"{self.source.name}: cannot commit offsets for the group: {kafka_reason(exc)}"
            ) from exc

    def group_metadata(self) -> Any:
        """The consumer's group metadata, for a producer's ``send_offsets_to_transaction``:
        the offsets then commit with the transaction (exactly once)."""
        return self._consumer.consumer_group_metadata()

    # -- assignment --------------------------------------------------------------------------
    def _start_offsets(self, partitions: list[tuple[str, int]]) -> list[Any]:
        from confluent_kafka import (
            OFFSET_BEGINNING,
            OFFSET_END,
            OFFSET_STORED,
            KafkaException,
            TopicPartition,
        )

        start = self.source.start
        try:
            if isinstance(start, datetime):
                ms = int(start.timestamp() * 1000)
                wanted = [TopicPartition(t, p, ms) for t, p in partitions]
                return list(self._consumer.offsets_for_times(wanted, timeout=10))
            if isinstance(start, Mapping):
                return [TopicPartition(t, p, int(start.get(p, OFFSET_END))) for t, p in partitions]
            if start == "latest":
                # the end as of now, so "latest" means records produced after the query started
                return [
                    TopicPartition(
                        t,
                        p,
                        self._consumer.get_watermark_offsets(TopicPartition(t, p), timeout=10)[1],
                    )
                    for t, p in partitions
                ]
        except KafkaException as exc:
            raise SourceError(
                f"{self.source.name}: cannot find the start offsets ({start!r}): "
                f"{kafka_reason(exc)}"
            ) from exc
        offset = OFFSET_BEGINNING if start == "earliest" else OFFSET_STORED
        return [TopicPartition(t, p, offset) for t, p in partitions]

    def _assign(self, offsets: list[Any]) -> None:
        """Assign partitions at the given start offsets (absolute ones are remembered)."""
        for tp in offsets:
            if tp.offset >= 0:
                self._positions[(tp.topic, tp.partition)] = tp.offset
        self._consumer.assign(offsets)
        ids = {
            self.partition_id(tp.topic, tp.partition)
            for tp in offsets
            if tp.topic in self._lut and tp.partition < len(self._lut[tp.topic])
        }
        self.ctx.partitions.assigned |= ids

    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        """A group member resumes from the group's commits (``auto.offset.reset`` where there
        are none); an explicit datetime / offsets start applies to a partition of the source's
        topics on its first assignment only, so a rebalance never rewinds it."""
        pairs = [(tp.topic, tp.partition) for tp in partitions]
        fresh = [pair for pair in pairs if pair not in self._started and pair[0] in self._lut]
        self._started.update(fresh)
        if isinstance(self.source.start, (datetime, Mapping)) and fresh:
            explicit = {(tp.topic, tp.partition): tp for tp in self._start_offsets(fresh)}
            self._assign(
                [explicit.get(pair, tp) for pair, tp in zip(pairs, partitions, strict=True)]
            )
        else:
            self._assign(partitions)
        if self._owner is not None:
            self._owner.assigned(pairs)

    def _on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        if self._commits is not None:
            self._commits.revoked([(tp.topic, tp.partition) for tp in partitions])
        ids = {
            self.partition_id(tp.topic, tp.partition) for tp in partitions if tp.topic in self._lut
        }
        self.ctx.partitions.assigned -= ids
        if self._owner is not None:
            self._owner.revoked([(tp.topic, tp.partition) for tp in partitions])

    # -- reading -----------------------------------------------------------------------------
    def read(self, max_records: int, timeout: float) -> pl.DataFrame | None:
        """The next records of the source's topics, decoded (``None`` if there are none); the
        extra topics' messages of the same fetch go to :attr:`extra_messages`.

        With ``errors="fail"``, a fetch holding a bad record was processed up to it; this call
        then raises its error (it names the first bad record, and nothing after it is read).
        """
        for decoder in self._decoders:
            if decoder.failure is not None:
                failure, decoder.failure = decoder.failure, None
                self.ctx.reject(failure)  # raises DecodeError
        if self._commits is not None:
            self._commits.send()  # the previous batch is processed by now
        messages = self._messages(max_records, timeout)
        self.extra_messages = []
        self.member_frames = [None] * (len(self.sources) - 1)
        if self._extra and messages:
            from confluent_kafka import Message

            extra = [t in self._extra for t in map(Message.topic, messages)]
            if any(extra):
                self.extra_messages = list(compress(messages, extra))
                messages = list(compress(messages, (not e for e in extra)))
                for m in self.extra_messages:
                    self._positions[(m.topic(), m.partition())] = m.offset() + 1
        return self._frame(messages)

    def _messages(self, max_records: int, timeout: float) -> list[Any]:
        """The next messages, without error events."""
        from confluent_kafka import Message

        messages = consume_available(self._consumer, max_records, timeout)
        if any(map(Message.error, messages)):
            messages = self._without_errors(messages)
        return messages

    def _frame(self, messages: list[Any]) -> pl.DataFrame | None:
        """``messages`` decoded into one frame (None if there are none)."""
        from confluent_kafka import Message

        now = time.monotonic()
        n = len(messages)
        numbers = np.fromiter(map(Message.partition, messages), dtype=np.int64, count=n)
        topics = cast(list[str], list(map(Message.topic, messages))) if len(self._lut) > 1 else None
        pids = self._partition_ids(numbers, topics)
        if self._owner is None:  # an owner's tasks read one partition each: none to wait for
            self._mark_idle(now, pids)
        if now - self._lag_measured > 0.5:
            self._lag_measured = now
            self._measure_lag()
        if not messages:
            return None
        self._last_records = now
        offsets = np.fromiter(map(Message.offset, messages), dtype=np.int64, count=n)
        if len(self.sources) == 1:
            frame = self._decoder.frame(messages, numbers, offsets, topics, pids)
            cut = n if self._decoder.cut is None else self._decoder.cut  # errors="fail"
            self._remember(topics[:cut] if topics else None, numbers[:cut], offsets[:cut])
            return frame
        self._remember(topics, numbers, offsets)
        assert topics is not None  # several sources: several topics
        which = np.fromiter(map(self._source_of.__getitem__, topics), dtype=np.int64, count=n)
        frames: list[pl.DataFrame | None] = []
        for i, decoder in enumerate(self._decoders):
            mine = np.flatnonzero(which == i)
            frames.append(
                decoder.frame(
                    [messages[j] for j in mine.tolist()],
                    numbers[mine],
                    offsets[mine],
                    [topics[j] for j in mine.tolist()],
                    pids[mine],
                )
                if len(mine)
                else None
            )
        self.member_frames = frames[1:]
        return frames[0]

    def _without_errors(self, messages: list[Any]) -> list[Any]:
        """Drop error events: fatal ones stop the query, others are reported and skipped."""
        from confluent_kafka import KafkaError

        good = []
        for m in messages:
            err = m.error()
            if err is None:
                good.append(m)
            elif err.fatal():
                raise SourceError(f"Kafka consumer failed: {err.str()}")
            elif err.code() != KafkaError._PARTITION_EOF:
                self.ctx.error(
                    error_from_python(
                        self.source.name,
                        None,
                        err.str(),
                        b"",
                        topic=m.topic(),
                        partition=m.partition(),
                    )
                )
        return good

    def _mark_idle(self, now: float, pids: np.ndarray) -> None:
        parts = self.ctx.partitions
        for pid in np.unique(pids).tolist():
            self._last_seen[pid] = now
        idle_after = self.source.idle_ms / 1000
        mine = {int(p) for lut in self._lut.values() for p in lut} & parts.assigned
        quiet = {p for p in mine if now - self._last_seen.get(p, self._opened) > idle_after}
        parts.idle = (parts.idle - mine) | quiet  # other sources judge their own partitions

    def _partition_ids(self, numbers: np.ndarray, topics: list[str] | None) -> np.ndarray:
        """Each message's hidden partition id (a lookup per topic, vectorised)."""
        if topics is None:
            return next(iter(self._lut.values()))[numbers]
        return np.array(
            [self._lut[t][p] for t, p in zip(topics, numbers, strict=True)], dtype=np.int64
        )

    # -- offsets -----------------------------------------------------------------------------
    def _remember(self, topics: list[str] | None, numbers: np.ndarray, offsets: np.ndarray) -> None:
        """The next offset per partition: for the lag, and to commit once processed."""
        frame = pl.DataFrame(
            {"t": topics or [self.source.topics[0]] * len(numbers), "p": numbers, "o": offsets}
        )
        for t, p, o in frame.group_by("t", "p").agg(pl.col("o").max()).iter_rows():
            self._positions[(t, p)] = o + 1
            if self._commits is not None:
                self._commits.note(t, p, o + 1)

    def lag(self) -> int | None:
        return self._lag  # computed on the reader's thread: a consumer is not thread-safe

    def has_unread_at(self, topic: str, partition: int) -> bool:
        """:meth:`has_unread` for one partition (as last measured)."""
        lapsed = time.monotonic() - self._last_records >= UNREAD_LAPSE
        return self.lags.get((topic, partition), 0) > 0 and not lapsed

    def has_unread(self) -> bool:
        """Whether a partition's position is below its end offset (as the last fetch saw
        it). A transaction's commit marker takes an offset too and is never delivered, so
        the claim lapses once no fetch has brought a record for :data:`UNREAD_LAPSE` s."""
        self._measure_lag()
        return bool(self._lag) and time.monotonic() - self._last_records < UNREAD_LAPSE

    def _measure_lag(self) -> None:
        lags = {}
        try:
            for tp in self._consumer.assignment():
                low, high = self._consumer.get_watermark_offsets(tp, cached=True)
                if high < 0:
                    return  # no fetch answered yet: the lag is not known
                position = self._positions.get((tp.topic, tp.partition), low)
                lags[(tp.topic, tp.partition)] = max(high - max(position, low), 0)
        except Exception:  # a rebalance in progress: keep the last figure
            return
        self.lags = lags
        self._lag = sum(lags.values())

    # -- bootstrapping (tables) --------------------------------------------------------------
    def caught_up(self) -> bool:
        """Whether every partition has been read up to the end it had at the first call (the
        query's start): a table is bootstrapped then. Called on the reading thread."""
        from confluent_kafka import TopicPartition

        if self._ends is None:
            self._ends = {}
            for tp in self._consumer.assignment():
                try:
                    low, high = self._consumer.get_watermark_offsets(tp, timeout=10)
                except Exception as exc:  # the broker is gone: the read fails with the reason
                    raise SourceError(
                        f"cannot read the end offsets of {tp.topic}: {kafka_reason(exc)}"
                    ) from exc
                if high > low:
                    self._ends[(tp.topic, tp.partition)] = (low, high)
        if not self._ends:
            self._progress = 1.0
            return True
        positions = self._consumer.position([TopicPartition(t, p) for t, p in self._ends])
        read = total = 0
        for tp in positions:
            low, high = self._ends[(tp.topic, tp.partition)]
            at = tp.offset if tp.offset >= 0 else self._positions.get((tp.topic, tp.partition), low)
            read += min(max(at, low), high) - low
            total += high - low
        self._progress = read / total
        return read >= total

    def bootstrap_progress(self) -> float | None:
        return self._progress

    def close(self) -> None:
        """Commit the last offsets by the stop deadline (what cannot be is reported in
        ``errors()``: see :mod:`.commits`), leave the group (an owner hears of the
        revocation) and close the consumer."""
        if self._commits is not None:
            self._commits.close()
        self._consumer.close()


CONSUMER_SETTINGS: Mapping[str, Any] = MappingProxyType(
    {
        "enable.auto.commit": False,
        "isolation.level": "read_committed",
        "enable.partition.eof": False,
        "session.timeout.ms": 10_000,
        "fetch.wait.max.ms": 50,
        # keep the local queue full, backing off only briefly when it is: with librdkafka's
        # defaults it idles up to 1 s per fill (3x slower catch-up); 10 ms measured faster and
        # cheaper than 0 (BENCHMARKS.md, mode 2)
        "queued.min.messages": 1_000_000,
        "fetch.queue.backoff.ms": 10,
    }
)
"""The source's consumer settings (a user's ``config=`` overrides them); the benchmarks'
plain consume -> produce loop uses the same."""

UNREAD_LAPSE = 1.0
"""Seconds after which an end offset above the position, with no records coming, no longer
counts as unread records (see :meth:`KafkaReader.has_unread`)."""
