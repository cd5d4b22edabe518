"""The core promise: windowed results equal record-at-a-time processing, for every batch size.

Random keys (nulls included), random out-of-order times, random delay and grace, every window
type and both emit modes, batch sizes from 1 to the whole input; the engine is compared with
the plain-Python reference in ``tests/oracle.py``.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from hypothesis import given
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

import streamnb as sn
from tests.oracle import reference

# The session cases run 200 examples, 600 queries, most of whose records are out of order by
# more than delay + grace (each such record that may link to a session is a run of its own:
# ~11 ms): 237 s and 265 s alone on the 2-core machine before lone late records were set aside
# in bulk, 106 s and 121 s side by side after; the default 300 s cut one when three xdist
# workers shared the machine (CI on 3 Dec). The budget is the time, not the examples: none
# is dropped.
SLOW_ORACLE_SECONDS = 900

AGGS = [
    pl.len().alias("n"),
    pl.col("v").count().alias("count"),
    pl.col("v").sum().alias("sum"),
    pl.col("v").min().alias("min"),
    pl.col("v").max().alias("max"),
    pl.col("v").mean().alias("mean"),
    pl.col("v").first().alias("first"),
    pl.col("v").last().alias("last"),
    pl.col("v").n_unique().alias("distinct"),
    pl.col("v").std().alias("std"),
    (pl.col("v") * 2).var(ddof=0).alias("var0"),
]


@st.composite
def records(draw: st.DrawFn) -> pl.DataFrame:
    """Records whose times drift forward with bounded jitter, some far out of order."""
    n = draw(st.integers(0, 80))
    keys = draw(st.lists(st.sampled_from(["a", "b", "c", None]), min_size=n, max_size=n))
    values = draw(st.lists(st.one_of(st.none(), st.integers(-50, 50)), min_size=n, max_size=n))
    steps = draw(st.lists(st.integers(-40, 30), min_size=n, max_size=n))
    times, now = [], 1_000
    for step in steps:
        now = max(0, now + step)
        times.append(now)
    return pl.DataFrame(
        {"k": keys, "t": times, "v": values}, schema={"k": pl.String, "t": pl.Int64, "v": pl.Int64}
    )


def run_engine(
    df: pl.DataFrame,
    spec: sn.windows.WindowSpec,
    *,
    by: list[str],
    delay: int,
    grace: int,
    emit: str,
    batch_size: int,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    stream = sn.from_records(df, timestamp="t", batch_size=batch_size)
    if delay:
        stream = stream.with_watermark("t", f"{delay}ms")
    query = stream.window(spec, by=by, grace=f"{grace}ms", emit=emit).agg(AGGS).start()
    query.wait()
    return query.result(), query.late()


def canonical(df: pl.DataFrame, by: list[str]) -> pl.DataFrame:
    return df.sort(["window_end", "window_start", *by], nulls_last=False, maintain_order=True)


def window_spec(kind: str, size: int, every: int, gap: int) -> sn.windows.WindowSpec:
    if kind == "tumbling":
        return sn.Tumbling(f"{size}ms")
    if kind == "hopping":
        return sn.Hopping(f"{size}ms", f"{every}ms")
    return sn.Session(f"{gap}ms")


SPECS = {
    "tumbling": st.builds(lambda s: ("tumbling", s, s, 0), st.integers(1, 60)),
    "hopping": st.builds(
        lambda s, e: ("hopping", max(s, e), e, 0), st.integers(1, 60), st.integers(1, 25)
    ),
    "session": st.builds(lambda g: ("session", 0, 0, g), st.integers(1, 40)),
}


@pytest.mark.slow  # 200 examples, each run at batch sizes 1, n and all
@pytest.mark.timeout(SLOW_ORACLE_SECONDS)
@pytest.mark.parametrize("kind", list(SPECS))
@given(data=st.data())
def test_engine_matches_record_at_a_time_reference(kind: str, data: st.DataObject) -> None:
    df = data.draw(records())
    _, size, every, gap = data.draw(SPECS[kind])
    delay = data.draw(st.integers(0, 30))
    grace = data.draw(st.integers(0, 30))
    by = data.draw(st.sampled_from([["k"], []]))
    emit = data.draw(st.sampled_from(["final", "update"]))
    batch = data.draw(st.integers(2, 40))
    spec = window_spec(kind, size, every, gap)

    expected = reference(
        df,
        time="t",
        kind=kind,
        size=size,
        every=every,
        gap=gap,
        delay=delay,
        grace=grace,
        by=by,
        aggs=AGGS,
    )
    expected_late = df[expected.late]
    for batch_size in (1, batch, max(df.height, 1)):
        result, late = run_engine(
            df, spec, by=by, delay=delay, grace=grace, emit=emit, batch_size=batch_size
        )
        if emit == "final":
            # order matters too: windows are emitted in closing order
            assert_frame_equal(result, expected.emitted, check_exact=False, rel_tol=1e-9)
        else:
            assert_frame_equal(
                canonical(result, by),
                canonical(expected.emitted, by),
                check_exact=False,
                rel_tol=1e-9,
            )
        assert_frame_equal(late, expected_late, check_dtypes=False)


def test_batch_cross_check_with_polars_group_by() -> None:
    """In-order data, nothing late: tumbling windows equal a polars group_by on floored times."""
    n = 20_000
    df = pl.DataFrame(
        {
            "t": pl.int_range(0, n * 7, 7, eager=True),
            "k": pl.int_range(0, n, eager=True) % 13,
            "v": (pl.int_range(0, n, eager=True) * 7919) % 1000,
        }
    )
    aggs = [
        pl.len().alias("n"),
        pl.col("v").sum().alias("s"),
        pl.col("v").max().alias("m"),
        pl.col("v").mean().alias("avg"),
        pl.col("v").n_unique().alias("d"),
    ]
    got = (
        sn.from_records(df, timestamp="t", batch_size=999)
        .window(sn.Tumbling("1s"), by="k")
        .agg(aggs)
        .collect()
    )
    want = (
        df.with_columns(window_start=(pl.col("t") // 1000) * 1000)
        .group_by("window_start", "k")
        .agg(aggs)
        .with_columns(window_end=pl.col("window_start") + 1000)
        .select(got.columns)
        .sort("window_end", "window_start", "k")
    )
    assert_frame_equal(got, want, check_exact=False, rel_tol=1e-12)


def test_datetime_event_time_in_microseconds_with_time_zone() -> None:
    times = pl.Series([0, 1_500_000, 10_200_000, 3_000_000, 25_000_000]).cast(
        pl.Datetime("us", "Europe/Paris")
    )
    df = pl.DataFrame({"ts": times, "v": [1, 2, 3, 4, 5]})
    out = (
        sn.from_records(df, timestamp="ts")
        .with_watermark("ts", "10s")
        .window(sn.Tumbling("10s"))
        .agg(pl.col("v").sum().alias("s"))
        .collect()
    )
    assert out.schema["window_start"] == pl.Datetime("us", "Europe/Paris")
    assert out.get_column("s").to_list() == [7, 3, 5]
    assert out.get_column("window_start").cast(pl.Int64).to_list() == [0, 10_000_000, 20_000_000]


@pytest.mark.slow  # 200 examples, each run at batch sizes 1, n and all
@pytest.mark.timeout(SLOW_ORACLE_SECONDS)
@pytest.mark.parametrize("kind", list(SPECS))
@given(data=st.data())
def test_partitioned_watermark_matches_reference(kind: str, data: st.DataObject) -> None:
    """Replays with a partition column: the watermark is the minimum over partitions."""
    df = data.draw(records())
    df = df.with_columns(
        part=pl.Series(
            data.draw(st.lists(st.sampled_from([0, 1, 2]), min_size=df.height, max_size=df.height)),
            dtype=pl.Int64,
        )
    )
    _, size, every, gap = data.draw(SPECS[kind])
    delay, grace = data.draw(st.integers(0, 20)), data.draw(st.integers(0, 20))
    spec = window_spec(kind, size, every, gap)
    expected = reference(
        df,
        time="t",
        kind=kind,
        size=size,
        every=every,
        gap=gap,
        delay=delay,
        grace=grace,
        by=["k"],
        aggs=AGGS,
        partition="part",
    )
    for batch_size in (1, data.draw(st.integers(2, 40)), max(df.height, 1)):
        stream = sn.from_records(df, timestamp="t", batch_size=batch_size, partition="part")
        query = (
            stream.with_watermark("t", f"{delay}ms")
            .window(spec, by="k", grace=f"{grace}ms")
            .agg(AGGS)
            .start()
        )
        query.wait()
        assert_frame_equal(query.result(), expected.emitted, check_exact=False, rel_tol=1e-9)
        assert_frame_equal(query.late(), df[expected.late], check_dtypes=False)


@pytest.mark.parametrize("kind", ["tumbling", "hopping"])
def test_many_small_batches_over_many_open_windows_match_the_reference(kind: str) -> None:
    """Hundreds of batches of a few records while many windows stay open: the partials pass
    through every stage of their frames (a batch's own, the merge of the newer ones, the
    merge of all, windows closing out of each) and still equal the reference."""
    rng = np.random.default_rng(7)
    n = 3_000
    times = np.maximum(0, np.arange(n) * 7 + rng.integers(-60, 60, n))
    df = pl.DataFrame(
        {
            "k": [f"k{x}" for x in rng.integers(0, 40, n)],
            "t": times,
            "v": rng.integers(-50, 50, n),
        },
        schema={"k": pl.String, "t": pl.Int64, "v": pl.Int64},
    )
    size, every = (200, 200) if kind == "tumbling" else (300, 100)
    spec = window_spec(kind, size, every, 0)
    expected = reference(
        df, time="t", kind=kind, size=size, every=every, gap=0, delay=400, grace=50,
        by=["k"], aggs=AGGS,
    )  # fmt: skip
    for batch_size in (3, 11):
        result, late = run_engine(
            df, spec, by=["k"], delay=400, grace=50, emit="final", batch_size=batch_size
        )
        assert_frame_equal(result, expected.emitted, check_exact=False, rel_tol=1e-9)
        assert_frame_equal(late, df[expected.late], check_dtypes=False)
