"""The Kafka source's definition: :class:`KafkaSource`, what ``sn.from_kafka`` returns.

It checks the arguments and the topics at definition time, knows the topics' partitions (the
parts a consumer group shares out), and settles the output schema: the ``raw`` layout, the
Avro schema's columns, the given schema, or one learnt from the newest records. Reading is
:class:`~streamnb.io.sources.kafka.reader.KafkaReader`'s (``source.open(ctx)``).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import polars as pl

from streamnb.definitions.durations import Duration, to_ms
from streamnb.engine.core import Context
from streamnb.engine.source import Part, PartOwner, Source
from streamnb.exceptions import ConfigError
from streamnb.io.codecs import avro
from streamnb.io.codecs.framed import FramedDecoder
from streamnb.io.codecs.json import infer_json_schema
from streamnb.io.kafka.client import _metadata, redact, resolve_bootstrap, resolve_config
from streamnb.io.kafka.registry import redact_registry, resolve_registry
from streamnb.io.sources.kafka.decode import RAW_SCHEMA, SAMPLE
from streamnb.io.sources.kafka.reader import KafkaReader
from streamnb.io.sources.records import check_timestamp

FORMATS = ("json", "raw", "avro", "protobuf", "jsonschema")


class KafkaSource(Source):
    """A Kafka topic (or several) as an unbounded source. Create it with ``sn.from_kafka``."""

    registry: dict[str, Any] | None = None
    """The Schema Registry's client config, for the framed formats (``None``: not framed)."""

    def __init__(
        self,
        topic: str | Sequence[str],
        *,
        bootstrap_servers: str | None = None,
        format: str = "json",
        schema: Mapping[str, Any] | str | None = None,
        schema_registry: str | Mapping[str, Any] | None = None,
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
        self.config = dict(resolve_config(bootstrap_servers, config) or {})  # connect()'s too
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
        self.framed: FramedDecoder | None = None
        self.registry = self._registry(format, schema, schema_registry)
        if self.registry is not None:
            self.framed = FramedDecoder(format, self.registry, self.topics[0], schema)
            self.value_schema: pl.Schema | None = self.framed.schema
        elif format == "raw":
            self.value_schema = RAW_SCHEMA
        elif format == "avro":
            self.avro = avro.parse_schema(schema)
            self.value_schema = avro.polars_schema(self.avro)
        elif schema is not None:
            self.value_schema = pl.Schema(schema)  # type: ignore[arg-type]
        else:
            self.value_schema = self._sample_schema() or None
        self.time_column = timestamp or "timestamp"
        self.kafka_time = timestamp is None or (format == "raw" and timestamp == "timestamp")
        self.schema = self._output_schema()
        self.event_time = check_timestamp(
            self.time_column, self.schema, f"topic {self.topics[0]!r}"
        )

    @staticmethod
    def _registry(
        format: str, schema: Any, schema_registry: str | Mapping[str, Any] | None
    ) -> dict[str, Any] | None:
        """The registry the values are framed with: needed by ``protobuf`` and
        ``jsonschema``, and by ``avro`` unless it has ``schema=`` and no ``schema_registry=``
        (schemaless Avro, as before the registry: the environment's or ``connect()``'s
        registry does not change what an existing ``schema=`` query reads)."""
        if format not in ("avro", "protobuf", "jsonschema"):
            if schema_registry is not None:
                raise ConfigError(
                    f"schema_registry= is for format='avro', 'protobuf' or 'jsonschema', "
                    f"not {format!r}"
                )
            return None
        if format == "avro" and schema is not None and schema_registry is None:
            return None
        return resolve_registry(schema_registry, required=True, what=f"format={format!r}")

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
        from streamnb.io.kafka.client import peek

        sample = peek(
            self.topics[0],
            SAMPLE,
            bootstrap_servers=self.bootstrap,
            format="raw",
            config=self.config,
        )
        return infer_json_schema([v for v in sample["value"].to_list() if v is not None])

    def list_parts(self) -> list[Part]:
        """The topics' partitions, ``(topic, partition)``: what a consumer group shares out."""
        return [(t, p) for t, ps in self.partitions.items() for p in ps]

    def open(
        self,
        ctx: Context,
        *,
        owner: PartOwner | None = None,
        extra_topics: Sequence[str] = (),
        members: Sequence[KafkaSource] = (),
    ) -> KafkaReader:
        """Start reading (see :class:`KafkaReader`); ``owner``, ``extra_topics`` and
        ``members`` are for a runtime that manages the group's partitions itself (the
        worker)."""
        return KafkaReader(self, ctx, owner=owner, extra_topics=extra_topics, members=members)

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
            f"config={redact(self.config)}"
            + (f", schema_registry={redact_registry(self.registry)}" if self.registry else "")
            + ")"
        )
