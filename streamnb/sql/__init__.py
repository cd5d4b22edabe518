"""Streaming SQL: ``sn.sql(text, **streams)`` translates Flink's streaming SQL to the fluent query.

::

    sn.sql(
        '''SELECT auction, COUNT(*) AS bids, window_start, window_end
           FROM TABLE(TUMBLE(TABLE bid, DESCRIPTOR(dateTime), INTERVAL '10' SECOND))
           GROUP BY auction, window_start, window_end''',
        bid=sn.nexmark(events=100_000),
    )

The result is the :class:`~streamnb.Stream` the fluent API builds (``.explain()`` shows its
code), so it runs everywhere a fluent query does. What is translated, and how:

* ``SELECT a, b * 2 AS c FROM t WHERE p`` → ``t.filter(p).select("a", (pl.col("b") * 2)
  .alias("c"))``;
* ``GROUP BY k`` with aggregates → ``.group_by("k").agg(...)`` (a running aggregate: a table);
* ``TABLE(TUMBLE(TABLE t, DESCRIPTOR(c), size))``, ``HOP(..., slide, size)``,
  ``SESSION(TABLE t PARTITION BY k, ..., gap)`` with ``GROUP BY window_start, window_end, k``
  → ``.window(sn.Tumbling(size) | sn.Hopping(size, slide) | sn.Session(gap), by="k")
  .agg(...)``; without GROUP BY, a TUMBLE adds each record's ``window_start``/``window_end``;
  Flink's legacy ``GROUP BY TUMBLE(c, size)`` with ``TUMBLE_START(...)`` (``HOP``, ``SESSION``)
  is the same;
* ``COUNT(*)`` ``COUNT(x)`` ``COUNT(DISTINCT x)`` ``SUM`` ``MIN`` ``MAX`` ``AVG``
  ``FIRST_VALUE`` ``LAST_VALUE`` → ``pl.len()`` ``.count()`` ``.n_unique()`` ``.sum()``
  ``.min()`` ``.max()`` ``.mean()`` ``.first()`` ``.last()``;
* ``s JOIN table ON s.k = table.k`` (or ``LEFT JOIN``) → ``s.join(table, on="k")``;
* ``s JOIN s2 ON ... AND s.t BETWEEN s2.t - i AND s2.t + i`` → ``s.join(s2, on=...,
  within=i)`` (an interval join; the condition may be in WHERE; unequal bounds centre the
  interval on a shifted ``s2.t``, see :mod:`streamnb.sql.joins`);
* two window results ``ON window_start, window_end`` and their keys → a window join;
* subqueries ``(SELECT ...) AS t`` in FROM and JOIN, and ``WITH t AS (...)``.

Differences from Flink: an unnamed aggregate keeps polars' name (``MAX(price)`` → ``price``)
while it is free; ``/`` is true division; ``COUNT(DISTINCT x)`` counts a null as a
value (polars' ``n_unique``); a windowing table function's time column becomes the event
time (``with_watermark(column)``, delay 0) unless it already is; an interval join of a window
result gets ``grace=`` its window size (its rows come out when their window closes).
Anything else (ORDER BY, LIMIT, OVER, UNION, outer joins other than LEFT to a table,
CUMULATE, unknown functions, ...) raises :class:`~streamnb.ConfigError` naming the construct
and its line and column.
"""

from __future__ import annotations

from typing import Any

from streamnb.capture import capture
from streamnb.exceptions import ConfigError
from streamnb.stream import Stream

__all__ = ["headless_cell", "sql", "tables"]

# sqlglot loads on first use (about a fifth of ``import streamnb``'s time otherwise).


def sql(text: str, /, **streams: Stream) -> Stream:
    """The streaming query of SQL ``text``; its table names are the keyword arguments.

    Parameters
    ----------
    text
        One ``SELECT`` query in Flink's streaming SQL.
    **streams
        The tables it reads, by name: ``sn.sql("SELECT * FROM bid", bid=stream)``. A stream
        with keys (a running aggregate, ``sn.table_from_*``) is a table to join.

    Returns
    -------
    Stream
        The fluent query it translates to; ``.explain()`` shows its code.
    """
    if not isinstance(text, str):
        raise ConfigError(f"sn.sql() takes the SQL text, got {type(text).__name__}")
    from streamnb.sql.dialect import parse
    from streamnb.sql.translate import Translator

    return Translator(text, streams).statement(parse(text)).finish()


def tables(text: str) -> list[str]:
    """The table names SQL ``text`` reads (not its ``WITH`` names), in order of appearance:
    what ``%%stream_sql`` looks up in the notebook."""
    from sqlglot import exp

    from streamnb.sql.dialect import parse

    tree = parse(text)
    views = {cte.alias for cte in tree.find_all(exp.CTE)}
    names: list[str] = []
    for table in tree.find_all(exp.Table):  # TUMBLE(TABLE t, ...) holds a Table too
        name = table.name if isinstance(table.this, exp.Identifier) else None
        if name is not None and name not in views and name not in names:
            names.append(name)
    return names


def headless_cell(namespace: dict[str, Any], line: str, cell: str) -> Any:
    """A ``%%stream_sql NAME ...`` cell run without a kernel (a worker rebuilding a notebook,
    an exported job): the query over the namespace's streams, captured under NAME."""
    import argparse
    import shlex

    parser = argparse.ArgumentParser(prog="%%stream_sql", add_help=False)
    parser.add_argument("name")
    parser.add_argument("--show", action="store_true")
    parser.add_argument("--chart")
    try:
        args = parser.parse_args(shlex.split(line))
    except (SystemExit, ValueError):
        raise ConfigError(f"%%stream_sql {line}: bad arguments") from None
    names = tables(cell)
    missing = [n for n in names if not isinstance(namespace.get(n), Stream)]
    if missing:
        raise ConfigError(f"%%stream_sql {args.name}: no Stream named {missing[0]!r}")
    return capture(sql(cell, **{n: namespace[n] for n in names}), args.name)
