"""Writing JSON values: one object per row, byte for byte as ``write_ndjson`` writes them."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

import polars as pl
import pytest

from streamnb.io.codecs.json_write import json_lines

ROWS = pl.DataFrame(
    {
        "i": [1, None, -(2**63)],
        "f": [0.1, float("nan"), None],
        "s": ['quote " and \\ back', "é ∑ 😀\nline", None],
        "b": [True, False, None],
        "d": [date(2024, 1, 1), None, date(1969, 12, 31)],
        "ts": [datetime(2024, 1, 1, 12, 30, 0, 123000), None, datetime(1970, 1, 1)],
        "tz": pl.Series(
            [datetime(2024, 1, 1, tzinfo=timezone.utc), None, None],
            dtype=pl.Datetime("ms", "UTC"),
        ),
        "dur": [timedelta(seconds=1), None, timedelta(0)],
        "dec": pl.Series([Decimal("1.50"), None, Decimal("-3.25")], dtype=pl.Decimal(10, 2)),
        "cat": pl.Series(["a", "b", None], dtype=pl.Categorical),
        "l": [[1, 2], [], None],
        "st": [{"x": 1, "y": "a"}, None, {"x": None, "y": "c"}],
    }
)


@pytest.mark.parametrize("height", [0, 1, 3])
def test_each_row_is_the_line_write_ndjson_writes(height: int) -> None:
    rows = ROWS.head(height)
    expected = [line.encode() for line in rows.write_ndjson().splitlines()]
    assert json_lines(rows) == expected
