"""Decoding one fetch of Kafka messages into a frame: :class:`MessageDecoder`.

A batch is decoded at once: the values of all its messages go to one codec call (JSON:
``pl.read_ndjson``; Avro: fastavro), never one call per record. A message that does not decode
goes to the context's error side output with its bytes, topic, partition and offset; the
event-time column is checked (:func:`~streamnb.engine.eventtime.split_valid`) and every row
carries its hidden partition id (``PARTITION``). A table's source (``key_column``) gets the
message key as a column, and its tombstones (null values) become delete rows.

It also owns the frame layouts it decodes to: :data:`RAW_SCHEMA` (``format="raw"``) and
:data:`SAMPLE`, the number of records a JSON schema is learnt from.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import polars as pl

from streamnb.columns import DELETE, OFFSET, PARTITION
from streamnb.engine.core import Context, error_from_python
from streamnb.engine.eventtime import split_valid
from streamnb.io.codecs import avro
from streamnb.io.codecs.json import decode_ndjson, infer_json_schema

if TYPE_CHECKING:
    from streamnb.io.sources.kafka.source import KafkaSource

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
"""The columns of ``format="raw"``: each message as it is, with its Kafka metadata."""

SAMPLE = 100
"""Records per partition to learn a JSON schema from (ten times that from a first batch)."""


class MessageDecoder:
    """Decodes the messages of one :class:`KafkaSource` into frames, reporting to ``ctx``.

    Attributes
    ----------
    schema
        The value schema it decodes with: the source's, or, when the source had none (no
        records to learn from at definition time), the one learnt from the first batch.
    """

    def __init__(self, source: KafkaSource, ctx: Context, *, offsets: bool = False) -> None:
        self.source, self.ctx = source, ctx
        self.schema = source.value_schema
        self.offsets = offsets  # add each record's offset as the hidden column OFFSET

    def frame(
        self,
        messages: list[Any],
        numbers: np.ndarray,
        offsets: np.ndarray,
        topics: list[str] | None,
        pids: np.ndarray,
    ) -> pl.DataFrame:
        """``messages`` (not empty, without error events) decoded into one frame.

        ``numbers``, ``offsets`` and ``pids`` are the messages' partition numbers, offsets and
        hidden partition ids; ``topics`` their topics, or ``None`` when the source reads one.
        """
        from confluent_kafka import Message

        n = len(messages)
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
                self.schema = infer_json_schema(values[: SAMPLE * 10])
            tombstones: list[int] = []
            if self.source.key_column is not None and None in values:
                tombstones = [i for i, v in enumerate(values) if v is None]
                values = [b"" if v is None else v for v in values]  # blank: skipped silently
            df, kept = self._decode_values(values, topics, numbers, offsets)
            keep = np.array(kept, dtype=np.int64)
            if self.source.key_column is not None:
                df, keep = with_keys(df, keep, tombstones, messages, self.source.key_column)
            if self.source.kafka_time:
                df = df.with_columns(
                    pl.Series("timestamp", stamps[keep]).cast(pl.Datetime("ms", "UTC"))
                )
        df = df.with_columns(pl.Series(PARTITION, pids[keep], dtype=pl.Int64))
        if self.offsets:
            df = df.with_columns(pl.Series(OFFSET, offsets[keep], dtype=pl.Int64))
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
        """The values decoded with :attr:`schema`, and the indices of those that decoded."""
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


def with_keys(
    df: pl.DataFrame,
    keep: np.ndarray,
    tombstones: list[int],
    messages: list[Any],
    key_column: str,
) -> tuple[pl.DataFrame, np.ndarray]:
    """Tables: the message key as a column, tombstones as delete rows, in arrival order.

    ``df`` holds the decoded values of the messages at indices ``keep``; ``tombstones`` are
    the indices of the messages without a value. Returns the rows and their message indices.
    """
    from confluent_kafka import Message

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
        key_column,
        [None if k is None else k.decode("utf-8", "replace") for k in picked],
        dtype=pl.String,
    )
    return rows[order].with_columns(column), index[order]
