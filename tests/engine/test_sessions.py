"""Session operator internals: the per-key reach of sorted links, and the oracle tests of
test_windows_oracle.py with the open sessions indexed from the first batch on (by default
they are one frame while few)."""

from __future__ import annotations

from collections.abc import Iterator

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal, assert_series_equal

import streamnb as sn
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
@pytest.mark.timeout(oracle.SLOW_ORACLE_SECONDS)
@pytest.mark.usefixtures("indexed_from_start")
def test_indexed_sessions_match_record_at_a_time_reference() -> None:
    oracle.test_engine_matches_record_at_a_time_reference(kind="session")


@pytest.mark.slow
@pytest.mark.timeout(oracle.SLOW_ORACLE_SECONDS)
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


FIRST_BATCH = [("A", 180), ("A", 190), ("B", 190), ("B", 194), ("X", 195)]
"""Sessions A [180, 190] and B [190, 194] held, the watermark at 195 (gap 10, no delay)."""


@pytest.mark.parametrize("indexed", [False, True])
@pytest.mark.parametrize(
    ("second", "late"),
    [
        # B's suspect is its run 1, A's ordinary record its run 0: it extends A's session to
        # 199, which A's suspect at 185 (run 1) reaches; taken before A's run 0, the suspect
        # would find [180, 190] closed by then (190 + gap <= 205) and be late
        ([("B", 192), ("A", 199), ("X", 205), ("A", 185)], 0),
        # one step holds B's suspect (watermark 195) and A's (205): A's is late, since
        # [180, 190] is closed at its own watermark, though open at B's
        ([("B", 192), ("X", 205), ("A", 185)], 1),
    ],
)
def test_each_keys_runs_go_in_its_own_order_and_at_its_own_watermark(
    indexed: bool, second: list[tuple[str, int]], late: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch is taken in steps, each holding every key's next run (streamnb/engine/
    sessions.py): a key's runs must go in its own order, each against the sessions open at
    its own watermark, whatever the other keys of the step do. Checked against the
    record-at-a-time reference, late records included."""
    from tests.oracle import reference

    if indexed:
        monkeypatch.setattr(state, "KEYED_MIN", -1)
        monkeypatch.setattr(state, "KEYED_FROM", 0)
    rows = FIRST_BATCH + second
    df = pl.DataFrame(
        {"k": [k for k, _ in rows], "t": [t for _, t in rows], "v": list(range(len(rows)))},
        schema={"k": pl.String, "t": pl.Int64, "v": pl.Int64},
    )
    want = reference(df, time="t", kind="session", gap=10, by=["k"], aggs=oracle.AGGS)
    assert len(want.late) == late, "the case is not the one described"
    result, got_late = oracle.run_engine(
        df, sn.Session("10ms"), by=["k"], delay=0, grace=0, emit="final", batch_size=5
    )
    assert_frame_equal(got_late, df[want.late], check_dtypes=False)
    assert_frame_equal(result, want.emitted, check_exact=False, rel_tol=1e-9)
