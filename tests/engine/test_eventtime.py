"""The watermark before each record, computed with numpy, against the polars expressions it
replaced (kept as the path for batches with nulls) and against a record-at-a-time loop."""

from __future__ import annotations

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from streamnb.engine.core import NEG_INF, Partitions
from streamnb.engine.eventtime import WatermarkTracker, watermarks_before

batches = st.lists(
    st.lists(st.tuples(st.integers(0, 3), st.integers(-50, 200)), min_size=1, max_size=30),
    min_size=1,
    max_size=4,
)


@settings(max_examples=150, deadline=None)
@given(
    batches=batches,
    assigned=st.sets(st.integers(0, 4), max_size=4),
    idle=st.sets(st.integers(0, 4), max_size=2),
    delay=st.integers(0, 20),
)
def test_partitioned_watermarks_equal_the_expressions(
    batches: list[list[tuple[int, int]]], assigned: set[int], idle: set[int], delay: int
) -> None:
    fast = WatermarkTracker(delay, Partitions(assigned=set(assigned), idle=set(idle)))
    slow = WatermarkTracker(delay, Partitions(assigned=set(assigned), idle=set(idle)))
    for batch in batches:
        parts = pl.Series("p", [p for p, _ in batch], dtype=pl.Int64)
        times = pl.Series("t", [t for _, t in batch], dtype=pl.Int64)
        got = fast.before_each(times, parts)
        want = slow._partitioned_exprs(times, parts, slow.partitions.active(slow.scope))
        slow.max_time = max(slow.max_time or NEG_INF, int(times.max()))  # type: ignore[arg-type]
        assert got.to_list() == want.to_list()
        assert (fast.current, fast.part_max) == (slow.current, slow.part_max)


@settings(max_examples=150, deadline=None)
@given(
    times=st.lists(st.integers(-1000, 1000), min_size=1, max_size=40),
    prev=st.none() | st.integers(-1000, 1000),
    delay=st.integers(0, 50),
)
def test_watermarks_before_are_the_maximum_before_each_record(
    times: list[int], prev: int | None, delay: int
) -> None:
    want, seen = [], prev
    for t in times:  # one record at a time
        want.append(NEG_INF if seen is None else seen - delay)
        seen = t if seen is None else max(seen, t)
    got = watermarks_before(pl.Series("t", times, dtype=pl.Int64), prev, delay)
    assert got.to_list() == want
