"""Tumbling and hopping windows (``streamnb.engine.windowing``) with a keyed state per open
window: a batch touches only its own windows' groups, a closing window takes only its own
state with it, and every emitted row is the one the small-state path emits (the
record-at-a-time oracle of ``test_windows_oracle`` checks both paths as well)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

import streamnb as sn
from streamnb.columns import visible
from streamnb.engine import checkpoint, state
from streamnb.engine.core import Context, Delta
from streamnb.engine.executor import Pipeline
from streamnb.engine.windowing import WindowOperator

AGGS = [
    pl.len().alias("n"),
    pl.col("v").sum().alias("sum"),
    pl.col("v").mean().alias("mean"),
    pl.col("v").last().alias("last"),
    pl.col("v").n_unique().alias("distinct"),  # combined by a group_by, not element-wise
    pl.col("v").std().alias("std"),
]


@pytest.fixture
def keyed_from(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Keyed state once a window operator holds more than 150 groups (mid-run below)."""
    monkeypatch.setattr(state, "KEYED_MIN", 150)
    monkeypatch.setattr(state, "KEYED_FROM", 0)
    yield


def never_keyed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(state, "KEYED_MIN", 10**12)


def records(n: int = 3_000, keys: int = 400, seed: int = 5) -> pl.DataFrame:
    """Times drifting forward with jitter (some records far out of order, so late), keys
    with nulls."""
    rng = np.random.default_rng(seed)
    times = np.arange(n) + 10_000 - rng.integers(0, 120, n) * (rng.random(n) < 0.2)
    k = pl.Series("k", rng.integers(0, keys, n)).cast(pl.String)
    return pl.DataFrame({"t": times, "k": k, "v": rng.integers(-50, 50, n)}).with_columns(
        pl.when(pl.col("v") % 17 == 0).then(None).otherwise(pl.col("k")).alias("k")
    )


def pipeline(stream: sn.Stream, out: list[pl.DataFrame]) -> tuple[Pipeline, WindowOperator]:
    def sink(delta: Delta) -> None:
        out.append(visible(delta.rows))

    pipe = Pipeline(stream.plan.root, Context(), sink)
    (op,) = [s.op for s in pipe.steps if isinstance(s.op, WindowOperator)]
    return pipe, op


def windowed(spec: sn.windows.WindowSpec, emit: str, df: pl.DataFrame) -> sn.Stream:
    return (
        sn.from_records(df.clear(), timestamp="t")
        .with_watermark("t", "40ms")
        .window(spec, by="k", grace="25ms", emit=emit)
        .agg(AGGS)
    )


def run(
    spec: sn.windows.WindowSpec, emit: str, df: pl.DataFrame, batch: int, cut: int | None = None
) -> tuple[pl.DataFrame, bool]:
    """Every emitted row in order, and whether the operator ended keyed. ``cut``: after that
    many batches, move the state into a new pipeline (a base snapshot, then one delta)."""
    out: list[pl.DataFrame] = []
    stream = windowed(spec, emit, df)
    pipe, op = pipeline(stream, out)
    chain = [checkpoint.snapshot(pipe)]
    keyed = False
    for i, start in enumerate(range(0, df.height, batch)):
        if i == cut:
            chain.append(checkpoint.snapshot(pipe, base=False))
            pipe, op = pipeline(stream, out)
            checkpoint.restore(pipe, chain)
        pipe.push(pipe.sources[0], df.slice(start, batch))
        keyed = keyed or op.stores is not None
    pipe.finish(pipe.sources[0])
    return pl.concat(out, how="diagonal_relaxed"), keyed


SPECS = [sn.Tumbling("800ms"), sn.Hopping("800ms", "200ms")]


@pytest.mark.parametrize("spec", SPECS, ids=["tumbling", "hopping"])
@pytest.mark.parametrize("emit", ["final", "update"])
@pytest.mark.parametrize("batch", [pytest.param(1, marks=pytest.mark.slow), 37, 500])
def test_keyed_windows_emit_what_the_small_state_emits(
    spec: sn.windows.WindowSpec, emit: str, batch: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    df = records(n=1_000 if batch == 1 else 3_000)
    with monkeypatch.context() as small:
        never_keyed(small)
        want, was_keyed = run(spec, emit, df, batch)
    assert not was_keyed and want.height
    monkeypatch.setattr(state, "KEYED_MIN", 150)
    monkeypatch.setattr(state, "KEYED_FROM", 0)
    got, keyed = run(spec, emit, df, batch)
    assert keyed  # the state moved to keyed windows mid-run
    assert_frame_equal(got, want, check_exact=False, rel_tol=1e-9)


@pytest.mark.usefixtures("keyed_from")
@pytest.mark.parametrize("spec", SPECS, ids=["tumbling", "hopping"])
@pytest.mark.parametrize("emit", ["final", "update"])
def test_a_restore_from_a_small_base_and_keyed_changes_continues_exactly(
    spec: sn.windows.WindowSpec, emit: str
) -> None:
    """The base is taken before any record (small state), the delta once keyed: the delta
    holds the changed groups of the open windows, and the restore drops closed windows."""
    df = records()
    whole, _ = run(spec, emit, df, 97)
    for cut in (3, 11, 20):
        moved, keyed = run(spec, emit, df, 97, cut=cut)
        assert keyed
        assert_frame_equal(moved, whole)


@pytest.mark.usefixtures("keyed_from")
def test_closing_a_window_leaves_the_other_windows_state_untouched() -> None:
    rng = np.random.default_rng(3)
    keys = rng.integers(0, 1_000, 2_000)
    first = pl.DataFrame({"t": rng.integers(0, 1_000, 2_000), "k": keys, "v": keys})
    second = first.with_columns(t=1_000 + pl.col("t") % 400)
    stream = (
        sn.from_records(first.clear(), timestamp="t")
        .with_watermark("t", "500ms")
        .window(sn.Tumbling("1s"), by="k")
        .agg(pl.len().alias("n"), pl.col("v").sum().alias("sum"))
    )
    out: list[pl.DataFrame] = []
    pipe, op = pipeline(stream, out)
    both = pl.concat([first, second.head(1_500)])
    for start in range(0, both.height, 100):  # more batches than the small state compacts after
        pipe.push(pipe.sources[0], both.slice(start, 100))
    assert op.stores is not None and sorted(op.stores) == [0, 1_000]
    later = op.stores[1_000]
    held = later.frame()
    later.settle()
    # a record at 2.1 s (watermark 1.6 s) closes window [0 s, 1 s) only, and opens [2 s, 3 s)
    pipe.push(pipe.sources[0], pl.DataFrame({"t": [2_100], "k": [7], "v": [7]}))
    assert sorted(op.stores) == [1_000, 2_000]
    assert sorted(op.starts) == [1_000, 2_000] and op.min_start == 1_000  # the heap of starts
    assert op.stores[1_000] is later
    assert_frame_equal(later.frame(), held)
    rows, deleted = later.changes()
    assert rows is None and deleted is None  # not one of its rows was written
    (closed,) = [f for f in out if f.height]
    want = (
        first.group_by("k")
        .agg(pl.len().alias("n"), pl.col("v").sum().alias("sum"))
        .with_columns(window_start=pl.lit(0), window_end=pl.lit(1_000))
    )
    assert_frame_equal(closed, want.select(closed.columns).sort("k"), check_dtypes=False)


def test_windows_without_keys_stay_one_frame(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without ``by`` a window is one row: there is nothing to key."""
    monkeypatch.setattr(state, "KEYED_MIN", -1)
    monkeypatch.setattr(state, "KEYED_FROM", 0)
    df = records()
    stream = sn.from_records(df.clear(), timestamp="t").window(sn.Tumbling("100ms")).agg(AGGS)
    out: list[pl.DataFrame] = []
    pipe, op = pipeline(stream, out)
    pipe.push(pipe.sources[0], df)
    assert op.stores is None
    pipe.finish(pipe.sources[0])
    assert sum(f.height for f in out) > 1


def test_a_small_state_closes_a_window_by_its_own_frames(monkeypatch: pytest.MonkeyPatch) -> None:
    """While small, each open window holds its own frames (by key, without its start). The
    windows before a batch's are merged at that batch, so a window that then closes takes
    its one frame: no group_by, no pass over the other windows, at the close. The count of
    rows held (what keying is decided on) follows every merge and close."""
    never_keyed(monkeypatch)
    df = pl.DataFrame({"t": np.arange(4_000) * 2, "k": (np.arange(4_000) % 97).astype(str)})
    df = df.with_columns(v=pl.lit(1))
    out: list[pl.DataFrame] = []
    pipe, op = pipeline(windowed(sn.Tumbling("800ms"), "final", df), out)
    merged: list[int] = []  # frames per merge, while the batch that closes a window runs
    combined = op._combined

    def spy(frames: list[pl.DataFrame]) -> pl.DataFrame:
        merged.append(len(frames))
        return combined(frames)

    closes = 0
    for start in range(0, df.height, 25):
        before = set(op.partials)
        merged.clear()
        monkeypatch.setattr(op, "_combined", spy)
        pipe.push(pipe.sources[0], df.slice(start, 25))
        monkeypatch.setattr(op, "_combined", combined)
        assert op.min_start == min(op.partials, default=None)
        assert op.rows == sum(f.height for frames in op.partials.values() for f in frames)
        for window, frames in op.partials.items():
            assert "window_start" not in frames[0].columns  # held once: the dict's key
            if window < max(op.partials):
                assert len(frames) == 1  # merged once a newer window took records
        gone = before - set(op.partials)
        if gone:
            closes += 1
            assert all(n == 1 for n in merged)  # the closing window's one frame, as it is
    assert closes >= 8
    emitted = pl.concat(out)
    want = df.group_by((pl.col("t") // 800 * 800).alias("s"), "k").agg(pl.len().alias("n"))
    got = emitted.select(pl.col("window_start").dt.epoch("ms").alias("s"), "k", "n")
    assert_frame_equal(got.sort("s", "k"), want.filter(pl.col("s") < 7_200).sort("s", "k"))
