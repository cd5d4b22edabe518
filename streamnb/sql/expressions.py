"""SQL scalar expressions and aggregate calls → polars expressions (as :class:`Py`).

Column references are resolved by the caller (``resolve``); aggregate calls are handed to
``aggregate``, which the query translator gives only where aggregates may appear (the SELECT
list and HAVING of a grouped query).
"""

from __future__ import annotations

from collections.abc import Callable

from sqlglot import exp

from streamnb.exceptions import ConfigError
from streamnb.sql.code import PL, Py, lit
from streamnb.sql.dialect import position

__all__ = [
    "AGGREGATES",
    "Resolve",
    "aggregate_expr",
    "conjuncts",
    "interval_ms",
    "scalar",
    "unsupported",
]

Resolve = Callable[[exp.Column], Py]
Aggregate = Callable[[exp.AggFunc], Py]

_BINARY: dict[type[exp.Expr], str] = {
    exp.Add: "+",
    exp.Sub: "-",
    exp.Mul: "*",
    exp.Div: "/",
    exp.Mod: "%",
    exp.EQ: "==",
    exp.NEQ: "!=",
    exp.GT: ">",
    exp.GTE: ">=",
    exp.LT: "<",
    exp.LTE: "<=",
    exp.And: "&",
    exp.Or: "|",
}

AGGREGATES: dict[type[exp.Expr], str] = {
    exp.Sum: "sum",
    exp.Min: "min",
    exp.Max: "max",
    exp.Avg: "mean",
    exp.FirstValue: "first",
    exp.LastValue: "last",
}
"""SQL aggregate → polars aggregation (``COUNT`` is handled apart: ``*``, ``DISTINCT``)."""

_UNIT_MS = {
    "MILLISECOND": 1,
    "SECOND": 1_000,
    "MINUTE": 60_000,
    "HOUR": 3_600_000,
    "DAY": 86_400_000,
}


def unsupported(
    text: str, node: exp.Expr, construct: str, hint: str = "", keyword: str | None = None
) -> ConfigError:
    """The error for a construct streamnb's SQL does not translate, naming it and its place."""
    where = position(text, node, keyword)
    return ConfigError(
        f"{construct} is not supported in streaming SQL (at {where})"
        + (f": {hint}" if hint else "")
    )


def interval_ms(text: str, node: exp.Expr) -> int:
    """``INTERVAL '10' SECOND`` (also ``'10 SECOND'``, plural units) in milliseconds."""
    if not isinstance(node, exp.Interval):
        raise unsupported(
            text,
            node,
            "a window size or gap that is not an INTERVAL",
            "write e.g. INTERVAL '10' SECOND",
        )
    amount = node.this.name if node.this is not None else ""
    unit = node.unit.name if node.unit is not None else ""
    if not unit and " " in amount.strip():
        amount, unit = amount.split(None, 1)
    unit = unit.upper().removesuffix("S")
    if unit not in _UNIT_MS or not amount.strip().isdigit():
        raise unsupported(
            text,
            node,
            f"INTERVAL {amount!r} {unit}",
            f"use a whole number of {', '.join(_UNIT_MS)}",
        )
    return int(amount) * _UNIT_MS[unit]


def scalar(text: str, node: exp.Expr, resolve: Resolve, aggregate: Aggregate | None) -> Py:
    """The polars expression of SQL expression ``node``."""

    def go(child: exp.Expr) -> Py:
        return scalar(text, child, resolve, aggregate)

    if isinstance(node, exp.Column):
        if isinstance(node.this, exp.Star):
            raise unsupported(text, node, f"{node.sql()} inside an expression")
        return resolve(node)
    if isinstance(node, exp.Paren):
        return go(node.this)
    if isinstance(node, exp.Literal):
        if node.is_string:
            return lit(node.this)
        number = node.this
        return lit(float(number) if any(c in number for c in ".eE") else int(number))
    if isinstance(node, exp.Boolean):
        return lit(bool(node.this))
    if isinstance(node, exp.Null):
        return PL.call("lit", None)
    if type(node) in _BINARY:
        return go(node.this).op(_BINARY[type(node)], go(node.expression))
    if isinstance(node, exp.Not):
        return go(node.this).invert()
    if isinstance(node, exp.Neg):
        return go(node.this).negate()
    if isinstance(node, exp.Is) and isinstance(node.expression, exp.Null):
        return go(node.this).call("is_null")
    if isinstance(node, exp.In):
        if node.args.get("query") is not None:
            raise unsupported(text, node, "IN (subquery)", "list the values: x IN (1, 2)")
        values = [go(v) for v in node.expressions]
        if not all(isinstance(v.value, (int, float, str, bool)) for v in values):
            raise unsupported(text, node, "IN with expressions", "list literal values")
        return go(node.this).call("is_in", values)
    if isinstance(node, exp.Between):
        return go(node.this).call("is_between", go(node.args["low"]), go(node.args["high"]))
    if isinstance(node, exp.Interval):
        return PL.call("duration", milliseconds=interval_ms(text, node))
    if isinstance(node, (exp.Lower, exp.Upper)):
        method = "to_lowercase" if isinstance(node, exp.Lower) else "to_uppercase"
        return go(node.this).attr("str").call(method)
    if isinstance(node, exp.Length):
        return go(node.this).attr("str").call("len_chars")
    if isinstance(node, exp.Window):
        raise unsupported(
            text,
            node,
            "OVER (a window function)",
            "use the windowing table functions TUMBLE, HOP or SESSION with GROUP BY",
            keyword="OVER",
        )
    if isinstance(node, (exp.Subquery, exp.Select, exp.Exists)):
        raise unsupported(
            text,
            node,
            "a subquery inside an expression",
            "subqueries are supported in FROM and JOIN",
        )
    if isinstance(node, exp.AggFunc):
        if aggregate is None:
            raise unsupported(
                text,
                node,
                f"aggregate {_name(node)}(...) here",
                "aggregates belong in the SELECT list (or HAVING) of a query with GROUP BY",
            )
        return aggregate(node)
    if isinstance(node, (exp.Case, exp.Cast)):
        name = "CASE" if isinstance(node, exp.Case) else "CAST"
        raise unsupported(text, node, f"{name} expression", keyword=name)
    if isinstance(node, exp.Func):
        raise unsupported(text, node, f"function {_name(node)}", keyword=_name(node))
    raise unsupported(text, node, f"{type(node).__name__.upper()} expression")


def aggregate_expr(text: str, node: exp.AggFunc, resolve: Resolve) -> Py:
    """The polars aggregation of SQL aggregate ``node`` (its argument is a scalar expression)."""

    def argument(arg: exp.Expr) -> Py:
        return scalar(text, arg, resolve, None)

    if isinstance(node, exp.Count):
        arg = node.this
        if arg is None or isinstance(arg, exp.Star):
            return PL.call("len")
        if isinstance(arg, exp.Distinct):
            if len(arg.expressions) != 1:
                raise unsupported(text, node, "COUNT(DISTINCT ...) of several columns")
            return argument(arg.expressions[0]).call("n_unique")
        return argument(arg).call("count")
    if type(node) in AGGREGATES:
        if isinstance(node.this, exp.Distinct):
            raise unsupported(text, node, f"{_name(node)}(DISTINCT ...)")
        return argument(node.this).call(AGGREGATES[type(node)])
    raise unsupported(
        text,
        node,
        f"aggregate function {_name(node)}",
        "supported: COUNT(*), COUNT(x), COUNT(DISTINCT x), SUM, MIN, MAX, AVG, "
        "FIRST_VALUE, LAST_VALUE",
    )


def _name(node: exp.Expr) -> str:
    if isinstance(node, exp.Anonymous):
        return str(node.this).upper()
    return node.sql_name() if isinstance(node, exp.Func) else type(node).__name__.upper()


def conjuncts(node: exp.Expr | None) -> list[exp.Expr]:
    """``a AND b AND c`` → ``[a, b, c]`` (a WHERE clause's or an ON clause's)."""
    if node is None:
        return []
    if isinstance(node, exp.Where):
        return conjuncts(node.this)
    if isinstance(node, exp.Paren) and isinstance(node.this, exp.And):
        return conjuncts(node.this)
    if isinstance(node, exp.And):
        return conjuncts(node.this) + conjuncts(node.expression)
    return [node]
