"""The worker's topics and client settings: what must exist before its tasks start.

Before the first record is read, :func:`ensure_topics` checks that every Kafka sink's topic
(and dead-letter topic) exists, since a record for a missing topic would fail only at delivery,
and creates the worker's internal topics (the changelog, the repartition topic) with as many
partitions as the input topic, keeping them if they exist. :func:`producer_only` strips a
source's consumer settings for the worker's producer and admin client. A :class:`Purger`
deletes the repartition records that downstream tasks have checkpointed past.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from typing import Any

from streamnb.exceptions import ConfigError, SourceError
from streamnb.io.kafka.client import client_config
from streamnb.io.sinks.kafka import KafkaSink
from streamnb.io.sources.kafka import KafkaSource
from streamnb.plan import Plan

CHANGELOG_CONFIG = {"cleanup.policy": "compact", "segment.bytes": str(2**26)}
"""The changelog keeps the latest records of each key (a snapshot's chunks)."""

REPARTITION_CONFIG = {"cleanup.policy": "delete", "retention.ms": "-1"}
"""The repartition topic keeps what downstream tasks have not checkpointed past (they resume
from their commits); the :class:`Purger` deletes the rest, so nothing expires unread."""

log = logging.getLogger("streamnb.worker")

_CONSUMER_ONLY = (
    "group.",
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "max.poll.interval.ms",
    "auto.offset.reset",
    "enable.auto.",
    "auto.commit.",
    "isolation.level",
    "fetch.",
    "queued.",
    "partition.assignment.strategy",
    "enable.partition.eof",
)


def producer_only(config: Mapping[str, Any]) -> dict[str, Any]:
    """The source's client settings without the consumer's own (librdkafka warns on them)."""
    return {k: v for k, v in config.items() if not k.startswith(_CONSUMER_ONLY)}


def ensure_topics(
    plan: Plan,
    source: KafkaSource,
    internal: Mapping[str, Mapping[str, str]],
    partitions: int,
) -> None:
    """Check that the output topics of ``plan`` exist (:class:`ConfigError` naming the first
    missing one), and create the ``internal`` topics (name → topic config) with
    ``partitions`` partitions where they do not exist yet."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient(client_config(source.bootstrap, producer_only(source.config)))
    try:
        known = admin.list_topics(timeout=30).topics
    except KafkaException as exc:
        raise SourceError(f"cannot list the topics at {source.bootstrap}: {exc}") from exc
    for sink in plan.sinks():
        if isinstance(sink, KafkaSink):
            for name in filter(None, (sink.topic, sink.dlq)):
                if name not in known:
                    raise ConfigError(
                        f"output topic {name!r} does not exist at {sink.bootstrap}: "
                        "create it before starting the worker"
                    )
    topics = [
        NewTopic(name, num_partitions=partitions, replication_factor=-1, config=dict(config))
        for name, config in internal.items()
    ]
    for name, future in admin.create_topics(topics, request_timeout=30).items():
        try:
            future.result(30)
        except Exception as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc) and "already exists" not in str(exc):
                raise SourceError(f"cannot create topic {name}: {exc}") from exc


class Purger:
    """Deletes the records of ``topic`` (a repartition topic) below the offsets its downstream
    tasks have committed: a task restored on any worker resumes from its commit, so nothing
    before it is read again (Kafka Streams purges its repartition topics the same way).

    Deletion is asynchronous (the admin request runs while the worker goes on); a failure is
    logged and retried with the next checkpoint's offsets."""

    def __init__(self, source: KafkaSource, topic: str) -> None:
        from confluent_kafka.admin import AdminClient

        self.topic = topic
        self._admin = AdminClient(client_config(source.bootstrap, producer_only(source.config)))
        self._asked: dict[int, int] = {}  # partition -> offset already asked to delete below

    def purge(self, committed: Mapping[int, int]) -> None:
        """Delete below ``committed`` (partition -> offset) where it moved since the last call."""
        from confluent_kafka import TopicPartition

        wanted = [
            TopicPartition(self.topic, p, offset)
            for p, offset in committed.items()
            if offset > self._asked.get(p, 0)
        ]
        if not wanted:
            return
        for tp in wanted:
            self._asked[tp.partition] = tp.offset
        for tp, future in self._admin.delete_records(wanted, request_timeout=30).items():
            future.add_done_callback(functools.partial(self._done, tp))

    def _done(self, tp: Any, future: Any) -> None:
        error = future.exception()
        if error is not None:  # asked again with the next checkpoint's offsets
            log.warning("cannot purge %s/%d below %d: %s", tp.topic, tp.partition, tp.offset, error)
            self._asked.pop(tp.partition, None)
