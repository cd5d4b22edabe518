"""Decoding one fetch of Kafka messages into a frame: :class:`MessageDecoder`.

A batch is decoded at once: the values of all its messages go to one codec call (JSON:
``pl.read_ndjson``; Avro: fastavro), never one call per record. Then the event-time column is
checked (:func:`~streamnb.engine.eventtime.time_problems`, vectorised) and every row carries
its hidden partition id and offset (``PARTITION``, ``OFFSET``). Every message that does not
become a row (decoding, type and event-time errors alike) goes to the context's error side
output by one path, with its original bytes, topic, partition, offset and the reason. A
table's source (``key_column``) gets the message key as a column, and its tombstones (null
values) become delete rows.

It also owns the frame layouts it decodes to: :data:`RAW_SCHEMA` (``format="raw"``) and
:data:`SAMPLE`, the number of records a JSON schema is learnt from.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import polars as pl

from streamnb.columns import DELETE, OFFSET, PARTITION, with_series
from streamnb.engine.core import ERROR_SCHEMA, Context
from streamnb.engine.eventtime import time_problems
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

    Every record a fetch brings either becomes a row or is rejected, by one path whatever the
    cause (a tombstone, an empty or blank message, bytes that do not decode, a value of the
    wrong type, an unusable event time): the rejected ones become error rows
    (:meth:`_rejected`) with the original bytes, topic, partition, offset and reason, and
    count as records in (:meth:`Context.reject`).

    With ``errors="fail"`` the frame stops before the first rejected record: the records
    before it are processed, and the reader raises that record's error when it is next asked
    to read (:attr:`failure`), so the error names the first bad record of the fetch.

    Attributes
    ----------
    schema
        The value schema it decodes with: the source's, or, when the source had none (no
        records to learn from at definition time), the one learnt from the first batch that
        holds JSON objects.
    failure
        ``errors="fail"``: the error row of the record the last frame stopped before.
    cut
        ``errors="fail"``: how many messages of the last fetch were processed (``None``: all).
    """

    def __init__(self, source: KafkaSource, ctx: Context) -> None:
        self.source, self.ctx = source, ctx
        self.schema = source.value_schema
        self.failure: pl.DataFrame | None = None
        self.cut: int | None = None

    def frame(
        self,
        messages: list[Any],
        numbers: np.ndarray,
        offsets: np.ndarray,
        topics: list[str] | None,
        pids: np.ndarray,
        *,
        reject: Callable[[pl.DataFrame], None] | None = None,
    ) -> pl.DataFrame:
        """``messages`` (not empty, without error events) decoded into one frame.

        ``numbers``, ``offsets`` and ``pids`` are the messages' partition numbers, offsets and
        hidden partition ids; ``topics`` their topics, or ``None`` when the source reads one.
        The rejected records' error rows go to ``reject`` (default: the context's): a reader
        that decodes on a thread of its own hands them to the query's thread with the frame.
        """
        from confluent_kafka import Message

        n = len(messages)
        self.cut = None
        rejected: list[tuple[np.ndarray, list[str]]] = []  # (message indices, reasons)
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
            df, keep = self._decode_values(messages, rejected)
            if self.source.kafka_time:
                df = df.with_columns(
                    pl.Series("timestamp", stamps[keep]).cast(pl.Datetime("ms", "UTC"))
                )
        reasons = time_problems(df, self.source.time_column)
        if reasons is not None:
            bad = reasons.is_not_null()
            rejected.append((keep[bad.to_numpy()], reasons.filter(bad).to_list()))
            df, keep = df.filter(~bad), keep[~bad.to_numpy()]
        # where each row came from, so that an operator's error row can name it too
        df = with_series(
            df,
            [
                pl.Series(PARTITION, pids[keep], dtype=pl.Int64),
                pl.Series(OFFSET, offsets[keep], dtype=pl.Int64),
            ],
        )
        if not rejected:
            return df
        errors, first = self._rejected(rejected, messages, numbers, offsets, topics)
        if not self.ctx.fail_on_error:
            (reject or self.ctx.reject)(errors)
            return df
        self.failure, self.cut = errors.head(1), first
        return df.filter(pl.Series(keep < first))

    def _rejected(
        self,
        rejected: list[tuple[np.ndarray, list[str]]],
        messages: list[Any],
        numbers: np.ndarray,
        offsets: np.ndarray,
        topics: list[str] | None,
    ) -> tuple[pl.DataFrame, int]:
        """The error rows of the rejected messages in arrival order (a Python loop over the
        rejected ones only), and the fetch index of the first."""
        index = np.concatenate([i for i, _ in rejected]).astype(np.int64)
        reasons = [r for _, rs in rejected for r in rs]
        order = np.argsort(index, kind="stable")
        index = index[order]
        at = index.tolist()
        raws = [messages[i].value() for i in at]
        m = len(at)
        errors = pl.DataFrame(
            {
                "source": [self.source.name] * m,
                "position": offsets[index],
                "reason": [reasons[j] for j in order.tolist()],
                "record": [
                    None if r is None else r.decode("utf-8", errors="backslashreplace")
                    for r in raws
                ],
                "raw": raws,
                "topic": [topics[i] for i in at] if topics else [self.source.topics[0]] * m,
                "partition": numbers[index],
                "offset": offsets[index],
            },
            schema=ERROR_SCHEMA,
        )
        return errors, at[0]

    def _decode_values(
        self, messages: list[Any], rejected: list[tuple[np.ndarray, list[str]]]
    ) -> tuple[pl.DataFrame, np.ndarray]:
        """The values decoded with :attr:`schema` (a table's tombstones as delete rows), and
        each row's message index; what does not decode goes to ``rejected``."""
        from confluent_kafka import Message

        values: list[bytes | None] = list(map(Message.value, messages))
        present = list(range(len(values)))
        tombstones: list[int] = []
        if None in values:  # tombstones: a table's deletes, else records without a value
            tombstones = [i for i, v in enumerate(values) if v is None]
            present = [i for i, v in enumerate(values) if v is not None]
            if self.source.key_column is None:
                rejected.append(
                    (np.array(tombstones), ["null value (tombstone)"] * len(tombstones))
                )
        docs = cast(list[bytes], [values[i] for i in present] if tombstones else values)
        schema = self.schema
        if schema is None:  # nothing to learn from at definition time: the first batch
            schema = infer_json_schema(docs[: SAMPLE * 10])
            if schema:  # a batch of garbage teaches nothing: learn from a later one
                self.schema = schema
        bad: list[int] = []
        why: list[str] = []

        def report(j: int, doc: bytes, reason: str) -> None:
            bad.append(present[j])
            why.append(reason)

        if self.source.framed is not None:
            df, kept = self.source.framed.decode(docs, report)
            self.schema = self.source.framed.schema  # grows with a newer writer schema
        elif self.source.avro is not None:
            df, kept = avro.decode(docs, self.source.avro, schema, report)
        else:
            df, kept = decode_ndjson(docs, schema, report)
        if bad:
            rejected.append((np.array(bad), why))
        keep = np.array([present[j] for j in kept] if tombstones else kept, dtype=np.int64)
        if self.source.key_column is not None:
            df, keep = with_keys(df, keep, tombstones, messages, self.source.key_column)
        return df, keep


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
