"""``stream.to_kafka(topic)``: output rows as Kafka records (JSON, raw, Avro, or values framed
for a Schema Registry: Avro, Protobuf, JSON Schema; a key, framed too if asked).

JSON values are encoded per batch by polars (one ``struct.json_encode``); Avro and Protobuf
have no batch writers, so those are one C call per record (see :mod:`streamnb.io.codecs`).
A registry format registers its schema when the query starts (a refusal fails the start,
naming the subject and the registry's reason); a row that does not fit the schema goes to
``errors()``. The idempotent producer is
fed without per-message callbacks (only failed deliveries are reported), so the Python cost
per record is one ``produce`` call. A table's deletes become tombstones (key, null value).
With ``errors="dlq:<topic>"`` the query's error records go to that topic as well, with the
reason and origin in headers.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, NamedTuple

import polars as pl

from streamnb.columns import visible
from streamnb.engine.core import ERROR_SCHEMA, Context, Delta, Operator, error_from_python
from streamnb.engine.source import Sink
from streamnb.exceptions import ConfigError, SinkError
from streamnb.io.codecs import avro
from streamnb.io.codecs.framed_write import FramedEncoder, FramedWriter
from streamnb.io.codecs.json_write import json_lines
from streamnb.io.kafka.client import (
    CLIENT_SETTINGS,
    client_config,
    produce,
    resolve_bootstrap,
    resolve_config,
)
from streamnb.io.kafka.registry import REGISTRY_FORMATS, client, resolve_registry
from streamnb.types import KafkaFormat

FORMATS = ("json", "raw", "avro", "protobuf", "jsonschema")
KEY_FORMATS = (None, *REGISTRY_FORMATS)
SUBJECT_STRATEGIES = ("topic", "record", "topic_record")
FLUSH_SECONDS = 30.0
"""How long the end of a query waits for its records to be delivered, when no stop timeout
says otherwise."""
DROP_SECONDS = 25e-6
"""What dropping one undelivered record at close costs, about (its delivery report and error
row): a stopping sink stops waiting early enough to report all it holds by the deadline."""


@dataclass(frozen=True)
class KafkaSink(Sink):
    """``to_kafka(topic, ...)``: where and how output rows are written (checked by
    :func:`kafka_sink`); each run opens its own :class:`KafkaWriter`."""

    topic: str
    bootstrap: str
    format: KafkaFormat
    key: tuple[str, ...]
    config: Mapping[str, Any] = field(repr=False)
    dlq: str | None = None
    avro_schema: Any = field(default=None, repr=False)
    headers: Mapping[str, str] | None = None
    value_writer: FramedWriter | None = None
    key_writer: FramedWriter | None = None
    registry: Mapping[str, Any] | None = field(default=None, repr=False)  # has secrets

    def describe(self) -> str:
        return f"to_kafka[{self.topic}]"

    def open(self, ctx: Context) -> Operator:
        value_encoder, key_encoder = self.register()
        return KafkaWriter(
            self.topic,
            bootstrap=self.bootstrap,
            format=self.format,
            key=self.key,
            config=self.config,
            dlq=self.dlq,
            ctx=ctx,
            avro_schema=self.avro_schema,
            headers=self.headers,
            value_encoder=value_encoder,
            key_encoder=key_encoder,
        )

    def register(self) -> tuple[FramedEncoder | None, FramedEncoder | None]:
        """The value's and the key's schemas registered (or found) in the registry, once per
        run, before any record: a refusal raises :class:`SinkError` and the query does not
        start."""
        registry, where = self.registry or {}, self.describe()
        value, key = self.value_writer, self.key_writer
        return (
            None if value is None else value.register(registry, where=where),
            None if key is None else key.register(registry, where=where),
        )


class KafkaWriter(Operator):
    """Writes each delta's rows to ``topic``; rows pass on unchanged.

    What cannot be delivered shows in ``errors()`` within a tick (a tenth of a second), not at
    the next batch: each failed record with its bytes, and a row when every broker is down
    (the records then wait in the producer, and are retried, until ``message.timeout.ms``).
    Closing flushes until ``FLUSH_SECONDS`` or, when stopping, until just enough of the stop's
    timeout (``ctx.deadline``) is left to report what is still undelivered: those records are
    purged into ``errors()`` and the producer is closed.
    """

    def __init__(
        self,
        topic: str,
        *,
        bootstrap: str,
        format: KafkaFormat,
        key: Sequence[str],
        config: Mapping[str, Any],
        dlq: str | None,
        ctx: Context,
        avro_schema: Any = None,
        headers: Mapping[str, str] | None = None,
        value_encoder: FramedEncoder | None = None,
        key_encoder: FramedEncoder | None = None,
    ) -> None:
        from confluent_kafka import Producer

        self.topic, self.format, self.key, self.dlq, self.ctx = topic, format, list(key), dlq, ctx
        self.bootstrap = bootstrap
        self.avro = avro_schema
        self.value_encoder, self.key_encoder = value_encoder, key_encoder
        self.headers = dict(headers or {})
        self._failures: list[_Failure] = []  # not in errors() yet
        self._finished = False
        self._client_error = ""  # the producer's latest connection error, for context
        self._own = ctx.producer is None  # the worker's shared producer is the worker's to close
        self.producer = ctx.producer or Producer(
            client_config(
                bootstrap,
                config,
                **{
                    **PRODUCER_SETTINGS,
                    "delivery.report.only.error": True,
                    "on_delivery": self._failed,
                    "error_cb": self._client_failed,
                },
            )
        )
        if dlq is not None and not _dead_letters_to(dlq, ctx):
            ctx.error_listeners.append(self._dead_letter)

    def process(self, delta: Delta) -> Delta:
        rows = visible(delta.rows)
        if delta.deletes is not None and delta.deletes.height:  # retractions first
            keys, unfit = self._keys(delta.deletes)
            self._send(*_without(unfit, [None] * delta.deletes.height, keys))
            self._unfit(delta.deletes, unfit)
        if rows.height:
            values, unfit_values = self._values(rows)
            keys, unfit_keys = self._keys(rows)
            unfit = {**unfit_keys, **unfit_values}
            values, keys, headers = _without(unfit, values, keys, self._headers(rows))
            self._send(values, keys, headers=headers)
            self._unfit(rows, unfit)
        self.tick()
        return delta

    def _unfit(self, rows: pl.DataFrame, unfit: Mapping[int, str]) -> None:
        """Rows that do not fit the value's or key's schema: into ``errors()`` as their JSON
        text, with the reason (with ``errors="fail"`` the query fails)."""
        if not unfit:
            return
        source = f"to_kafka[{self.topic}]"
        frames = [
            error_from_python(source, None, reason, rows.row(i, named=True), topic=self.topic)
            for i, reason in unfit.items()
        ]
        self.ctx.errors.add(pl.concat(frames))
        if self.ctx.fail_on_error:
            first = next(iter(unfit.values()))
            raise SinkError(f"{source}: {len(unfit)} rows do not fit the schema ({first})")

    def tick(self) -> None:
        self.producer.poll(0)
        self._report()

    def _values(self, rows: pl.DataFrame) -> tuple[list[bytes], dict[int, str]]:
        """The rows' values, and the rows that do not fit the schema (with the reason)."""
        if self.value_encoder is not None:
            values, unfit = self.value_encoder.encode(rows)
            return values, dict(unfit)
        if self.format == "raw":
            return rows.get_column("value").cast(pl.Binary).to_list(), {}
        if self.format == "avro":
            values, unfit = avro.encode(rows, self.avro)
            return values, dict(unfit)
        return json_lines(rows), {}

    def _headers(self, rows: pl.DataFrame) -> list[list[tuple[str, bytes | None]]] | None:
        """Per row, ``(header, value)`` pairs from the columns named in ``headers=``."""
        if not self.headers:
            return None
        columns = {
            name: [
                None if v is None else v.encode()
                for v in rows.get_column(column).cast(pl.String).to_list()
            ]
            for name, column in self.headers.items()
        }
        return [
            list(zip(columns, values, strict=True))
            for values in zip(*columns.values(), strict=True)
        ]

    def _keys(self, rows: pl.DataFrame) -> tuple[list[bytes | None] | None, dict[int, str]]:
        """The rows' keys (``None``: no key), and the rows whose key does not fit its
        schema."""
        if not self.key:
            return None, {}
        if self.key_encoder is not None:
            keys, unfit = self.key_encoder.encode(rows.select(self.key))
            return list(keys), {i: f"key {reason}" for i, reason in unfit}
        if len(self.key) == 1:
            return [
                None if k is None else k.encode()
                for k in rows.get_column(self.key[0]).cast(pl.String).to_list()
            ], {}
        return list(json_lines(rows.select(self.key))), {}

    def _send(
        self,
        values: Sequence[bytes | None],
        keys: Sequence[bytes | None] | None,
        topic: str | None = None,
        headers: Sequence[Any] | None = None,
    ) -> None:
        producer, target = self.producer, topic or self.topic
        i, n = 0, len(values)
        while i < n:
            i = _produce_all(producer, target, values, keys, headers=headers, start=i)
            if i == n:
                return
            # the queue is full, or the client refused record i: that one the careful way
            key = keys[i] if keys is not None else None
            extra = {"headers": headers[i]} if headers is not None else {}
            try:
                produce(producer, target, values[i], key, while_full=self._while_full, **extra)
            except _Stopping:  # the rest of the batch was never handed to the producer
                reason = self._stopped_reason()
                self._failures += [_Failure(reason, v or b"", target, None) for v in values[i:]]
                return
            i += 1

    def _while_full(self) -> None:
        """The producer's queue is full (the broker is slow or gone): report what failed, and
        give up once the query is stopping."""
        self._report()
        if self._stopping():
            raise _Stopping

    def _stopped_reason(self) -> str:
        return f"not delivered before the query stopped ({self._client_error or 'no error seen'})"

    def _failed(self, err: Any, msg: Any) -> None:
        """A delivery report (only failures are reported): kept for :meth:`_report`, which
        makes one frame of many (a producer can fail thousands of records at once)."""
        partition = msg.partition()
        self._failures.append(
            _Failure(
                f"delivery failed: {err.str()}",
                msg.value() or b"",
                msg.topic(),
                partition if partition is not None and partition >= 0 else None,
            )
        )

    def _client_failed(self, err: Any) -> None:
        """The producer's own errors: a row in ``errors()`` once every broker is down (that
        is reported once per outage, with the last connection error as the reason), or on
        an error it cannot recover from."""
        from confluent_kafka import KafkaError

        if err.code() == KafkaError._ALL_BROKERS_DOWN:
            detail = f": {self._client_error}" if self._client_error else ""
            reason = f"cannot reach Kafka at {self.bootstrap} ({err.str()}){detail}"
        elif err.fatal():
            reason = f"the producer failed: {err.str()}"
        else:
            self._client_error = err.str()
            return
        self.ctx.errors.add(
            error_from_python(f"to_kafka[{self.topic}]", None, reason, b"", topic=self.topic)
        )

    def _report(self, *, fail: bool = True) -> None:
        """Failed deliveries into ``errors()``, each with its record's bytes; with
        ``errors="fail"`` (and ``fail``) the query fails."""
        if not self._failures:
            return
        failed, self._failures = self._failures, []
        self.ctx.errors.add(
            pl.DataFrame(
                {
                    "source": [f"to_kafka[{f.topic}]" for f in failed],
                    "position": None,
                    "reason": [f.reason for f in failed],
                    "record": [f.value.decode("utf-8", errors="backslashreplace") for f in failed],
                    "raw": [f.value for f in failed],
                    "topic": [f.topic for f in failed],
                    "partition": [f.partition for f in failed],
                    "offset": None,
                },
                schema=ERROR_SCHEMA,
            )
        )
        if fail and self.ctx.fail_on_error:
            raise SinkError(
                f"to_kafka[{self.topic}]: {len(failed)} records not delivered ({failed[0].reason})"
            )

    def _dead_letter(self, errors: pl.DataFrame) -> None:
        """Error rows to the dead-letter topic as their original value: the bytes, a row's
        text when it never was bytes, and null (a tombstone) when the value was null."""
        assert self.dlq is not None
        payloads = [
            raw if raw is not None or record is None else record.encode()
            for raw, record in zip(errors["raw"], errors["record"], strict=True)
        ]
        headers = [
            [(k, str(v).encode()) for k, v in row.items() if v is not None]
            for row in errors.select(
                "reason", "source", "position", "topic", "partition", "offset"
            ).iter_rows(named=True)
        ]
        self._send(payloads, None, topic=self.dlq, headers=headers)

    def finish(self) -> Delta | None:
        self._flush()
        self._finished = True
        return None

    def close(self) -> None:
        try:
            if not self._finished:
                self._flush()
        finally:
            if self._own:
                self._drop_undelivered()
                self.producer.close()  # quick: nothing is left to flush
                self._report(fail=False)  # reports it served while closing, if any

    def _drop_undelivered(self) -> None:
        """Purge what the producer still holds; its delivery reports put each record in
        ``errors()`` (closing reports, it does not fail the query a second time)."""
        self._report(fail=False)
        if not len(self.producer):
            return
        self.producer.purge()
        deadline = time.monotonic() + 5.0  # purged records report at once; this is a guard
        while len(self.producer) and time.monotonic() < deadline:
            self.producer.poll(0.01)
        reason = self._stopped_reason()
        self._failures = [f._replace(reason=reason) for f in self._failures]
        self._report(fail=False)

    def _stopping(self) -> bool:
        """Whether the query is stopping and the time left is what reporting the records
        still held takes."""
        deadline = self.ctx.deadline
        if deadline is None:
            return False
        held = len(self.producer) if self._own else 0
        return time.monotonic() + 0.1 + held * DROP_SECONDS >= deadline

    def _flush(self) -> None:
        """Wait for deliveries, reporting failures as they come, until none is left, the
        query's stop deadline, or ``FLUSH_SECONDS``."""
        deadline = time.monotonic() + FLUSH_SECONDS
        while not self._stopping() and time.monotonic() < deadline and self.producer.flush(0.1):
            self._report()
        self._report()
        left = len(self.producer)
        if left and not self._own:  # a shared producer: the worker decides what happens next
            self.ctx.errors.add(
                error_from_python(
                    f"to_kafka[{self.topic}]",
                    None,
                    f"{left} records not delivered within {FLUSH_SECONDS:g}s",
                    b"",
                )
            )


PRODUCER_SETTINGS: Mapping[str, Any] = MappingProxyType(
    {**CLIENT_SETTINGS, "enable.idempotence": True, "linger.ms": 5}
)
"""The sink's producer settings (a user's ``config=`` overrides them); the benchmarks' plain
consume -> produce loop uses the same (so they include what every client sets,
:data:`~streamnb.io.kafka.client.CLIENT_SETTINGS`)."""


def _without(unfit: Mapping[int, str], *columns: Sequence[Any] | None) -> tuple[Any, ...]:
    """Each of ``columns`` (values, keys, headers; ``None`` stays ``None``) without the
    rows in ``unfit``."""
    if not unfit:
        return columns
    return tuple(
        None if c is None else [x for i, x in enumerate(c) if i not in unfit] for c in columns
    )


def _produce_all(
    producer: Any,
    topic: str,
    values: Sequence[bytes | None],
    keys: Sequence[bytes | None] | None,
    *,
    headers: Sequence[Any] | None,
    start: int,
) -> int:
    """Hand records ``start...`` to the producer in a tight loop (the C call is most of the
    cost of a record); returns where it stopped: at the end, or at the record the producer
    did not take (its queue is full, or it refused it), which the caller deals with."""
    from confluent_kafka import KafkaException

    send = producer.produce
    i = start
    try:
        if keys is None and headers is None:
            for i in range(start, len(values)):
                send(topic, values[i])
        elif headers is None:
            assert keys is not None
            for i in range(start, len(values)):
                send(topic, values[i], keys[i])
        else:
            for i in range(start, len(values)):
                send(topic, values[i], None if keys is None else keys[i], headers=headers[i])
    except (BufferError, KafkaException):
        return i
    return len(values)


class _Failure(NamedTuple):
    """A record a Kafka sink could not deliver."""

    reason: str
    value: bytes
    topic: str
    partition: int | None


class _Stopping(Exception):
    """Raised inside :func:`produce` when the query stops while the producer's queue is full."""


def _dead_letters_to(dlq: str, ctx: Context) -> bool:
    """Whether a sink already sends ``ctx``'s errors to ``dlq`` (the worker's tasks share one
    context and producer: each error goes to the dead-letter topic once)."""
    return any(
        getattr(getattr(f, "__self__", None), "dlq", None) == dlq for f in ctx.error_listeners
    )


def kafka_sink(
    topic: str,
    *,
    format: KafkaFormat,
    key: str | Sequence[str] | None,
    errors: str | None,
    schema: pl.Schema | None,
    table_keys: Sequence[str] | None,
    bootstrap_servers: str | None,
    config: Mapping[str, Any] | None,
    avro_schema: Any = None,
    headers: Mapping[str, str] | None = None,
    schema_registry: str | Mapping[str, Any] | None = None,
    subject_strategy: str = "topic",
    key_format: str | None = None,
) -> KafkaSink:
    """The sink ``to_kafka`` attaches, its arguments checked against the output ``schema``.

    ``avro_schema`` is the user's ``schema=``: an Avro schema for ``avro``, a generated
    message class for ``protobuf``, a JSON Schema for ``jsonschema``."""
    if format not in FORMATS:
        raise ConfigError(f"format={format!r} must be one of {list(FORMATS)}")
    if key_format not in KEY_FORMATS:
        raise ConfigError(f"key_format={key_format!r} must be one of {list(KEY_FORMATS)}")
    if subject_strategy not in SUBJECT_STRATEGIES:
        raise ConfigError(
            f"subject_strategy={subject_strategy!r} must be one of {list(SUBJECT_STRATEGIES)}"
        )
    if avro_schema is not None and format not in REGISTRY_FORMATS:
        raise ConfigError(
            f"schema= goes with format 'avro', 'protobuf' or 'jsonschema', not {format!r}"
        )
    for column in (headers or {}).values():
        if schema is not None and column not in schema:
            raise ConfigError(
                f"to_kafka(headers=...): no column {column!r}; columns are {list(schema.names())}"
            )
    keys = [key] if isinstance(key, str) else list(key or table_keys or [])
    for column in keys:
        if schema is not None and column not in schema:
            raise ConfigError(
                f"to_kafka(key={column!r}): no such column; columns are {list(schema.names())}"
            )
    if format == "raw" and schema is not None and "value" not in schema:
        raise ConfigError("to_kafka(format='raw') needs a 'value' column (bytes or string)")
    dlq = None
    if errors is not None:
        if not (isinstance(errors, str) and errors.startswith("dlq:") and len(errors) > 4):
            raise ConfigError(
                f"errors={errors!r}: use 'dlq:<topic>' to send error records to a dead-letter topic"
            )
        dlq = errors[4:]
    if key_format is not None and not keys:
        raise ConfigError(f"key_format={key_format!r} needs key= (the key columns)")
    bootstrap = resolve_bootstrap(bootstrap_servers)
    registry = _registry(format, key_format, schema_registry, avro_schema)
    parsed = avro.parse_schema(avro_schema) if format == "avro" and registry is None else None
    value_writer = key_writer = None
    if registry is not None and format in REGISTRY_FORMATS:
        value_writer = FramedWriter.make(
            format, topic, schema=avro_schema, columns=schema, strategy=subject_strategy
        )
    if key_format is not None:
        key_writer = FramedWriter.make(
            key_format,
            topic,
            schema=None,
            columns=None if schema is None else pl.Schema({k: schema[k] for k in keys}),
            is_key=True,
            strategy=subject_strategy,
        )
    config = resolve_config(bootstrap_servers, config)  # connect()'s, for its broker
    return KafkaSink(
        topic,
        bootstrap,
        format,
        tuple(keys),
        dict(config or {}),
        dlq,
        parsed,
        headers,
        value_writer,
        key_writer,
        registry,
    )


def _registry(
    format: str,
    key_format: str | None,
    schema_registry: str | Mapping[str, Any] | None,
    schema: Any,
) -> dict[str, Any] | None:
    """The registry the sink registers its schemas with, if it has any to register: Avro
    with a user's schema and no registry anywhere stays schemaless Avro (unframed)."""
    if format not in REGISTRY_FORMATS and key_format is None:
        if schema_registry is not None:
            raise ConfigError(
                f"schema_registry= goes with format or key_format 'avro', 'protobuf' or "
                f"'jsonschema', not format={format!r}"
            )
        return None
    needs = format != "avro" or schema is None or key_format is not None
    keys = "" if key_format is None else f", key_format={key_format!r}"
    registry = resolve_registry(
        schema_registry, required=needs, what=f"to_kafka(format={format!r}{keys})"
    )
    if registry is not None:
        client(registry)  # a bad setting is a ConfigError now, not when the query starts
    return registry
