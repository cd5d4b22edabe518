"""Kafka helpers for exploration: where the broker is, what topics it has, a peek at records.

``sn.kafka.connect("host:9092")`` sets the default bootstrap servers (the ``%stream connect``
magic calls it); ``sn.kafka.topics()`` lists topics with partitions and end offsets;
``sn.kafka.peek(topic, n=10)`` returns recent records, decoded, with their Kafka metadata.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import polars as pl

from streamnb.definitions.durations import Duration, to_ms
from streamnb.exceptions import ConfigError, SinkError, SourceError

__all__ = [
    "client_config",
    "connect",
    "consume_available",
    "peek",
    "produce",
    "resolve_bootstrap",
    "resolve_config",
    "topics",
]

log = logging.getLogger("streamnb.kafka")

_defaults: dict[str, Any] = {}  # "bootstrap" and "config": set by connect()

SECRET_KEYS = ("password", "secret", "sasl.oauthbearer.config", "ssl.key.pem")
"""Config keys whose values never appear in logs, reprs or errors."""


def connect(
    bootstrap_servers: str,
    *,
    config: Mapping[str, Any] | None = None,
    timeout: Duration = "10s",
) -> list[str]:
    """Check that the broker answers and make it the default for later calls.

    ``config`` holds client settings (``security.protocol``, ``sasl.*``, ``ssl.*``): they are
    used to connect, and by later calls that use this default broker without a ``config=`` of
    their own (``topics``, ``peek``, ``to_kafka``). Returns the topic names (excluding Kafka's
    internal ones).
    """
    names = sorted(
        t for t in _metadata(bootstrap_servers, config, timeout).topics if not t.startswith("__")
    )
    set_default_bootstrap(bootstrap_servers, config)
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
    """``config`` with secret values replaced, for anything a person may read."""
    return {
        k: ("***" if any(s in k.lower() for s in SECRET_KEYS) else v) for k, v in config.items()
    }


def kafka_reason(exc: BaseException) -> str:
    """A Kafka client error's own message (a ``KafkaException`` holds a ``KafkaError``)."""
    error: Any = exc.args[0] if exc.args else None
    return str(error.str()) if hasattr(error, "str") else str(exc)


def client_config(
    bootstrap: str, config: Mapping[str, Any] | None = None, **defaults: Any
) -> dict[str, Any]:
    """A confluent-kafka config: defaults, then the user's ``config`` on top.

    librdkafka's own log lines go to the ``streamnb.kafka`` Python logger instead of stderr.
    """
    merged: dict[str, Any] = {"bootstrap.servers": bootstrap, **defaults}
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
    messages: list[Any] = consumer.consume(num_messages=min(max_records, CHUNK), timeout=0)
    if not messages:
        if timeout <= 0:
            return messages
        messages = consumer.consume(num_messages=1, timeout=timeout)
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
    timeout: Duration = "10s",
) -> pl.DataFrame:
    """The topics of the cluster: name, partitions, and total records (end − start offsets)."""
    from confluent_kafka import Consumer, TopicPartition

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
    return pl.DataFrame(
        rows, schema={"topic": pl.String, "partitions": pl.Int64, "records": pl.Int64}
    )


def peek(
    topic: str,
    n: int = 10,
    *,
    bootstrap_servers: str | None = None,
    format: str = "json",
    config: Mapping[str, Any] | None = None,
    timeout: Duration = "10s",
) -> pl.DataFrame:
    """The last ``n`` records of each partition of ``topic`` (newest last), decoded.

    Columns: the decoded value's fields (JSON) or ``key``/``value`` (raw), then ``_partition``,
    ``_offset``, ``_timestamp``. The inferred schema is ``peek(...).schema``.
    """
    from confluent_kafka import Consumer, KafkaError, TopicPartition

    from streamnb.io.codecs.json import decode_ndjson, infer_json_schema

    if format not in ("json", "raw"):
        raise ConfigError(f"format={format!r}: peek() reads 'json' or 'raw'")
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
    try:
        assignment, expected = [], 0
        for p in meta.topics[topic].partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=5)
            if high > low:
                start = max(low, high - n)
                assignment.append(TopicPartition(topic, p, start))
                expected += high - start
        messages: list[Any] = []
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
    meta_cols = {
        "_partition": pl.Series([m.partition() for m in messages], dtype=pl.Int32),
        "_offset": pl.Series([m.offset() for m in messages], dtype=pl.Int64),
        "_timestamp": pl.Series([m.timestamp()[1] for m in messages], dtype=pl.Int64).cast(
            pl.Datetime("ms", "UTC")
        ),
    }
    if format == "raw":
        body = pl.DataFrame(
            {
                "key": pl.Series([m.key() for m in messages], dtype=pl.Binary),
                "value": pl.Series([m.value() for m in messages], dtype=pl.Binary),
            }
        )
        return body.with_columns(**meta_cols).sort("_timestamp", "_partition", "_offset")
    values = [m.value() or b"" for m in messages]
    schema = infer_json_schema(values)
    decoded, kept = decode_ndjson(values, schema, lambda i, doc, why: None)
    picked = pl.Series(kept, dtype=pl.Int64)
    return decoded.with_columns(**{k: v.gather(picked) for k, v in meta_cols.items()}).sort(
        "_timestamp", "_partition", "_offset"
    )


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
