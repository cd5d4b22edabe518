"""The fluent API: ``Stream`` (lazy, immutable) and the builders it returns.

Every method returns a new object wrapping a larger plan; nothing runs until ``collect()`` or
``start()``. Definitions are checked against the schema at once, so a misspelt column or a
bad duration fails where it is written, not minutes later in a background thread.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, cast

import polars as pl

from streamnb import frames
from streamnb.capture import capture
from streamnb.columns import hidden, visible_schema
from streamnb.definitions.aggregates import Aggregation, column_error
from streamnb.definitions.code import Code, call_code
from streamnb.definitions.durations import Duration, to_ms
from streamnb.definitions.eventtime import EventTime, units_per_ms
from streamnb.definitions.windows import Session, WindowSpec
from streamnb.engine.executor import DEFAULT_LATENCY_MS, DEFAULT_MAX_BATCH
from streamnb.engine.query import Query, run_to_end
from streamnb.exceptions import ConfigError
from streamnb.io.sinks.kafka import kafka_sink
from streamnb.io.sinks.parquet import ParquetSink
from streamnb.plan import (
    EventTimeNode,
    GroupByNode,
    JoinNode,
    MapNode,
    Plan,
    SinkNode,
    UnionNode,
    WindowNode,
    window_output_keys,
)
from streamnb.types import Emit, ErrorPolicy, How, JoinKind, KafkaFormat, StateStore

__all__ = ["GroupedStream", "Stream", "WindowedStream", "register_frontend"]

Frontend = Callable[..., Query]
"""Displays a stream live: ``frontend(stream, ..., name=..., **options)`` starts it and
returns the :class:`Query` (``show()`` and ``chart()`` hand over to one)."""

_frontends: dict[str, Callable[[], Frontend]] = {}


def register_frontend(kind: str, load: Callable[[], Frontend]) -> None:
    """Name where ``stream.show()`` (``kind="table"``) and ``stream.chart()`` (``"chart"``)
    display. The ui layer lives above this one, so the package root registers loaders that
    import it on first use (``import streamnb`` stays free of IPython and ipywidgets)."""
    _frontends[kind] = load


def _frontend(kind: str) -> Frontend:
    if kind not in _frontends:
        raise ConfigError(f"no frontend displays {kind!r} here; import streamnb first")
    return _frontends[kind]()


_Op = Callable[[Any], Any]  # works on both pl.DataFrame and pl.LazyFrame


class Stream:
    """A lazy, immutable streaming query.

    Build one from a source (``sn.from_records``, ``sn.nexmark``, ``sn.from_files``), chain
    transformations, then ``collect()`` it (bounded sources) or ``start()`` it.
    """

    def __init__(self, plan: Plan, *, code: str | None = None) -> None:
        self._plan = plan
        self._code = code

    @property
    def plan(self) -> Plan:
        """The query as data: what the engine runs (``Query(stream.plan)``) and workers split."""
        return self._plan

    # -- what is known --------------------------------------------------------------------
    @property
    def schema(self) -> pl.Schema | None:
        """The columns of the records, when known at definition time."""
        return self._plan.schema

    @property
    def columns(self) -> list[str]:
        return list(self._plan.schema.names()) if self._plan.schema is not None else []

    @property
    def event_time(self) -> str | None:
        """The event-time column, if one is set."""
        return self._plan.event_time.column if self._plan.event_time else None

    @property
    def bounded(self) -> bool:
        """True when every source ends by itself."""
        return self._plan.bounded

    @property
    def keys(self) -> tuple[str, ...] | None:
        """For tables (running aggregates, ``emit="update"`` windows): the key columns."""
        return self._plan.keys

    def explain(self) -> Code:
        """The fluent Python code of the query (``str()`` of it), e.g.
        ``bids.window(sn.Tumbling("10s"), by="auction").agg(pl.len().alias("bids"))``.

        Queries from :func:`streamnb.sql` show the exact code they translate to; fluent ones
        show their calls, with expressions as polars prints them.
        """
        return Code(self._code or _source_code(self._plan))

    def __repr__(self) -> str:
        kind = "table" if self.keys else "stream"
        return f"<streamnb {kind} {self.columns}>\n{self._plan.explain()}"

    def _called(self, method: str, *args: Any, **kwargs: Any) -> str:
        """The code of ``self.method(*args, **kwargs)``."""
        return call_code(str(self.explain()), method, *args, **kwargs)

    # -- per-record transformations ---------------------------------------------------------
    def _map(
        self,
        label: str,
        op: _Op,
        *,
        code: str,
        rename: Mapping[str, str] | None = None,
        predicate: pl.Expr | None = None,
        opaque: bool = False,
    ) -> Stream:
        meta = self._plan
        schema = None
        if meta.schema is not None:
            try:
                schema = op(pl.LazyFrame(schema=meta.schema)).collect_schema()
            except pl.exceptions.PolarsError as exc:
                raise column_error(exc, f"{label}()") from None
        keys = meta.keys
        if keys is not None and rename:
            keys = tuple(rename.get(k, k) for k in keys)
        if keys is not None and schema is not None and not set(keys) <= set(schema.names()):
            raise ConfigError(f"{label}() on a table must keep its key columns {list(keys)}")
        on_keys = (lambda df: df.rename(dict(rename), strict=False)) if rename else None
        node = MapNode(
            (self._plan.root,),
            label,
            op,
            on_keys=on_keys,
            table_keys=meta.keys,
            predicate=predicate,
            opaque=opaque,
        )
        windowed = meta.windowed
        if windowed is not None and rename:  # renamed keys still key the windows
            renamed_bounds = {"window_start", "window_end"} & set(rename)
            windowed = None if renamed_bounds else tuple(rename.get(k, k) for k in windowed)
        if windowed is not None and (
            schema is None or not {"window_start", "window_end", *windowed} <= set(schema.names())
        ):
            windowed = None
        return Stream(
            Plan(
                node,
                schema,
                _follow_time(meta.event_time, schema, rename),
                meta.bounded,
                keys,
                meta.result_time,
                windowed,
            ),
            code=code,
        )

    def filter(self, *predicates: pl.Expr | str, **constraints: Any) -> Stream:
        """Keep the records for which all predicates hold (as ``pl.DataFrame.filter``)."""
        if not predicates and not constraints:
            raise ConfigError("filter() needs at least one predicate")
        combined = pl.all_horizontal(
            *[pl.col(p) if isinstance(p, str) else p for p in predicates],
            *[pl.col(k) == v for k, v in constraints.items()],
        )
        code = self._called("filter", *predicates, **constraints)
        return self._map("filter", lambda f: f.filter(combined), code=code, predicate=combined)

    def with_columns(self, *exprs: Any, **named: Any) -> Stream:
        """Add or replace columns (as ``pl.DataFrame.with_columns``)."""
        code = self._called("with_columns", *exprs, **named)
        return self._map(
            "with_columns", lambda f: frames.with_columns(f, *exprs, **named), code=code
        )

    def select(self, *exprs: Any, **named: Any) -> Stream:
        """Choose and compute columns (as ``pl.DataFrame.select``), record by record."""

        def run(frame: Any) -> Any:
            return frames.select(frame, *exprs, *_hidden(frame), **named)

        return self._map("select", run, code=self._called("select", *exprs, **named))

    def drop(self, *columns: str) -> Stream:
        missing = [c for c in columns if self.schema is not None and c not in self.schema]
        if missing:
            raise ConfigError(f"drop(): no column {missing[0]!r}; columns are {self.columns}")
        return self._map("drop", lambda f: f.drop(*columns), code=self._called("drop", *columns))

    def rename(self, mapping: Mapping[str, str]) -> Stream:
        if not isinstance(mapping, Mapping):
            raise ConfigError(f"rename() takes a mapping old -> new, got {mapping!r}")
        missing = [c for c in mapping if self.schema is not None and c not in self.schema]
        if missing:
            raise ConfigError(f"rename(): no column {missing[0]!r}; columns are {self.columns}")
        code = self._called("rename", dict(mapping))
        return self._map("rename", lambda f: f.rename(dict(mapping)), code=code, rename=mapping)

    def explode(self, column: str) -> Stream:
        """One record per element of list column ``column``."""
        return self._map(
            "explode", lambda f: f.explode(column), code=self._called("explode", column)
        )

    def map_batches(self, fn: Callable[[pl.DataFrame], pl.DataFrame]) -> Stream:
        """Apply ``fn`` to each micro-batch.

        For results that do not depend on batch boundaries, ``fn`` must treat records
        independently (transform, filter or expand them one by one).
        """
        if not callable(fn):
            raise ConfigError(f"map_batches() needs a function DataFrame -> DataFrame, got {fn!r}")

        def run(frame: Any) -> Any:
            if isinstance(frame, pl.LazyFrame):  # learn the output schema from an empty batch
                try:
                    return fn(frame.collect()).lazy()
                except Exception:
                    return frame.select([])  # unknown until data flows
            hidden = _hidden(frame)
            out = fn(frame.drop(hidden) if hidden else frame)
            if not isinstance(out, pl.DataFrame):
                raise ConfigError(
                    f"map_batches(fn): fn returned {type(out).__name__}, not a DataFrame"
                )
            if hidden and out.height == frame.height:  # row-preserving: keep the partition
                out = out.with_columns(frame.select(hidden))
            return out

        code = self._called("map_batches", fn)
        stream = self._map("map_batches", run, code=code, opaque=True)
        if stream.schema is not None and stream.schema.len() == 0:
            plan = stream.plan  # the columns are known once data flows
            return Stream(
                Plan(plan.root, None, self._plan.event_time, plan.bounded, plan.keys), code=code
            )
        return stream

    # -- event time -------------------------------------------------------------------------
    def with_watermark(self, column: str, delay: Duration = "0s") -> Stream:
        """Use ``column`` as event time, tolerating records up to ``delay`` out of order.

        Records whose event time is null go to the error side output.
        """
        delay_ms = to_ms(delay, name="delay")
        dtype: pl.DataType = pl.Int64()
        if self.schema is not None:
            if column not in self.schema:
                raise ConfigError(
                    f"with_watermark(): no column {column!r}; columns are {self.columns}"
                )
            dtype = self.schema[column]
            units_per_ms(column, dtype)
        meta = self._plan
        node = EventTimeNode((self._plan.root,), column)
        return Stream(
            Plan(
                node,
                meta.schema,
                EventTime(column, delay_ms, dtype),
                meta.bounded,
                meta.keys,
                meta.result_time,
            ),
            code=self._called("with_watermark", column, delay),
        )

    # -- stateful ---------------------------------------------------------------------------
    def window(
        self,
        spec: WindowSpec,
        *,
        by: str | Sequence[str] | None = None,
        grace: Duration = "0s",
        emit: Emit = "final",
    ) -> WindowedStream:
        """Group records into event-time windows; finish with ``.agg(...)``."""
        if not isinstance(spec, WindowSpec):
            raise ConfigError(
                f"window() takes sn.Tumbling(size), sn.Hopping(size, every) or sn.Session(gap); "
                f"got {spec!r}"
            )
        if emit not in ("final", "update"):
            raise ConfigError(f"emit={emit!r} must be 'final' or 'update'")
        if self._plan.event_time is None:
            raise ConfigError(
                "window() needs an event-time column: pass timestamp= to the source or call "
                ".with_watermark(column, delay) first"
            )
        if self.keys is not None:
            raise ConfigError("window() works on streams, not on tables")
        keys = _key_list(by, "by")
        self._check_columns(keys, "window(by=...)")
        options = {"by": by, "grace": grace, "emit": emit}
        defaults = {"by": None, "grace": "0s", "emit": "final"}
        code = self._called(
            "window", spec, **{k: v for k, v in options.items() if v != defaults[k]}
        )
        return WindowedStream(self, spec, tuple(keys), to_ms(grace, name="grace"), emit, code=code)

    def group_by(self, *keys: str | Sequence[str]) -> GroupedStream:
        """A running aggregate per key (a table: one live row per key)."""
        flat = [k for key in keys for k in _key_list(key, "group_by")]
        if not flat:
            raise ConfigError("group_by() needs at least one key column")
        self._check_columns(flat, "group_by()")
        return GroupedStream(self, tuple(flat), self._called("group_by", *keys))

    def union(self, *others: Stream) -> Stream:
        """Merge streams with the same schema, in arrival order."""
        streams = [self, *others]
        for other in others:
            if not isinstance(other, Stream):
                raise ConfigError(f"union() takes streams, got {other!r}")
            if other.keys is not None or self.keys is not None:
                raise ConfigError("union() merges streams, not tables")
            if self.schema is not None and other.schema is not None and other.schema != self.schema:
                raise ConfigError(
                    f"union(): schemas differ: {dict(self.schema)} vs {dict(other.schema)}"
                )
        times = {s._plan.event_time for s in streams}
        return Stream(
            Plan(
                UnionNode(tuple(s._plan.root for s in streams)),
                self.schema,
                self._plan.event_time if len(times) == 1 else None,
                all(s.bounded for s in streams),
            ),
            code=self._called("union", *others),
        )

    def join(
        self,
        other: Stream,
        *,
        on: str | Sequence[str],
        how: How = "inner",
        within: Duration | None = None,
        grace: Duration = "0s",
    ) -> Stream:
        """Join with a table (each record meets the table row current at its arrival), with
        another stream (``within=``: pairs whose event times differ by at most that), or two
        window results (on window_start, window_end and ``on``). Tables join tables too.

        Columns: this stream's, then ``other``'s except ``on`` (``_right`` on a name clash).
        """
        if not isinstance(other, Stream):
            raise ConfigError(f"join() takes a stream or table, got {other!r}")
        if how not in ("inner", "left"):
            raise ConfigError(f"how={how!r} must be 'inner' or 'left'")
        keys = _key_list(on, "on")
        if not keys and self._plan.windowed is None:
            raise ConfigError("join() needs on= the key column(s)")
        if self.schema is None or other.schema is None:
            raise ConfigError(
                "join() needs both inputs' columns at definition time; pass schema= to the "
                "source whose records are not known yet"
            )
        self._check_columns(keys, "join(on=...)")
        other._check_columns(keys, "join(on=...)")
        schemas = (visible_schema(self.schema), visible_schema(other.schema))
        meta = self._plan
        times = None
        kind: JoinKind
        within_ms = grace_ms = 0
        if self.keys is not None and other.keys is not None:
            kind = "table_table"
            _require_keys(keys, self.keys, "the left table")
            _require_keys(keys, other.keys, "the right table")
            out_keys: tuple[str, ...] | None = tuple(keys)
        elif other.keys is not None:
            kind, out_keys = "stream_table", meta.keys
            _require_keys(keys, other.keys, "the table")
        elif self.keys is not None:
            raise ConfigError("a table joins a table; to join a stream, write stream.join(table)")
        elif within is not None:
            kind, out_keys = "interval", None
            if meta.event_time is None or other._plan.event_time is None:
                raise ConfigError("join(within=...) needs an event-time column on both streams")
            if meta.event_time.per_ms != other._plan.event_time.per_ms:
                raise ConfigError("join(within=...): both event-time columns need the same unit")
            times = (meta.event_time, other._plan.event_time)
            within_ms = to_ms(within, name="within")
            grace_ms = to_ms(grace, name="grace")
        elif meta.windowed is not None and other._plan.windowed is not None:
            kind, out_keys = "window", None
            if set(keys) != set(meta.windowed) or set(keys) != set(other._plan.windowed):
                raise ConfigError(
                    f"a window join is on the windows' keys: on={list(meta.windowed)}"
                )
        else:
            raise ConfigError(
                "joining two streams needs within= (an interval join), or two "
                "window(...).agg(...) results (a window join), or a table on the right"
            )
        join_on = keys
        try:
            probe_how = "left" if kind in ("stream_table", "table_table", "interval") else how
            out = (
                pl.LazyFrame(schema=schemas[0])
                .join(
                    pl.LazyFrame(schema=schemas[1]),
                    on=(["window_start", "window_end", *keys] if kind == "window" else join_on),
                    how=probe_how,
                    suffix="_right",
                )
                .collect_schema()
            )
        except pl.exceptions.PolarsError as exc:
            raise column_error(exc, "join()") from None
        options = {"on": on, "how": how, "within": within, "grace": grace}
        defaults = {"on": None, "how": "inner", "within": None, "grace": "0s"}
        code = self._called("join", other, **{k: v for k, v in options.items() if v != defaults[k]})
        node = JoinNode(
            (self._plan.root, other._plan.root),
            kind,
            tuple(keys),
            how,
            schemas,
            times,
            within_ms,
            grace_ms,
        )
        return Stream(
            Plan(
                node,
                out,
                _follow_time(meta.event_time, out, None),
                self.bounded and other.bounded,
                out_keys,
                meta.result_time,
            ),
            code=code,
        )

    def _check_columns(self, columns: Sequence[str], where: str) -> None:
        if self.schema is None:
            return
        for c in columns:
            if c not in self.schema:
                raise ConfigError(f"{where}: no column {c!r}; columns are {self.columns}")

    # -- sinks ------------------------------------------------------------------------------
    def to_parquet(
        self, path: str | Path, *, rows_per_file: int = 1_000_000, flush_seconds: float = 10.0
    ) -> Stream:
        """Also write the output rows as Parquet part files under directory ``path``.

        Returns a stream with the sink attached; ``start()`` or ``collect()`` it.
        """
        if self.keys is not None:
            raise ConfigError(
                "to_parquet() writes streams of rows; this is a table (an upsert changelog). "
                "Use emit='final' windows, or collect() the table and write it"
            )
        if rows_per_file < 1 or flush_seconds <= 0:
            raise ConfigError("to_parquet(): rows_per_file must be ≥ 1 and flush_seconds > 0")
        sink = ParquetSink(Path(path).expanduser(), rows_per_file, flush_seconds)
        node = SinkNode((self._plan.root,), sink)
        code = self._called("to_parquet", str(path))
        return Stream(self._plan.then(node), code=code)

    def to_kafka(
        self,
        topic: str,
        *,
        bootstrap_servers: str | None = None,
        format: KafkaFormat = "json",
        key: str | Sequence[str] | None = None,
        config: Mapping[str, Any] | None = None,
        errors: str | None = None,
        schema: Any = None,
        headers: Mapping[str, str] | None = None,
        schema_registry: str | Mapping[str, Any] | None = None,
        subject_strategy: Literal["topic", "record", "topic_record"] = "topic",
        key_format: Literal["avro", "protobuf", "jsonschema"] | None = None,
    ) -> Stream:
        """Also write the output rows to Kafka ``topic``; ``start()`` the returned stream.

        ``key`` names the key column(s) (default: a table's keys); a table's deleted rows
        become tombstones. ``errors="dlq:<topic>"`` sends the query's error records there,
        with the reason in a header. The producer is idempotent and flushed on stop.
        ``format`` is ``"json"``, ``"raw"`` (a ``value`` column), or ``"avro"``,
        ``"protobuf"``, ``"jsonschema"``: values framed for a Schema Registry
        (``schema_registry=`` its URL or client config, else ``STREAMNB_SCHEMA_REGISTRY`` or
        ``sn.kafka.connect(schema_registry=...)``'s). Their schema is ``schema=`` (an Avro
        schema; a generated Protobuf message class; a JSON Schema) or is made from the
        stream's columns (a record ``<Topic>Value`` in namespace ``streamnb``, every field
        nullable); it is registered when the query starts under the subject
        ``subject_strategy`` names (``"topic"``: ``<topic>-value``; ``"record"``: the record's
        full name; ``"topic_record"``: both), and a registry that refuses it fails the start
        with its reason. Without a registry, ``"avro"`` with ``schema=`` writes schemaless Avro.
        ``key_format`` frames the key columns too (subject ``<topic>-key``). A row that does
        not fit the schema goes to ``errors()``. ``headers={"header": "column"}`` adds record
        headers.
        """
        sink = kafka_sink(
            topic,
            format=format,
            key=key,
            errors=errors,
            schema=self.schema,
            table_keys=self.keys,
            bootstrap_servers=bootstrap_servers,
            config=config,
            avro_schema=schema,
            headers=headers,
            schema_registry=schema_registry,
            subject_strategy=subject_strategy,
            key_format=key_format,
        )
        node = SinkNode((self._plan.root,), sink)
        return Stream(self._plan.then(node), code=self._called("to_kafka", topic))

    # -- running ----------------------------------------------------------------------------
    def collect(
        self,
        timeout: float | None = None,
        *,
        errors: ErrorPolicy = "keep",
        max_batch: int = DEFAULT_MAX_BATCH,
        state: StateStore = "memory",
    ) -> pl.DataFrame:
        """Run a bounded stream to its end and return the result table.

        For ``emit="update"`` windows and running aggregates this is the last row per key.
        """
        if not self.bounded:
            raise ConfigError(
                "collect() needs a bounded source (e.g. sn.nexmark(events=1_000_000)); "
                "use start() for an unbounded stream"
            )
        return run_to_end(
            self._plan, timeout=timeout, errors=errors, max_batch=max_batch, state=state
        ).table.frame()

    def show(self, name: str | None = None, **options: Any) -> Query:
        """Start the stream and display a live table of its result (notebook).

        Returns the :class:`Query`. Without a notebook frontend it leaves a static table.
        Options are those of :func:`streamnb.ui.notebook.widgets.show`.
        """
        if (stand_in := capture(self, name)) is not None:
            return cast(Query, stand_in)
        return _frontend("table")(self, name=name, **options)

    def chart(self, chart: Any, name: str | None = None, **options: Any) -> Query:
        """Start the stream and display ``chart`` (an Altair chart) live over its result.

        The chart's data is the result table, updated in place as results change.
        Options are those of :func:`streamnb.ui.notebook.chart.chart`.
        """
        if (stand_in := capture(self, name)) is not None:
            return cast(Query, stand_in)
        return _frontend("chart")(self, chart, name=name, **options)

    def start(
        self,
        name: str | None = None,
        *,
        errors: ErrorPolicy = "keep",
        keep: int | None = 100_000,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_idle: Duration = "100ms",
        state: StateStore = "memory",
        latency: Duration = f"{DEFAULT_LATENCY_MS}ms",
    ) -> Query:
        """Run in a background thread and return the :class:`Query` at once.

        ``keep`` bounds the rows an unbounded append stream keeps in ``result()``.
        ``latency``: the time budget of a micro-batch. A batch takes what has arrived, but
        at most the records the query processes in this long (measured as it runs), and at
        most ``max_batch``; so under load a record waits about one budget for the batch
        before its own. Larger budgets trade latency for throughput (fewer, larger batches).
        ``max_idle``: several inputs are merged by event time; one with nothing read and
        nothing known to be unread holds the others back for at most this long (a source's
        own ``max_idle=`` wins). ``state``: where running aggregates and tables keep their
        keyed state: ``"memory"``, or ``"disk"`` (files under the system's temporary
        directory, or a ``pathlib.Path`` directory given instead), where the operating system
        keeps the recently used rows in memory and the rest on disk, so the state may grow past
        memory. A running query with the same ``name`` is stopped and replaced.
        """
        if (stand_in := capture(self, name)) is not None:  # the worker rebuilding a notebook
            return cast(Query, stand_in)
        return Query(
            self._plan,
            name,
            errors=errors,
            keep=keep,
            max_batch=max_batch,
            max_idle_ms=to_ms(max_idle, name="max_idle"),
            state=state,
            latency_ms=to_ms(latency, name="latency", allow_zero=False),
        )._launch()


class WindowedStream:
    """``stream.window(...)``: finish it with ``.agg(*exprs)``."""

    def __init__(
        self,
        stream: Stream,
        spec: WindowSpec,
        by: tuple[str, ...],
        grace_ms: int,
        emit: Emit,
        *,
        code: str,
    ) -> None:
        self._stream, self._spec, self._by, self._grace_ms, self._emit = (
            stream,
            spec,
            by,
            grace_ms,
            emit,
        )
        self._code = code

    def agg(self, *exprs: pl.Expr | Sequence[pl.Expr]) -> Stream:
        """Aggregate each window; columns: window_start, window_end, the keys, the aggregates."""
        stream = self._stream
        et = stream._plan.event_time
        assert et is not None
        flat = _flatten(exprs)
        schema = stream.schema
        aggregation = _aggregation(flat, schema, self._by, et)
        key_types = {k: schema[k] for k in self._by} if schema is not None else {}
        out = pl.Schema(
            {
                "window_start": et.dtype,
                "window_end": et.dtype,
                **key_types,
                **aggregation.output_schema,
            }
        )
        node = WindowNode(
            (stream._plan.root,),
            self._spec,
            et,
            self._by,
            self._grace_ms,
            self._emit,
            aggregation,
            out,
            stream.schema,
        )
        keys = window_output_keys(self._by, self._emit)
        windowed = (
            self._by if self._emit == "final" and not isinstance(self._spec, Session) else None
        )
        return Stream(
            Plan(
                node,
                out if stream.schema is not None else None,
                None,
                stream.bounded,
                keys,
                et,
                windowed,
            ),
            code=call_code(self._code, "agg", *exprs),
        )


class GroupedStream:
    """``stream.group_by(...)``: finish it with ``.agg(*exprs)``."""

    def __init__(self, stream: Stream, keys: tuple[str, ...], code: str) -> None:
        self._stream, self._keys, self._code = stream, keys, code

    def agg(self, *exprs: pl.Expr | Sequence[pl.Expr]) -> Stream:
        """The running aggregates per key, updated after every micro-batch."""
        stream = self._stream
        schema = stream.schema
        aggregation = _aggregation(_flatten(exprs), schema, self._keys, stream._plan.event_time)
        out = None
        if schema is not None:
            out = pl.Schema({**{k: schema[k] for k in self._keys}, **aggregation.output_schema})
        node = GroupByNode((stream._plan.root,), self._keys, aggregation)
        return Stream(
            Plan(node, out, None, stream.bounded, self._keys, stream._plan.event_time),
            code=call_code(self._code, "agg", *exprs),
        )


def _aggregation(
    exprs: Sequence[pl.Expr], schema: pl.Schema | None, keys: Sequence[str], et: EventTime | None
) -> Aggregation:
    """The aggregation of ``exprs`` by ``keys`` over records of ``schema``.

    When the columns are not known yet (a Kafka topic with no records to learn them from and
    no ``schema=``), it is defined all the same if no output type depends on the input types
    (``pl.len()``, ``count``, ``n_unique``), and refused, naming ``schema=``, otherwise.
    """
    if schema is not None:
        return Aggregation(exprs, schema, keys)
    time = {et.column: et.dtype} if et is not None else {}
    names = sorted({*keys, *(n for e in exprs for n in e.meta.root_names())} - set(time))

    def probe(dtype: pl.DataType) -> Aggregation:
        return Aggregation(exprs, pl.Schema({**dict.fromkeys(names, dtype), **time}), keys)

    aggregation = probe(pl.Int64())  # a definition error other than types shows here
    for dtype in (pl.Float32(), pl.String()):
        try:
            types = probe(dtype).output_schema
        except ConfigError:
            types = pl.Schema()
        differs = [n for n, t in aggregation.output_schema.items() if types.get(n) != t]
        if differs:
            raise ConfigError(
                f"agg(): the type of {differs[0]!r} depends on the columns' types, which are "
                "not known yet (the source had no records to learn them from); pass "
                f"schema= to the source with the columns {names} (e.g. "
                "sn.from_kafka(topic, schema={'k': pl.String, 'v': pl.Int64}))"
            )
    return aggregation


def _hidden(frame: Any) -> list[str]:
    """streamnb's hidden columns (e.g. the source partition) present in a runtime batch."""
    return hidden(frame) if isinstance(frame, pl.DataFrame) else []


def _require_keys(on: Sequence[str], keys: Sequence[str], what: str) -> None:
    if set(on) != set(keys):
        raise ConfigError(f"join(on={list(on)}): {what} is keyed by {list(keys)}; join on those")


def _flatten(exprs: Sequence[Any]) -> list[pl.Expr]:
    flat: list[pl.Expr] = []
    for e in exprs:
        flat.extend(e if isinstance(e, (list, tuple)) else [e])
    return flat


def _key_list(keys: str | Sequence[str] | None, name: str) -> list[str]:
    if keys is None:
        return []
    if isinstance(keys, str):
        return [keys]
    if not all(isinstance(k, str) for k in keys):
        raise ConfigError(f"{name}={keys!r}: keys must be column names")
    return list(keys)


def _follow_time(
    et: EventTime | None, schema: pl.Schema | None, rename: Mapping[str, str] | None
) -> EventTime | None:
    """The event time after a transformation: renamed, retyped, or gone."""
    if et is None:
        return None
    column = rename.get(et.column, et.column) if rename else et.column
    if schema is None:
        return EventTime(column, et.delay_ms, et.dtype)
    if column not in schema:
        return None
    dtype = schema[column]
    try:
        units_per_ms(column, dtype)
    except ConfigError:
        return None
    return EventTime(column, et.delay_ms, dtype)


def _source_code(plan: Plan) -> str:
    """A stream made without a recorded call (a source): its source's name, or its sources'."""
    names = [source.name for source in plan.sources()]
    return names[0] if len(names) == 1 else f"<{' + '.join(names)}>"
