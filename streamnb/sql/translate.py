"""SELECT queries → the fluent query they mean (FROM, windows, WHERE, GROUP BY, SELECT).

Joins are in :mod:`streamnb.sql.joins`. A query is translated in the order SQL evaluates it:
FROM (tables, subqueries, windowing table functions, joins), WHERE, GROUP BY with its
aggregates, HAVING, and the SELECT list, which stays pending in a :class:`Result` until the
query's consumer applies it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from sqlglot import exp

from streamnb.definitions.code import duration_text
from streamnb.exceptions import ConfigError
from streamnb.sql.code import PL, SN, Py
from streamnb.sql.dialect import TableArgument, position
from streamnb.sql.expressions import (
    aggregate_expr,
    conjuncts,
    interval_ms,
    scalar,
    unsupported,
)
from streamnb.sql.joins import join
from streamnb.sql.relations import Relation, Result, WindowCall, column_name
from streamnb.stream import Stream

__all__ = ["Translator"]

# Select arguments with no streaming translation: (argument, construct, keyword, hint)
_REFUSED = [
    ("order", "ORDER BY", "ORDER BY", "a stream has no end to sort by; sort a collect()ed result"),
    ("limit", "LIMIT", "LIMIT", "a stream has no end; use .collect().head(n)"),
    ("offset", "OFFSET", "OFFSET", ""),
    ("distinct", "SELECT DISTINCT", "DISTINCT", "use GROUP BY the columns"),
    ("qualify", "QUALIFY", "QUALIFY", ""),
    ("windows", "WINDOW (named windows)", "WINDOW", ""),
    ("laterals", "LATERAL", "LATERAL", ""),
    ("pivots", "PIVOT", "PIVOT", ""),
    ("sample", "TABLESAMPLE", "TABLESAMPLE", ""),
    ("connect", "CONNECT BY", "CONNECT", ""),
    ("into", "SELECT INTO", "INTO", ""),
    ("sort", "SORT BY", "SORT BY", ""),
    ("cluster", "CLUSTER BY", "CLUSTER BY", ""),
    ("distribute", "DISTRIBUTE BY", "DISTRIBUTE BY", ""),
]
_WINDOW_BOUNDS = ("window_start", "window_end")
_GROUP_WINDOWS = ("TUMBLE", "HOP", "SESSION")
_GROUP_WINDOW_BOUNDS = {
    f"{kind}_{end}": bound
    for kind in _GROUP_WINDOWS
    for end, bound in (("START", "window_start"), ("END", "window_end"))
}


class Translator:
    """Translates the queries of one ``sn.sql`` text over the ``streams`` named in it."""

    def __init__(self, text: str, streams: Mapping[str, Stream]) -> None:
        self.text = text
        self.streams = dict(streams)
        self.views: dict[str, Result] = {}  # WITH name AS (...)

    def fail(
        self, node: exp.Expr, construct: str, hint: str = "", keyword: str | None = None
    ) -> ConfigError:
        return unsupported(self.text, node, construct, hint, keyword)

    # -- statements -------------------------------------------------------------------------
    def statement(self, node: exp.Expr) -> Result:
        if isinstance(node, exp.Select):
            return self.query(node)
        if isinstance(node, exp.Subquery):
            return self.statement(node.this)
        if isinstance(node, exp.SetOperation):
            name = type(node).__name__.upper()
            keyword = {"UNION": "UNION", "INTERSECT": "INTERSECT", "EXCEPT": "EXCEPT"}.get(name)
            hint = "merge streams with stream.union(...) in Python" if name == "UNION" else ""
            raise self.fail(node.expression, name, hint, keyword=keyword)
        statement = type(node).__name__.upper()
        raise self.fail(
            node, f"statement {statement}", "sn.sql() takes one SELECT query", keyword=statement
        )

    def query(self, select: exp.Select) -> Result:
        for arg, construct, keyword, hint in _REFUSED:
            if select.args.get(arg):
                raise self.fail(select.args[arg], construct, hint, keyword=keyword)
        with_ = select.args.get("with_")
        if with_ is not None:
            if with_.args.get("recursive"):
                raise self.fail(with_, "WITH RECURSIVE", keyword="RECURSIVE")
            for cte in with_.expressions:
                self.views[cte.alias] = self.statement(cte.this)
        from_ = select.args.get("from_")
        if from_ is None:
            raise self.fail(select, "SELECT without FROM", keyword="SELECT")
        relation = self.from_item(from_.this)
        where = conjuncts(select.args.get("where"))
        joins = select.args.get("joins") or []
        if joins:
            relation = self.per_record_window(relation)
            for node in joins:
                relation, where = join(self, relation, node, where)
        group = select.args.get("group")
        if group is not None and any(_is_group_window(e) for e in group.expressions):
            select, relation = self.group_window(select, relation)
            group = select.args["group"]
        aggregates = any(isinstance(e, exp.AggFunc) for s in select.expressions for e in s.walk())
        if group is not None or aggregates or select.args.get("having") is not None:
            return self.grouped(select, relation, where, group)
        relation = self.filtered(self.per_record_window(relation), where)
        return Result(relation.stream, self.select_list(select, relation), relation.late_ms)

    # -- FROM -------------------------------------------------------------------------------
    def from_item(self, node: exp.Expr) -> Relation:
        if isinstance(node, exp.Subquery):
            if not node.alias:
                raise self.fail(node, "a subquery in FROM without an alias", "name it: (...) AS t")
            return self.statement(node.this).as_relation(node.alias)
        if isinstance(node, exp.Table) and isinstance(node.this, exp.Anonymous):
            return self.window_function(node)
        if isinstance(node, exp.Table) and isinstance(node.this, exp.Identifier):
            if node.args.get("db") or node.args.get("catalog"):
                raise self.fail(node, f"qualified table name {node.sql()}")
            return self.table(node, node.name, node.alias or node.name)
        raise self.fail(node, f"{type(node).__name__.upper()} in FROM")

    def table(self, node: exp.Expr, name: str, alias: str) -> Relation:
        if name in self.views:
            return self.views[name].as_relation(alias)
        if name not in self.streams:
            raise ConfigError(
                f"unknown table {name!r} (at {position(self.text, node)}): pass it as "
                f"sn.sql(..., {name}=stream); tables given: {sorted(self.streams) or 'none'}"
            )
        stream = self.streams[name]
        if not isinstance(stream, Stream):
            raise ConfigError(f"table {name!r} must be a streamnb Stream, got {type(stream)}")
        if stream.schema is None:
            raise ConfigError(
                f"table {name!r}: its columns are not known yet; pass schema= to its source"
            )
        py = Py(Stream(stream.plan, code=name), name)
        return Relation(py, {alias: {c: c for c in stream.columns}})

    def window_function(self, node: exp.Table) -> Relation:
        """``TABLE(TUMBLE(TABLE t, DESCRIPTOR(c), size))``, ``HOP(..., slide, size)``,
        ``SESSION(TABLE t [PARTITION BY k], DESCRIPTOR(c), gap)``."""
        outer = node.this
        inner = outer.expressions[0] if outer.expressions else None
        if str(outer.this).upper() != "TABLE" or not isinstance(inner, exp.Anonymous):
            raise self.fail(outer, f"table function {outer.this}")
        kind = str(inner.this).upper()
        args = inner.expressions
        if kind == "CUMULATE":
            raise self.fail(inner, "CUMULATE windows", "use TUMBLE, HOP or SESSION")
        if kind not in ("TUMBLE", "HOP", "SESSION"):
            raise self.fail(inner, f"table function {kind}", "use TUMBLE, HOP or SESSION")
        sizes = {"TUMBLE": 1, "HOP": 2, "SESSION": 1}[kind]
        if (
            len(args) != 2 + sizes
            or not isinstance(args[0], TableArgument)
            or not isinstance(args[1], exp.Anonymous)
            or str(args[1].this).upper() != "DESCRIPTOR"
        ):
            usage = {"TUMBLE": "size", "HOP": "slide, size", "SESSION": "gap"}[kind]
            raise self.fail(
                inner,
                f"{kind} with these arguments",
                f"write {kind}(TABLE t, DESCRIPTOR(time_column), {usage})",
            )
        table = args[0].this
        relation = self.table(table, table.name, node.alias or table.name)
        ((alias, columns),) = relation.tables.items()
        descriptor = args[1].expressions
        if len(descriptor) != 1 or not isinstance(descriptor[0], exp.Column):
            raise self.fail(args[1], "DESCRIPTOR of several columns")
        time = relation.lookup(self.text, descriptor[0])
        stream = relation.stream
        if stream.value.event_time != time:
            stream = stream.call("with_watermark", time)
        ms = [interval_ms(self.text, a) for a in args[2:]]
        spec = _window_spec(kind, ms)
        partition = tuple(
            relation.lookup(self.text, c) for c in args[0].args.get("partition") or []
        )
        if partition and kind != "SESSION":
            raise self.fail(args[0], f"PARTITION BY in {kind}", "only SESSION takes PARTITION BY")
        window = WindowCall(kind, spec, ms[-1], partition, inner)
        tables = {alias: {**columns, **{b: b for b in _WINDOW_BOUNDS}}}
        return Relation(stream, tables, window=window)

    def group_window(self, select: exp.Select, relation: Relation) -> tuple[exp.Select, Relation]:
        """Flink's legacy group windows, ``GROUP BY k, TUMBLE(t, size)`` (``HOP(t, slide,
        size)``, ``SESSION(t, gap)``) with ``TUMBLE_START(...)``, ``..._END(...)`` in the
        SELECT list: rewritten to the table function's ``GROUP BY k, window_start,
        window_end`` and its columns."""
        select = select.copy()
        group = select.args["group"]
        calls = [e for e in group.expressions if _is_group_window(e)]
        if len(calls) > 1:
            raise self.fail(calls[1], "a second group window in one GROUP BY")
        call = calls[0]
        kind, args = str(call.this).upper(), call.expressions
        if len(relation.tables) != 1:
            raise self.fail(call, f"GROUP BY {kind}(...) over a join", "window a subquery's result")
        if len(args) != 1 + (2 if kind == "HOP" else 1) or not isinstance(args[0], exp.Column):
            usage = {"TUMBLE": "size", "HOP": "slide, size", "SESSION": "gap"}[kind]
            raise self.fail(
                call, f"GROUP BY {kind} with these arguments", f"write {kind}(time_column, {usage})"
            )
        time = relation.lookup(self.text, args[0])
        stream = relation.stream
        if stream.value.event_time != time:
            stream = stream.call("with_watermark", time)
        ms = [interval_ms(self.text, a) for a in args[1:]]
        window = WindowCall(kind, _window_spec(kind, ms), ms[-1], (), call)
        ((alias, columns),) = relation.tables.items()
        tables = {alias: {**columns, **{b: b for b in _WINDOW_BOUNDS}}}
        signature = [a.sql() for a in args]
        for node in list(select.find_all(exp.Anonymous)):
            name = str(node.this).upper()
            bound = _GROUP_WINDOW_BOUNDS.get(name)
            if bound is None:
                continue
            if not name.startswith(kind) or [a.sql() for a in node.expressions] != signature:
                raise self.fail(
                    node,
                    f"{name}(...) of another window than GROUP BY {kind}(...)",
                    f"write {kind}_START / {kind}_END with the GROUP BY's arguments",
                )
            node.replace(exp.column(bound))
        call.replace(exp.column("window_start"))
        group.append("expressions", exp.column("window_end"))
        return select, Relation(stream, tables, window=window)

    def per_record_window(self, relation: Relation) -> Relation:
        """A windowing table function used without GROUP BY: each record gets its window's
        bounds (tumbling windows only: a record is in one)."""
        window = relation.window
        if window is None:
            return relation
        if window.kind != "TUMBLE":
            raise self.fail(
                window.node,
                f"{window.kind} without GROUP BY window_start, window_end",
                "a record is in several hopping windows (or a session not yet "
                "known); aggregate them with GROUP BY",
            )
        time = relation.stream.value.event_time
        start = PL.call("col", time).attr("dt").call("truncate", duration_text(window.size_ms))
        end = start.op("+", PL.call("duration", milliseconds=window.size_ms))
        stream = relation.stream.call("with_columns", window_start=start, window_end=end)
        return replace(relation, stream=stream, window=None)

    # -- WHERE, GROUP BY --------------------------------------------------------------------
    def filtered(self, relation: Relation, where: list[exp.Expr]) -> Relation:
        if not where:
            return relation
        predicate = self.scalar(_conjunction(where), relation)
        return replace(relation, stream=relation.stream.call("filter", predicate))

    def scalar(self, node: exp.Expr, relation: Relation) -> Py:
        return scalar(self.text, node, lambda c: relation.col(self.text, c), None)

    def grouped(
        self,
        select: exp.Select,
        relation: Relation,
        where: list[exp.Expr],
        group: exp.Group | None,
    ) -> Result:
        """``GROUP BY`` (a running aggregate: a table) or ``GROUP BY window_start,
        window_end, ...`` over a windowing table function (one row per window)."""
        window = relation.window
        keys: list[str] = []
        bounds = set()
        for node in group.expressions if group is not None else []:
            if not isinstance(node, exp.Column):
                raise self.fail(node, "GROUP BY an expression", "group by columns")
            name = relation.lookup(self.text, node)
            if window is not None and name in _WINDOW_BOUNDS:
                bounds.add(name)
            elif name not in keys:
                keys.append(name)
        if window is not None and bounds != set(_WINDOW_BOUNDS):
            raise self.fail(
                group or select,
                f"{window.kind} without GROUP BY window_start, window_end",
                "group a windowing table function by both bounds",
                keyword="GROUP BY",
            )
        if not keys and window is None:
            raise self.fail(
                select,
                "an aggregate without GROUP BY (one global running row)",
                "group by a key column",
            )
        if window is not None and window.partition and set(window.partition) != set(keys):
            raise self.fail(
                window.node,
                "SESSION PARTITION BY other columns than GROUP BY",
                f"partition by the GROUP BY keys {keys}",
            )
        base = self.filtered(replace(relation, window=None), where)
        aggregates: list[Py] = []
        names: set[str] = set(keys) | (set(_WINDOW_BOUNDS) if window else set())

        def aggregate(node: exp.AggFunc, alias: str | None = None) -> Py:
            expr = aggregate_expr(self.text, node, lambda c: base.col(self.text, c))
            if alias and alias in names:
                raise self.fail(node, f"two outputs named {alias!r}")
            # unnamed: polars' name (MAX(price) -> price, COUNT(*) -> len) while it is free
            name = alias or expr.value.meta.output_name()
            if name in names:
                name = f"EXPR${len(aggregates)}"
            names.add(name)
            same = name == expr.value.meta.output_name()
            aggregates.append(expr if same else expr.call("alias", name))
            return PL.call("col", name)

        def after_col(column: exp.Column) -> Py:
            name = base.lookup(self.text, column)
            if name not in names:
                raise ConfigError(
                    f"column {column.sql()!r} (at {position(self.text, column)}) is neither "
                    "grouped by nor inside an aggregate"
                )
            return PL.call("col", name)

        items: list[tuple[str, Py]] = []
        for i, item in enumerate(select.expressions):
            node, alias = (item.this, item.alias) if isinstance(item, exp.Alias) else (item, None)
            if isinstance(node, exp.AggFunc):
                expr = aggregate(node, alias)
                items.append((column_name(expr) or alias or f"EXPR${i}", expr))
                continue
            if isinstance(node, exp.Star) or (
                isinstance(node, exp.Column) and isinstance(node.this, exp.Star)
            ):
                raise self.fail(item, "SELECT * with GROUP BY", "name the columns")
            expr = scalar(self.text, node, after_col, aggregate)
            items.append((alias or _default_name(node, i), expr))
        having = select.args.get("having")
        condition = scalar(self.text, having.this, after_col, aggregate) if having else None
        if not aggregates:  # GROUP BY keys only: the engine aggregates something
            aggregates.append(PL.call("len"))
            names.add("len")
        if window is not None:
            by: dict[str, object] = {"by": keys[0] if len(keys) == 1 else keys} if keys else {}
            windowed = base.stream.call("window", window.spec, **by)
            stream = windowed.call("agg", *aggregates)
            late = window.size_ms if window.kind != "SESSION" else None
        else:
            stream = base.stream.call("group_by", *keys).call("agg", *aggregates)
            late = 0
        if condition is not None:
            stream = stream.call("filter", condition)
        return Result(stream, _unique(self, select, items), late)

    # -- SELECT -----------------------------------------------------------------------------
    def select_list(self, select: exp.Select, relation: Relation) -> list[tuple[str, Py]]:
        items: list[tuple[str, Py]] = []
        for i, item in enumerate(select.expressions):
            node, alias = (item.this, item.alias) if isinstance(item, exp.Alias) else (item, None)
            star = isinstance(node, exp.Star) or (
                isinstance(node, exp.Column) and isinstance(node.this, exp.Star)
            )
            if star:
                qualifier = node.table if isinstance(node, exp.Column) else ""
                if qualifier and qualifier not in relation.tables:
                    raise ConfigError(f"unknown table {qualifier!r} in {qualifier}.*")
                for table, columns in relation.tables.items():
                    if not qualifier or table == qualifier:
                        items.extend((n, PL.call("col", p)) for n, p in columns.items())
                continue
            items.append((alias or _default_name(node, i), self.scalar(node, relation)))
        return _unique(self, select, items)


def _window_spec(kind: str, ms: list[int]) -> Py:
    """``sn.Tumbling(size)``, ``sn.Hopping(size, slide)`` or ``sn.Session(gap)`` from SQL's
    intervals (``HOP`` takes the slide first)."""
    if kind == "TUMBLE":
        return SN.call("Tumbling", duration_text(ms[0]))
    if kind == "HOP":
        return SN.call("Hopping", duration_text(ms[1]), duration_text(ms[0]))
    return SN.call("Session", duration_text(ms[0]))


def _is_group_window(node: exp.Expr) -> bool:
    return isinstance(node, exp.Anonymous) and str(node.this).upper() in _GROUP_WINDOWS


def _default_name(node: exp.Expr, index: int) -> str:
    """A select item's name without AS: a column's own name, else Flink's ``EXPR$i``."""
    return node.name if isinstance(node, exp.Column) else f"EXPR${index}"


def _unique(
    translator: Translator, select: exp.Select, items: list[tuple[str, Py]]
) -> list[tuple[str, Py]]:
    seen: set[str] = set()
    for name, _ in items:
        if name in seen:
            raise translator.fail(
                select,
                f"two output columns named {name!r}",
                "give one of them another name with AS",
            )
        seen.add(name)
    return items


def _conjunction(nodes: list[exp.Expr]) -> exp.Expr:
    combined = nodes[0]
    for node in nodes[1:]:
        combined = exp.And(this=combined, expression=node)
    return combined
