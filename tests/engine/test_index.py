"""HashRuns: many rows per key hash, found by hash, expiring in time order."""

from __future__ import annotations

import numpy as np
import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from streamnb.engine.index import HashRuns


def _runs() -> HashRuns:
    return HashRuns(pl.DataFrame(schema={"k": pl.Int64, "t": pl.Int64, "id": pl.Int64}))


def _add(runs: HashRuns, rows: pl.DataFrame) -> None:
    runs.add(rows, rows.get_column("k").to_numpy().astype(np.uint64), rows.get_column("t"))


def _sorted(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.sort("id")


def test_find_returns_every_live_row_of_the_hashes_over_all_runs() -> None:
    runs = _runs()
    _add(runs, pl.DataFrame({"k": [1, 2, 1], "t": [5, 6, 7], "id": [0, 1, 2]}))
    _add(runs, pl.DataFrame({"k": [3, 1], "t": [8, 9], "id": [3, 4]}))
    hits = runs.find(np.array([1, 3, 99], dtype=np.uint64))
    assert sorted(hits.rows.get_column("id").to_list()) == [0, 2, 3, 4]
    assert len(runs) == 5


def test_killed_rows_are_not_found_again_and_newer_runs_are_told_apart() -> None:
    runs = _runs()
    _add(runs, pl.DataFrame({"k": [1, 1, 2], "t": [5, 6, 7], "id": [0, 1, 2]}))
    mark = runs.mark()
    _add(runs, pl.DataFrame({"k": [1], "t": [9], "id": [3]}))
    hits = runs.find(np.array([1], dtype=np.uint64))
    ids = hits.rows.get_column("id").to_numpy()
    assert hits.older(mark).tolist() == [i < 3 for i in ids]
    runs.kill(hits, np.flatnonzero(ids == 1))
    assert sorted(runs.find(np.array([1], dtype=np.uint64)).rows["id"].to_list()) == [0, 3]
    assert runs.since(mark).get_column("id").to_list() == [3]
    assert len(runs) == 3


def test_expire_takes_the_rows_due_once_and_low_bounds_the_rest() -> None:
    runs = _runs()
    _add(runs, pl.DataFrame({"k": [1, 2, 3], "t": [30, 10, 20], "id": [0, 1, 2]}))
    _add(runs, pl.DataFrame({"k": [1], "t": [15], "id": [3]}))
    assert runs.low() == 10
    gone = runs.expire(15)
    assert gone is not None and sorted(gone.get_column("id").to_list()) == [1, 3]
    again = runs.expire(15)
    assert again is not None and again.height == 0
    assert runs.low() == 20
    assert runs.expire(100, take=False) is None
    assert len(runs) == 0 and runs.low() is None
    assert runs.frame().columns == ["k", "t", "id"]


@settings(max_examples=60, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.lists(st.tuples(st.integers(0, 6), st.integers(0, 50)), max_size=12),
            st.lists(st.integers(0, 6), max_size=3),
            st.integers(0, 50),
        ),
        max_size=12,
    )
)
def test_matches_a_plain_frame(steps: list[tuple[list[tuple[int, int]], list[int], int]]) -> None:
    """Adds, finds + kills (a key's rows with an even id), expiries and compactions, against
    a frame that does the same by filters."""
    runs, plain, next_id = _runs(), _runs().empty, 0
    for rows, kill_keys, until in steps:
        batch = pl.DataFrame(
            {
                "k": [k for k, _ in rows],
                "t": [t for _, t in rows],
                "id": list(range(next_id, next_id + len(rows))),
            },
            schema=plain.schema,
        )
        next_id += len(rows)
        _add(runs, batch)
        plain = pl.concat([plain, batch])
        hashes = np.array(kill_keys, dtype=np.uint64)
        hits = runs.find(hashes)
        want = plain.filter(pl.col("k").is_in(kill_keys))
        assert_frame_equal(_sorted(hits.rows), _sorted(want))
        doomed = np.flatnonzero(hits.rows.get_column("id").to_numpy() % 2 == 0)
        runs.kill(hits, doomed)
        plain = plain.filter(~(pl.col("k").is_in(kill_keys) & (pl.col("id") % 2 == 0)))
        gone = runs.expire(until)
        assert gone is not None
        assert_frame_equal(_sorted(gone), _sorted(plain.filter(pl.col("t") <= until)))
        plain = plain.filter(pl.col("t") > until)
        runs.compact()
        assert_frame_equal(_sorted(runs.frame()), _sorted(plain))
        assert len(runs) == plain.height
