"""Session operator internals: the per-key reach of sorted links (the oracle tests in
test_windows_oracle.py check the operator's output)."""

from __future__ import annotations

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st
from polars.testing import assert_series_equal

from streamnb.columns import SESSION_END, WINDOW_START
from streamnb.engine.sessions import _reach


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
