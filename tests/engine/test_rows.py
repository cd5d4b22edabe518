"""Keyed state's rows in files (``state="disk"``, ``streamnb.engine.rows.DiskRows``): every
column type a record holds reads back as written, against the same rows held in memory; a
query with ``state=`` a directory equals polars; the files go with the state."""

from __future__ import annotations

import gc
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

import streamnb as sn
from streamnb.engine.rows import DiskRows, MemoryRows
from streamnb.exceptions import ConfigError

COLUMNS = pl.DataFrame(
    {
        "i8": pl.Series([1, None, -3], dtype=pl.Int8),
        "u32": pl.Series([7, 8, None], dtype=pl.UInt32),
        "i64": [2**62, None, -(2**62)],
        "f": [1.5, float("nan"), None],
        "b": [True, None, False],
        "s": ["ünïcode", None, ""],
        "bin": [b"\x00\xff", b"", None],
        "d": [date(2024, 2, 29), None, date(1970, 1, 1)],
        "t": pl.Series(
            [datetime(2024, 1, 1, 12), None, datetime(1900, 1, 1)], dtype=pl.Datetime("ms", "UTC")
        ),
        "dur": [timedelta(seconds=3), None, timedelta(0)],
        "l": [[1, 2], None, []],  # no record holds it: kept in memory
    }
)


@settings(max_examples=40, deadline=None)
@given(
    writes=st.lists(
        st.tuples(st.lists(st.integers(0, 49), min_size=1, max_size=20), st.integers(0, 2)),
        max_size=30,
    )
)
def test_rows_on_disk_read_back_like_rows_in_memory(
    tmp_path_factory: pytest.TempPathFactory, writes: list[tuple[list[int], int]]
) -> None:
    disk, memory = DiskRows(tmp_path_factory.mktemp("rows")), MemoryRows()
    for rows in (disk, memory):
        rows.create(COLUMNS.get_columns())
        rows.reserve(50)
        everything = np.arange(50, dtype=np.int64)
        for name in COLUMNS.columns:  # every row starts as COLUMNS' first row
            rows.write(name, everything, COLUMNS.get_column(name).gather([0] * 50))
    for ids, source in writes:
        unique = np.array(sorted(set(ids)), dtype=np.int64)
        for rows in (disk, memory):
            for name in COLUMNS.columns:
                rows.write(name, unique, COLUMNS.get_column(name).gather([source] * len(unique)))
    picked = np.array([0, 49, 3, 3, 17], dtype=np.int64)
    assert_frame_equal(disk.gather(picked, COLUMNS.columns), memory.gather(picked, COLUMNS.columns))
    assert_frame_equal(disk.head(50, COLUMNS.columns), memory.head(50, COLUMNS.columns))
    disk.close()
    assert not disk.path.exists()


def test_a_column_that_widens_is_rewritten_on_disk(tmp_path: Path) -> None:
    rows = DiskRows(tmp_path)
    rows.create([pl.Series("k", [1], dtype=pl.Int32), pl.Series("s", ["a"])])
    rows.reserve(4)
    ids = np.arange(4, dtype=np.int64)
    rows.write("k", ids, pl.Series([1, 2, 3, 4], dtype=pl.Int32))
    rows.write("s", ids, pl.Series(["a", "b", None, "d"]))
    rows.write("k", np.array([2]), pl.Series([2**40]))  # Int64 now
    rows.write("k", np.array([0]), pl.Series([0.5]))  # and Float64
    want = pl.DataFrame({"k": [0.5, 2.0, 2.0**40, 4.0], "s": ["a", "b", None, "d"]})
    assert_frame_equal(rows.head(4, ["k", "s"]), want)


AGGS = (
    pl.len(),
    pl.col("v").sum(),
    pl.col("v").min().alias("v_min"),
    pl.col("t").max(),
    pl.col("f").mean(),
    pl.col("s").last(),
    pl.col("s").first().alias("s_first"),
)


def records(n: int, keys: int, seed: int = 1) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    return pl.DataFrame(
        {
            "k": [f"user-{i}" for i in rng.integers(0, keys, n)],
            "v": rng.integers(0, 100, n),
            "t": pl.datetime_range(
                datetime(2024, 1, 1),
                datetime(2024, 1, 1) + timedelta(seconds=n - 1),
                "1s",
                eager=True,
            ),
            "f": rng.random(n),
            "s": [None if i % 7 == 0 else f"x{i}" for i in range(n)],
        }
    )


@pytest.mark.parametrize("batch", [997, 5_000])
def test_a_running_aggregate_with_its_state_in_files_equals_polars(
    tmp_path: Path, batch: int
) -> None:
    """70 000 string keys: the state turns keyed (and into files) after the first batches."""
    df = records(200_000, 70_000)
    got = sn.from_records(df).group_by("k").agg(*AGGS).collect(state=tmp_path, max_batch=batch)
    want = df.group_by("k").agg(*AGGS)
    assert_frame_equal(got.sort("k"), want.sort("k").select(got.columns), check_dtypes=False)
    gc.collect()
    assert list(tmp_path.iterdir()) == []  # the files went with the query's state


def test_a_table_with_its_state_in_files_joins_like_one_in_memory(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    n = 120_000
    changes = pl.DataFrame(
        {
            "k": rng.integers(0, 60_000, n),
            "name": [f"customer {i}" for i in range(n)],
            "gone": rng.random(n) < 0.1,
        }
    )
    orders = pl.DataFrame({"k": rng.integers(0, 60_000, 50_000), "amount": rng.random(50_000)})

    def run(state: object) -> pl.DataFrame:
        table = sn.table_from_records(changes, key="k", deleted="gone")
        stream = sn.from_records(orders, batch_size=5000).join(table, on="k", how="left")
        return stream.collect(state=state).sort("amount")  # type: ignore[arg-type]

    assert_frame_equal(run(tmp_path), run("memory"))


@pytest.mark.parametrize("state", ["ram", 5, "/tmp/x"])
def test_a_bad_state_is_refused_by_name(state: object) -> None:
    stream = sn.from_records(pl.DataFrame({"k": [1]})).group_by("k").agg(pl.len())
    with pytest.raises(ConfigError, match=r"state=.* must be 'memory', 'disk' or a directory"):
        stream.collect(state=state)  # type: ignore[arg-type]
