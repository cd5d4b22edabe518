"""The logical plan: an immutable tree of nodes that a ``Stream`` builds and an executor runs.

Every node knows how to build its runtime operator; the tree itself never changes once made,
so one ``Stream`` can be started any number of times.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from streamnb.aggregates import Aggregation
from streamnb.engine.core import Context, Operator
from streamnb.engine.eventtime import EventTime
from streamnb.engine.operators import (
    EventTimeOperator,
    GroupByOperator,
    MapOperator,
    TableOperator,
    Transform,
)
from streamnb.engine.sessions import SessionOperator
from streamnb.engine.windowing import WindowOperator
from streamnb.sinks.parquet import ParquetSink
from streamnb.sources.base import Source
from streamnb.windows import Hopping, Session, Tumbling, WindowSpec


@dataclass(frozen=True, eq=False)
class Node:
    """A plan node; ``inputs`` are the nodes feeding it."""

    inputs: tuple[Node, ...]

    def build(self, ctx: Context) -> Operator | None:
        """The runtime operator (``None`` for nodes that only route data)."""
        raise NotImplementedError

    def describe(self) -> str:
        return type(self).__name__.removesuffix("Node").lower()


def nodes(root: Node) -> list[Node]:
    """``root`` and every node below it."""
    found, stack = [], [root]
    while stack:
        node = stack.pop()
        found.append(node)
        stack.extend(node.inputs)
    return found


def partition_scope(node: Node) -> frozenset[tuple[object, ...]]:
    """The partition scopes of the sources below ``node``: its watermark waits for these."""
    return frozenset(
        scope
        for n in nodes(node)
        if isinstance(n, SourceNode)
        for scope in n.source.partition_scopes()
    )


@dataclass(frozen=True, eq=False)
class SourceNode(Node):
    source: Source

    def build(self, ctx: Context) -> Operator | None:
        return None

    def describe(self) -> str:
        return f"source[{self.source.name}]"


@dataclass(frozen=True, eq=False)
class MapNode(Node):
    """A per-record transformation (filter, with_columns, select, ..., map_batches)."""

    label: str
    fn: Transform
    on_keys: Transform | None = None
    table_keys: tuple[str, ...] | None = None
    predicate: pl.Expr | None = None

    def build(self, ctx: Context) -> Operator:
        return MapOperator(
            self.fn, on_keys=self.on_keys, table_keys=self.table_keys, predicate=self.predicate
        )

    def describe(self) -> str:
        return self.label


@dataclass(frozen=True, eq=False)
class EventTimeNode(Node):
    column: str

    def build(self, ctx: Context) -> Operator:
        return EventTimeOperator(self.column, ctx)


@dataclass(frozen=True, eq=False)
class WindowNode(Node):
    spec: WindowSpec
    event_time: EventTime
    by: tuple[str, ...]
    grace_ms: int
    emit: str
    aggregation: Aggregation
    schema: pl.Schema = field(repr=False)
    input_schema: pl.Schema | None = field(repr=False, default=None)

    def build(self, ctx: Context) -> Operator:
        if self.input_schema is not None and ctx.late.schema is None:
            ctx.late.schema = self.input_schema
        common = dict(
            scope=partition_scope(self),
            event_time=self.event_time,
            by=self.by,
            grace_ms=self.grace_ms,
            emit=self.emit,
            agg=self.aggregation,
            schema=self.schema,
            ctx=ctx,
        )
        if isinstance(self.spec, Tumbling):
            return WindowOperator(size_ms=self.spec.size_ms, every_ms=self.spec.size_ms, **common)
        if isinstance(self.spec, Hopping):
            return WindowOperator(size_ms=self.spec.size_ms, every_ms=self.spec.every_ms, **common)
        if isinstance(self.spec, Session):
            return SessionOperator(gap_ms=self.spec.gap_ms, **common)
        raise TypeError(f"unknown window {self.spec!r}")

    def describe(self) -> str:
        return f"window[{self.spec!r}, by={list(self.by)}, emit={self.emit}]"


@dataclass(frozen=True, eq=False)
class GroupByNode(Node):
    keys: tuple[str, ...]
    aggregation: Aggregation

    def build(self, ctx: Context) -> Operator:
        return GroupByOperator(self.keys, self.aggregation)


@dataclass(frozen=True, eq=False)
class ParquetNode(Node):
    path: Path
    rows_per_file: int
    flush_seconds: float

    def build(self, ctx: Context) -> Operator:
        return ParquetSink(
            self.path, rows_per_file=self.rows_per_file, flush_seconds=self.flush_seconds
        )

    def describe(self) -> str:
        return f"to_parquet[{self.path}]"


@dataclass(frozen=True, eq=False)
class KafkaSinkNode(Node):
    topic: str
    bootstrap: str
    format: str
    key: tuple[str, ...]
    config: Mapping[str, Any] = field(repr=False)
    dlq: str | None = None
    avro_schema: Any = field(default=None, repr=False)
    headers: Mapping[str, str] | None = None

    def build(self, ctx: Context) -> Operator:
        from streamnb.sinks.kafka import KafkaSink

        return KafkaSink(
            self.topic,
            bootstrap=self.bootstrap,
            format=self.format,
            key=self.key,
            config=self.config,
            dlq=self.dlq,
            ctx=ctx,
            avro_schema=self.avro_schema,
            headers=self.headers,
        )

    def describe(self) -> str:
        return f"to_kafka[{self.topic}]"


@dataclass(frozen=True, eq=False)
class JoinNode(Node):
    """``inputs = (left, right)``; ``kind`` is stream_table, table_table, interval or window."""

    kind: str
    on: tuple[str, ...]
    how: str
    schemas: tuple[pl.Schema, pl.Schema] = field(repr=False)
    times: tuple[EventTime, EventTime] | None = None
    within_ms: int = 0
    grace_ms: int = 0

    def build(self, ctx: Context) -> Operator:
        from streamnb.engine import joins

        if self.kind == "stream_table":
            return joins.StreamTableJoin(self.on, self.how, self.schemas[1])
        if self.kind == "table_table":
            return joins.TableTableJoin(self.on, self.how, self.schemas)
        if self.kind == "window":
            return joins.WindowJoin(self.on, self.how, self.schemas)
        assert self.times is not None
        return joins.IntervalJoin(
            on=self.on,
            how=self.how,
            within_ms=self.within_ms,
            grace_ms=self.grace_ms,
            times=self.times,
            schemas=self.schemas,
            ctx=ctx,
            scope=partition_scope(self),
        )

    def describe(self) -> str:
        return f"join[{self.kind}, on={list(self.on)}, how={self.how}]"


@dataclass(frozen=True, eq=False)
class TableNode(Node):
    """A table source: rows are upserts of their key, tombstones delete it."""

    keys: tuple[str, ...]

    def build(self, ctx: Context) -> Operator:
        return TableOperator(self.keys)


@dataclass(frozen=True, eq=False)
class UnionNode(Node):
    def build(self, ctx: Context) -> Operator | None:
        return None


def sources(node: Node) -> list[SourceNode]:
    """The source leaves under ``node``, left to right."""
    if isinstance(node, SourceNode):
        return [node]
    return [s for child in node.inputs for s in sources(child)]


def explain(node: Node, depth: int = 0) -> str:
    """A readable outline of the plan, the sink at the top."""
    lines = ["  " * depth + node.describe()]
    lines += [explain(child, depth + 1) for child in node.inputs]
    return "\n".join(lines)
