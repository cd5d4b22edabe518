"""Session operator internals: the per-key reach of sorted links, and the oracle tests of
test_windows_oracle.py with the open sessions indexed from the first batch on (by default
they are one frame while few)."""

from __future__ import annotations

from collections.abc import Iterator

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from polars.testing import assert_series_equal

from streamnb.columns import SESSION_END, WINDOW_START
from streamnb.engine import state
from streamnb.engine.sessions import _reach
from tests.engine import test_windows_oracle as oracle


@pytest.fixture
def indexed_from_start() -> Iterator[None]:
    """Open sessions move to the index after the first batch that opens one."""
    saved = state.KEYED_MIN, state.KEYED_FROM
    state.KEYED_MIN, state.KEYED_FROM = -1, 0
    yield
    state.KEYED_MIN, state.KEYED_FROM = saved


@pytest.mark.slow
@pytest.mark.usefixtures("indexed_from_start")
def test_indexed_sessions_match_record_at_a_time_reference() -> None:
    oracle.test_engine_matches_record_at_a_time_reference(kind="session")


@pytest.mark.slow
@pytest.mark.usefixtures("indexed_from_start")
def test_indexed_sessions_with_partitions_match_reference() -> None:
    oracle.test_partitioned_watermark_matches_reference(kind="session")


@settings(max_examples=80, deadline=None)
@given(
    links=st.lists(
        st.tuples(st.sampled_from([None, 1, 2, 3]), st.sampled_from(["a", None]), st.integers()),
        max_size=30,
    ),
    scale=st.sampled_from([1, 10**9, 2**60]),
)
def test_reach_equals_a_cumulative_max_over_each_key(
    links: list[tuple[int | None, str | None, int]], scale: int
) -> None:
    """Small ends take the one-cumulative-max path; ends too far apart fall back to ``over``."""
    frame = pl.DataFrame(
        {
            "k": [k for k, _, _ in links],
            "j": [j for _, j, _ in links],
            SESSION_END: [(t % 1000) * scale // 1000 for _, _, t in links],
        },
        schema={"k": pl.Int64, "j": pl.String, SESSION_END: pl.Int64},
    ).with_columns(pl.col(SESSION_END).alias(WINDOW_START))
    for groups in (["k"], ["k", "j"], []):
        links_sorted = frame.sort([*groups, WINDOW_START], nulls_last=False)
        want = pl.col(SESSION_END).cum_max().shift(1)
        if groups:
            want = want.over(groups)
        assert_series_equal(
            links_sorted.select(_reach(links_sorted, groups).alias("r")).to_series(),
            links_sorted.select(want.alias("r")).to_series(),
        )
