"""``sn.from_kafka``: records from Kafka topics, decoded per batch, watermarked per partition.

Messages are fetched with ``Consumer.consume(num_messages=...)`` (never one ``poll`` per
record), their values joined and decoded by one ``pl.read_ndjson`` call; a message that does
not decode goes to the error side output with its bytes, topic, partition and offset. Each
record carries its partition (hidden), so windows keep a watermark per partition and take the
minimum over partitions that are not idle.

A runtime that shares the partitions out itself (the worker: one task per partition, offsets
committed with the state) opens the source with an owner; :class:`KafkaReader` says what it
then gets.

Modules
-------
source
    :class:`KafkaSource`, the definition: arguments, topics and partitions, the schema.
reader
    :class:`KafkaReader`, one read: assignment, the owner API, reading, offsets and lag.
commits
    :class:`~.commits.GroupCommits`: a group's offsets, committed per batch and, bounded by
    the stop deadline, at close; what is not committed is reported.
decode
    :class:`~.decode.MessageDecoder`: one fetch of messages into a frame, errors reported.
"""

from __future__ import annotations

from streamnb.io.sources.kafka.reader import KafkaReader
from streamnb.io.sources.kafka.source import KafkaSource

__all__ = ["KafkaReader", "KafkaSource"]
