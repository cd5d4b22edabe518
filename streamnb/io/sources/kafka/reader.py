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
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from functools import partial
from itertools import compress
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import polars as pl

from streamnb.engine import heap
from streamnb.engine.core import Context, ListeningClock, error_from_python
from streamnb.engine.source import PartOwner, PartView, Reader
from streamnb.exceptions import ConfigError, SourceError
from streamnb.io.kafka.client import (
    CHUNK,
    CLIENT_SETTINGS,
    client_config,
    consume_first,
    consume_more,
    kafka_reason,
)
from streamnb.io.sources.kafka.commits import GroupCommits
from streamnb.io.sources.kafka.decode import MessageDecoder
from streamnb.io.sources.kafka.prefetch import Fetch, Prefetcher, distinct

if TYPE_CHECKING:
    from streamnb.io.sources.kafka.source import KafkaSource


class KafkaReader(Reader):
    """One read of a :class:`KafkaSource` (``source.open(ctx, ...)`` makes it).

    **On its own** (no ``owner``) it reads every partition of the topics, or, with the source's
    ``group_id``, the group's share of them; it commits the offsets of processed batches (every
    :data:`~.commits.COMMIT_INTERVAL`, once the next batch is asked for), and marks
    partitions that stay quiet for ``idle_timeout`` idle so that windows do not wait for
    them.

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
        prefetch: bool = True,
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
        self._listening = ListeningClock(time.monotonic())
        self._last_seen: dict[int, float] = {}  # on the listening clock
        self._positions: dict[tuple[str, int], int] = {}  # next offset to read, when known
        # where reading began, per partition read without a known position (the group's
        # auto.offset.reset chose it): the first offset read; what a rewind goes back to
        self._origins: dict[tuple[str, int], int] = {}
        self._started: set[tuple[str, int]] = set()  # partitions given their start position
        # without an owner: the next offset after the last message fetched, per partition (on
        # the consumer's thread), where a partition given back to this reader resumes
        self._consumed: dict[tuple[str, int], int] = {}
        self._lag: int | None = None
        self._last_records = 0.0  # when a fetch last brought records (monotonic)
        self._ends: dict[tuple[str, int], tuple[int, int]] | None = None  # (low, high) at start
        self._progress: float | None = None
        self._failure: pl.DataFrame | None = None  # errors="fail": raised by the next read
        # what only the consumer's thread reads of it: end offsets, positions (tables)
        self._highs: dict[tuple[str, int], tuple[int, int]] | None = None
        self._highs_read = 0.0
        self._ends_wanted = False
        self._bootstrapped = False
        self._fetched: dict[tuple[str, int], int] = {}  # positions after the last fetch taken
        self._mine = {int(p) for lut in self._lut.values() for p in lut}
        # the partition number when it assigned itself just one: every message is of it, so a
        # fetch needs no call per message to tell partitions apart
        self._single: int | None = None
        if source.group_id is not None:
            topics = [t for s in self.sources for t in s.topics]
            self._consumer.subscribe(
                [*topics, *sorted(self._extra - set(topics))],
                on_assign=self._on_assign,
                on_revoke=self._on_revoke,
            )
        else:
            pairs = [(t, p) for t, ps in source.partitions.items() for p in ps]
            self._assign(self._start_offsets(pairs))
            if len(pairs) == 1:
                self._single = pairs[0][1]
        if source.key_column is not None and source.group_id is None:
            self._ends = self._read_ends()  # a table reads up to where its topic stands now
        # one source on its own: fetched and decoded on a thread of its own, ahead of the
        # query (an owner seeks and commits with its state: it reads on its own thread)
        self._prefetch = (
            Prefetcher(self._consume, self._decode_fetch, source.name, PREFETCH_RECORDS)
            if owner is None and prefetch
            else None
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
        self._origins.pop((topic, partition), None)
        if offset is None:
            self._positions.pop((topic, partition), None)
        else:
            self._positions[(topic, partition)] = offset

    def origin(self, topic: str, partition: int) -> int | None:
        """Where reading ``partition`` began, when it began without a known position (since
        :meth:`set_position` said ``None``, or since the assignment): the first offset read
        then, ``None`` if nothing was read since. Where an owner rewinds a partition that has
        no commit yet."""
        return self._origins.get((topic, partition))

    def seek(self, topic: str, partition: int, offset: int) -> None:
        """Read ``partition`` from ``offset`` next (an owner rewinding to its checkpoint).

        A consumer refuses a seek while the partition's fetcher is not ready (just after a
        broker restart: "Local: Erroneous state"); such refusals are retried for up to
        :data:`SEEK_SECONDS`. Raises :class:`SourceError` if the seek does not happen: going
        on from where the consumer stands would skip the records since ``offset``."""
        from confluent_kafka import KafkaException, TopicPartition

        deadline, pause = time.monotonic() + SEEK_SECONDS, 0.05
        while True:
            try:
                self._consumer.seek(TopicPartition(topic, partition, offset))
                break
            except KafkaException as exc:
                if time.monotonic() + pause > deadline:
                    raise SourceError(
                        f"{self.source.name}: cannot go back to offset {offset} of {topic} "
                        f"partition {partition}: {kafka_reason(exc)}"
                    ) from exc
                time.sleep(pause)
                pause = min(pause * 2, 1.0)
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
        topics on its first assignment only, so a rebalance never rewinds it. A partition this
        reader fetched before and is given back (a rejoin after a broker restart) goes on
        after what it fetched: see :meth:`_resumed`."""
        pairs = [(tp.topic, tp.partition) for tp in partitions]
        fresh = [pair for pair in pairs if pair not in self._started and pair[0] in self._lut]
        self._started.update(fresh)
        offsets = list(partitions)
        if isinstance(self.source.start, (datetime, Mapping)) and fresh:
            explicit = {(tp.topic, tp.partition): tp for tp in self._start_offsets(fresh)}
            offsets = [explicit.get(pair, tp) for pair, tp in zip(pairs, offsets, strict=True)]
        if self._owner is None and any(pair in self._consumed for pair in pairs):
            offsets = self._resumed(offsets)
        self._assign(offsets)
        if self._owner is not None:
            self._owner.assigned(pairs)

    def _resumed(self, offsets: list[Any]) -> list[Any]:
        """``offsets`` with each partition this reader fetched before starting after what it
        fetched, or after the group's commit if another member has gone further since.

        What was fetched is processed all the same (it waits in the prefetch queue), so the
        group's last commit, or ``auto.offset.reset`` without one, would read it twice. A
        reader without an owner only (an owner positions its tasks itself)."""
        from confluent_kafka import KafkaException, TopicPartition

        mine = [tp for tp in offsets if (tp.topic, tp.partition) in self._consumed]
        committed: dict[tuple[str, int], int] = {}
        try:
            for tp in self._consumer.committed(
                [TopicPartition(tp.topic, tp.partition) for tp in mine], timeout=5
            ):
                if tp.error is None and tp.offset >= 0:
                    committed[(tp.topic, tp.partition)] = tp.offset
        except KafkaException:
            pass  # the coordinator cannot say: no other member can have committed since
        return [
            TopicPartition(
                tp.topic,
                tp.partition,
                max(self._consumed[pair], committed.get(pair, 0)),
            )
            if (pair := (tp.topic, tp.partition)) in self._consumed
            else tp
            for tp in offsets
        ]

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
        if self._failure is not None:
            failure, self._failure = self._failure, None
            self.ctx.reject(failure)  # raises DecodeError
        if self._commits is not None:
            self._commits.release()  # the previous batch is processed by now
        if self._prefetch is None:
            frame = self._apply(self._fetch(max_records, timeout))
        else:
            frames = [self._apply(f) for f in self._prefetch.take(max_records, timeout)]
            if not frames:
                self._apply(Fetch(time.monotonic(), _NO_PIDS))  # idle partitions, the lag
            frame = _concat([f for f in frames if f is not None])
        return frame

    def _fetch(self, max_records: int, timeout: float) -> Fetch:
        """Fetch and decode the next messages (on the query's thread)."""
        return self._decode_fetch(self._consume(max_records, timeout))

    def _consume(self, max_records: int, timeout: float) -> Fetch:
        """Fetch the next messages. It touches nothing the query's thread reads: a
        :class:`Prefetcher` runs it on a thread of its own, the only one that calls the
        consumer."""
        if self._commits is not None:
            self._commits.send()  # what the query has processed (released) so far
        messages = consume_first(self._consumer, max_records, timeout)
        # a backlog (its first chunk came full) holds collections off until its messages are
        # freed; a live stream's small fetches leave the collector be (heap's docstring)
        hold = heap.hold() if len(messages) >= min(max_records, CHUNK) else None
        try:
            fetch = self._fetch_of(consume_more(self._consumer, messages, max_records))
        except BaseException:
            if hold is not None:
                hold.release()
            raise
        if hold is not None:
            fetch.holds.append(hold)
            if not fetch.messages:  # nothing of its own to decode (errors, extra topics)
                fetch.release()
        return fetch

    def _fetch_of(self, messages: list[Any]) -> Fetch:
        """A :class:`Fetch` of what ``Consumer.consume`` returned (see :meth:`_consume`)."""
        from confluent_kafka import Message

        reports: list[Callable[[], None]] = []
        if any(map(Message.error, messages)):
            messages = self._without_errors(messages, reports)
        extra: list[Any] = []
        if self._extra and messages:
            is_extra = [t in self._extra for t in map(Message.topic, messages)]
            if any(is_extra):
                extra = list(compress(messages, is_extra))
                messages = list(compress(messages, (not e for e in is_extra)))
        n = len(messages)
        if self._single is not None:  # every message is of the one partition it assigned
            numbers = np.full(n, self._single, dtype=np.int64)
        else:
            numbers = np.fromiter(map(Message.partition, messages), dtype=np.int64, count=n)
        topics = cast(list[str], list(map(Message.topic, messages))) if len(self._lut) > 1 else None
        pids = self._partition_ids(numbers, topics)
        fetch = Fetch(
            time.monotonic(),
            pids,
            distinct(pids),
            topics=topics,
            numbers=numbers,
            reports=reports,
            extra_messages=extra,
        )
        self._consumer_side(fetch)
        if messages:
            fetch.offsets = _offsets(messages, one_partition=self._single is not None)
            fetch.messages = messages
            if self._owner is None:
                for pid, (_, last) in _spans(fetch.parts, fetch.pids, fetch.offsets):
                    self._consumed[self._parts[pid]] = last + 1
        return fetch

    def _decode_fetch(self, fetch: Fetch) -> Fetch:
        """Decode what :meth:`_consume` fetched (a :class:`Prefetcher` runs it on a thread of
        its own, while the next fetch is made)."""
        messages, fetch.messages = fetch.messages, []
        try:
            if messages:
                self._decode_messages(fetch, messages)
        finally:
            del messages
            fetch.release()
        return fetch

    def _decode_messages(self, fetch: Fetch, messages: list[Any]) -> None:
        """Decode ``messages``, the messages of ``fetch``, into its frames."""
        assert fetch.numbers is not None and fetch.offsets is not None
        numbers, topics, n = fetch.numbers, fetch.topics, len(messages)
        if len(self.sources) == 1:
            fetch.frame = self._decode(self._decoder, messages, fetch, fetch.pids, topics)
            return
        assert topics is not None  # several sources: several topics
        which = np.fromiter(map(self._source_of.__getitem__, topics), dtype=np.int64, count=n)
        frames: list[pl.DataFrame | None] = []
        for i, decoder in enumerate(self._decoders):
            mine = np.flatnonzero(which == i)
            part = Fetch(fetch.at, fetch.pids[mine], numbers=numbers[mine], reports=fetch.reports)
            part.offsets = fetch.offsets[mine]
            frames.append(
                self._decode(
                    decoder,
                    [messages[j] for j in mine.tolist()],
                    part,
                    fetch.pids[mine],
                    [topics[j] for j in mine.tolist()],
                )
                if len(mine)
                else None
            )
            fetch.failure = fetch.failure if fetch.failure is not None else part.failure
        fetch.frame, fetch.member_frames = frames[0], frames[1:]

    def _decode(
        self,
        decoder: MessageDecoder,
        messages: list[Any],
        fetch: Fetch,
        pids: np.ndarray,
        topics: list[str] | None,
    ) -> pl.DataFrame:
        """One source's messages of ``fetch`` decoded; its rejected records are reported
        when the fetch is applied; ``errors="fail"`` cuts the fetch at the first."""
        assert fetch.numbers is not None and fetch.offsets is not None
        rejected: list[pl.DataFrame] = []
        frame = decoder.frame(
            messages, fetch.numbers, fetch.offsets, topics, pids, reject=rejected.append
        )
        fetch.reports += [partial(self.ctx.reject, rows) for rows in rejected]
        if decoder.cut is not None:  # errors="fail": processed up to the first bad record
            cut = decoder.cut
            fetch.failure, decoder.failure = decoder.failure, None
            fetch.pids, fetch.offsets = fetch.pids[:cut], fetch.offsets[:cut]
            fetch.parts = distinct(fetch.pids)
        return frame

    def _apply(self, fetch: Fetch) -> pl.DataFrame | None:
        """On the query's thread: a fetch's errors reported, its positions moved past what it
        brought, idle partitions marked, and its frame to process."""
        for report in fetch.reports:
            report()
        self.extra_messages = fetch.extra_messages
        positions, origins = self._positions, self._origins
        for m in fetch.extra_messages:
            key = (m.topic(), m.partition())
            if key not in positions:
                origins[key] = m.offset()
            positions[key] = m.offset() + 1
        self.member_frames = fetch.member_frames or [None] * (len(self.sources) - 1)
        if self._owner is None:  # an owner's tasks read one partition each: none to wait for
            self._mark_idle(fetch.at, fetch.parts)
        if fetch.positions is not None:
            self._fetched = fetch.positions
        self._measure_lag()
        if fetch.offsets is not None:
            self._last_records = fetch.at
            self._remember(fetch.parts, fetch.pids, fetch.offsets)
        self._failure = fetch.failure
        return fetch.frame

    def _without_errors(self, messages: list[Any], reports: list[Callable[[], None]]) -> list[Any]:
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
                row = error_from_python(
                    self.source.name,
                    None,
                    err.str(),
                    b"",
                    topic=m.topic(),
                    partition=m.partition(),
                )
                reports.append(partial(self.ctx.error, row))
        return good

    def _mark_idle(self, wall: float, fetched: list[int]) -> None:
        """Partitions quiet for ``idle_ms`` are idle; ``fetched``: the hidden partition ids a
        fetch at ``wall`` brought records of."""
        parts = self.ctx.partitions
        now = self._listening.tick(wall)  # a stall of the reader is not its partitions' silence
        for pid in fetched:
            self._last_seen[pid] = now
        idle_after = self.source.idle_ms / 1000
        mine = self._mine & parts.assigned
        quiet = {p for p in mine if now - self._last_seen.get(p, 0.0) > idle_after}
        parts.idle = (parts.idle - mine) | quiet  # other sources judge their own partitions

    def _partition_ids(self, numbers: np.ndarray, topics: list[str] | None) -> np.ndarray:
        """Each message's hidden partition id (a lookup per topic, vectorised)."""
        if topics is None:
            return next(iter(self._lut.values()))[numbers]
        return np.array(
            [self._lut[t][p] for t, p in zip(topics, numbers, strict=True)], dtype=np.int64
        )

    # -- offsets -----------------------------------------------------------------------------
    def _remember(self, parts: list[int], pids: np.ndarray, offsets: np.ndarray) -> None:
        """The next offset per partition (``pids``: each message's hidden partition id;
        ``parts``: their distinct values): for the lag, and to commit once processed."""
        for pid, (first, last) in _spans(parts, pids, offsets):
            key = topic, partition = self._parts[pid]
            if key not in self._positions:  # reading began where the group's reset chose
                self._origins[key] = first
            offset = last + 1
            self._positions[key] = offset
            if self._commits is not None:
                self._commits.note(topic, partition, offset)

    def lag(self) -> int | None:
        return self._lag  # computed on the reader's thread: a consumer is not thread-safe

    def parts(self) -> list[PartView]:
        """Every partition assigned to it, with its lag as last measured."""
        assigned, lags = frozenset(self.ctx.partitions.assigned), self.lags
        return [
            PartView(topic, partition, pid, lags.get((topic, partition)))
            for pid, (topic, partition) in sorted(self._parts.items())
            if pid in assigned
        ]

    def has_unread_at(self, topic: str, partition: int) -> bool:
        """:meth:`has_unread` for one partition (as last measured)."""
        lapsed = time.monotonic() - self._last_records >= UNREAD_LAPSE
        return self.lags.get((topic, partition), 0) > 0 and not lapsed

    def has_unread(self) -> bool:
        """Whether a partition's position is below its end offset (as the last fetch saw
        it). A transaction's commit marker takes an offset too and is never delivered, so
        the claim lapses once no fetch has brought a record for :data:`UNREAD_LAPSE` s."""
        if self._prefetch is None:  # the end offsets as the last fetch answered them
            self._highs = self._read_highs()
        self._measure_lag()
        return bool(self._lag) and time.monotonic() - self._last_records < UNREAD_LAPSE

    def _measure_lag(self) -> None:
        """The lags from the end offsets last read (on the consumer's thread: a consumer's
        calls wait while another thread is in ``consume``) and the positions taken."""
        highs = self._highs
        if highs is None:
            return  # not known yet, or a rebalance in progress: keep the last figure
        lags = {
            key: max(high - max(self._positions.get(key, low), low), 0)
            for key, (low, high) in highs.items()
        }
        self.lags = lags
        self._lag = sum(lags.values())

    def _read_highs(self) -> dict[tuple[str, int], tuple[int, int]] | None:
        """The low and high offsets of every assigned partition, as the last fetch answered
        (``None`` if a partition has not been fetched yet). On the consumer's thread."""
        highs = {}
        try:
            for tp in self._consumer.assignment():
                low, high = self._consumer.get_watermark_offsets(tp, cached=True)
                if high < 0:
                    return None
                highs[(tp.topic, tp.partition)] = (low, high)
        except Exception:  # a rebalance in progress
            return None
        return highs

    def _consumer_side(self, fetch: Fetch) -> None:
        """What only the consumer's thread may ask of it, after a fetch: the end offsets every
        half second, and, while a table bootstraps, where it stands."""
        if fetch.at - self._highs_read > 0.5:
            self._highs_read = fetch.at
            self._highs = self._read_highs()
        if self._ends_wanted and self._ends is None:
            self._ends = self._read_ends()
        if self._ends and not self._bootstrapped:
            fetch.positions = self._read_positions()

    def _read_positions(self) -> dict[tuple[str, int], int]:
        """The consumer's position in every partition a table reads up to."""
        from confluent_kafka import TopicPartition

        assert self._ends is not None
        positions = self._consumer.position([TopicPartition(t, p) for t, p in self._ends])
        return {(tp.topic, tp.partition): tp.offset for tp in positions}

    def _read_ends(self) -> dict[tuple[str, int], tuple[int, int]]:
        """The low and high offsets of every assigned partition that holds records, asked of
        the broker (a table reads up to them)."""
        ends = {}
        for tp in self._consumer.assignment():
            try:
                low, high = self._consumer.get_watermark_offsets(tp, timeout=10)
            except Exception as exc:  # the broker is gone: the read fails with the reason
                raise SourceError(
                    f"cannot read the end offsets of {tp.topic}: {kafka_reason(exc)}"
                ) from exc
            if high > low:
                ends[(tp.topic, tp.partition)] = (low, high)
        return ends

    # -- bootstrapping (tables) --------------------------------------------------------------
    def caught_up(self) -> bool:
        """Whether every partition has been read up to the end it had at the first call (the
        query's start): a table is bootstrapped then. Called on the query's thread; with a
        fetching thread, that thread reads the ends and the positions after each fetch, and
        only the positions of fetches the query has taken count."""
        if self._prefetch is None:
            if self._ends is None:
                self._ends = self._read_ends()
            if self._ends:
                self._fetched = self._read_positions()
        else:
            self._ends_wanted = True
            if self._ends is None:
                self._progress = 0.0
                return False  # the fetching thread has not asked yet
        if not self._ends:
            self._progress = 1.0
            self._bootstrapped = True
            return True
        read = total = 0
        for key, (low, high) in self._ends.items():
            at = max(self._fetched.get(key, -1), self._positions.get(key, low))
            read += min(max(at, low), high) - low
            total += high - low
        self._progress = read / total
        self._bootstrapped = read >= total
        return self._bootstrapped

    def bootstrap_progress(self) -> float | None:
        return self._progress

    def close(self) -> None:
        """Commit the last offsets by the stop deadline (what cannot be is reported in
        ``errors()``: see :mod:`.commits`), leave the group (an owner hears of the
        revocation) and close the consumer."""
        if self._prefetch is not None:
            self._prefetch.stop()
        if self._commits is not None:
            self._commits.close()
        self._consumer.close()


CONSUMER_SETTINGS: Mapping[str, Any] = MappingProxyType(
    {
        **CLIENT_SETTINGS,
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
plain consume -> produce loop uses the same (so they include what every client sets,
:data:`~streamnb.io.kafka.client.CLIENT_SETTINGS`)."""

PREFETCH_RECORDS = 50_000
"""The prefetching thread's batch size until the query asks for one (each read says)."""

SEEK_SECONDS = 30.0
"""How long :meth:`KafkaReader.seek` asks again a consumer that refuses a seek (a partition
whose fetcher a restarted broker left not ready), as reading the group's commits retries a
coordinator that is moving."""

_NO_PIDS = np.empty(0, dtype=np.int64)


def _offsets(messages: list[Any], *, one_partition: bool) -> np.ndarray:
    """The offsets of ``messages``. ``one_partition``: they are all of one, where
    offsets rise in fetch order, so first and last ``n - 1`` apart means every offset between
    (no call per message); a gap (a transaction marker, compaction) reads them all."""
    from confluent_kafka import Message

    n = len(messages)
    if one_partition:
        first, last = messages[0].offset(), messages[-1].offset()
        if last - first == n - 1:
            return np.arange(first, last + 1, dtype=np.int64)
    return np.fromiter(map(Message.offset, messages), dtype=np.int64, count=n)


def _spans(
    parts: list[int], pids: np.ndarray, offsets: np.ndarray
) -> list[tuple[int, tuple[int, int]]]:
    """Each partition's first and last offset in a fetch (``parts``: the distinct values of
    ``pids``, each message's partition). Within a partition offsets rise in fetch order, so
    its first and last messages hold them; a fetch of one partition needs no search."""
    if len(parts) == 1:
        return [(parts[0], (int(offsets[0]), int(offsets[-1])))]
    spans = []
    for pid in parts:
        mine = np.flatnonzero(pids == pid)
        spans.append((pid, (int(offsets[mine[0]]), int(offsets[mine[-1]]))))
    return spans


def _concat(frames: list[pl.DataFrame]) -> pl.DataFrame | None:
    """Several fetches' frames as one batch (their schemas differ only while a JSON schema is
    being learnt)."""
    if len(frames) < 2:
        return frames[0] if frames else None
    if any(f.schema != frames[0].schema for f in frames):
        return pl.concat(frames, how="diagonal_relaxed")
    out = frames[0]
    for frame in frames[1:]:  # chunks appended, no query plan (a twentieth of concat's cost)
        out = out.vstack(frame)
    return out


UNREAD_LAPSE = 1.0
"""Seconds after which an end offset above the position, with no records coming, no longer
counts as unread records (see :meth:`KafkaReader.has_unread`)."""
