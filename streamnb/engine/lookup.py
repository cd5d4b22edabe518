"""The live keyed state of a running query: ``Query.state()`` and ``Query.windows()``.

A query's stateful operator (the aggregate or window nearest its output) is read under its
pipeline's lock (:attr:`~streamnb.engine.executor.Pipeline.lock`), which the query's thread
holds while a batch goes through: a reader sees the state between two batches, never half-way
through one. Nothing is copied per batch; a request pays for what it reads: a hash lookup in
keyed state for a full ``key=``, a filter of the held rows otherwise (sessions, a partial
key), the open windows for ``windows()``. A worker's tasks are read one after the other, each
between its own batches (a key lives in one task).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import polars as pl

from streamnb.columns import SESSION_END, WINDOW_START
from streamnb.engine.executor import Pipeline, Step
from streamnb.engine.operators import GroupByOperator
from streamnb.engine.sessions import SessionOperator
from streamnb.engine.state import KeyedState, key_hashes
from streamnb.engine.windowing import WindowOperator, WindowOperatorBase, started
from streamnb.exceptions import ConfigError

Key = Any
"""``key=``: a value (one key column), a tuple (every key column, in order) or a dict (some or
all key columns by name)."""

Stateful = GroupByOperator | WindowOperator | SessionOperator


def stateful_step(pipeline: Pipeline) -> Step | None:
    """The query's stateful operator: the aggregate or window nearest the output."""
    for step in pipeline.steps:  # the root first
        if isinstance(step.op, (GroupByOperator, WindowOperator, SessionOperator)):
            return step
    return None


def _require(pipeline: Pipeline, name: str) -> Stateful:
    step = stateful_step(pipeline)
    if step is None:
        raise ConfigError(
            f"query {name!r} keeps no keyed state: state() and windows() need a "
            "group_by(...).agg(...) or a window(...).agg(...)"
        )
    assert isinstance(step.op, (GroupByOperator, WindowOperator, SessionOperator))
    return step.op


def _keys_of(op: Stateful) -> list[str]:
    return list(op.keys) if isinstance(op, GroupByOperator) else list(op.by)


# -- key= ------------------------------------------------------------------------------------
def key_filter(key: Key, keys: Sequence[str]) -> dict[str, Any] | None:
    """``key=`` as ``{key column: value}`` (``None``: every key); a clear error naming what
    does not fit the state's key columns ``keys``."""
    if key is None:
        return None
    if not keys:
        raise ConfigError("the state has no key columns (no by= / group_by keys): drop key=")
    if isinstance(key, Mapping):
        unknown = [k for k in key if k not in keys]
        if unknown:
            raise ConfigError(
                f"key= names {unknown[0]!r}, which is not a key column; the key columns are "
                f"{list(keys)}"
            )
        return dict(key)
    if isinstance(key, tuple):
        if len(key) != len(keys):
            raise ConfigError(
                f"key={key!r} gives {len(key)} value(s) for the {len(keys)} key columns "
                f"{list(keys)}"
            )
        return dict(zip(keys, key, strict=True))
    if len(keys) > 1:
        raise ConfigError(
            f"the state has several key columns {list(keys)}: pass key= as a tuple or a dict"
        )
    return {keys[0]: key}


def _key_frame(wanted: dict[str, Any], schema: pl.Schema) -> pl.DataFrame:
    """The wanted key values as a one-row frame of the state's own key types."""
    columns = []
    for name, value in wanted.items():
        dtype = schema[name]
        try:
            columns.append(pl.Series(name, [value]).cast(dtype, strict=True))
        except (pl.exceptions.PolarsError, TypeError, ValueError) as exc:
            raise ConfigError(
                f"key value {value!r} for {name!r} does not fit its type {dtype}: {exc}"
            ) from None
    return pl.DataFrame(columns)


def _select(frame: pl.DataFrame | None, wanted: dict[str, Any] | None) -> pl.DataFrame | None:
    """The rows of ``frame`` with the wanted keys (a filter; every row without ``key=``)."""
    if frame is None or wanted is None:
        return frame
    keys = _key_frame(wanted, frame.schema)
    return frame.join(keys, on=list(wanted), how="semi", nulls_equal=True)


def _lookup(
    store: KeyedState, keys: Sequence[str], wanted: dict[str, Any] | None
) -> pl.DataFrame | None:
    """The rows of a keyed state with the wanted keys: a hash lookup when every key column is
    given, else a filter (every row without ``key=``)."""
    frame_schema = store.rows.empty().schema if store.rows.names else None
    if frame_schema is None or not len(store):
        return None
    if wanted is not None and set(wanted) == set(keys):
        probe = _key_frame({k: wanted[k] for k in keys}, frame_schema)
        found = store.lookup(probe, key_hashes(probe, list(keys)))
        return found.rows if found.rows.height else None
    return _select(_detach(store.frame()), wanted)


def _detach(frame: pl.DataFrame | None) -> pl.DataFrame | None:
    """A copy of ``frame`` that no later batch writes into (keyed state updates its columns in
    place; a gather makes new buffers)."""
    if frame is None:
        return None
    return frame[np.arange(frame.height)]


# -- the stateful operator's rows --------------------------------------------------------------
def _partials(op: Stateful, wanted: dict[str, Any] | None) -> pl.DataFrame | None:
    """The partial aggregates the operator holds (of the wanted keys), with hidden columns."""
    keys = _keys_of(op)
    if isinstance(op, GroupByOperator):
        if op.store is not None:
            return _lookup(op.store, keys, wanted)
        return _select(op.whole, wanted)
    if isinstance(op, WindowOperator):
        if op.stores is not None:
            frames = []
            for start, store in sorted(op.stores.items()):
                rows = _lookup(store, keys, wanted)
                if rows is not None:
                    frames.append(started(rows, start))
            return pl.concat(frames, how="vertical_relaxed") if frames else None
        return _select(op.state, wanted)
    sessions = op.sessions.frame() if op.indexed else op.whole
    return _select(sessions, wanted)


def _window_columns(op: WindowOperatorBase) -> tuple[pl.Expr, pl.Expr]:
    """``window_start`` and ``window_end`` of a window operator's partial rows, as Int64."""
    if isinstance(op, SessionOperator):
        return pl.col(WINDOW_START), pl.col(SESSION_END) + op.gap
    assert isinstance(op, WindowOperator)
    return pl.col(WINDOW_START), pl.col(WINDOW_START) + op.size


def _rows_expr(op: Stateful) -> pl.Expr:
    count = op.agg.count_column()
    return (pl.col(count) if count is not None else pl.lit(None)).cast(pl.Int64).alias("rows")


def _empty_partials(op: Stateful) -> pl.DataFrame:
    """No rows: the operator's output columns (for an empty state)."""
    if isinstance(op, GroupByOperator):
        return pl.DataFrame()
    return op.schema.to_frame()


def state_frame(pipelines: Iterable[Pipeline], name: str, key: Key = None) -> pl.DataFrame:
    """``query.state(key=...)`` over one pipeline, or a worker's tasks (each read between its
    own batches; tasks without keyed state, upstream of a repartition, are passed over):
    current aggregates per key, or the open windows' partial results. No pipeline at all (a
    worker before its partitions are assigned): an empty frame."""
    pipelines = list(pipelines)
    frames = []
    op: Stateful | None = None
    for pipeline in pipelines:
        with pipeline.lock:
            step = stateful_step(pipeline)
            if step is None:
                continue
            assert isinstance(step.op, (GroupByOperator, WindowOperator, SessionOperator))
            op = step.op
            partials = _partials(op, key_filter(key, _keys_of(op)))
            if partials is not None and partials.height:
                frames.append(_finals(op, _detach(partials)))
    if op is None:
        if not pipelines:
            return pl.DataFrame()
        _require(pipelines[0], name)  # raises: no keyed state
    assert op is not None
    keys = _keys_of(op)
    key_filter(key, keys)  # a bad key= raises, even with nothing held
    if not frames:
        return _empty_partials(op)
    out = pl.concat(frames, how="vertical_relaxed")
    order = keys if isinstance(op, GroupByOperator) else ["window_end", "window_start", *keys]
    return out.sort(order, nulls_last=True) if order else out


def _finals(op: Stateful, partials: pl.DataFrame | None) -> pl.DataFrame:
    assert partials is not None
    if isinstance(op, GroupByOperator):
        return partials.select(*op.keys, *op.agg.final_exprs())
    start, end = _window_columns(op)
    return partials.select(
        op.et.to_dtype(start).alias("window_start"),
        op.et.to_dtype(end).alias("window_end"),
        *op.by,
        *op.agg.final_exprs(),
    )


def windows_frame(pipelines: Iterable[Pipeline], name: str, key: Key = None) -> pl.DataFrame:
    """``query.windows()``: the open windows, ``window_start, window_end, closes_at, rows``
    and the keys, the next to close first (over a worker's tasks as :func:`state_frame`)."""
    pipelines = list(pipelines)
    frames = []
    op: WindowOperatorBase | None = None
    for pipeline in pipelines:
        with pipeline.lock:
            step = stateful_step(pipeline)
            if step is None:
                continue
            if not isinstance(step.op, WindowOperatorBase):
                raise ConfigError(
                    f"query {name!r} has no windows (its state is a running aggregate: see state())"
                )
            op = step.op
            assert isinstance(op, (WindowOperator, SessionOperator))
            partials = _detach(_partials(op, key_filter(key, op.by)))
            if partials is not None and partials.height:
                start, end = _window_columns(op)
                frames.append(
                    partials.select(
                        op.et.to_dtype(start).alias("window_start"),
                        op.et.to_dtype(end).alias("window_end"),
                        op.et.to_dtype(end + op.grace).alias("closes_at"),
                        _rows_expr(op),
                        *op.by,
                    )
                )
    if op is None:
        if not pipelines:
            return pl.DataFrame()
        _require(pipelines[0], name)  # raises: no keyed state
    assert op is not None
    key_filter(key, op.by)  # a bad key= raises, even with nothing held
    if not frames:
        schema = op.schema
        return pl.DataFrame(
            schema={
                "window_start": schema["window_start"],
                "window_end": schema["window_end"],
                "closes_at": schema["window_end"],
                "rows": pl.Int64,
                **{k: schema[k] for k in op.by},
            }
        )
    return pl.concat(frames, how="vertical_relaxed").sort(
        ["closes_at", "window_start", *op.by], nulls_last=True
    )
