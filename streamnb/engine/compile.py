"""Plan nodes to runtime operators: the one place that knows which operator runs which node."""

from __future__ import annotations

from streamnb.definitions.windows import Hopping, Session, Tumbling
from streamnb.engine import joins
from streamnb.engine.core import Context, Operator
from streamnb.engine.operators import EventTimeOperator, GroupByOperator, MapOperator, TableOperator
from streamnb.engine.sessions import SessionOperator
from streamnb.engine.source import Sink, Source
from streamnb.engine.windowing import WindowOperator
from streamnb.exceptions import ConfigError
from streamnb.plan import (
    EventTimeNode,
    GroupByNode,
    JoinNode,
    MapNode,
    Node,
    SinkNode,
    SourceNode,
    TableNode,
    UnionNode,
    WindowNode,
    partition_scope,
)


def build(node: Node, ctx: Context) -> Operator | None:
    """The operator that runs ``node`` (``None`` for nodes that only route data)."""
    if isinstance(node, (SourceNode, UnionNode)):
        return None
    if isinstance(node, MapNode):
        return MapOperator(
            node.fn, on_keys=node.on_keys, table_keys=node.table_keys, predicate=node.predicate
        )
    if isinstance(node, EventTimeNode):
        return EventTimeOperator(node.column, ctx)
    if isinstance(node, WindowNode):
        return _window(node, ctx)
    if isinstance(node, GroupByNode):
        return GroupByOperator(node.keys, node.aggregation, ctx.state_dir)
    if isinstance(node, TableNode):
        return TableOperator(node.keys)
    if isinstance(node, JoinNode):
        return _join(node, ctx)
    if isinstance(node, SinkNode):
        if not isinstance(node.sink, Sink):
            raise ConfigError(f"{node.sink!r} is not a sink (streamnb.engine.source.Sink)")
        return node.sink.open(ctx)
    raise ConfigError(f"the engine cannot run plan node {node.describe()!r}")


def runnable_source(node: SourceNode) -> Source:
    """The runnable source of ``node``."""
    if not isinstance(node.source, Source):
        raise ConfigError(f"{node.source!r} is not a source (streamnb.engine.source.Source)")
    return node.source


def _window(node: WindowNode, ctx: Context) -> Operator:
    if node.input_schema is not None and ctx.late.schema is None:
        ctx.late.schema = node.input_schema
    common = dict(
        scope=partition_scope(node),
        event_time=node.event_time,
        by=node.by,
        grace_ms=node.grace_ms,
        emit=node.emit,
        agg=node.aggregation,
        schema=node.schema,
        ctx=ctx,
    )
    spec = node.spec
    if isinstance(spec, Tumbling):
        return WindowOperator(size_ms=spec.size_ms, every_ms=spec.size_ms, **common)
    if isinstance(spec, Hopping):
        return WindowOperator(size_ms=spec.size_ms, every_ms=spec.every_ms, **common)
    if isinstance(spec, Session):
        return SessionOperator(gap_ms=spec.gap_ms, **common)
    raise ConfigError(f"unknown window {spec!r}")


def _join(node: JoinNode, ctx: Context) -> Operator:
    if node.kind == "stream_table":
        return joins.StreamTableJoin(node.on, node.how, node.schemas[1], ctx.state_dir)
    if node.kind == "table_table":
        return joins.TableTableJoin(node.on, node.how, node.schemas, ctx.state_dir)
    if node.kind == "window":
        return joins.WindowJoin(node.on, node.how, node.schemas)
    if node.times is None:
        raise ConfigError(f"an interval join needs event times on both inputs ({node.describe()})")
    return joins.IntervalJoin(
        on=node.on,
        how=node.how,
        within_ms=node.within_ms,
        grace_ms=node.grace_ms,
        times=node.times,
        schemas=node.schemas,
        ctx=ctx,
        scope=partition_scope(node),
    )
