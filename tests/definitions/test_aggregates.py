"""Incremental aggregates: ``group_by(...).agg(...)`` equals polars' own ``group_by().agg()``.

Random keys (nulls included), random int and float values (nulls included), every supported
aggregate, and batch sizes from 1 to the whole input: the merged partial aggregates must give
what polars computes over all records at once, with the same output types.
"""

from __future__ import annotations

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

import streamnb as sn
from streamnb.definitions.aggregates import Aggregation

pytestmark = pytest.mark.usefixtures("state_stores")  # every state representation

FLOATS = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)
INTS = st.integers(-1000, 1000)


def aggregates(column: str) -> list[pl.Expr]:
    c = pl.col(column)
    return [
        pl.len().alias("n"),
        c.count().alias("count"),
        c.len().alias("len"),
        c.sum().alias("sum"),
        c.min().alias("min"),
        c.max().alias("max"),
        c.mean().alias("mean"),
        c.first().alias("first"),
        c.last().alias("last"),
        c.n_unique().alias("n_unique"),
        c.std().alias("std"),
        c.var().alias("var"),
        c.var(ddof=0).alias("var0"),
        c.var(ddof=1).alias("var1"),
        c.var(ddof=2).alias("var2"),
        c.std(ddof=0).alias("std0"),
        c.std(ddof=2).alias("std2"),
        (c * 2).sum().alias("sum2"),
        (c * 2).max().alias("max2"),
        (c * 2).mean().alias("mean2"),
        (c * 2).var(ddof=0).alias("var_2x"),
        (c + 1).n_unique().alias("n_unique_plus1"),
        c.abs().last().alias("abs_last"),
    ]


@st.composite
def frames(draw: st.DrawFn) -> pl.DataFrame:
    n = draw(st.integers(0, 60))
    keys = st.sampled_from(["a", "b", "c", None])
    return pl.DataFrame(
        {
            "k": draw(st.lists(keys, min_size=n, max_size=n)),
            "j": draw(st.lists(st.sampled_from([1, 2, None]), min_size=n, max_size=n)),
            "i": draw(st.lists(st.none() | INTS, min_size=n, max_size=n)),
            "f": draw(st.lists(st.none() | FLOATS, min_size=n, max_size=n)),
        },
        schema={"k": pl.String, "j": pl.Int64, "i": pl.Int64, "f": pl.Float64},
    )


def expected(df: pl.DataFrame, keys: list[str], aggs: list[pl.Expr]) -> pl.DataFrame:
    return df.group_by(keys, maintain_order=True).agg(aggs).sort(keys, nulls_last=False)


def engine(df: pl.DataFrame, keys: list[str], aggs: list[pl.Expr], batch_size: int) -> pl.DataFrame:
    stream = sn.from_records(df, batch_size=batch_size).group_by(*keys).agg(aggs)
    return stream.collect(timeout=60).sort(keys, nulls_last=False)


def assert_same(got: pl.DataFrame, want: pl.DataFrame) -> None:
    assert got.schema == want.schema
    assert_frame_equal(got, want, check_exact=False, rel_tol=1e-6, abs_tol=1e-6)


def check_group_by_agg(column: str, df: pl.DataFrame, data: st.DataObject) -> None:
    keys = data.draw(st.sampled_from([["k"], ["k", "j"], ["j"]]))
    aggs = aggregates(column)
    want = expected(df, keys, aggs)
    for batch_size in {1, data.draw(st.integers(1, max(df.height, 1))), max(df.height, 1)}:
        assert_same(engine(df, keys, aggs, batch_size), want)


# The property runs at the full example count (200 in CI) with the default state; the keyed and
# disk passes of ``state_stores`` rerun it for those representations with fewer examples.
EXTRA_PASS_EXAMPLES = 50
group_by_agg = given(df=frames(), data=st.data())(check_group_by_agg)
group_by_agg_extra_pass = settings(
    max_examples=min(EXTRA_PASS_EXAMPLES, settings.default.max_examples)  # type: ignore[union-attr]
)(given(df=frames(), data=st.data())(check_group_by_agg))


@pytest.mark.slow  # 200 examples, each run at batch sizes 1, n and all
@pytest.mark.parametrize("column", ["i", "f"])
def test_group_by_agg_equals_polars(column: str, state_stores: str) -> None:
    """The small pass at the full example count, the keyed and disk passes at
    ``EXTRA_PASS_EXAMPLES``."""
    (group_by_agg if state_stores == "small" else group_by_agg_extra_pass)(column)


@pytest.mark.parametrize("batch_size", [1, 2, 5, 100])
def test_all_null_group_and_single_value_group(batch_size: int) -> None:
    """Edge cases: a group with only nulls, a group with one value (std/var with n ≤ ddof)."""
    df = pl.DataFrame(
        {"k": ["nulls", "nulls", "one", "two", "two"], "i": [None, None, 7, 3, 3]},
        schema={"k": pl.String, "i": pl.Int64},
    )
    aggs = aggregates("i")
    assert_same(engine(df, ["k"], aggs, batch_size), expected(df, ["k"], aggs))


@pytest.mark.parametrize("batch_size", [1, 3, 1000])
def test_values_far_from_zero_keep_variance_precise(batch_size: int) -> None:
    base = 1e9
    values = [base + x for x in (4.0, 7.0, 13.0, 16.0)] * 25
    df = pl.DataFrame({"k": ["a"] * len(values), "f": values})
    aggs = [pl.col("f").var().alias("var"), pl.col("f").std(ddof=0).alias("std0")]
    got = engine(df, ["k"], aggs, batch_size)
    assert got["var"][0] == pytest.approx(2250 / 99, rel=1e-6)
    assert got["std0"][0] == pytest.approx(22.5**0.5, rel=1e-6)


@pytest.mark.parametrize(
    ("dtype", "values"),
    [
        (pl.Int8, [1, -2, None, 3]),
        (pl.Int32, [100, None, -7, 7]),
        (pl.UInt16, [1, 2, 3, None]),
        (pl.Float32, [0.5, None, 1.25, -3.0]),
        (pl.Boolean, [True, False, None, True]),
        (pl.String, ["x", None, "y", "x"]),
    ],
)
@pytest.mark.parametrize("batch_size", [1, 3])
def test_output_dtypes_equal_polars_for_other_input_types(
    dtype: pl.DataType, values: list[object], batch_size: int
) -> None:
    df = pl.DataFrame({"k": ["a", "b", "a", "b"], "v": pl.Series(values, dtype=dtype)})
    c = pl.col("v")
    aggs = [
        pl.len().alias("n"), c.count().alias("count"), c.min().alias("min"),
        c.max().alias("max"), c.first().alias("first"), c.last().alias("last"),
        c.n_unique().alias("n_unique"),
    ]  # fmt: skip
    if dtype.is_numeric():
        aggs += [c.sum().alias("sum"), c.mean().alias("mean"), c.std().alias("std"),
                 c.var(ddof=0).alias("var0")]  # fmt: skip
    want = expected(df, ["k"], aggs)
    stream = sn.from_records(df, batch_size=batch_size).group_by("k").agg(aggs)
    assert stream.schema == want.schema  # known at definition time
    assert_same(stream.collect(timeout=30).sort("k"), want)


@pytest.mark.parametrize("batch_size", [1, 4, 1000])
def test_window_aggregates_equal_polars_per_window(batch_size: int) -> None:
    n = 200
    df = pl.DataFrame(
        {
            "t": list(range(0, n * 37, 37)),
            "k": [("a", "b", None)[i % 3] for i in range(n)],
            "f": [None if i % 11 == 0 else (i * 7919 % 101) / 7 for i in range(n)],
        }
    )
    aggs = aggregates("f")
    got = (
        sn.from_records(df, timestamp="t", batch_size=batch_size)
        .window(sn.Tumbling("1s"), by="k")
        .agg(aggs)
        .collect(timeout=30)
        .sort("window_start", "k", nulls_last=False)
    )
    want = (
        df.with_columns(window_start=pl.col("t") // 1000 * 1000)
        .group_by("window_start", "k", maintain_order=True)
        .agg(aggs)
        .with_columns(window_end=pl.col("window_start") + 1000)
        .select(got.columns)
        .sort("window_start", "k", nulls_last=False)
    )
    assert_same(got, want)


def test_aggregation_output_schema_matches_polars() -> None:
    schema = pl.Schema({"k": pl.String, "i": pl.Int64, "f": pl.Float64})
    for column in ("i", "f"):
        aggs = aggregates(column)
        want = pl.LazyFrame(schema=schema).group_by("k").agg(aggs).collect_schema()
        got = Aggregation(aggs, schema, ["k"]).output_schema
        assert dict(got) == {n: t for n, t in want.items() if n != "k"}


@pytest.mark.parametrize(
    "expr",
    [
        pl.col("i").median(),
        pl.col("i").quantile(0.5),
        pl.col("i").mode(),
        pl.col("i").sort(),
        pl.col("i").sum() / pl.col("f").sum(),
        pl.col("i").max() - pl.col("i").min(),
        pl.col("i").unique(),
        pl.col("i"),
    ],
    ids=str,
)
def test_non_incremental_aggregates_are_refused_at_definition(expr: pl.Expr) -> None:
    stream = sn.from_records(pl.DataFrame({"k": ["a"], "i": [1], "f": [1.0]}))
    with pytest.raises(ValueError, match="incrementally") as info:
        stream.group_by("k").agg(expr.alias("out"))
    assert isinstance(info.value, sn.ConfigError)
