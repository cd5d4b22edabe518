"""A query's inputs as the worker reads them: the stream topics its tasks share out, and the
global tables every task holds (Kafka Streams' model).

* **Streams**: every Kafka source that is not a ``table_from_kafka``. One consumer reads them
  all in the worker's group, so librdkafka's range assignor gives one member partition p of
  every topic. When their topics are *co-partitioned* (the same number of partitions), task p
  reads partition p of each and merges them by event time. Records that must meet in a task
  (a join's key, the key of a window below a join) must so be keyed alike by their producers,
  as Kafka Streams requires of the inputs of a join. Topics that are not co-partitioned are
  read *apart*: a task per partition of each topic, and where they meet in state, both sides
  are repartitioned by the join keys (:mod:`.topology`).
* **Global tables**: each ``table_from_kafka`` is read whole by every worker (no group), to
  the end offsets it had at the start before any task processes a record, then on; every task
  holds the whole table, as a Kafka Streams GlobalKTable. Their join state is never
  checkpointed: a restored task gets the table as the worker holds it now.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from streamnb.columns import DELETE
from streamnb.engine.core import Context
from streamnb.exceptions import ConfigError
from streamnb.io.sources.kafka import KafkaReader, KafkaSource
from streamnb.plan import Plan, source_nodes


@dataclass(frozen=True)
class Inputs:
    """The Kafka sources of a query: streams (in the plan's order) and global tables."""

    streams: list[KafkaSource]
    tables: list[KafkaSource]

    @property
    def topics(self) -> list[str]:
        """The stream topics, in order."""
        return [t for s in self.streams for t in s.topics]

    @property
    def counts(self) -> dict[str, int]:
        """The partitions of each stream topic."""
        return {t: len(s.partitions[t]) for s in self.streams for t in s.topics}

    @property
    def partitions(self) -> int:
        """The partitions of the widest stream topic: the tasks' partition numbers, and the
        partitions of the repartition and changelog topics."""
        return max(self.counts.values())

    @property
    def copartitioned(self) -> bool:
        """Whether every stream topic has the same number of partitions."""
        return len(set(self.counts.values())) == 1

    @property
    def groups(self) -> list[tuple[str, ...]]:
        """The topics an input task reads partition p of: all of them when co-partitioned,
        else one each."""
        if self.copartitioned:
            return [tuple(self.topics)]
        return [(t,) for t in self.topics]

    def not_copartitioned(self, why: str) -> ConfigError:
        """The error for inputs that are not co-partitioned and cannot be repartitioned."""
        listed = ", ".join(f"{t} ({n})" for t, n in self.counts.items())
        return ConfigError(
            f"the query's topics are not co-partitioned: {listed} partitions, and the worker "
            f"cannot repartition them: {why}. Copy one into a topic with as many partitions "
            "as the other"
        )


def is_table(source: object) -> bool:
    """Whether ``source`` is a ``table_from_kafka`` (read whole, as a global table)."""
    return isinstance(source, KafkaSource) and source.key_column is not None


def inputs(plan: Plan) -> Inputs:
    """The inputs of ``plan``; :class:`ConfigError` if the worker cannot run them as tasks: a
    source that is not Kafka, no stream topic, or a topic read twice."""
    streams: list[KafkaSource] = []
    tables: list[KafkaSource] = []
    for node in source_nodes(plan.root):
        source = node.source
        if not isinstance(source, KafkaSource):
            raise ConfigError(
                "the worker runs a query as tasks when its sources are Kafka topics; this one "
                f"reads {getattr(source, 'name', source)!r}"
            )
        (tables if is_table(source) else streams).append(source)
    if not streams:
        raise ConfigError(
            "the worker needs a stream of a Kafka topic; this query reads tables only"
        )
    counts = {t: len(s.partitions[t]) for s in streams for t in s.topics}
    if len(counts) < sum(len(s.topics) for s in streams):
        raise ConfigError(f"the query reads a topic twice ({sorted(counts)}): read it once")
    return Inputs(streams, tables)


class GlobalTable:
    """A table topic that this worker reads whole: its reader, and its rows as of now for the
    tasks made later (kept as the changes read, compacted when a task asks)."""

    def __init__(self, source: KafkaSource, ctx: Context) -> None:
        self.source = source
        self.reader: KafkaReader = source.open(ctx)
        self.key = source.key_column
        self._changes: list[pl.DataFrame] = []

    def read(self, max_records: int) -> pl.DataFrame | None:
        """The next changes (rows, tombstones with ``DELETE``), remembered for :meth:`rows`."""
        rows = self.reader.read(max_records, 0.0)
        if rows is None or rows.height == 0:
            return None
        self._changes.append(rows)
        return rows

    def loaded(self) -> bool:
        """Read up to the end offsets it had at the start."""
        return self.reader.caught_up()

    def rows(self) -> pl.DataFrame | None:
        """The table now: the last change of each key, tombstones and deletes dropped."""
        if not self._changes:
            return None
        changes = pl.concat(self._changes, how="diagonal_relaxed")
        latest = changes.unique(subset=[self.key], keep="last", maintain_order=True)
        if DELETE in latest.columns:
            latest = latest.filter(~pl.col(DELETE).fill_null(False))
        self._changes = [latest]
        return latest

    def close(self) -> None:
        self.reader.close()
