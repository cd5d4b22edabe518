"""``to_parquet``: part files hold exactly the output rows; tables are refused."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

import streamnb as sn


def test_parts_hold_exactly_the_output_rows(tmp_path: Path) -> None:
    query = sn.nexmark(events=200_000).window(sn.Tumbling("1s"), by="channel").agg(pl.len())
    expected = query.collect()
    written = query.to_parquet(tmp_path / "out", rows_per_file=5_000).collect()
    assert_frame_equal(written, expected)
    parts = sorted((tmp_path / "out").glob("part-*.parquet"))
    assert len(parts) > 1
    assert_frame_equal(pl.concat([pl.read_parquet(p) for p in parts]), expected)
    assert not list((tmp_path / "out").glob("*.tmp"))


def test_a_second_run_adds_parts_instead_of_overwriting(tmp_path: Path) -> None:
    stream = sn.from_records([{"x": i} for i in range(10)]).to_parquet(tmp_path)
    stream.collect()
    stream.collect()
    assert pl.read_parquet(tmp_path / "*.parquet").height == 20


def test_stopping_a_query_flushes_its_buffer(tmp_path: Path) -> None:
    query = sn.nexmark(rate=5_000).select("auction", "price").to_parquet(tmp_path).start()
    deadline = 50
    while query.status()["records_in"] == 0 and deadline:
        query.wait(0.1)
        deadline -= 1
    query.stop()
    assert query.status()["state"] == "stopped"
    assert pl.read_parquet(tmp_path / "*.parquet").height == query.status()["records_out"] > 0


def test_tables_are_refused_with_a_reason(tmp_path: Path) -> None:
    table = sn.from_records([{"k": 1}]).group_by("k").agg(pl.len())
    with pytest.raises(sn.ConfigError, match="table"):
        table.to_parquet(tmp_path)
