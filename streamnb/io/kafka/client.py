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
from collections.abc import Mapping
from typing import Any

import polars as pl

from streamnb.definitions.durations import Duration, to_ms
from streamnb.exceptions import ConfigError, SinkError, SourceError

__all__ = ["client_config", "connect", "peek", "produce", "resolve_bootstrap", "topics"]

log = logging.getLogger("streamnb.kafka")

_defaults: dict[str, str] = {}  # "bootstrap": set by connect()

SECRET_KEYS = ("password", "secret", "sasl.oauthbearer.config", "ssl.key.pem")
"""Config keys whose values never appear in logs, reprs or errors."""


def connect(bootstrap_servers: str, *, timeout: Duration = "10s") -> list[str]:
    """Check that the broker answers and make it the default for later calls.

    Returns the topic names (excluding Kafka's internal ones).
    """
    names = sorted(
        t for t in _metadata(bootstrap_servers, None, timeout).topics if not t.startswith("__")
    )
    set_default_bootstrap(bootstrap_servers)
    return names


def set_default_bootstrap(bootstrap_servers: str) -> None:
    """Make ``bootstrap_servers`` the default of later calls, without contacting it."""
    _defaults["bootstrap"] = bootstrap_servers


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


def redact(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` with secret values replaced, for anything a person may read."""
    return {
        k: ("***" if any(s in k.lower() for s in SECRET_KEYS) else v) for k, v in config.items()
    }


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


def _metadata(
    bootstrap_servers: str | None, config: Mapping[str, Any] | None, timeout: Duration
) -> Any:
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    bootstrap = resolve_bootstrap(bootstrap_servers)
    seconds = to_ms(timeout, name="connect_timeout") / 1000
    admin = AdminClient(client_config(bootstrap, config, **{"socket.timeout.ms": 5000}))
    try:
        return admin.list_topics(timeout=seconds)
    except KafkaException as exc:
        raise SourceError(
            f"cannot reach Kafka at {bootstrap} within {seconds:g}s "
            f"({exc.args[0].str() if exc.args else exc}); is the broker running? "
            "(scripts/kafka-local start starts one on this machine)"
        ) from None


def topics(
    bootstrap_servers: str | None = None,
    *,
    config: Mapping[str, Any] | None = None,
    timeout: Duration = "10s",
) -> pl.DataFrame:
    """The topics of the cluster: name, partitions, and total records (end − start offsets)."""
    from confluent_kafka import Consumer, TopicPartition

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
    **options: Any,
) -> None:
    """``producer.produce(...)``, waiting while the local queue is full (deliveries drain it);
    a record the client refuses (too large, an unknown partition, a fenced producer) raises
    :class:`SinkError` naming the topic."""
    from confluent_kafka import KafkaException

    if key is not None:
        options["key"] = key
    while True:
        try:
            producer.produce(topic, value, **options)
            return
        except BufferError:
            producer.poll(0.05)
        except KafkaException as exc:
            error = exc.args[0] if exc.args else exc
            reason = error.str() if hasattr(error, "str") else str(exc)
            raise SinkError(f"cannot write to {topic}: {reason}") from exc
