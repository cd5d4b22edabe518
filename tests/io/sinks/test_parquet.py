"""``to_parquet``: part files hold exactly the output rows; tables are refused; a quiet
stream is flushed on time; a part that cannot be written fails the query, losing no row."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

import streamnb as sn
from streamnb.engine.core import Context
from streamnb.engine.source import PartOwner, Reader, Source, refuse_owner
from streamnb.exceptions import SinkError
from streamnb.plan import Plan, SourceNode
from streamnb.stream import Stream
from tests.threads import streamnb_threads, wait_until


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


class Trickle(Source):
    """An unbounded source that sends its rows in one batch, then nothing: a quiet stream."""

    name, bounded = "trickle", False

    def __init__(self, rows: pl.DataFrame) -> None:
        self.rows, self.schema = rows, rows.schema

    def open(self, ctx: Context, *, owner: PartOwner | None = None) -> Reader:
        refuse_owner(self, owner)
        return _TrickleReader(self.rows)


class _TrickleReader(Reader):
    def __init__(self, rows: pl.DataFrame) -> None:
        self.rows: pl.DataFrame | None = rows

    def read(self, max_records: int, timeout: float) -> pl.DataFrame | None:
        rows, self.rows = self.rows, None
        if rows is None:
            time.sleep(timeout)
        return rows


def trickle(n: int) -> Stream:
    source = Trickle(pl.DataFrame({"x": range(n)}))
    return Stream(Plan(SourceNode((), source), source.schema, None, False))


def test_a_quiet_stream_is_flushed_on_time_without_another_batch(tmp_path: Path) -> None:
    query = trickle(1_000).to_parquet(tmp_path, flush_seconds=0.5).start()
    try:
        wait_until(lambda: bool(list(tmp_path.glob("part-*.parquet"))), timeout=10)
        assert pl.read_parquet(tmp_path / "*.parquet")["x"].to_list() == list(range(1_000))
        assert query.status()["state"] == "running"
    finally:
        query.stop()


def test_a_write_that_fails_at_stop_fails_the_query_and_keeps_its_rows(tmp_path: Path) -> None:
    out = tmp_path / "out"
    query = trickle(1_000).to_parquet(out).start()  # flushes every 10 s: the rows wait
    wait_until(lambda: query.status()["records_out"] == 1_000, timeout=10)
    shutil.rmtree(out)
    out.write_text("a file where the directory was")  # fails even as root
    query.stop()
    assert streamnb_threads() == []
    status = query.status()
    assert status["state"] == "failed"
    with pytest.raises(sn.QueryFailed, match="cannot write"):
        query.wait(1)
    assert isinstance(query.exception, SinkError)
    errors = query.errors()
    assert status["errors"] == errors.height == 1_000
    assert sorted(json.loads(r)["x"] for r in errors["record"]) == list(range(1_000))
    assert set(errors["source"]) == {f"to_parquet[{out}]"}
