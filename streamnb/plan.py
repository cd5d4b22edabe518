"""The logical plan: pure data that a ``Stream`` builds and the engine compiles and runs.

A :class:`Plan` is a frozen tree of nodes plus what is known about its output (columns, keys,
event time). Nodes hold definitions only (expressions, window specs, aggregations, source and
sink definitions); they build nothing. :mod:`streamnb.engine.compile` turns each node into its
runtime operator, so one plan can be run any number of times, by the notebook's query, by a
worker's tasks, or by a test.

Sources and sinks are defined in the io layer, above the engine: the plan knows them only by
the few attributes below (:class:`SourceDefinition`, :class:`SinkDefinition`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import polars as pl

from streamnb.definitions.aggregates import Aggregation
from streamnb.definitions.eventtime import EventTime
from streamnb.definitions.windows import WindowSpec
from streamnb.types import Emit, How, JoinKind

Transform = Callable[[Any], Any]
"""A per-record transformation of a batch (``pl.DataFrame`` at run time, ``pl.LazyFrame`` when
the output schema is worked out)."""


class SourceDefinition(Protocol):
    """What the plan knows of a source (the engine's ``Source`` interface adds reading)."""

    @property
    def name(self) -> str: ...

    @property
    def schema(self) -> pl.Schema | None: ...

    @property
    def bounded(self) -> bool: ...

    @property
    def event_time(self) -> EventTime | None: ...

    def partition_scopes(self) -> frozenset[tuple[object, ...]]: ...


class SinkDefinition(Protocol):
    """What the plan knows of a sink (the engine's ``Sink`` interface adds writing)."""

    def describe(self) -> str: ...


@dataclass(frozen=True, eq=False)
class Node:
    """A plan node; ``inputs`` are the nodes feeding it."""

    inputs: tuple[Node, ...]

    def describe(self) -> str:
        return type(self).__name__.removesuffix("Node").lower()


@dataclass(frozen=True, eq=False)
class SourceNode(Node):
    source: SourceDefinition

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
    opaque: bool = False
    """User code (``map_batches``) that may drop or add records: streamnb's hidden columns
    cannot follow them."""

    def describe(self) -> str:
        return self.label


@dataclass(frozen=True, eq=False)
class EventTimeNode(Node):
    column: str


@dataclass(frozen=True, eq=False)
class WindowNode(Node):
    spec: WindowSpec
    event_time: EventTime
    by: tuple[str, ...]
    grace_ms: int
    emit: Emit
    aggregation: Aggregation
    schema: pl.Schema = field(repr=False)
    input_schema: pl.Schema | None = field(repr=False, default=None)

    def describe(self) -> str:
        return f"window[{self.spec!r}, by={list(self.by)}, emit={self.emit}]"


def window_output_keys(by: tuple[str, ...], emit: Emit) -> tuple[str, ...] | None:
    """What ``emit`` means for a window's output, for every consumer of it (the result table,
    sinks, live tables and charts read ``Plan.keys``, never ``emit``).

    ``"final"``: an append stream, one row per window when it closes (no keys).
    ``"update"``: an upsert changelog keyed by the window and its ``by`` keys; each batch's
    changed rows replace theirs, and a session merged into another is deleted.
    """
    return ("window_start", "window_end", *by) if emit == "update" else None


@dataclass(frozen=True, eq=False)
class GroupByNode(Node):
    keys: tuple[str, ...]
    aggregation: Aggregation


@dataclass(frozen=True, eq=False)
class JoinNode(Node):
    """``inputs = (left, right)``; ``kind`` is stream_table, table_table, interval or window."""

    kind: JoinKind
    on: tuple[str, ...]
    how: How
    schemas: tuple[pl.Schema, pl.Schema] = field(repr=False)
    times: tuple[EventTime, EventTime] | None = None
    within_ms: int = 0
    grace_ms: int = 0

    def describe(self) -> str:
        return f"join[{self.kind}, on={list(self.on)}, how={self.how}]"


@dataclass(frozen=True, eq=False)
class TableNode(Node):
    """A table source: rows are upserts of their key, tombstones delete it."""

    keys: tuple[str, ...]


@dataclass(frozen=True, eq=False)
class UnionNode(Node):
    pass


@dataclass(frozen=True, eq=False)
class SinkNode(Node):
    """Rows pass through unchanged and are also written to ``sink``."""

    sink: SinkDefinition

    def describe(self) -> str:
        return self.sink.describe()


@dataclass(frozen=True)
class Plan:
    """A query as data: the tree (its output at ``root``) and what is known of its output.

    Attributes
    ----------
    root
        The node whose output is the query's output.
    schema
        The output columns, when known at definition time.
    event_time
        The output's own event-time column (a plain stream's), if any.
    bounded
        True when every source ends by itself.
    keys
        For tables (upsert changelogs: running aggregates, ``emit="update"`` windows): the key
        columns of the output.
    result_time
        The event time of window results, for the watermark in ``status()``.
    windowed
        For ``emit="final"`` window results: their ``by`` keys (a window join needs them).
    """

    root: Node
    schema: pl.Schema | None
    event_time: EventTime | None
    bounded: bool
    keys: tuple[str, ...] | None = None
    result_time: EventTime | None = None
    windowed: tuple[str, ...] | None = None

    @property
    def status_time(self) -> EventTime | None:
        """The event time the query's watermark is shown in."""
        return self.result_time or self.event_time

    def then(self, root: Node, **known: Any) -> Plan:
        """This plan with ``root`` on top (and any of the attributes above changed)."""
        return replace(self, root=root, **known)

    def nodes(self) -> list[Node]:
        return list(walk(self.root))

    def sources(self) -> list[SourceDefinition]:
        """The source definitions, left to right."""
        return [n.source for n in source_nodes(self.root)]

    def sinks(self) -> list[SinkDefinition]:
        return [n.sink for n in self.nodes() if isinstance(n, SinkNode)]

    def explain(self) -> str:
        return explain(self.root)


def walk(root: Node) -> Iterator[Node]:
    """``root`` and the nodes below it, depth first, inputs left to right."""
    yield root
    for child in root.inputs:
        yield from walk(child)


def source_nodes(root: Node) -> list[SourceNode]:
    """The source leaves under ``root``, left to right."""
    return [n for n in walk(root) if isinstance(n, SourceNode)]


def partition_scope(node: Node) -> frozenset[tuple[object, ...]]:
    """The partition scopes of the sources below ``node``: its watermark waits for these."""
    return frozenset(scope for n in source_nodes(node) for scope in n.source.partition_scopes())


def explain(node: Node, depth: int = 0) -> str:
    """A readable outline of the plan, the sink at the top."""
    lines = ["  " * depth + node.describe()]
    lines += [explain(child, depth + 1) for child in node.inputs]
    return "\n".join(lines)
