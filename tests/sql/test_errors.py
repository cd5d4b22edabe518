"""What ``sn.sql`` does not translate raises ConfigError naming the construct and its place."""

from __future__ import annotations

import re

import polars as pl
import pytest

import streamnb as sn
from streamnb.exceptions import ConfigError

W = "TABLE(TUMBLE(TABLE events, DESCRIPTOR(t), INTERVAL '5' SECOND))"
HOP = "TABLE(HOP(TABLE events, DESCRIPTOR(t), INTERVAL '1' SECOND, INTERVAL '5' SECOND))"
CUMULATE = "TABLE(CUMULATE(TABLE events, DESCRIPTOR(t), INTERVAL '1' SECOND, INTERVAL '5' SECOND))"
BETWEEN = "e.t BETWEEN f.t - INTERVAL '0' SECOND AND f.t + INTERVAL '1' MILLISECOND"

# (SQL, the construct named in the message, line, column)
UNSUPPORTED = [
    ("SELECT k FROM events\nORDER BY k", "ORDER BY", 2, 1),
    ("SELECT k FROM events LIMIT 10", "LIMIT", 1, 22),
    ("SELECT DISTINCT k FROM events", "SELECT DISTINCT", 1, 8),
    ("SELECT k, ROW_NUMBER() OVER (PARTITION BY k ORDER BY t) FROM events", "OVER", 1, 24),
    ("SELECT k FROM events UNION ALL SELECT k FROM events", "UNION", 1, 22),
    ("SELECT k FROM events WHERE v IN (SELECT v FROM events)", "IN (subquery)", 1, 28),
    ("SELECT k FROM events\n  WHERE EXISTS (SELECT v FROM events)", "subquery", 2, 24),
    ("SELECT k FROM (SELECT k FROM events)", "subquery in FROM without an alias", 1, 23),
    ("SELECT FOO(v) FROM events", "function FOO", 1, 8),
    ("SELECT k FROM events WHERE k LIKE 'a%'", "LIKE", 1, 28),
    ("SELECT CASE WHEN v > 1 THEN 1 ELSE 0 END FROM events", "CASE", 1, 8),
    ("SELECT k, MEDIAN(v) FROM events GROUP BY k", "aggregate function MEDIAN", 1, 11),
    ("SELECT k, SUM(DISTINCT v) FROM events GROUP BY k", "SUM(DISTINCT", 1, 11),
    ("SELECT k FROM events WHERE SUM(v) > 3", "aggregate SUM", 1, 28),
    ("SELECT COUNT(*) FROM events", "aggregate without GROUP BY", 1, 8),
    ("SELECT COUNT(*) FROM events GROUP BY v % 2", "GROUP BY an expression", 1, 38),
    ("SELECT * FROM events e RIGHT JOIN names n ON e.k = n.k", "RIGHT OUTER JOIN", 1, 24),
    ("SELECT * FROM events e FULL OUTER JOIN names n ON e.k = n.k", "FULL OUTER JOIN", 1, 24),
    ("SELECT * FROM events e CROSS JOIN names n", "CROSS JOIN", 1, 30),
    ("SELECT k FROM events e JOIN names n USING (k)", "USING", 1, 37),
    ("SELECT * FROM names n JOIN events e ON n.k = e.k", "table on the left", 1, 23),
    ("SELECT * FROM events e JOIN events f ON e.k = f.k", "two streams without an interval", 1, 24),
    (
        "SELECT * FROM events e LEFT JOIN names n ON e.k = n.k AND e.v > 3",
        "LEFT JOIN condition",
        1,
        59,
    ),
    (
        f"SELECT * FROM events e JOIN events f ON e.k = f.k AND {BETWEEN}",
        "odd number of milliseconds",
        1,
        55,
    ),
    (f"SELECT COUNT(*) FROM {CUMULATE} GROUP BY window_start, window_end", "CUMULATE", 1, 43),
    (f"SELECT k, COUNT(*) FROM {W}\nGROUP BY k", "TUMBLE without GROUP BY window_start", 2, 1),
    (f"SELECT k, window_start FROM {HOP}", "HOP without GROUP BY", 1, 45),
    ("SELECT k FROM events QUALIFY v > 1", "QUALIFY", 1, 22),
    ("INSERT INTO x SELECT * FROM events", "statement INSERT", 1, 1),
    ("SELECT 1", "SELECT without FROM", 1, 1),
    (
        "SELECT k, TUMBLE_START(t, INTERVAL '1' SECOND) FROM events\n"
        "GROUP BY k, TUMBLE(t, INTERVAL '5' SECOND)",
        "TUMBLE_START(...) of another window than GROUP BY TUMBLE",
        1,
        11,
    ),
    (
        "SELECT k FROM events GROUP BY k, HOP(t, INTERVAL '5' SECOND)",
        "GROUP BY HOP with these arguments",
        1,
        38,
    ),
]


def _tables() -> dict[str, sn.Stream]:
    events = pl.DataFrame({"k": ["a"], "v": [1], "t": [0]})
    return {
        "events": sn.from_records(events, timestamp="t"),
        "names": sn.table_from_records([{"k": "a", "label": "A"}], key="k"),
    }


@pytest.mark.parametrize(("text", "construct", "line", "column"), UNSUPPORTED)
def test_unsupported_construct_is_named_with_its_place(
    text: str, construct: str, line: int, column: int
) -> None:
    with pytest.raises(ConfigError) as raised:
        sn.sql(text, **_tables())
    message = str(raised.value)
    assert construct in message
    assert "not supported in streaming SQL" in message
    assert f"(at line {line}, column {column})" in message


def test_syntax_error_gives_its_place() -> None:
    with pytest.raises(ConfigError, match=re.escape("SQL syntax error at line 2, column")):
        sn.sql("SELECT k\nFROM events WHERE (", **_tables())


def test_one_statement_only() -> None:
    with pytest.raises(ConfigError, match="one SQL statement, got 2"):
        sn.sql("SELECT k FROM events; SELECT k FROM events", **_tables())


def test_interval_units_and_window_sizes() -> None:
    sized = "SELECT k, COUNT(*) FROM TABLE(TUMBLE(TABLE events, DESCRIPTOR(t), {})) GROUP BY k, "
    sized += "window_start, window_end"
    with pytest.raises(ConfigError, match=r"not an INTERVAL .*\(at line 1, column 67\)"):
        sn.sql(sized.format("5"), **_tables())
    with pytest.raises(ConfigError, match=r"INTERVAL '1' YEAR .*\(at line 1, column 76\)"):
        sn.sql(sized.format("INTERVAL '1' YEAR"), **_tables())
    minutes = sn.sql(sized.format("INTERVAL '2 minutes'"), **_tables())
    assert 'sn.Tumbling("2m")' in str(minutes.explain())
