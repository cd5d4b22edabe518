"""What a query's FROM clause and its result are while a query is translated.

A :class:`Relation` is a stream (as :class:`Py`) and the SQL names of its columns, per table
alias, mapped to the stream's physical columns (a join renames and suffixes some). A
:class:`Result` is a query's output before its SELECT list is applied: a subquery used in
FROM keeps it pending when the list only picks and renames columns, so a window result stays
a window result (a window join needs that) and ``explain()`` stays short.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl
from sqlglot import exp

from streamnb.exceptions import ConfigError
from streamnb.sql.code import PL, Py
from streamnb.sql.dialect import position
from streamnb.stream import Stream

__all__ = ["Relation", "Result", "WindowCall", "column_name"]


@dataclass(frozen=True)
class WindowCall:
    """A windowing table function in FROM, not applied yet (GROUP BY decides how)."""

    kind: str  # TUMBLE, HOP or SESSION
    spec: Py  # sn.Tumbling(...) etc.
    size_ms: int  # the window size (a session's gap)
    partition: tuple[str, ...]  # SESSION's PARTITION BY, physical names
    node: exp.Expr


@dataclass(frozen=True)
class Relation:
    """A FROM item (or several joined): ``tables[alias][sql name]`` is a physical column."""

    stream: Py
    tables: dict[str, dict[str, str]]
    window: WindowCall | None = None
    late_ms: int | None = 0
    """How far behind the source watermark its rows' times may be (a window result's rows
    come out when their window closes): an interval join on them needs that much grace.
    None: without bound (a session's rows)."""

    def columns(self) -> list[str]:
        schema = self.stream.value.schema
        return list(schema.names()) if schema is not None else []

    def lookup(self, text: str, column: exp.Column) -> str:
        """The physical column that ``column`` (``name`` or ``alias.name``) names."""
        name, qualifier = column.name, column.table
        if qualifier and qualifier not in self.tables:
            raise ConfigError(
                f"unknown table {qualifier!r} in {qualifier}.{name} (at {position(text, column)});"
                f" tables here: {sorted(self.tables)}"
            )
        found = {
            cols[name]
            for alias, cols in self.tables.items()
            if (not qualifier or alias == qualifier) and name in cols
        }
        if not found:
            known = sorted({n for cols in self.tables.values() for n in cols})
            raise ConfigError(
                f"unknown column {column.sql()!r} (at {position(text, column)}); columns: {known}"
            )
        if len(found) > 1:
            raise ConfigError(
                f"column {name!r} is ambiguous (at {position(text, column)}): qualify it with "
                f"one of the tables {sorted(a for a, c in self.tables.items() if name in c)}"
            )
        return found.pop()

    def col(self, text: str, column: exp.Column) -> Py:
        return PL.call("col", self.lookup(text, column))


@dataclass
class Result:
    """A query's output: ``stream`` and its SELECT list (name, expression) not yet applied."""

    stream: Py
    select: list[tuple[str, Py]]
    late_ms: int | None = 0

    def is_projection(self) -> bool:
        """True when the SELECT list only picks (and renames) physical columns."""
        return all(column_name(expr) is not None for _, expr in self.select)

    def as_relation(self, alias: str) -> Relation:
        """This result as FROM item ``alias``."""
        if self.is_projection():
            columns = {name: column_name(expr) or name for name, expr in self.select}
            return Relation(self.stream, {alias: columns}, late_ms=self.late_ms)
        stream = self.applied()
        names = [name for name, _ in self.select]
        return Relation(stream, {alias: {n: n for n in names}}, late_ms=self.late_ms)

    def applied(self) -> Py:
        """The stream with the SELECT list applied (no ``select`` when it changes nothing)."""
        names = [name for name, _ in self.select]
        schema = self.stream.value.schema
        if (
            schema is not None
            and names == list(schema.names())
            and all(column_name(expr) == name for name, expr in self.select)
        ):
            return self.stream
        items: list[object] = []
        for name, expr in self.select:
            items.append(name if column_name(expr) == name else expr.call("alias", name))
        return self.stream.call("select", *items)

    def finish(self) -> Stream:
        """The query as a Stream that explains itself as its fluent code."""
        stream = self.applied()
        return Stream(stream.value.plan, code=stream.code)


def column_name(expr: Py) -> str | None:
    """The column a ``pl.col(name)`` expression picks; None for any other expression."""
    value = expr.value
    if isinstance(value, pl.Expr) and value.meta.is_column():
        return value.meta.output_name()
    return None
