"""``sn.from_kafka``: records from Kafka topics, decoded per batch, watermarked per partition.

Messages are fetched with ``Consumer.consume(num_messages=...)`` (never one ``poll`` per
record), their values joined and decoded by one ``pl.read_ndjson`` call; a message that does
not decode goes to the error side output with its bytes, topic, partition and offset. Each
record carries its partition (hidden), so windows keep a watermark per partition and take the
minimum over partitions that are not idle.
"""

from __future__ import annotations

import contextlib
import copy
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, cast

import numpy as np
import polars as pl

from streamnb._duration import Duration, to_ms
from streamnb.engine.core import DELETE, PARTITION, Context, error_from_python
from streamnb.engine.eventtime import split_valid
from streamnb.exceptions import ConfigError, SourceError
from streamnb.kafka import _metadata, client_config, redact, resolve_bootstrap
from streamnb.sources import avro
from streamnb.sources.base import Reader, Source
from streamnb.sources.decode import decode_ndjson, infer_json_schema
from streamnb.sources.memory import check_timestamp

RAW_SCHEMA = pl.Schema(
    {
        "key": pl.Binary(),
        "value": pl.Binary(),
        "topic": pl.String(),
        "partition": pl.Int32(),
        "offset": pl.Int64(),
        "timestamp": pl.Datetime("ms", "UTC"),
    }
)
FORMATS = ("json", "raw", "avro")
_SAMPLE = 100  # records per partition to learn a JSON schema from


class KafkaSource(Source):
    """A Kafka topic (or several) as an unbounded source. Create it with ``sn.from_kafka``."""

    def __init__(
        self,
        topic: str | Sequence[str],
        *,
        bootstrap_servers: str | None = None,
        format: str = "json",
        schema: Mapping[str, pl.DataType] | None = None,
        timestamp: str | None = None,
        start: str | datetime | Mapping[int, int] = "latest",
        group_id: str | None = None,
        config: Mapping[str, Any] | None = None,
        idle_timeout: Duration = "10s",
        connect_timeout: Duration = "10s",
        key_column: str | None = None,
    ) -> None:
        self.key_column = key_column  # tables: the message key as a column, tombstones delete
        self.topics = [topic] if isinstance(topic, str) else list(topic)
        if not self.topics or not all(isinstance(t, str) and t for t in self.topics):
            raise ConfigError(f"topic={topic!r} must be a topic name or a list of them")
        if format not in FORMATS:
            raise ConfigError(f"format={format!r} must be one of {list(FORMATS)}")
        if not (
            start in ("earliest", "latest", "committed") or isinstance(start, (datetime, Mapping))
        ):
            raise ConfigError(
                f"start={start!r} must be 'earliest', 'latest', 'committed', a datetime or "
                "{partition: offset}"
            )
        if start == "committed" and group_id is None:
            raise ConfigError("start='committed' needs a group_id whose offsets to resume from")
        if isinstance(start, Mapping) and len(self.topics) > 1:
            raise ConfigError("start={partition: offset} works with one topic")
        self.bootstrap = resolve_bootstrap(bootstrap_servers)
        self.config = dict(config or {})
        self.format, self.start, self.group_id = format, start, group_id
        self.idle_ms = to_ms(idle_timeout, name="idle_timeout", allow_zero=False)
        meta = _metadata(self.bootstrap, self.config, connect_timeout)
        missing = [t for t in self.topics if t not in meta.topics]
        if missing:
            known = sorted(t for t in meta.topics if not t.startswith("__"))
            raise ConfigError(
                f"topic {missing[0]!r} does not exist at {self.bootstrap}; topics: {known}"
            )
        self.partitions = {t: sorted(meta.topics[t].partitions) for t in self.topics}
        self.name = f"kafka[{','.join(self.topics)}]"
        self.bounded = False
        self.avro = None
        if format == "raw":
            self.value_schema: pl.Schema | None = RAW_SCHEMA
        elif format == "avro":
            self.avro = avro.parse_schema(schema)
            self.value_schema = avro.polars_schema(self.avro)
        elif schema is not None:
            self.value_schema = pl.Schema(schema)
        else:
            self.value_schema = self._sample_schema() or None
        self.time_column = timestamp or "timestamp"
        self.kafka_time = timestamp is None or (format == "raw" and timestamp == "timestamp")
        self.schema = self._output_schema()
        self.event_time = check_timestamp(
            self.time_column, self.schema, f"topic {self.topics[0]!r}"
        )

    def _output_schema(self) -> pl.Schema | None:
        if self.value_schema is None:
            return None
        if self.key_column is not None:
            return pl.Schema({self.key_column: pl.String(), **self._value_and_time()})
        return self._value_and_time()

    def _value_and_time(self) -> pl.Schema:
        assert self.value_schema is not None
        if self.format == "raw" or not self.kafka_time:
            return self.value_schema
        if "timestamp" in self.value_schema:
            raise ConfigError(
                "the records have a field 'timestamp', which would clash with the Kafka record "
                "timestamp column; pass timestamp='timestamp' to use the field as event time"
            )
        return pl.Schema({**self.value_schema, "timestamp": pl.Datetime("ms", "UTC")})

    def _sample_schema(self) -> pl.Schema:
        """Learn a JSON schema from the newest records (empty schema if there are none)."""
        from streamnb.kafka import peek

        try:
            sample = peek(
                self.topics[0],
                _SAMPLE,
                bootstrap_servers=self.bootstrap,
                format="raw",
                config=self.config,
            )
        except SourceError:
            raise
        return infer_json_schema([v for v in sample["value"].to_list() if v is not None])

    def open(self, ctx: Context) -> Reader:
        return _KafkaReader(self, ctx)

    def partition_scopes(self) -> frozenset[tuple[object, ...]]:
        return frozenset(("kafka", t) for t in self.topics)

    def in_group(self, group_id: str) -> KafkaSource:
        """This source as a member of consumer group ``group_id`` (the worker's scale-out):
        partitions are shared among the group's members and resume from its commits."""
        member = copy.copy(self)
        member.group_id = group_id
        return member

    def __repr__(self) -> str:
        return (
            f"KafkaSource({self.topics}, bootstrap={self.bootstrap!r}, format={self.format!r}, "
            f"config={redact(self.config)})"
        )


class _KafkaReader(Reader):
    def __init__(self, source: KafkaSource, ctx: Context) -> None:
        from confluent_kafka import Consumer

        self.source, self.ctx = source, ctx
        self.schema = source.value_schema
        group = source.group_id or f"streamnb-{uuid.uuid4()}"
        self.consumer = Consumer(
            client_config(
                source.bootstrap,
                source.config,
                **{
                    "group.id": group,
                    "enable.auto.commit": False,
                    "auto.offset.reset": "latest" if source.start == "latest" else "earliest",
                    "isolation.level": "read_committed",
                    "enable.partition.eof": False,
                    "session.timeout.ms": 10_000,
                    "fetch.wait.max.ms": 50,
                    # keep the local queue full, backing off only briefly when it is: with
                    # librdkafka's defaults it idles up to 1 s per fill (3x slower catch-up);
                    # 10 ms measured faster and cheaper than 0 (BENCHMARKS.md, mode 2)
                    "queued.min.messages": 1_000_000,
                    "fetch.queue.backoff.ms": 10,
                },
            )
        )
        # hidden partition ids: per topic, a lookup table from partition number to id
        self.lut = {
            t: np.array([ctx.partitions.id_for("kafka", t, p) for p in range(max(ps) + 1)])
            for t, ps in source.partitions.items()
        }
        self.opened = time.monotonic()
        self.last_seen: dict[int, float] = {}
        self.uncommitted: dict[tuple[str, int], int] = {}
        self.positions: dict[tuple[str, int], int] = {}  # next offset to read, when known
        self.started: set[tuple[str, int]] = set()  # partitions given their start position
        self._lag: int | None = None
        self.lags: dict[tuple[str, int], int] = {}  # per partition, as last measured
        self._lag_measured = 0.0
        if source.group_id is not None:
            self.consumer.subscribe(
                source.topics, on_assign=self._on_assign, on_revoke=self._on_revoke
            )
        else:
            self._assign(
                self._start_offsets([(t, p) for t, ps in source.partitions.items() for p in ps])
            )

    # -- assignment --------------------------------------------------------------------------
    def _start_offsets(self, partitions: list[tuple[str, int]]) -> list[Any]:
        from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, OFFSET_STORED, TopicPartition

        start = self.source.start
        if isinstance(start, datetime):
            ms = int(start.timestamp() * 1000)
            wanted = [TopicPartition(t, p, ms) for t, p in partitions]
            return list(self.consumer.offsets_for_times(wanted, timeout=10))
        if isinstance(start, Mapping):
            return [TopicPartition(t, p, int(start.get(p, OFFSET_END))) for t, p in partitions]
        if start == "latest":
            # the end as of now, so "latest" means records produced after the query started
            return [
                TopicPartition(
                    t, p, self.consumer.get_watermark_offsets(TopicPartition(t, p), timeout=10)[1]
                )
                for t, p in partitions
            ]
        offset = OFFSET_BEGINNING if start == "earliest" else OFFSET_STORED
        return [TopicPartition(t, p, offset) for t, p in partitions]

    def _assign(self, offsets: list[Any]) -> None:
        """Assign partitions at the given start offsets (absolute ones are remembered)."""
        for tp in offsets:
            if tp.offset >= 0:
                self.positions[(tp.topic, tp.partition)] = tp.offset
        self.consumer.assign(offsets)
        self._assigned([(tp.topic, tp.partition) for tp in offsets])

    def _assigned(self, partitions: list[tuple[str, int]]) -> None:
        ids = {int(self.lut[t][p]) for t, p in partitions if p < len(self.lut[t])}
        self.ctx.partitions.assigned |= ids

    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        """A group member resumes from the group's commits (``auto.offset.reset`` where there
        are none); an explicit datetime / offsets start applies to a partition's first
        assignment only, so a rebalance never rewinds it."""
        pairs = [(tp.topic, tp.partition) for tp in partitions]
        fresh = [pair for pair in pairs if pair not in self.started]
        self.started.update(fresh)
        if isinstance(self.source.start, (datetime, Mapping)) and fresh:
            explicit = {(tp.topic, tp.partition): tp for tp in self._start_offsets(fresh)}
            self._assign(
                [explicit.get(pair, tp) for pair, tp in zip(pairs, partitions, strict=True)]
            )
        else:
            self._assign(partitions)

    def _on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        self._commit(asynchronous=False)
        ids = {int(self.lut[tp.topic][tp.partition]) for tp in partitions}
        self.ctx.partitions.assigned -= ids

    # -- reading -----------------------------------------------------------------------------
    def read(self, max_records: int, timeout: float) -> pl.DataFrame | None:
        self._commit(asynchronous=True)  # the previous batch has been processed by now
        return self._frame(self._messages(max_records, timeout))

    def _messages(self, max_records: int, timeout: float) -> list[Any]:
        """The next messages, without error events."""
        from confluent_kafka import Message

        messages = self.consumer.consume(num_messages=max_records, timeout=timeout)
        if any(map(Message.error, messages)):
            messages = self._without_errors(messages)
        return messages

    def _frame(self, messages: list[Any]) -> pl.DataFrame | None:
        """``messages`` decoded into one frame (None if there are none)."""
        from confluent_kafka import Message

        now = time.monotonic()
        n = len(messages)
        numbers = np.fromiter(map(Message.partition, messages), dtype=np.int64, count=n)
        topics = cast(list[str], list(map(Message.topic, messages))) if len(self.lut) > 1 else None
        pids = self._partition_ids(numbers, topics)
        self._mark_idle(now, pids)
        if now - self._lag_measured > 0.5:
            self._lag_measured = now
            self._measure_lag()
        return self._decode(messages, numbers, topics, pids) if messages else None

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
            self.last_seen[pid] = now
        idle_after = self.source.idle_ms / 1000
        mine = {int(p) for lut in self.lut.values() for p in lut} & parts.assigned
        quiet = {p for p in mine if now - self.last_seen.get(p, self.opened) > idle_after}
        parts.idle = (parts.idle - mine) | quiet  # other sources judge their own partitions

    def _partition_ids(self, numbers: np.ndarray, topics: list[str] | None) -> np.ndarray:
        """Each message's hidden partition id (a lookup per topic, vectorised)."""
        if topics is None:
            return next(iter(self.lut.values()))[numbers]
        return np.array(
            [self.lut[t][p] for t, p in zip(topics, numbers, strict=True)], dtype=np.int64
        )

    def _decode(
        self, messages: list[Any], numbers: np.ndarray, topics: list[str] | None, pids: np.ndarray
    ) -> pl.DataFrame | None:
        from confluent_kafka import Message

        n = len(messages)
        offsets = np.fromiter(map(Message.offset, messages), dtype=np.int64, count=n)
        self._remember(topics, numbers, offsets)
        stamps = np.empty(0, dtype=np.int64)
        if self.source.kafka_time or self.source.format == "raw":  # only then: 1 call a record
            stamps = np.fromiter(
                (t for _, t in map(Message.timestamp, messages)), dtype=np.int64, count=n
            )
        if self.source.format == "raw":
            df = pl.DataFrame(
                {
                    "key": pl.Series(list(map(Message.key, messages)), dtype=pl.Binary),
                    "value": pl.Series(list(map(Message.value, messages)), dtype=pl.Binary),
                    "topic": topics or [self.source.topics[0]] * n,
                    "partition": pl.Series(numbers, dtype=pl.Int32),
                    "offset": offsets,
                    "timestamp": pl.Series(stamps).cast(pl.Datetime("ms", "UTC")),
                }
            )
            keep = np.arange(n)
        else:
            values = list(map(Message.value, messages))
            if self.schema is None:  # nothing to learn from at definition time: first batch
                self.schema = infer_json_schema(values[: _SAMPLE * 10])
            tombstones: list[int] = []
            if self.source.key_column is not None and None in values:
                tombstones = [i for i, v in enumerate(values) if v is None]
                values = [b"" if v is None else v for v in values]  # blank: skipped silently
            df, kept = self._decode_values(values, topics, numbers, offsets)
            keep = np.array(kept, dtype=np.int64)
            if self.source.key_column is not None:
                df, keep = self._with_keys(df, keep, tombstones, messages)
            if self.source.kafka_time:
                df = df.with_columns(
                    pl.Series("timestamp", stamps[keep]).cast(pl.Datetime("ms", "UTC"))
                )
        df = df.with_columns(pl.Series(PARTITION, pids[keep], dtype=pl.Int64))
        df, errors = split_valid(
            df, self.source.time_column, source=self.source.name, positions=pl.Series(offsets[keep])
        )
        if errors is not None:
            self.ctx.error(errors)
        return df

    def _decode_values(
        self,
        values: list[bytes | None],
        topics: list[str] | None,
        numbers: np.ndarray,
        offsets: np.ndarray,
    ) -> tuple[pl.DataFrame, list[int]]:
        assert self.schema is not None
        source = self.source

        def on_error(i: int, doc: bytes, why: str) -> None:
            topic = topics[i] if topics else source.topics[0]
            reason = f"{topic}/{int(numbers[i])}@{int(offsets[i])}: {why}"
            self.ctx.error(
                error_from_python(
                    source.name,
                    int(offsets[i]),
                    reason,
                    doc,
                    topic=topic,
                    partition=int(numbers[i]),
                    offset=int(offsets[i]),
                )
            )

        schema = self.schema

        def decode(
            docs: list[bytes], report: Callable[[int, bytes, str], None]
        ) -> tuple[pl.DataFrame, list[int]]:
            if source.avro is not None:
                return avro.decode(docs, source.avro, schema, report)
            return decode_ndjson(docs, schema, report)

        if None in values:  # tombstones carry no record (tables handle them before)
            for i, v in enumerate(values):
                if v is None:
                    on_error(i, b"", "null value (tombstone)")
            present = [i for i, v in enumerate(values) if v is not None]
            df, kept = decode(
                [v for v in values if v is not None],
                lambda j, doc, why: on_error(present[j], doc, why),
            )
            return df, [present[j] for j in kept]
        return decode(cast(list[bytes], values), on_error)

    def _with_keys(
        self, df: pl.DataFrame, keep: np.ndarray, tombstones: list[int], messages: list[Any]
    ) -> tuple[pl.DataFrame, np.ndarray]:
        """Tables: the message key as a column, tombstones as delete rows, in arrival order."""
        from confluent_kafka import Message

        assert self.source.key_column is not None
        rows = pl.concat(
            [
                df.with_columns(pl.lit(False).alias(DELETE)),
                pl.DataFrame({DELETE: [True] * len(tombstones)}),
            ],
            how="diagonal_relaxed",
        )
        index = np.concatenate([keep, np.array(tombstones, dtype=np.int64)])
        order = np.argsort(index, kind="stable")
        keys = list(map(Message.key, messages))
        picked = [keys[i] for i in index[order]]
        column = pl.Series(
            self.source.key_column,
            [None if k is None else k.decode("utf-8", "replace") for k in picked],
            dtype=pl.String,
        )
        return rows[order].with_columns(column), index[order]

    # -- offsets -----------------------------------------------------------------------------
    def _remember(self, topics: list[str] | None, numbers: np.ndarray, offsets: np.ndarray) -> None:
        """The next offset per partition: for the lag, and to commit once processed."""
        frame = pl.DataFrame(
            {"t": topics or [self.source.topics[0]] * len(numbers), "p": numbers, "o": offsets}
        )
        for t, p, o in frame.group_by("t", "p").agg(pl.col("o").max()).iter_rows():
            self.positions[(t, p)] = o + 1
            if self.source.group_id is not None:
                self.uncommitted[(t, p)] = o + 1

    def _commit(self, *, asynchronous: bool) -> None:
        from confluent_kafka import KafkaException, TopicPartition

        if not self.uncommitted:
            return
        offsets = [TopicPartition(t, p, o) for (t, p), o in self.uncommitted.items()]
        self.uncommitted = {}
        # a failure means a rebalance moved the partition: its new owner resumes from its commit
        with contextlib.suppress(KafkaException):
            if asynchronous:
                self.consumer.commit(offsets=offsets, asynchronous=True)
            else:
                self.consumer.commit(offsets=offsets, asynchronous=False)

    def lag(self) -> int | None:
        return self._lag  # computed on the reader's thread: a consumer is not thread-safe

    def _measure_lag(self) -> None:

        lags = {}
        try:
            for tp in self.consumer.assignment():
                low, high = self.consumer.get_watermark_offsets(tp, cached=True)
                if high < 0:
                    return  # no fetch answered yet: the lag is not known
                position = self.positions.get((tp.topic, tp.partition), low)
                lags[(tp.topic, tp.partition)] = max(high - max(position, low), 0)
        except Exception:  # a rebalance in progress: keep the last figure
            return
        self.lags = lags
        self._lag = sum(lags.values())

    def close(self) -> None:
        self._commit(asynchronous=False)
        self.consumer.close()
