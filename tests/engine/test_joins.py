"""Joins against plain-Python record-at-a-time references, for random batch sizes.

A join's inputs are merged by event time (docs/semantics.md §3.9), whatever the batch sizes:
the reference replays that merge (:func:`tests.oracle.merged`) record by record.
"""

from __future__ import annotations

from typing import Any

import polars as pl
import pytest
from hypothesis import given
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

import streamnb as sn
from streamnb.engine import joins
from tests.oracle import interval_reference, merged

pytestmark = pytest.mark.usefixtures("state_stores")  # every state representation

KEYS = st.sampled_from(["a", "b", "c", None])


def canonical(df: pl.DataFrame) -> pl.DataFrame:
    return df.sort(df.columns, nulls_last=True)


# -- stream–table ------------------------------------------------------------------------------


@given(
    stream=st.lists(st.tuples(KEYS, st.integers(0, 99)), max_size=40),
    table=st.lists(st.tuples(KEYS, st.integers(0, 9)), max_size=20),
    how=st.sampled_from(["inner", "left"]),
    bl=st.integers(1, 15),
    br=st.integers(1, 15),
)
def test_stream_table_join_meets_the_row_current_at_arrival(
    stream: list[tuple[Any, int]], table: list[tuple[Any, int]], how: str, bl: int, br: int
) -> None:
    events = [{"k": k, "v": v} for k, v in stream]
    rows = [{"k": k, "w": w} for k, w in table]
    expected: list[dict[str, Any]] = []
    current: dict[Any, int] = {}
    # a bounded table is read to its end before any stream record joins it (§3.10)
    for side, row in [(1, r) for r in rows] + [(0, e) for e in events]:
        if side == 1:
            current[row["k"]] = row["w"]
        elif row["k"] is not None and row["k"] in current:
            expected.append({**row, "w": current[row["k"]]})
        elif how == "left":
            expected.append({**row, "w": None})
    left = sn.from_records(events, batch_size=bl, schema={"k": pl.String, "v": pl.Int64})
    right = sn.table_from_records(
        rows, key="k", batch_size=br, schema={"k": pl.String, "w": pl.Int64}
    )
    got = left.join(right, on="k", how=how).collect()  # type: ignore[arg-type]
    want = pl.DataFrame(expected, schema={"k": pl.String, "v": pl.Int64, "w": pl.Int64})
    assert_frame_equal(got, want)  # in the stream's order, whatever the batch sizes


def test_a_running_aggregate_is_a_table() -> None:
    clicks = sn.from_records([{"user": u} for u in "abacab"], batch_size=2)
    counts = clicks.group_by("user").agg(pl.len().alias("clicks"))
    later = sn.from_records([{"user": u, "n": i} for i, u in enumerate("abcd")], batch_size=1)
    got = later.join(counts, on="user", how="left").collect()
    # the table side is bootstrapped: every click is counted before `later` is read (§3.10)
    assert got.to_dicts() == [
        {"user": "a", "n": 0, "clicks": 3},
        {"user": "b", "n": 1, "clicks": 2},
        {"user": "c", "n": 2, "clicks": 1},
        {"user": "d", "n": 3, "clicks": None},
    ]


# -- interval join -----------------------------------------------------------------------------


@st.composite
def timed(draw: st.DrawFn, value: str) -> list[dict[str, Any]]:
    n = draw(st.integers(0, 30))
    now, rows = 1_000, []
    for _ in range(n):
        now = max(0, now + draw(st.integers(-30, 20)))
        rows.append({"k": draw(KEYS), "t": now, value: draw(st.integers(0, 9))})
    return rows


@pytest.mark.parametrize("how", ["inner", "left"])
@given(
    left=timed("v"),
    right=timed("x"),
    within=st.integers(0, 25),
    grace=st.integers(0, 15),
    delay=st.integers(0, 15),
    bl=st.integers(1, 10),
    br=st.integers(1, 10),
)
def test_interval_join_matches_reference(
    how: str,
    left: list[dict[str, Any]],
    right: list[dict[str, Any]],
    within: int,
    grace: int,
    delay: int,
    bl: int,
    br: int,
) -> None:
    want, late = interval_reference(
        merged([left, right], lambda r: r["t"]), within=within, grace=grace, delay=delay, how=how
    )
    ls = sn.from_records(left, batch_size=bl, schema={"k": pl.String, "t": pl.Int64, "v": pl.Int64})
    rs = sn.from_records(
        right, batch_size=br, schema={"k": pl.String, "t": pl.Int64, "x": pl.Int64}
    )
    joined = ls.with_watermark("t", f"{delay}ms").join(
        rs.with_watermark("t", f"{delay}ms"),
        on="k",
        how=how,  # type: ignore[arg-type]
        within=f"{within}ms",
        grace=f"{grace}ms",
    )
    query = joined.start()
    query.wait(30)
    schema = {"k": pl.String, "t": pl.Int64, "v": pl.Int64, "t_right": pl.Int64, "x": pl.Int64}
    assert_frame_equal(canonical(query.result()), canonical(pl.DataFrame(want, schema=schema)))
    late_schema = {"k": pl.String, "t": pl.Int64, "v": pl.Int64, "x": pl.Int64}
    got_late = query.late()
    assert got_late.height == len(late)
    if late:
        assert_frame_equal(
            canonical(got_late.select(sorted(got_late.columns))),
            canonical(
                pl.DataFrame(late, schema=late_schema, strict=False).select(
                    sorted(got_late.columns)
                )
            ),
            check_dtypes=False,
        )


@pytest.fixture
def a_frame_per_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each batch an interval join keeps is a frame of its own (by default, small batches
    share one): eviction and the frames a batch reads are then exercised frame by frame."""
    monkeypatch.setattr(joins, "_CHUNK_ROWS", 1)


@pytest.mark.usefixtures("a_frame_per_batch")
@pytest.mark.parametrize("how", ["inner", "left"])
def test_interval_join_with_a_frame_per_batch_matches_reference(how: str) -> None:
    test_interval_join_matches_reference(how=how)


# -- window join -------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["inner", "left"])
@given(left=timed("v"), right=timed("x"), bl=st.integers(1, 10), br=st.integers(1, 10))
def test_window_join_equals_joining_the_final_windows(
    how: str, left: list[dict[str, Any]], right: list[dict[str, Any]], bl: int, br: int
) -> None:
    def windows(rows: list[dict[str, Any]], col: str, batch: int) -> sn.Stream:
        schema = {"k": pl.String, "t": pl.Int64, col: pl.Int64}
        return (
            sn.from_records(rows, timestamp="t", batch_size=batch, schema=schema)
            .window(sn.Tumbling("20ms"), by="k")
            .agg(pl.col(col).sum().alias(f"sum_{col}"))
        )

    lw, rw = windows(left, "v", bl), windows(right, "x", br)
    want = lw.collect().join(rw.collect(), on=["window_start", "window_end", "k"], how=how)
    got = lw.join(rw, on="k", how=how).collect()  # type: ignore[arg-type]
    assert_frame_equal(canonical(got), canonical(want))


# -- table–table -------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["inner", "left"])
@given(
    left=st.lists(st.tuples(KEYS, st.integers(0, 9)), max_size=25),
    right=st.lists(st.tuples(KEYS, st.integers(0, 9)), max_size=25),
    bl=st.integers(1, 8),
    br=st.integers(1, 8),
)
def test_table_table_join_is_the_join_of_the_latest_rows(
    how: str, left: list[tuple[Any, int]], right: list[tuple[Any, int]], bl: int, br: int
) -> None:
    lt = sn.table_from_records(
        [{"k": k, "a": a} for k, a in left],
        key="k",
        batch_size=bl,
        schema={"k": pl.String, "a": pl.Int64},
    )
    rt = sn.table_from_records(
        [{"k": k, "b": b} for k, b in right],
        key="k",
        batch_size=br,
        schema={"k": pl.String, "b": pl.Int64},
    )
    latest_l = {k: a for k, a in left}
    latest_r = {k: b for k, b in right}
    rows = [
        {"k": k, "a": a, "b": latest_r.get(k) if k is not None else None}
        for k, a in latest_l.items()
    ]
    if how == "inner":
        rows = [r for r in rows if r["k"] is not None and r["k"] in latest_r]
    want = pl.DataFrame(rows, schema={"k": pl.String, "a": pl.Int64, "b": pl.Int64})
    got = lt.join(rt, on="k", how=how).collect()  # type: ignore[arg-type]
    assert_frame_equal(canonical(got), canonical(want))


# -- definition errors ---------------------------------------------------------------------------


def test_join_definition_errors() -> None:
    s = sn.from_records([{"k": "a", "t": 1}], timestamp="t")
    table = sn.table_from_records([{"k": "a", "w": 1}], key="k")
    with pytest.raises(sn.ConfigError, match="within"):
        s.join(s, on="k")
    with pytest.raises(sn.ConfigError, match="keyed by"):
        s.with_columns(j=pl.lit("a")).join(table.with_columns(j=pl.lit("x")), on="j")
    with pytest.raises(sn.ConfigError, match="how"):
        s.join(table, on="k", how="outer")  # type: ignore[arg-type]
    with pytest.raises(sn.ConfigError, match="'nope'"):
        s.join(table, on="nope")
    with pytest.raises(sn.ConfigError, match="table joins a table"):
        table.join(s, on="k")


# -- tables are bootstrapped (docs/semantics.md §3.10) -----------------------------------------


@pytest.mark.parametrize("batch", [1_000, 7_919, 50_000])
def test_a_bounded_table_is_read_to_its_end_before_the_stream_is_joined(batch: int) -> None:
    n = 60_000
    table = sn.table_from_records(
        pl.DataFrame({"k": range(n), "v": [2 * i for i in range(n)]}), key="k", batch_size=batch
    )
    stream = sn.from_records(pl.DataFrame({"k": range(n)}), batch_size=batch)
    joined = stream.join(table, on="k").collect()
    assert joined.height == n
    assert (joined["v"] == 2 * joined["k"]).all()


def test_table_records_can_be_tombstones() -> None:
    table = sn.table_from_records(
        [
            {"cid": 1, "name": "ann", "gone": False},
            {"cid": 2, "name": "bob", "gone": None},
            {"cid": 1, "name": None, "gone": True},  # ann leaves
            {"cid": 3, "name": "cy", "gone": False},
            {"cid": 3, "name": None, "gone": True},
            {"cid": 3, "name": "cy again", "gone": False},  # and comes back
        ],
        key="cid",
        deleted="gone",
        batch_size=1,
    )
    assert table.columns == ["cid", "name"]
    assert table.collect().sort("cid").to_dicts() == [
        {"cid": 2, "name": "bob"},
        {"cid": 3, "name": "cy again"},
    ]
    orders = sn.from_records([{"oid": i, "cid": c} for i, c in enumerate([1, 2, 3, 4])])
    joined = orders.join(table, on="cid", how="left").collect()
    assert joined["name"].to_list() == [None, "bob", "cy again", None]


@pytest.mark.parametrize(
    ("deleted", "message"),
    [("nope", "no column 'nope'"), ("name", "must be boolean"), ("cid", "cannot be a key")],
)
def test_a_bad_tombstone_column_is_named(deleted: str, message: str) -> None:
    rows = [{"cid": 1, "name": "ann", "flag": True}]
    with pytest.raises(sn.ConfigError, match=message):
        sn.table_from_records(rows, key="cid", deleted=deleted)


def test_status_shows_no_table_loading_once_done() -> None:
    table = sn.table_from_records([{"k": 1, "v": 1}], key="k")
    query = sn.from_records([{"k": 1}]).join(table, on="k").start()
    assert query.wait(timeout=30)
    assert query.status()["loading"] == {}
    assert query.result().to_dicts() == [{"k": 1, "v": 1}]
