"""streamnb.frames: the sequential variants give the frame polars' own methods give."""

from __future__ import annotations

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from streamnb import frames


def _bids(n: int) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "auction": [1000 + i % 97 for i in range(n)],
            "price": [float(i * 7 % 1000) for i in range(n)],
            "channel": [None if i % 11 == 0 else f"c{i % 5}" for i in range(n)],
        },
        schema={"auction": pl.Int64, "price": pl.Float64, "channel": pl.String},
    )


EXPRESSIONS = [
    ([pl.col("price") * 0.908], {}),
    ([(pl.col("auction") % 123 == 0).alias("hit"), pl.col("channel").str.to_uppercase()], {}),
    ([], {"mean_price": pl.col("price").mean(), "rank": pl.col("price").rank()}),
    ([pl.col("price").cum_sum().over("auction").alias("running")], {}),
]


@pytest.mark.parametrize("rows", [0, 1, 78, frames.SMALL_ROWS, frames.SMALL_ROWS + 1])
@pytest.mark.parametrize(("exprs", "named"), EXPRESSIONS)
def test_with_columns_and_select_equal_polars(rows: int, exprs: list, named: dict) -> None:
    df = _bids(rows)
    assert_frame_equal(frames.with_columns(df, *exprs, **named), df.with_columns(*exprs, **named))
    assert_frame_equal(frames.select(df, *exprs, **named), df.select(*exprs, **named))


def test_small_frames_stay_off_the_thread_pool_large_ones_do_not(monkeypatch) -> None:
    calls: list[str] = []
    for name in ("with_columns", "with_columns_seq", "select", "select_seq"):
        original = getattr(pl.DataFrame, name)

        def spy(self, *a, _name=name, _original=original, **k):  # type: ignore[no-untyped-def]
            calls.append(_name)
            return _original(self, *a, **k)

        monkeypatch.setattr(pl.DataFrame, name, spy)
    frames.with_columns(_bids(frames.SMALL_ROWS), pl.col("price") + 1)
    frames.select(_bids(frames.SMALL_ROWS), "price")
    assert calls == ["with_columns_seq", "select_seq"]
    calls.clear()
    frames.with_columns(_bids(frames.SMALL_ROWS + 1), pl.col("price") + 1)
    frames.select(_bids(frames.SMALL_ROWS + 1), "price")
    assert calls == ["with_columns", "select"]


def test_a_lazy_frame_is_planned_as_polars_plans_it() -> None:
    lazy = _bids(5).lazy()
    out = frames.with_columns(lazy, doubled=pl.col("price") * 2)
    assert isinstance(out, pl.LazyFrame)
    assert out.collect_schema()["doubled"] == pl.Float64
    assert frames.select(lazy, "auction").collect_schema().names() == ["auction"]
