"""IPython magics: ``%%stream`` starts a query from a cell, ``%stream`` manages queries.

``%load_ext streamnb`` registers them. They are thin: arguments are parsed with IPython's
``magic_arguments`` and every subcommand is one call of the Python API::

    %%stream NAME [--show] [--chart SPEC] [--to-kafka TOPIC]
    <Python whose last expression is a Stream>

    %%stream_sql NAME [--show] [--chart SPEC]
    <one SELECT query; its tables are the notebook's Streams of those names>

    %stream list | stop NAME | stop --all | status NAME | topics
    %stream connect BOOTSTRAP [--config KEY=VALUE ...] [--schema-registry URL
                    [--registry-config KEY=VALUE ...]]
    %stream peek TOPIC [-n N] [--format F] | promote NAME --to PATH

Defaults of the live views are configurable: ``%config StreamMagics.max_rows = 50``,
``%config StreamMagics.max_updates_per_second = 4``.
"""

from __future__ import annotations

import ast
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments
from traitlets import Float, Int, TraitError, validate

import streamnb as sn
from streamnb.engine.query import Query
from streamnb.exceptions import ConfigError
from streamnb.io.kafka.client import SECRET_KEYS, kafka_reason, redact
from streamnb.io.kafka.registry import redact_registry
from streamnb.promote import write_job
from streamnb.sql import tables as sql_tables
from streamnb.stream import GroupedStream, Stream, WindowedStream
from streamnb.types import Status
from streamnb.ui.notebook.widgets import display_query

__all__ = ["StreamMagics", "load_ipython_extension", "unload_ipython_extension"]

CELL_USAGE = "%%stream NAME [--show] [--chart SPEC] [--to-kafka TOPIC]"
SQL_USAGE = "%%stream_sql NAME [--show] [--chart SPEC]"
CONNECT_USAGE = (
    "%stream connect BOOTSTRAP [--config KEY=VALUE ...] "
    "[--schema-registry URL [--registry-config KEY=VALUE ...]]"
)
PEEK_USAGE = "%stream peek TOPIC [-n N] [--format F]"
LINE_USAGE = (
    "%stream list | stop NAME | stop --all | status NAME | "
    "connect BOOTSTRAP [--config KEY=VALUE ...] [--schema-registry URL] | topics | "
    "peek TOPIC [-n N] [--format F] | promote NAME --to PATH"
)


# -- one parser per subcommand (magic_arguments builds them from these stubs) ---------------
@magic_arguments(name="%stream stop")
@argument("name", nargs="?", help="the query to stop")
@argument("--all", action="store_true", help="stop every running query")
def _stop_args() -> None:
    """Stop a query, or all of them."""


@magic_arguments(name="%stream status")
@argument("name", help="the query")
def _name_args() -> None:
    """Name a query."""


@magic_arguments(name="%stream connect")
@argument("bootstrap", help="host:port[,host:port] of the Kafka cluster")
@argument(
    "--config",
    action="append",
    default=[],
    metavar="KEY=VALUE",
    help="a client setting (security.protocol, sasl.*, ssl.*); repeat for several",
)
@argument(
    "--schema-registry",
    metavar="URL",
    help="the Schema Registry (Confluent-compatible API) that peek, topics, from_kafka and "
    "to_kafka use by default",
)
@argument(
    "--registry-config",
    action="append",
    default=[],
    metavar="KEY=VALUE",
    help="a Schema Registry client setting (basic.auth.user.info, bearer.auth.*, ssl.*); "
    "repeat for several",
)
def _connect_args() -> None:
    """Set the default Kafka bootstrap servers, client settings and Schema Registry."""


@magic_arguments(name="%stream peek")
@argument("topic", help="the topic")
@argument("-n", type=int, default=10, help="records per partition (default 10)")
@argument(
    "--format",
    choices=["json", "raw", "avro", "protobuf", "jsonschema"],
    help="how values are decoded (default: framed values by their registry schema, else JSON)",
)
def _peek_args() -> None:
    """The newest records of a topic."""


@magic_arguments(name="%stream promote")
@argument("name", help="the query defined by a %%stream cell")
@argument("--to", required=True, metavar="PATH", help="the job file to write")
def _promote_args() -> None:
    """Write a standalone job file for a query."""


@magic_arguments(name="%stream list")
def _no_args() -> None:
    """No arguments."""


def _parse(stub: Any, argstring: str, usage: str) -> Any:
    """Parse with ``stub``'s parser; every failure is a UsageError that shows ``usage``.

    The line is split like a POSIX shell does (``--chart "alt.Chart(...)"`` loses its quotes).
    """
    try:
        return stub.parser.parse_args(shlex.split(argstring))
    except UsageError as exc:
        raise UsageError(f"{exc}\nusage: {usage}") from None
    except ValueError as exc:  # unbalanced quotes
        raise UsageError(f"cannot split {argstring!r}: {exc}\nusage: {usage}") from None


@dataclass(frozen=True)
class _Definition:
    """What a ``%%stream`` or ``%%stream_sql`` cell ran: kept for ``%stream promote``."""

    cell: str
    to_kafka: str | None
    number: int  # the cell's index in ``In``: promote takes the session's cells up to it


@magics_class
class StreamMagics(Magics):
    """``%%stream`` and ``%stream``: define, start, inspect and promote streaming queries."""

    max_updates_per_second = Float(
        10.0, help="Live views redraw at most this many times a second."
    ).tag(config=True)
    max_rows = Int(20, help="Live tables show at most this many rows.").tag(config=True)

    @validate("max_updates_per_second")
    def _check_rate(self, proposal: Any) -> float:
        if not proposal["value"] > 0:
            raise TraitError(f"max_updates_per_second must be > 0, got {proposal['value']!r}")
        return float(proposal["value"])

    @validate("max_rows")
    def _check_rows(self, proposal: Any) -> int:
        if proposal["value"] < 1:
            raise TraitError(f"max_rows must be ≥ 1, got {proposal['value']!r}")
        return int(proposal["value"])

    def __init__(self, shell: InteractiveShell | None = None, **kwargs: Any) -> None:
        super().__init__(shell=shell, **kwargs)
        self.queries: dict[str, Query] = {}
        """The queries started by ``%%stream`` cells, by name (the newest of each name)."""
        self.definitions: dict[str, _Definition] = {}

    # -- %%stream ---------------------------------------------------------------------------
    @magic_arguments(name="%%stream")
    @argument("name", help="the query's name; a running query of that name is replaced")
    @argument("--show", action="store_true", help="display a live table of the result")
    @argument("--chart", metavar="SPEC", help="a Python expression giving an Altair chart")
    @argument("--to-kafka", metavar="TOPIC", help="also write the output to this Kafka topic")
    @cell_magic("stream")  # type: ignore[arg-type]  # IPython types the name form loosely
    def stream_cell(self, line: str, cell: str) -> Query:
        """Run the cell (its last expression must be a Stream) and start it as query NAME.

        Returns the Query (so ``q = _`` in the next cell gets it) at once.
        """
        args = _parse(self.stream_cell, line, CELL_USAGE)
        stream = self._run_cell(cell)
        # --chart may use the cell's names
        chart = self._evaluate_spec(args.chart, CELL_USAGE) if args.chart else None
        if args.to_kafka:
            stream = stream.to_kafka(args.to_kafka)
        query = self._start(stream, args.name, show=args.show, chart=chart)
        history = self._user_ns()[1].get("In", [])
        self.definitions[args.name] = _Definition(cell, args.to_kafka, len(history) - 1)
        return query

    @magic_arguments(name="%%stream_sql")
    @argument("name", help="the query's name; a running query of that name is replaced")
    @argument("--show", action="store_true", help="display a live table of the result")
    @argument("--chart", metavar="SPEC", help="a Python expression giving an Altair chart")
    @cell_magic("stream_sql")  # type: ignore[arg-type]
    def stream_sql_cell(self, line: str, cell: str) -> Query:
        """Translate the cell's SQL with ``sn.sql`` (its table names are the notebook's
        Streams) and start it as query NAME. Returns the Query at once."""
        args = _parse(self.stream_sql_cell, line, SQL_USAGE)
        if not cell.strip():
            raise UsageError(f"the %%stream_sql cell is empty: write a SELECT query\n{SQL_USAGE}")
        namespace = {**self._user_ns()[0], **self._user_ns()[1]}
        try:
            names = sql_tables(cell)
        except ConfigError as exc:
            raise UsageError(f"%%stream_sql {args.name}: {exc}") from None
        missing = [n for n in names if not isinstance(namespace.get(n), Stream)]
        if missing:
            found = sorted(k for k, v in namespace.items() if isinstance(v, Stream))
            raise UsageError(
                f"%%stream_sql {args.name}: no Stream named {missing[0]!r} in the notebook "
                f"(the SQL's tables are Streams of the user namespace; Streams here: "
                f"{found or 'none'})"
            )
        stream = sn.sql(cell, **{n: namespace[n] for n in names})
        chart = self._evaluate_spec(args.chart, SQL_USAGE) if args.chart else None
        query = self._start(stream, args.name, show=args.show, chart=chart)
        history = self._user_ns()[1].get("In", [])
        self.definitions[args.name] = _Definition(cell, None, len(history) - 1)
        return query

    def _start(self, stream: Stream, name: str, *, show: bool, chart: Any) -> Query:
        """Start ``stream`` as query ``name``, with a live table and/or chart."""
        options: dict[str, Any] = {
            "max_rows": self.max_rows,
            "max_updates_per_second": self.max_updates_per_second,
        }
        # through the Stream methods, so the worker's capture mode sees these queries too
        if chart is not None:
            query = stream.chart(chart, name)
            if show and isinstance(query, Query):
                display_query(query, **options)
        elif show:
            query = stream.show(name, **options)
        else:
            query = stream.start(name)
        self.queries[name] = query
        return query

    def _user_ns(self) -> tuple[dict[str, Any], dict[str, Any]]:
        assert self.shell is not None
        return self.shell.user_global_ns, self.shell.user_ns

    def _evaluate_spec(self, spec: str, usage: str) -> Any:
        try:
            code = compile(spec, "<--chart>", "eval")
        except SyntaxError as exc:
            raise UsageError(
                f"--chart {spec!r} is not a Python expression ({exc.msg})\nusage: {usage}"
            ) from None
        return eval(code, *self._user_ns())

    def _run_cell(self, cell: str) -> Stream:
        """Execute the cell in the user namespace and return its last expression's value."""
        assert self.shell is not None
        code = self.shell.transform_cell(cell)
        tree = ast.parse(code)  # a SyntaxError shows like any cell's
        if not tree.body:
            raise UsageError(f"the %%stream cell is empty: end it with a Stream\n{CELL_USAGE}")
        last = tree.body[-1]
        if not isinstance(last, ast.Expr):
            raise UsageError(
                "the last line of a %%stream cell must be an expression giving a Stream, got "
                f"a statement ({type(last).__name__}: {ast.unparse(last)[:60]!r})"
            )
        filename = self.shell.compile.cache(code)  # tracebacks show the cell's lines
        exec(compile(ast.Module(tree.body[:-1], type_ignores=[]), filename, "exec"),
             *self._user_ns())  # fmt: skip
        value = eval(compile(ast.Expression(last.value), filename, "eval"), *self._user_ns())
        if isinstance(value, (WindowedStream, GroupedStream)):
            raise UsageError(
                f"the cell's last expression is a {type(value).__name__}: finish it with "
                ".agg(...) to get a Stream"
            )
        if not isinstance(value, Stream):
            raise UsageError(
                "the last expression of a %%stream cell must be a Stream, got "
                f"{type(value).__name__}: {value!r:.80}"
            )
        return value

    # -- %stream ----------------------------------------------------------------------------
    @line_magic("stream")  # type: ignore[arg-type]
    def stream_line(self, line: str) -> Any:
        """Manage queries.

        ``%stream list | stop NAME | stop --all | status NAME |
        connect BOOTSTRAP [--config KEY=VALUE ...] [--schema-registry URL] | topics |
        peek TOPIC [-n N] [--format F] | promote NAME --to PATH``
        """
        command, _, rest = line.strip().partition(" ")
        handlers = {
            "list": self._list,
            "stop": self._stop,
            "status": self._status,
            "connect": self._connect,
            "topics": self._topics,
            "peek": self._peek,
            "promote": self._promote,
        }
        if command not in handlers:
            what = f"unknown subcommand {command!r}" if command else "a subcommand is needed"
            raise UsageError(f"{what}\nusage: {LINE_USAGE}")
        return handlers[command](rest.strip())

    def _query(self, name: str) -> Query:
        running = {q.name: q for q in sn.queries()}
        query = running.get(name) or self.queries.get(name)
        if query is None:
            raise UsageError(
                f"no query named {name!r}; running: {sorted(running) or 'none'}\n"
                f"usage: {LINE_USAGE}"
            )
        return query

    def _list(self, rest: str) -> pl.DataFrame:
        _parse(_no_args, rest, "%stream list")
        rows: list[dict[str, Any]] = [dict(q.status()) for q in sn.queries()]
        for row in rows:
            row["watermark"] = None if row["watermark"] is None else str(row["watermark"])
        schema = {
            "name": pl.String, "state": pl.String, "records_in": pl.Int64,
            "records_out": pl.Int64, "late": pl.Int64, "errors": pl.Int64,
            "watermark": pl.String, "lag": pl.Int64, "rate": pl.Float64,
        }  # fmt: skip
        return pl.DataFrame(rows, schema=schema)

    def _stop(self, rest: str) -> None:
        args = _parse(_stop_args, rest, "%stream stop NAME | %stream stop --all")
        if args.all == (args.name is not None):
            raise UsageError("stop takes a query NAME or --all\nusage: %stream stop NAME | --all")
        targets = sn.queries() if args.all else [self._query(args.name)]
        for query in targets:
            query.stop()

    def _status(self, rest: str) -> Status:
        return self._query(_parse(_name_args, rest, "%stream status NAME").name).status()

    def _connect(self, rest: str) -> None:
        from confluent_kafka import KafkaException

        args = _parse(_connect_args, rest, CONNECT_USAGE)
        config = _settings(args.config, "--config")
        registry_config = {  # the registry's client takes numbers as numbers, not text
            k: int(v) if v.isdigit() else v
            for k, v in _settings(args.registry_config, "--registry-config").items()
        }
        if registry_config and args.schema_registry is None:
            raise UsageError(f"--registry-config needs --schema-registry\nusage: {CONNECT_USAGE}")
        registry = None
        if args.schema_registry is not None:
            registry = {"url": args.schema_registry, **registry_config}
        try:
            topics = sn.kafka.connect(
                args.bootstrap, config=config or None, schema_registry=registry
            )
        except KafkaException as exc:  # a setting librdkafka does not take
            raise UsageError(f"--config: {kafka_reason(exc)}\nusage: {CONNECT_USAGE}") from None
        except ConfigError as exc:  # a registry that does not answer: the message alone (it
            # is redacted), not a traceback that would echo the line and its credentials
            raise UsageError(str(exc)) from None
        shown = "".join(f", {k}={v}" for k, v in redact(config).items())
        if registry is not None:
            shown += ", schema registry " + ", ".join(
                str(v) if k == "url" else f"{k}={v}" for k, v in redact_registry(registry).items()
            )
        print(f"connected to {args.bootstrap}{shown}: {len(topics)} topics")

    def _topics(self, rest: str) -> pl.DataFrame:
        _parse(_no_args, rest, "%stream topics")
        return sn.kafka.topics()

    def _peek(self, rest: str) -> pl.DataFrame:
        args = _parse(_peek_args, rest, PEEK_USAGE)
        if args.n < 1:
            raise UsageError(f"-n {args.n}: must be ≥ 1\nusage: {PEEK_USAGE}")
        return sn.kafka.peek(args.topic, n=args.n, format=args.format)

    def _promote(self, rest: str) -> None:
        usage = "%stream promote NAME --to PATH"
        args = _parse(_promote_args, rest, usage)
        definition = self.definitions.get(args.name)
        if definition is None:
            raise UsageError(
                f"no %%stream cell defined query {args.name!r} (nor a %%stream_sql cell); defined: "
                f"{sorted(self.definitions) or 'none'}\nusage: {usage}"
            )
        path = Path(args.to).expanduser()
        history = list(self._user_ns()[1].get("In", []))
        cells = [c for c in history[1 : definition.number + 1] if c.strip()]
        try:
            write_job(cells, args.name, path, origin="this notebook session", skip_failing=True)
        except ConfigError as exc:
            raise UsageError(f"cannot promote {args.name!r}: {exc}") from None
        print(f"wrote {path}: run it with `python {path}` or `streamnb run {path}:STREAM`")

    # -- unloading --------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the queries started here and their views; leave no streamnb thread behind."""
        for query in self.queries.values():
            query.stop()
            for view in query.views.values():
                if view is not None:
                    view.close()
        self.queries.clear()


def _settings(items: list[str], option: str) -> dict[str, str]:
    """``--config KEY=VALUE`` (or ``--registry-config``) arguments as client settings (a later
    key wins); one that is not ``KEY=VALUE`` is a UsageError naming it (its value hidden when
    it may be a secret)."""
    settings = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            shown = "***" if any(s in item.lower() for s in SECRET_KEYS) else repr(item)
            raise UsageError(f"{option} {shown}: expected KEY=VALUE\nusage: {CONNECT_USAGE}")
        settings[key.strip()] = value
    return settings


def load_ipython_extension(ipython: InteractiveShell) -> None:
    """``%load_ext streamnb``: register ``%%stream``, ``%%stream_sql``, ``%stream`` and the
    ``StreamMagics`` config."""
    ipython.register_magics(StreamMagics(shell=ipython))


def unload_ipython_extension(ipython: InteractiveShell) -> None:
    """``%unload_ext streamnb``: stop the queries the magics started; remove the magics."""
    manager = ipython.magics_manager
    magics = manager.registry.pop(StreamMagics.__name__, None)
    if not isinstance(magics, StreamMagics):
        return
    magics.close()
    for kind, name in (("line", "stream"), ("cell", "stream"), ("cell", "stream_sql")):
        if manager.magics[kind].get(name) is not None:
            del manager.magics[kind][name]
    if magics in ipython.configurables:
        ipython.configurables.remove(magics)
