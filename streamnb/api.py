"""The source constructors of the public API (``sn.from_records`` and friends)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl

from streamnb.columns import DELETE
from streamnb.definitions.code import call_code
from streamnb.definitions.durations import Duration, to_ms
from streamnb.engine.source import Source
from streamnb.exceptions import ConfigError
from streamnb.io.sources.records import RecordsSource
from streamnb.plan import MapNode, Plan, SourceNode, TableNode
from streamnb.stream import Stream
from streamnb.types import FileFormat, KafkaFormat, Kind


def _stream(source: Source, max_idle: Duration | None = None, *, code: str | None = None) -> Stream:
    if max_idle is not None:
        source.max_idle_ms = to_ms(max_idle, name="max_idle")
    plan = Plan(SourceNode((), source), source.schema, source.event_time, source.bounded)
    return Stream(plan, code=code)


def _source_call(function: str, *args: Any, **options: Any) -> str:
    """``sn.function(args, option=value)`` for the options that are set (explain())."""
    return call_code("sn", function, *args, **{k: v for k, v in options.items() if v is not None})


def from_records(
    data: Any,
    *,
    timestamp: str | None = None,
    batch_size: int = 10_000,
    schema: Mapping[str, pl.DataType] | None = None,
    partition: str | None = None,
) -> Stream:
    """A bounded stream that replays ``data`` in order.

    Parameters
    ----------
    data
        A list of dicts, a ``pl.DataFrame``, or an iterable of dicts or DataFrames.
    timestamp
        The event-time column (``pl.Datetime`` or integer epoch ms); watermark delay 0.
    batch_size
        Records per micro-batch; results never depend on it.
    schema
        Column types for dict records (default: inferred from the first 100 records). A
        record that does not fit goes to the error side output.
    partition
        A column naming each record's source partition, to replay data as Kafka delivers
        it: the watermark is then the minimum over partitions of their own watermarks.
    """
    return _stream(
        RecordsSource(
            data, timestamp=timestamp, batch_size=batch_size, schema=schema, partition=partition
        ),
        code=_source_call("from_records", ..., timestamp=timestamp, partition=partition),
    )


def nexmark(
    events: int | None = None,
    *,
    kind: Kind = "bid",
    rate: float | None = None,
    event_rate: int = 100_000,
    seed: int = 0,
    base_time: datetime | int | None = None,
    max_idle: Duration | None = None,
) -> Stream:
    """The built-in Nexmark generator (persons, auctions, bids), event time ``dateTime``.

    ``events=None`` runs forever; ``rate`` paces it to that many events per wall-clock
    second; ``event_rate`` is events per second of event time; ``max_idle`` as in
    :func:`from_kafka`.
    """
    from streamnb.io.sources.nexmark import NexmarkSource

    return _stream(
        NexmarkSource(
            events, kind=kind, rate=rate, event_rate=event_rate, seed=seed, base_time=base_time
        ),
        max_idle,
        code=_source_call("nexmark", events, kind=kind, rate=rate, seed=seed or None),
    )


def from_files(
    path: str | Path,
    *,
    format: FileFormat = "json",
    timestamp: str | None = None,
    batch_size: int = 50_000,
) -> Stream:
    """JSON-lines, CSV or Parquet files (a path or a glob), replayed in file-name order."""
    from streamnb.io.sources.files import FilesSource

    return _stream(
        FilesSource(path, format=format, timestamp=timestamp, batch_size=batch_size),
        code=_source_call("from_files", str(path), format=format, timestamp=timestamp),
    )


def from_kafka(
    topic: str | list[str],
    *,
    bootstrap_servers: str | None = None,
    format: KafkaFormat = "json",
    schema: Mapping[str, Any] | str | None = None,
    schema_registry: str | Mapping[str, Any] | None = None,
    timestamp: str | None = None,
    start: str | datetime | Mapping[int, int] = "latest",
    group_id: str | None = None,
    config: Mapping[str, Any] | None = None,
    idle_timeout: str | timedelta = "10s",
    connect_timeout: str | timedelta = "10s",
    max_idle: Duration | None = None,
) -> Stream:
    """Records of Kafka topic(s): every partition, a watermark per partition.

    Parameters
    ----------
    topic
        A topic name or a list of them.
    bootstrap_servers
        ``host:port[,host:port]``; default ``STREAMNB_KAFKA_BOOTSTRAP`` or ``%stream connect``.
    format
        ``"json"`` (one JSON object per message, decoded per batch), ``"raw"`` (columns
        key, value, topic, partition, offset, timestamp), ``"avro"``, ``"protobuf"`` or
        ``"jsonschema"``. The last three are values framed with a Schema Registry id, as
        Confluent's serializers write them: each is decoded with its writer schema and read
        as the reader schema (the subject ``<topic>-value``'s latest version when the query
        is defined); nested records/messages become Struct, arrays List, maps
        ``List(Struct{key, value})``, enums String. A value that is not framed, names an id
        the registry does not know, or was written with a schema the reader cannot read
        goes to ``errors()`` with the reason. A newer version of the subject that adds a
        field adds a column from its first record on (null in the rows before); a field
        removed stays a column, null in the newer records. ``"avro"`` with ``schema=`` and
        no ``schema_registry=``: schemaless Avro values (no framing) of that schema.
    schema
        Polars types of the JSON fields (default: learned from the newest records); for
        ``"avro"``, the Avro record schema (a dict or its JSON text): the schema of
        schemaless values, or, with ``schema_registry=``, the reader schema of framed ones.
    schema_registry
        The Schema Registry of ``"avro"``, ``"protobuf"`` and ``"jsonschema"``: its URL or a
        client config dict (``{"url": ..., "basic.auth.user.info": "user:secret"}``; secrets
        never appear in output). Default: ``STREAMNB_SCHEMA_REGISTRY`` or
        ``sn.kafka.connect(..., schema_registry=...)``.
    timestamp
        The event-time field; default the Kafka record timestamp, as column ``timestamp``.
    start
        ``"earliest"``, ``"latest"``, ``"committed"`` (needs ``group_id``), a ``datetime``, or
        ``{partition: offset}``.
    group_id
        Join this consumer group: partitions are shared with its other members and the
        processed batches' offsets are committed every 0.1 s (and at stop).
    config
        Extra confluent-kafka settings (SASL, TLS, ...); secrets never appear in output.
    idle_timeout
        A partition without records for this long (wall clock) stops holding the watermark.
        The clock runs while the query reads: a stall of its own (a long batch, a starved
        process) counts as at most 0.25 s a read.
    connect_timeout
        How long to wait for the broker before raising ``SourceError``.
    max_idle
        Joined or unioned with other inputs, which are merged by event time: how long
        this one, with nothing read and nothing known to be unread, holds the others back
        (default: the query's, ``start(max_idle=...)``, 100 ms).
    """
    from streamnb.io.sources.kafka import KafkaSource

    return _stream(
        KafkaSource(
            topic,
            bootstrap_servers=bootstrap_servers,
            format=format,
            schema=schema,
            schema_registry=schema_registry,
            timestamp=timestamp,
            start=start,
            group_id=group_id,
            config=config,
            idle_timeout=idle_timeout,
            connect_timeout=connect_timeout,
        ),
        max_idle,
        code=_source_call("from_kafka", topic, format=format, timestamp=timestamp),
    )


def table_from_records(
    data: Any,
    *,
    key: str | list[str],
    batch_size: int = 10_000,
    schema: Mapping[str, pl.DataType] | None = None,
    deleted: str | None = None,
) -> Stream:
    """A table replayed from records: each record is the new row of its ``key``.

    ``deleted`` names a boolean column: a record where it is true is a tombstone (the key's
    row is deleted; its other columns are ignored), as a null Kafka value is in
    ``table_from_kafka``. The column is not part of the table. Joined as a table, it is read
    to its end before any stream record is joined (docs/semantics.md §3.10).
    """
    stream = from_records(data, batch_size=batch_size, schema=schema)
    keys = (key,) if isinstance(key, str) else tuple(key)
    stream._check_columns(keys, "table_from_records(key=...)")
    root, columns = stream.plan.root, stream.schema
    if deleted is not None:
        stream._check_columns([deleted], "table_from_records(deleted=...)")
        if deleted in keys:
            raise ConfigError(f"table_from_records(deleted={deleted!r}) cannot be a key column")
        if columns is not None and columns[deleted] not in (pl.Boolean, pl.Null):
            raise ConfigError(
                f"table_from_records(deleted={deleted!r}): the column must be boolean, "
                f"not {columns[deleted]}"
            )
        root = MapNode((root,), "deleted", lambda f: f.rename({deleted: DELETE}))
        if columns is not None:
            columns = pl.Schema({c: t for c, t in columns.items() if c != deleted})
    return Stream(
        Plan(TableNode((root,), keys), columns, None, True, keys),
        code=_source_call("table_from_records", ..., key=key),
    )


def table_from_kafka(
    topic: str,
    *,
    key: str = "key",
    bootstrap_servers: str | None = None,
    format: KafkaFormat = "json",
    schema: Mapping[str, Any] | None = None,
    config: Mapping[str, Any] | None = None,
    connect_timeout: str | timedelta = "10s",
    max_idle: Duration | None = None,
) -> Stream:
    """The latest value per message key of a topic, read from the beginning.

    The message key (UTF-8) becomes column ``key``; a tombstone (a null value) deletes it.
    Joined with a stream, it is read to its end offsets as of the start before any stream
    record is joined; later updates merge with the stream by event time (the Kafka record
    timestamp), ``max_idle`` as in :func:`from_kafka`.
    """
    from streamnb.io.sources.kafka import KafkaSource

    source = KafkaSource(
        topic,
        bootstrap_servers=bootstrap_servers,
        format=format,
        schema=schema,
        start="earliest",
        config=config,
        connect_timeout=connect_timeout,
        key_column=key,
    )
    stream = _stream(source, max_idle)
    return Stream(
        Plan(TableNode((stream.plan.root,), (key,)), stream.schema, None, False, (key,)),
        code=_source_call("table_from_kafka", topic, key=key),
    )
