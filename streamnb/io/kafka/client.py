"""Kafka helpers for exploration: where the broker is, what topics it has, a peek at records.

``sn.kafka.connect("host:9092", schema_registry=...)`` sets the default bootstrap servers (and
Schema Registry; the ``%stream connect`` magic calls it); ``sn.kafka.topics()`` lists topics
with partitions, record counts and, given a registry, their subjects; ``sn.kafka.peek(topic,
n=10)`` returns recent records, decoded (framed values by their registry schema), with their
Kafka metadata.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import polars as pl

from streamnb.definitions.durations import Duration, to_ms
from streamnb.exceptions import ConfigError, SinkError, SourceError
from streamnb.io.kafka.peek_decode import decode_framed, decode_json
from streamnb.io.kafka.registry import (
    REGISTRY_FORMATS,
    REGISTRY_SECRETS,
    check_registry,
    redact_url,
    resolve_registry,
    set_default_registry,
    split_framed,
    subject_name,
)

__all__ = [
    "CLIENT_SETTINGS",
    "client_config",
    "connect",
    "consume_available",
    "consume_first",
    "consume_more",
    "peek",
    "produce",
    "resolve_bootstrap",
    "resolve_config",
    "topics",
]

log = logging.getLogger("streamnb.kafka")

_defaults: dict[str, Any] = {}  # "bootstrap" and "config": set by connect()

SECRET_KEYS = REGISTRY_SECRETS
"""Config keys whose values never appear in logs, reprs or errors: Kafka's and the Schema
Registry's alike (see :data:`~streamnb.io.kafka.registry.REGISTRY_SECRETS`)."""


def connect(
    bootstrap_servers: str,
    *,
    config: Mapping[str, Any] | None = None,
    schema_registry: str | Mapping[str, Any] | None = None,
    timeout: Duration = "10s",
) -> list[str]:
    """Check that the broker answers and make it the default for later calls.

    ``config`` holds client settings (``security.protocol``, ``sasl.*``, ``ssl.*``): they are
    used to connect, and by later calls that use this default broker without a ``config=`` of
    their own (``topics``, ``peek``, ``to_kafka``). ``schema_registry`` (a URL, or a client
    config dict with its credentials: ``basic.auth.user.info``, ``bearer.auth.*``, ``ssl.*``)
    becomes the default registry of later calls; without it the default stays as it was. The
    registry in use (this one, else ``STREAMNB_SCHEMA_REGISTRY``'s or the earlier default) must
    answer, or :class:`ConfigError` names its URL. Returns the topic names (excluding Kafka's
    internal ones).
    """
    names = sorted(
        t for t in _metadata(bootstrap_servers, config, timeout).topics if not t.startswith("__")
    )
    registry = resolve_registry(schema_registry)
    if registry is not None:
        check_registry(registry)
    set_default_bootstrap(bootstrap_servers, config)
    if schema_registry is not None:
        set_default_registry(registry)
    return names


def set_default_bootstrap(bootstrap_servers: str, config: Mapping[str, Any] | None = None) -> None:
    """Make ``bootstrap_servers`` (and its client ``config``) the default of later calls,
    without contacting it."""
    _defaults["bootstrap"] = bootstrap_servers
    _defaults["config"] = dict(config or {})


def resolve_bootstrap(bootstrap_servers: str | None) -> str:
    """The explicit argument, else ``STREAMNB_KAFKA_BOOTSTRAP``, else ``connect()``'s."""
    found = (
        bootstrap_servers
        or os.environ.get("STREAMNB_KAFKA_BOOTSTRAP")
        or _defaults.get("bootstrap")
    )
    if not found:
        raise ConfigError(
            "no Kafka bootstrap servers: pass bootstrap_servers='host:port', set "
            "STREAMNB_KAFKA_BOOTSTRAP, or call sn.kafka.connect(...) (%stream connect)"
        )
    return found


def resolve_config(
    bootstrap_servers: str | None, config: Mapping[str, Any] | None
) -> Mapping[str, Any] | None:
    """The explicit ``config``, else ``connect()``'s when the call uses that broker."""
    if config is not None:
        return config
    if bootstrap_servers is None or bootstrap_servers == _defaults.get("bootstrap"):
        return _defaults.get("config")
    return None


def redact(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` with secret values (and the user info of URLs) replaced, for anything a
    person may read."""
    return {
        k: "***"
        if any(s in k.lower() for s in SECRET_KEYS)
        else (redact_url(v) if isinstance(v, str) else v)
        for k, v in config.items()
    }


def kafka_reason(exc: BaseException) -> str:
    """A Kafka client error's own message (a ``KafkaException`` holds a ``KafkaError``)."""
    error: Any = exc.args[0] if exc.args else None
    return str(error.str()) if hasattr(error, "str") else str(exc)


CLIENT_SETTINGS: Mapping[str, Any] = MappingProxyType({"socket.nagle.disable": True})
"""What every client of streamnb sets (a user's ``config=`` overrides it).

``socket.nagle.disable``: Kafka's Java clients set ``TCP_NODELAY`` on every connection;
librdkafka leaves Nagle's algorithm on, so a request whose last segment is small may wait,
while earlier data is unacknowledged, for the broker's delayed ACK (about 40 ms on Linux).
(The latency harness's window-emit outliers that first looked like this were its own
collector's pauses: see ``bench/peers.py``.)"""


def client_config(
    bootstrap: str, config: Mapping[str, Any] | None = None, **defaults: Any
) -> dict[str, Any]:
    """A confluent-kafka config: :data:`CLIENT_SETTINGS`, the defaults, then the user's
    ``config`` on top.

    librdkafka's own log lines go to the ``streamnb.kafka`` Python logger instead of stderr.
    """
    merged: dict[str, Any] = {"bootstrap.servers": bootstrap, **CLIENT_SETTINGS, **defaults}
    merged.update(config or {})
    merged.setdefault("logger", log)
    return merged


def consume_available(consumer: Any, max_records: int, timeout: float) -> list[Any]:
    """Up to ``max_records`` messages that have arrived, waiting at most ``timeout`` seconds
    for the first one only.

    ``Consumer.consume(n, timeout)`` waits until it has ``n`` messages or the timeout passed
    (librdkafka's ``rd_kafka_consume_batch_queue``), so on a quiet topic every call would take
    the whole timeout, and that time becomes latency. This takes what is there at once, and
    waits only when nothing is.
    """
    return consume_more(consumer, consume_first(consumer, max_records, timeout), max_records)


def consume_first(consumer: Any, max_records: int, timeout: float) -> list[Any]:
    """What :func:`consume_available` takes first: a chunk of what has arrived, or else the
    first message to arrive within ``timeout`` seconds (none if none did)."""
    messages: list[Any] = consumer.consume(num_messages=min(max_records, CHUNK), timeout=0)
    if not messages and timeout > 0:
        messages = consumer.consume(num_messages=1, timeout=timeout)
    return messages


def consume_more(consumer: Any, messages: list[Any], max_records: int) -> list[Any]:
    """``messages`` (from :func:`consume_first`) and what else has arrived, up to
    ``max_records`` in all, without waiting."""
    if not messages:
        return messages
    while len(messages) < max_records:
        more = consumer.consume(num_messages=min(max_records - len(messages), CHUNK), timeout=0)
        if not more:
            break
        messages += more
    return messages


CHUNK = 5_000
"""Messages per ``consume`` call. Making a ``Message`` object per record holds the GIL for
the whole call (~35 ms for 50 000), and the threads that decode and process batches meanwhile
wait for it; in chunks they take turns."""


def _metadata(
    bootstrap_servers: str | None, config: Mapping[str, Any] | None, timeout: Duration
) -> Any:
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    bootstrap = resolve_bootstrap(bootstrap_servers)
    seconds = to_ms(timeout, name="connect_timeout") / 1000
    seen: list[Any] = []  # the client's own errors: why it could not connect
    admin = AdminClient(
        client_config(bootstrap, config, **{"socket.timeout.ms": 5000, "error_cb": seen.append})
    )
    try:
        return admin.list_topics(timeout=seconds)
    except KafkaException as exc:
        admin.poll(0)  # serves error_cb
        failure = exc.args[0].str() if exc.args else str(exc)
        message = _unreachable(bootstrap, seconds, failure, seen)
    finally:
        del admin  # no client outlives the call, even while the error is held
    raise SourceError(message)


def _unreachable(bootstrap: str, seconds: float, failure: str, seen: list[Any]) -> str:
    """Why the broker at ``bootstrap`` did not answer: a broker that answered but refused the
    handshake (SASL or TLS settings that do not fit its listener) is not "down"."""
    from confluent_kafka import KafkaError

    for error in seen:
        text = error.str()
        if error.code() == KafkaError._AUTHENTICATION or "handshake" in text.lower():
            return (
                f"Kafka at {bootstrap} answered, but the connection failed in its security "
                f"handshake (authentication or TLS): {text}. The client's settings do not fit "
                "the broker's listener: check security.protocol (PLAINTEXT, SSL, "
                "SASL_PLAINTEXT, SASL_SSL), sasl.mechanism and the credentials, ssl.* "
                "(a SASL or SSL setting against a PLAINTEXT listener fails like this)"
            )
    detail = next((e.str() for e in seen if e.code() != KafkaError._ALL_BROKERS_DOWN), failure)
    return (
        f"cannot reach Kafka at {bootstrap} within {seconds:g}s ({detail}); is the broker "
        "running? (scripts/kafka-local start starts one on this machine)"
    )


def topics(
    bootstrap_servers: str | None = None,
    *,
    config: Mapping[str, Any] | None = None,
    schema_registry: str | Mapping[str, Any] | None = None,
    timeout: Duration = "10s",
) -> pl.DataFrame:
    """The topics of the cluster: name, partitions, and total records (end − start offsets);
    with a Schema Registry (``schema_registry=``, ``STREAMNB_SCHEMA_REGISTRY`` or
    ``connect``'s), also ``subject`` and ``key_subject``: the topic's ``<topic>-value`` and
    ``<topic>-key`` subjects where the registry has them (topic-name strategy), else null."""
    from confluent_kafka import Consumer, TopicPartition

    registry = resolve_registry(schema_registry)
    config = resolve_config(bootstrap_servers, config)
    meta = _metadata(bootstrap_servers, config, timeout)
    bootstrap = resolve_bootstrap(bootstrap_servers)
    consumer = Consumer(
        client_config(
            bootstrap,
            config,
            **{"group.id": f"streamnb-{uuid.uuid4()}", "enable.auto.commit": False},
        )
    )
    rows = []
    try:
        for name, topic in sorted(meta.topics.items()):
            if name.startswith("__"):
                continue
            total = 0
            for p in topic.partitions:
                low, high = consumer.get_watermark_offsets(TopicPartition(name, p), timeout=5)
                total += high - low
            rows.append({"topic": name, "partitions": len(topic.partitions), "records": total})
    finally:
        consumer.close()
    listing = pl.DataFrame(
        rows, schema={"topic": pl.String, "partitions": pl.Int64, "records": pl.Int64}
    )
    if registry is None:
        return listing
    subjects = set(check_registry(registry))  # one request, whatever the number of topics
    return listing.with_columns(
        subject=_registered(listing["topic"], subjects, is_key=False),
        key_subject=_registered(listing["topic"], subjects, is_key=True),
    )


def _registered(topics: pl.Series, subjects: set[str], *, is_key: bool) -> pl.Series:
    """Each topic's topic-name-strategy subject where ``subjects`` has it, else null."""
    names = (subject_name(t, is_key=is_key) for t in topics)
    return pl.Series([n if n in subjects else None for n in names], dtype=pl.String)


def peek(
    topic: str,
    n: int = 10,
    *,
    bootstrap_servers: str | None = None,
    format: str | None = None,
    schema_registry: str | Mapping[str, Any] | None = None,
    config: Mapping[str, Any] | None = None,
    timeout: Duration = "10s",
) -> pl.DataFrame:
    """The last ``n`` records of each partition of ``topic`` (oldest first), decoded.

    ``format=None`` looks at the values: framed ones (a Schema Registry serializer's: magic
    byte 0, schema id) are decoded by their writer schema, Avro, Protobuf or JSON Schema alike,
    through the registry (``schema_registry=``, else ``STREAMNB_SCHEMA_REGISTRY``, else
    ``connect``'s); others as JSON. ``"avro"``, ``"protobuf"``, ``"jsonschema"`` expect framed
    values of that type; ``"json"`` and ``"raw"`` (``key``/``value`` bytes) ignore any framing.

    Columns: the decoded value's fields, then ``_partition``, ``_offset``, ``_timestamp``;
    decoded through the registry, also ``_subject``, ``_schema_id``, ``_version`` and
    ``_error``. A record that does not decode is not left out: its fields are null and
    ``_error`` says why (for JSON, ``_error`` appears when a record failed).
    """
    if format not in PEEK_FORMATS:
        raise ConfigError(f"format={format!r}: peek() reads one of {PEEK_FORMATS}")
    registry = resolve_registry(
        schema_registry, required=format in REGISTRY_FORMATS, what=f"peek(format={format!r})"
    )
    messages = _last_messages(topic, n, bootstrap_servers, config, timeout)
    kafka_columns = pl.DataFrame(
        {
            "_partition": pl.Series([m.partition() for m in messages], dtype=pl.Int32),
            "_offset": pl.Series([m.offset() for m in messages], dtype=pl.Int64),
            "_timestamp": pl.Series([m.timestamp()[1] for m in messages], dtype=pl.Int64).cast(
                pl.Datetime("ms", "UTC")
            ),
        }
    )
    if format == "raw":
        keys = pl.Series("key", [m.key() for m in messages], dtype=pl.Binary)
        values = pl.Series("value", [m.value() for m in messages], dtype=pl.Binary)
        return kafka_columns.insert_column(0, keys).insert_column(1, values).sort(*ORDER)
    raw = [m.value() for m in messages]
    framed = sorted(set(split_framed(raw)[0].tolist()) - {-1}) if format is None else []
    if framed:
        registry = resolve_registry(
            schema_registry,
            required=True,
            what=f"peek({topic!r}) (its values are framed with schema ids {framed[:5]})",
        )
    if registry is not None and (framed or format in REGISTRY_FORMATS):
        fields, extra = decode_framed(raw, topic, registry, format)
    else:
        fields, extra = decode_json([v or b"" for v in raw])
    return pl.concat([fields, kafka_columns, extra], how="horizontal").sort(*ORDER)


PEEK_FORMATS = (None, "json", "raw", *REGISTRY_FORMATS)
ORDER = ("_timestamp", "_partition", "_offset")


def _last_messages(
    topic: str,
    n: int,
    bootstrap_servers: str | None,
    config: Mapping[str, Any] | None,
    timeout: Duration,
) -> list[Any]:
    """The last ``n`` messages of each partition of ``topic``."""
    from confluent_kafka import Consumer, KafkaError, TopicPartition

    config = resolve_config(bootstrap_servers, config)
    meta = _metadata(bootstrap_servers, config, timeout)
    if topic not in meta.topics:
        raise ConfigError(
            f"topic {topic!r} does not exist; topics: "
            f"{sorted(t for t in meta.topics if not t.startswith('__'))}"
        )
    bootstrap = resolve_bootstrap(bootstrap_servers)
    consumer = Consumer(
        client_config(
            bootstrap,
            config,
            **{
                "group.id": f"streamnb-peek-{uuid.uuid4()}",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
            },
        )
    )
    messages: list[Any] = []
    try:
        assignment, expected = [], 0
        for p in meta.topics[topic].partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=5)
            if high > low:
                start = max(low, high - n)
                assignment.append(TopicPartition(topic, p, start))
                expected += high - start
        if assignment:
            consumer.assign(assignment)
            deadline = time.monotonic() + to_ms(timeout, name="timeout") / 1000
            eof = 0
            while eof < len(assignment) and time.monotonic() < deadline:
                for m in consumer.consume(num_messages=max(expected, 1), timeout=0.5):
                    err = m.error()
                    if err is None:
                        messages.append(m)
                    elif err.code() == KafkaError._PARTITION_EOF:
                        eof += 1
    finally:
        consumer.close()
    return messages


def produce(
    producer: Any,
    topic: str,
    value: bytes | None,
    key: bytes | None = None,
    *,
    while_full: Callable[[], None] | None = None,
    **options: Any,
) -> None:
    """``producer.produce(...)``, waiting while the local queue is full (deliveries drain it;
    ``while_full`` is called between waits, and may raise to give up); a record the client
    refuses (too large, an unknown partition, a fenced producer) raises :class:`SinkError`
    naming the topic."""
    from confluent_kafka import KafkaException

    if key is not None:
        options["key"] = key
    while True:
        try:
            producer.produce(topic, value, **options)
            return
        except BufferError:
            producer.poll(0.05)
            if while_full is not None:
                while_full()
        except KafkaException as exc:
            error = exc.args[0] if exc.args else exc
            reason = error.str() if hasattr(error, "str") else str(exc)
            raise SinkError(f"cannot write to {topic}: {reason}") from exc
