"""``Stream``: every per-record operator against polars on the whole frame, immutability, and
definition-time errors (docs/semantics.md §2, §7).

A per-record operator applied batch by batch must give exactly what polars gives on the whole
input, whatever the batch size.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import polars as pl
import pytest
from hypothesis import given
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

import streamnb as sn

BATCH_SIZES = [1, 3, 10_000]

DF = pl.DataFrame(
    {
        "k": ["a", "b", None, "a", "c", "b", "a", None, "c", "a"],
        "v": [1, -2, 3, None, 5, 0, 7, -8, None, 10],
        "x": [0.5, 1.5, None, -2.25, 3.0, 4.5, None, 6.0, 7.5, -0.125],
        "flag": [True, False, None, True, True, False, False, True, None, True],
        "l": [[1, 2], [], None, [3], [4, 5, 6], [None], [7], [], [8, 9], None],
        "t": [100, 200, 300, 400, 500, 600, 700, 800, 900, 1000],
    },
    schema={
        "k": pl.String,
        "v": pl.Int64,
        "x": pl.Float64,
        "flag": pl.Boolean,
        "l": pl.List(pl.Int64),
        "t": pl.Int64,
    },
)

Op = Callable[[Any], Any]  # the same call works on a Stream and on a pl.DataFrame

OPS: dict[str, Op] = {
    "filter_expr": lambda s: s.filter(pl.col("v") > 0),
    "filter_several_predicates": lambda s: s.filter(pl.col("v") > 0, pl.col("x") < 5.0),
    "filter_boolean_column_name": lambda s: s.filter("flag"),
    "filter_keyword": lambda s: s.filter(k="a"),
    "filter_expr_and_keywords": lambda s: s.filter(pl.col("v") >= 0, k="a", flag=True),
    "filter_is_null": lambda s: s.filter(pl.col("k").is_null()),
    "filter_nothing_passes": lambda s: s.filter(pl.col("v") > 1_000),
    "with_columns_exprs": lambda s: s.with_columns(
        (pl.col("v") * 2).alias("v2"), pl.col("k").str.to_uppercase()
    ),
    "with_columns_named": lambda s: s.with_columns(
        w=pl.col("v") + pl.col("x"), c=pl.lit("const"), z=pl.when(pl.col("flag")).then(1)
    ),
    "with_columns_replace": lambda s: s.with_columns(pl.col("v").cast(pl.Float64) / 4),
    "select_exprs": lambda s: s.select("k", pl.col("v").alias("value"), pl.col("x").round(1)),
    "select_named": lambda s: s.select(
        pl.col("t"), double=pl.col("v") * 2, n=pl.col("l").list.len()
    ),
    "drop": lambda s: s.drop("l", "flag"),
    "rename": lambda s: s.rename({"v": "value", "k": "key"}),
    "explode": lambda s: s.explode("l"),
    "chain": lambda s: (
        s.filter(pl.col("v").is_not_null())
        .with_columns(y=pl.col("v") * 10)
        .explode("l")
        .filter(pl.col("l").is_not_null() | (pl.col("y") > 0))
        .rename({"y": "why"})
        .drop("flag")
        .select("k", "why", "l", s2=pl.col("why") + pl.col("l"))
    ),
}


def _run(stream_op: Op, df: pl.DataFrame, batch_size: int) -> pl.DataFrame:
    return stream_op(sn.from_records(df, batch_size=batch_size)).collect(timeout=30)


@pytest.mark.parametrize("batch_size", BATCH_SIZES)
@pytest.mark.parametrize("name", list(OPS))
def test_operator_equals_polars_on_the_whole_frame(name: str, batch_size: int) -> None:
    op = OPS[name]
    expected = op(DF)
    stream = op(sn.from_records(DF, batch_size=batch_size))
    assert stream.schema == expected.schema  # known at definition time
    assert_frame_equal(stream.collect(timeout=30), expected)


@pytest.mark.parametrize("batch_size", BATCH_SIZES)
@pytest.mark.parametrize("name", list(OPS))
def test_operator_on_list_of_dicts(name: str, batch_size: int) -> None:
    op = OPS[name]
    got = op(sn.from_records(DF.to_dicts(), batch_size=batch_size)).collect(timeout=30)
    assert_frame_equal(got, op(DF))


def _add_and_filter(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.with_columns(
        tag=pl.col("k").fill_null("?") + "-" + pl.col("t").cast(pl.String)
    ).filter(pl.col("t") % 200 == 0)


def _expand(frame: pl.DataFrame) -> pl.DataFrame:
    """Each record twice (independent per record)."""
    return pl.concat([frame, frame.with_columns(v=pl.col("v") * -1)]).sort("t", maintain_order=True)


@pytest.mark.parametrize("batch_size", BATCH_SIZES)
@pytest.mark.parametrize("fn", [_add_and_filter, _expand], ids=["add_and_filter", "expand"])
def test_map_batches_equals_fn_on_the_whole_frame(
    fn: Callable[[pl.DataFrame], pl.DataFrame], batch_size: int
) -> None:
    got = sn.from_records(DF, batch_size=batch_size).map_batches(fn).collect(timeout=30)
    assert_frame_equal(got, fn(DF))


@pytest.mark.parametrize("batch_size", BATCH_SIZES)
def test_map_batches_sees_micro_batches_of_at_most_batch_size(batch_size: int) -> None:
    heights: list[int] = []

    def spy(frame: pl.DataFrame) -> pl.DataFrame:
        heights.append(frame.height)
        return frame

    got = sn.from_records(DF, batch_size=batch_size).map_batches(spy).collect(timeout=30)
    assert_frame_equal(got, DF)
    data_batches = [h for h in heights if h]
    assert sum(data_batches) == DF.height
    assert max(data_batches) <= batch_size


@st.composite
def frames(draw: st.DrawFn) -> pl.DataFrame:
    n = draw(st.integers(0, 40))
    ints = st.one_of(st.none(), st.integers(-100, 100))
    return pl.DataFrame(
        {
            "k": draw(st.lists(st.sampled_from(["a", "b", "c", None]), min_size=n, max_size=n)),
            "v": draw(st.lists(ints, min_size=n, max_size=n)),
            "l": draw(st.lists(st.none() | st.lists(ints, max_size=3), min_size=n, max_size=n)),
        },
        schema={"k": pl.String, "v": pl.Int64, "l": pl.List(pl.Int64)},
    )


@given(df=frames(), batch_size=st.integers(1, 45), name=st.sampled_from(
    ["filter_keyword", "filter_is_null", "explode", "rename", "select_named"]
))  # fmt: skip
def test_random_frames_equal_polars(df: pl.DataFrame, batch_size: int, name: str) -> None:
    ops: dict[str, Op] = {
        "filter_keyword": lambda s: s.filter(pl.col("v") > 0, k="a"),
        "filter_is_null": lambda s: s.filter(pl.col("v").is_null() | pl.col("l").is_null()),
        "explode": lambda s: s.explode("l").with_columns(p=pl.col("l") * pl.col("v")),
        "rename": lambda s: s.rename({"k": "key"}).drop("l"),
        "select_named": lambda s: s.select("k", w=pl.col("v").abs(), n=pl.col("l").list.len()),
    }
    op = ops[name]
    got = op(sn.from_records(df, batch_size=batch_size)).collect(timeout=30)
    assert_frame_equal(got, op(df))


# -- union ------------------------------------------------------------------------------------


def _numbered(name: str, n: int, t0: int = 0) -> pl.DataFrame:
    return pl.DataFrame(
        {"src": [name] * n, "i": list(range(n)), "t": [t0 + 10 * i for i in range(n)]}
    )


@pytest.mark.parametrize("batch_size", BATCH_SIZES)
def test_union_keeps_every_record_and_each_input_in_order(batch_size: int) -> None:
    a, b, c = _numbered("a", 10), _numbered("b", 5), _numbered("c", 7)
    merged = (
        sn.from_records(a, batch_size=batch_size)
        .union(sn.from_records(b, batch_size=2), sn.from_records(c, batch_size=batch_size))
        .collect(timeout=30)
    )
    assert merged.schema == a.schema
    assert merged.height == 22
    for part in (a, b, c):
        name = part["src"][0]
        # arrival order within each input is its own order
        assert_frame_equal(merged.filter(src=name), part)


def test_union_of_a_stream_with_itself_yields_every_record_twice() -> None:
    base = sn.from_records(_numbered("a", 4), batch_size=2)
    got = base.union(base).collect(timeout=30)
    assert sorted(got["i"].to_list()) == [0, 0, 1, 1, 2, 2, 3, 3]


def test_union_of_two_branches_of_one_source() -> None:
    base = sn.from_records(_numbered("a", 6), batch_size=2)
    small = base.filter(pl.col("i") < 3)
    large = base.filter(pl.col("i") >= 3).with_columns(pl.col("src").str.to_uppercase())
    got = small.union(large).collect(timeout=30)
    assert sorted(got.rows()) == sorted(
        [("a", 0, 0), ("a", 1, 10), ("a", 2, 20), ("A", 3, 30), ("A", 4, 40), ("A", 5, 50)]
    )


def test_window_over_a_self_union_counts_every_record_twice() -> None:
    base = sn.from_records(_numbered("a", 4), timestamp="t")
    got = base.union(base).window(sn.Tumbling("1s")).agg(pl.len().alias("n")).collect(timeout=30)
    assert got.rows() == [(0, 1000, 8)]


def test_union_then_window_equals_polars_when_nothing_is_late() -> None:
    a, b = _numbered("a", 30), _numbered("b", 20, t0=5)
    got = (
        sn.from_records(a, timestamp="t", batch_size=3)
        .union(sn.from_records(b, timestamp="t", batch_size=4))
        .with_watermark("t", "10s")
        .window(sn.Tumbling("100ms"), by="src")
        .agg(pl.len().alias("n"), pl.col("i").sum().alias("s"))
        .collect(timeout=30)
    )
    want = (
        pl.concat([a, b])
        .group_by(window_start=pl.col("t") // 100 * 100, src=pl.col("src"))
        .agg(pl.len().alias("n"), pl.col("i").sum().alias("s"))
        .with_columns(window_end=pl.col("window_start") + 100)
        .select(got.columns)
    )
    assert_frame_equal(got, want, check_row_order=False)


# -- immutability ---------------------------------------------------------------------------


DERIVATIONS: dict[str, Op] = {
    **OPS,
    "map_batches": lambda s: s.map_batches(lambda f: f.head(1)),
    "with_watermark": lambda s: s.with_watermark("t", "1s"),
    "union": lambda s: s.union(s),
    "window": lambda s: s.window(sn.Tumbling("1s")).agg(pl.len()),
    "group_by": lambda s: s.group_by("k").agg(pl.len()),
}


@pytest.mark.parametrize("name", list(DERIVATIONS))
def test_methods_return_a_new_stream_and_leave_the_original_alone(name: str) -> None:
    original = sn.from_records(DF, timestamp="t", batch_size=3)
    schema_before = original.schema
    derived = DERIVATIONS[name](original)
    assert isinstance(derived, sn.Stream)
    assert derived is not original
    assert original.schema == schema_before
    assert original.event_time == "t"
    assert_frame_equal(original.collect(timeout=30), DF)
    # and the original can be derived again, with the same result
    assert_frame_equal(DERIVATIONS[name](original).collect(timeout=30), derived.collect(timeout=30))


def test_a_stream_can_be_collected_twice() -> None:
    s = sn.from_records(DF, batch_size=4).filter(pl.col("v") > 0)
    assert_frame_equal(s.collect(timeout=30), s.collect(timeout=30))


def test_rename_of_the_event_time_column_keeps_event_time() -> None:
    df = pl.DataFrame({"t": [100, 1500, 2500], "v": [1, 2, 3]})
    renamed = sn.from_records(df, timestamp="t").rename({"t": "ts"})
    assert renamed.event_time == "ts"
    got = renamed.window(sn.Tumbling("1s")).agg(pl.col("v").sum().alias("s")).collect(timeout=30)
    assert got.rows() == [(0, 1000, 1), (1000, 2000, 2), (2000, 3000, 3)]


# -- definition-time errors -----------------------------------------------------------------


def _timed() -> sn.Stream:
    return sn.from_records(DF, timestamp="t")


DEFINITION_ERRORS: dict[str, tuple[Callable[[], object], str]] = {
    "filter": (lambda: _timed().filter(pl.col("nope") > 1), "nope"),
    "filter_string": (lambda: _timed().filter("nope"), "nope"),
    "filter_keyword": (lambda: _timed().filter(nope=1), "nope"),
    "with_columns": (lambda: _timed().with_columns(pl.col("nope") + 1), "nope"),
    "with_columns_named": (lambda: _timed().with_columns(z=pl.col("nope")), "nope"),
    "select": (lambda: _timed().select("nope"), "nope"),
    "select_named": (lambda: _timed().select(z=pl.col("nope") * 2), "nope"),
    "drop": (lambda: _timed().drop("v", "nope"), "nope"),
    "rename": (lambda: _timed().rename({"nope": "yes"}), "nope"),
    "window_by": (lambda: _timed().window(sn.Tumbling("1s"), by="nope"), "nope"),
    "window_by_list": (lambda: _timed().window(sn.Tumbling("1s"), by=["k", "nope"]), "nope"),
    "group_by": (lambda: _timed().group_by("nope"), "nope"),
    "group_by_second_key": (lambda: _timed().group_by("k", "nope"), "nope"),
    "with_watermark": (lambda: _timed().with_watermark("nope", "1s"), "nope"),
    "agg_unknown_column": (lambda: _timed().group_by("k").agg(pl.col("nope").sum()), "nope"),
    "timestamp": (lambda: sn.from_records(DF, timestamp="nope"), "nope"),
    "grace_unit": (lambda: _timed().window(sn.Tumbling("1s"), grace="10x"), "10x"),
    "grace_empty": (lambda: _timed().window(sn.Tumbling("1s"), grace=""), "grace"),
    "grace_int": (lambda: _timed().window(sn.Tumbling("1s"), grace=-1), "grace"),  # type: ignore[arg-type]
    "grace_fraction": (lambda: _timed().window(sn.Tumbling("1s"), grace="1.5s"), "1.5s"),
    "delay_unit": (lambda: _timed().with_watermark("t", "10x"), "10x"),
    "delay_empty": (lambda: _timed().with_watermark("t", ""), "delay"),
    "delay_int": (lambda: _timed().with_watermark("t", -1), "delay"),  # type: ignore[arg-type]
    "delay_fraction": (lambda: _timed().with_watermark("t", "1.5s"), "1.5s"),
    "tumbling_unit": (lambda: sn.Tumbling("10x"), "10x"),
    "tumbling_empty": (lambda: sn.Tumbling(""), "size"),
    "tumbling_int": (lambda: sn.Tumbling(-1), "size"),  # type: ignore[arg-type]
    "tumbling_fraction": (lambda: sn.Tumbling("1.5s"), "1.5s"),
    "hopping_unit": (lambda: sn.Hopping("10s", "10x"), "10x"),
    "hopping_empty": (lambda: sn.Hopping("", "1s"), "size"),
    "hopping_int": (lambda: sn.Hopping("10s", -1), "every"),  # type: ignore[arg-type]
    "hopping_fraction": (lambda: sn.Hopping("1.5s", "1s"), "1.5s"),
    "hopping_every_gt_size": (lambda: sn.Hopping("1s", "10s"), "every"),
    "session_unit": (lambda: sn.Session("10x"), "10x"),
    "session_empty": (lambda: sn.Session(""), "gap"),
    "session_int": (lambda: sn.Session(-1), "gap"),  # type: ignore[arg-type]
    "session_fraction": (lambda: sn.Session("1.5s"), "1.5s"),
    "window_without_event_time": (
        lambda: sn.from_records(DF).window(sn.Tumbling("1s")),
        "event-time",
    ),
    "string_event_time": (
        lambda: sn.from_records(DF.with_columns(s=pl.col("t").cast(pl.String)), timestamp="s"),
        "'s'",
    ),
    "string_watermark_column": (lambda: _timed().with_watermark("k", "1s"), "'k'"),
    "emit": (lambda: _timed().window(sn.Tumbling("1s"), emit="sometimes"), "sometimes"),  # type: ignore[arg-type]
    "median": (lambda: _timed().window(sn.Tumbling("1s")).agg(pl.col("v").median()), "median"),
    "median_group_by": (lambda: _timed().group_by("k").agg(pl.col("v").median()), "median"),
    "quantile": (lambda: _timed().group_by("k").agg(pl.col("v").quantile(0.5)), "quantile"),
    "duplicate_aggregate_names": (
        lambda: _timed().group_by("k").agg(pl.col("v").sum(), pl.col("v").max()),
        "'v'",
    ),
    "duplicate_aliases": (
        lambda: (
            _timed()
            .window(sn.Tumbling("1s"))
            .agg(pl.len().alias("n"), pl.col("v").sum().alias("n"))
        ),
        "'n'",
    ),
    "agg_nothing": (lambda: _timed().group_by("k").agg(), "agg"),
    "window_agg_nothing": (lambda: _timed().window(sn.Tumbling("1s")).agg(), "agg"),
    "group_by_no_keys": (lambda: _timed().group_by(), "group_by"),
    "collect_unbounded": (lambda: sn.nexmark().collect(), "collect"),
    "union_other_columns": (
        lambda: _timed().union(sn.from_records(pl.DataFrame({"v": [1]}))),
        "union",
    ),
    "union_other_types": (
        lambda: _timed().union(sn.from_records(DF.with_columns(pl.col("v").cast(pl.Float64)))),
        "union",
    ),
}


@pytest.mark.parametrize("name", list(DEFINITION_ERRORS))
def test_misconfiguration_raises_config_error_at_definition(name: str) -> None:
    define, offender = DEFINITION_ERRORS[name]
    with pytest.raises(sn.ConfigError) as info:
        define()
    assert isinstance(info.value, ValueError)
    assert offender in str(info.value), str(info.value)


def test_median_is_a_value_error_naming_the_expression() -> None:
    agg = _timed().window(sn.Tumbling("1s"))
    with pytest.raises(ValueError, match=r'col\("v"\)\.median\(\)'):
        agg.agg(pl.col("v").median().alias("med"))


# -- tables and running --------------------------------------------------------------------


@pytest.mark.parametrize("batch_size", BATCH_SIZES)
def test_filter_and_with_columns_on_a_running_aggregate(batch_size: int) -> None:
    aggs = [pl.len().alias("n"), pl.col("v").sum().alias("s")]
    table = sn.from_records(DF, batch_size=batch_size).group_by("k").agg(aggs)
    want = DF.group_by("k").agg(aggs)
    for op in (
        lambda t: t.filter(pl.col("n") > 1),
        lambda t: t.filter(pl.col("s") < 8),
        lambda t: t.with_columns(d=pl.col("s") * 2),
    ):
        got = op(table).collect(timeout=30).sort("k", nulls_last=False)
        assert_frame_equal(got, op(want).sort("k", nulls_last=False))


def test_select_on_a_table_must_keep_its_keys() -> None:
    table = sn.from_records(DF).group_by("k").agg(pl.len().alias("n"))
    with pytest.raises(sn.ConfigError, match="'k'"):
        table.select("n")


def test_collect_timeout_on_a_slow_bounded_source() -> None:
    slow = sn.nexmark(events=100_000, rate=1000)
    assert slow.bounded
    with pytest.raises(TimeoutError):
        slow.collect(timeout=0.3)


def test_renaming_a_window_results_keys_keeps_it_joinable_as_one() -> None:
    """A window join needs both inputs to be window results keyed alike (sn.sql renames one
    side's key to join ``ON a.id = b.seller``); renaming a window bound ends that."""
    auctions = sn.nexmark(events=20_000, kind="auction", event_rate=1_000)
    persons = sn.nexmark(events=20_000, kind="person", event_rate=1_000)
    sellers = auctions.window(sn.Tumbling("5s"), by="seller").agg(pl.len().alias("auctions"))
    assert sellers.rename({"seller": "id"}).plan.windowed == ("id",)
    assert sellers.rename({"window_start": "ws"}).plan.windowed is None
    people = persons.window(sn.Tumbling("5s"), by="id").agg(pl.col("name").first())
    got = people.join(sellers.rename({"seller": "id"}), on="id").collect()
    unrenamed = persons.window(sn.Tumbling("5s"), by="id").agg(pl.col("name").first())
    by_seller = auctions.select("dateTime", id="seller").window(sn.Tumbling("5s"), by="id")
    want = unrenamed.join(by_seller.agg(pl.len().alias("auctions")), on="id").collect()
    assert got.height > 0
    assert_frame_equal(got.sort(got.columns), want.sort(want.columns))
