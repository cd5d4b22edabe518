"""Each construct ``sn.sql`` translates, against polars computing the same on the whole input
(and, for windows and joins, against the fluent query too)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import polars as pl
import pytest

import streamnb as sn
from streamnb.exceptions import ConfigError
from tests.sql.nexmark import assert_same_rows

BASE = datetime(2026, 1, 1, tzinfo=timezone.utc)
_DT = pl.Datetime("ms", "UTC")


def _events(rows: int = 2_000, seed: int = 1) -> pl.DataFrame:
    """Keys a–e, values 0–99, a few null strings, times increasing with gaps up to 4 s."""
    rng = np.random.default_rng(seed)
    gaps = rng.choice([0, 10, 200, 900, 4_000], size=rows, p=[0.2, 0.4, 0.3, 0.08, 0.02])
    strings = rng.choice(["Red", "green", "BLUE", ""], size=rows).tolist()
    return pl.DataFrame(
        {
            "k": rng.choice(list("abcde"), size=rows),
            "v": rng.integers(0, 100, size=rows),
            "s": [None if i % 17 == 0 else s for i, s in enumerate(strings)],
            "t": pl.Series(np.cumsum(gaps) + int(BASE.timestamp() * 1000)).cast(_DT),
        }
    )


EVENTS = _events()


def events() -> sn.Stream:
    return sn.from_records(EVENTS, timestamp="t", batch_size=250)


def sql(text: str, **tables: sn.Stream) -> pl.DataFrame:
    return sn.sql(text, **(tables or {"events": events()})).collect()


# -- projection, WHERE ---------------------------------------------------------------------------
def test_projection_computes_expressions() -> None:
    got = sql(
        """SELECT k, v * 2 + 1 AS w, -v AS neg, v / 4 AS q, MOD(v, 3) AS m, v % 3 AS m2,
                  LOWER(s) AS lo, UPPER(s) AS up, CHAR_LENGTH(s) AS n, t
           FROM events"""
    )
    want = EVENTS.select(
        "k",
        (pl.col("v") * 2 + 1).alias("w"),
        (-pl.col("v")).alias("neg"),
        (pl.col("v") / 4).alias("q"),
        (pl.col("v") % 3).alias("m"),
        (pl.col("v") % 3).alias("m2"),
        pl.col("s").str.to_lowercase().alias("lo"),
        pl.col("s").str.to_uppercase().alias("up"),
        pl.col("s").str.len_chars().alias("n"),
        "t",
    )
    assert_same_rows(got, want)


def test_unnamed_expressions_are_named_as_flink_names_them() -> None:
    got = sql("SELECT k, v + 1, v FROM events")
    assert got.columns == ["k", "EXPR$1", "v"]
    # an unnamed aggregate keeps polars' name while it is free
    grouped = sql("SELECT k, MAX(v), MIN(v), COUNT(*), COUNT(*) + 1 FROM events GROUP BY k")
    assert grouped.columns == ["k", "v", "EXPR$1", "len", "EXPR$4"]
    want = EVENTS.group_by("k").agg(
        pl.col("v").max(),
        pl.col("v").min().alias("EXPR$1"),
        pl.len(),
        (pl.len() + 1).alias("EXPR$4"),
    )
    assert_same_rows(grouped, want)


def test_where_filters_records() -> None:
    got = sql(
        """SELECT k, v, s FROM events
           WHERE (v BETWEEN 10 AND 50 AND k IN ('a', 'b')) OR (NOT (v > 90) AND s IS NULL)"""
    )
    want = EVENTS.filter(
        (pl.col("v").is_between(10, 50) & pl.col("k").is_in(["a", "b"]))
        | (~(pl.col("v") > 90) & pl.col("s").is_null())
    ).select("k", "v", "s")
    assert_same_rows(got, want)


def test_select_star_and_a_table_star() -> None:
    assert_same_rows(sql("SELECT * FROM events"), EVENTS)
    assert_same_rows(
        sql("SELECT e.* FROM events AS e WHERE e.v > 3"), EVENTS.filter(pl.col("v") > 3)
    )


def test_backquoted_and_double_quoted_identifiers() -> None:
    got = sql('SELECT `k`, "v" AS `the value` FROM `events`')
    assert_same_rows(got, EVENTS.select("k", pl.col("v").alias("the value")))


def test_subquery_in_from_and_with() -> None:
    inner = "SELECT k, v * 10 AS big FROM events WHERE v > 50"
    want = EVENTS.filter(pl.col("v") > 50).select("k", (pl.col("v") * 10).alias("big"))
    want = want.filter(pl.col("big") < 800)
    assert_same_rows(sql(f"SELECT b.k, b.big FROM ({inner}) AS b WHERE b.big < 800"), want)
    assert_same_rows(sql(f"WITH b AS ({inner}) SELECT k, big FROM b WHERE big < 800"), want)


# -- GROUP BY: a running table -------------------------------------------------------------------
AGGREGATES = """COUNT(*) AS n, COUNT(s) AS c, COUNT(DISTINCT v) AS d, SUM(v) AS total,
                MIN(v) AS lo, MAX(v) AS hi, AVG(v) AS mean, FIRST_VALUE(v) AS first_v,
                LAST_VALUE(v) AS last_v"""
POLARS_AGGREGATES = [
    pl.len().alias("n"),
    pl.col("s").count().alias("c"),
    pl.col("v").n_unique().alias("d"),
    pl.col("v").sum().alias("total"),
    pl.col("v").min().alias("lo"),
    pl.col("v").max().alias("hi"),
    pl.col("v").mean().alias("mean"),
    pl.col("v").first().alias("first_v"),
    pl.col("v").last().alias("last_v"),
]


def test_group_by_is_a_running_table_of_every_aggregate() -> None:
    query = sn.sql(f"SELECT k, {AGGREGATES} FROM events GROUP BY k", events=events())
    assert query.keys == ("k",)  # a table: one live row per key
    want = EVENTS.group_by("k").agg(*POLARS_AGGREGATES)
    assert_same_rows(query.collect(), want)


def test_having_and_expressions_of_aggregates() -> None:
    got = sql(
        """SELECT k, SUM(v) / COUNT(*) AS mean, MAX(v) - MIN(v) AS spread FROM events
           GROUP BY k HAVING COUNT(*) > 390"""
    )
    want = (
        EVENTS.group_by("k")
        .agg(
            pl.len(),
            (pl.col("v").sum() / pl.len()).alias("mean"),
            (pl.col("v").max() - pl.col("v").min()).alias("spread"),
        )
        .filter(pl.col("len") > 390)
        .select("k", "mean", "spread")
    )
    assert 0 < want.height < 5
    assert_same_rows(got, want)


# -- windowing table functions --------------------------------------------------------------------
def _tumble(size: str) -> pl.Expr:
    return pl.col("t").dt.truncate(size)


def test_tumble_windows_every_aggregate() -> None:
    got = sql(
        f"""SELECT window_start, window_end, k, {AGGREGATES}
            FROM TABLE(TUMBLE(TABLE events, DESCRIPTOR(t), INTERVAL '5' SECOND))
            GROUP BY window_start, window_end, k"""
    )
    want = (
        EVENTS.group_by(_tumble("5s").alias("window_start"), "k")
        .agg(*POLARS_AGGREGATES)
        .with_columns(window_end=pl.col("window_start") + pl.duration(seconds=5))
        .select("window_start", "window_end", "k", *got.columns[3:])
    )
    assert_same_rows(got, want)
    fluent = events().window(sn.Tumbling("5s"), by="k").agg(*POLARS_AGGREGATES).collect()
    assert_same_rows(got, fluent)


def test_tumble_without_keys_and_with_renamed_bounds() -> None:
    got = sql(
        """SELECT COUNT(*) AS n, window_end AS closes
           FROM TABLE(TUMBLE(TABLE events, DESCRIPTOR(t), INTERVAL '1' MINUTE))
           GROUP BY window_start, window_end"""
    )
    want = EVENTS.group_by(_tumble("1m").alias("ws")).agg(pl.len().alias("n"))
    want = want.select("n", (pl.col("ws") + pl.duration(minutes=1)).alias("closes"))
    assert_same_rows(got, want)


def test_hop_puts_each_record_in_size_over_slide_windows() -> None:
    got = sql(
        """SELECT k, COUNT(*) AS n, SUM(v) AS total, window_start, window_end
           FROM TABLE(HOP(TABLE events, DESCRIPTOR(t), INTERVAL '2' SECOND, INTERVAL '6' SECOND))
           GROUP BY k, window_start, window_end"""
    )
    assert got["n"].sum() == 3 * EVENTS.height
    assert (got["window_end"] - got["window_start"]).unique().to_list() == [timedelta(seconds=6)]
    fluent = (
        events()
        .window(sn.Hopping("6s", "2s"), by="k")
        .agg(pl.len().alias("n"), pl.col("v").sum().alias("total"))
        .select("k", "n", "total", "window_start", "window_end")
        .collect()
    )
    assert_same_rows(got, fluent)


def test_session_partitioned_by_key() -> None:
    got = sql(
        """SELECT k, window_start, window_end, COUNT(*) AS n
           FROM TABLE(SESSION(TABLE events PARTITION BY k, DESCRIPTOR(t), INTERVAL '3' SECOND))
           GROUP BY k, window_start, window_end"""
    )
    gap = 3_000
    ms = pl.col("t").dt.epoch("ms")
    ordered = EVENTS.select("k", ms.alias("ms")).sort("k", "ms", maintain_order=True)
    new = (pl.col("ms") - pl.col("ms").shift(1)).over("k").fill_null(gap) >= gap
    sessions = ordered.with_columns(new.cast(pl.Int64).cum_sum().alias("session"))
    want = (
        sessions.group_by("session")
        .agg(
            pl.col("k").first(),
            pl.col("ms").min().alias("s"),
            pl.col("ms").max().alias("e"),
            pl.len().alias("n"),
        )
        .select(
            "k",
            pl.col("s").cast(_DT).alias("window_start"),
            (pl.col("e") + gap).cast(_DT).alias("window_end"),
            "n",
        )
    )
    assert_same_rows(got, want)


@pytest.mark.parametrize(
    ("legacy", "function"),
    [
        (
            "TUMBLE(t, INTERVAL '5' SECOND)",
            "TUMBLE(TABLE events, DESCRIPTOR(t), INTERVAL '5' SECOND)",
        ),
        (
            "HOP(t, INTERVAL '2' SECOND, INTERVAL '6' SECOND)",
            "HOP(TABLE events, DESCRIPTOR(t), INTERVAL '2' SECOND, INTERVAL '6' SECOND)",
        ),
        (
            "SESSION(t, INTERVAL '3' SECOND)",
            "SESSION(TABLE events PARTITION BY k, DESCRIPTOR(t), INTERVAL '3' SECOND)",
        ),
    ],
)
def test_legacy_group_windows_are_the_table_functions(legacy: str, function: str) -> None:
    kind = legacy.split("(", maxsplit=1)[0]
    arguments = legacy[len(kind) :]
    old = sn.sql(
        f"""SELECT k, {kind}_START{arguments} AS ws, {kind}_END{arguments} AS we,
                   COUNT(*) AS n FROM events GROUP BY {legacy}, k""",
        events=events(),
    )
    new = sn.sql(
        f"""SELECT k, window_start AS ws, window_end AS we, COUNT(*) AS n
            FROM TABLE({function}) GROUP BY k, window_start, window_end""",
        events=events(),
    )
    assert str(old.explain()) == str(new.explain())
    assert_same_rows(old.collect(), new.collect())


def test_tumble_without_group_by_gives_each_record_its_window() -> None:
    got = sql(
        """SELECT k, v, window_start, window_end
           FROM TABLE(TUMBLE(TABLE events, DESCRIPTOR(t), INTERVAL '10' SECOND))"""
    )
    start = _tumble("10s")
    want = EVENTS.select(
        "k", "v", start.alias("window_start"), (start + pl.duration(seconds=10)).alias("window_end")
    )
    assert_same_rows(got, want)


def test_descriptor_of_another_column_makes_it_the_event_time() -> None:
    shifted = EVENTS.with_columns(t2=pl.col("t") + pl.duration(hours=1))
    stream = sn.from_records(shifted, timestamp="t", batch_size=250)
    query = sn.sql(
        """SELECT window_start, COUNT(*) AS n
           FROM TABLE(TUMBLE(TABLE e, DESCRIPTOR(t2), INTERVAL '10' SECOND))
           GROUP BY window_start, window_end""",
        e=stream,
    )
    assert str(query.explain()).startswith('e.with_watermark("t2").window(sn.Tumbling("10s"))')
    want = shifted.group_by(pl.col("t2").dt.truncate("10s").alias("window_start")).agg(
        pl.len().alias("n")
    )
    assert_same_rows(query.collect(), want)


# -- joins ---------------------------------------------------------------------------------------
NAMES = pl.DataFrame({"k": ["a", "b", "c", "z"], "label": ["A", "B", "C", "Z"]})


def names() -> sn.Stream:
    return sn.table_from_records(NAMES, key="k")


def test_stream_table_join() -> None:
    got = sql(
        "SELECT e.k, e.v, n.label FROM events e JOIN names n ON e.k = n.k WHERE e.v > 40",
        events=events(),
        names=names(),
    )
    want = EVENTS.filter(pl.col("v") > 40).join(NAMES, on="k").select("k", "v", "label")
    assert_same_rows(got, want)


def test_stream_table_left_join_on_differently_named_keys() -> None:
    got = sql(
        "SELECT e.v, e.k, n.label FROM events AS e LEFT JOIN names AS n ON e.k = n.name",
        events=events(),
        names=sn.table_from_records(NAMES.rename({"k": "name"}), key="name"),
    )
    want = EVENTS.join(NAMES, on="k", how="left").select("v", "k", "label")
    assert got["label"].null_count() > 0  # keys d and e have no row in the table
    assert_same_rows(got, want)


CLICKS = pl.DataFrame(
    {
        "user": [1, 1, 2, 3, 1, 2],
        "page": ["p1", "p2", "p3", "p4", "p5", "p6"],
        "t": [0, 1_500, 2_000, 5_000, 9_000, 9_500],
    }
).with_columns(pl.col("t").cast(_DT))
VIEWS = pl.DataFrame(
    {
        "user": [1, 2, 2, 3, 1],
        "ad": ["x", "y", "z", "w", "v"],
        "t": [1_000, 1_000, 7_000, 9_000, 20_000],
    }
).with_columns(pl.col("t").cast(_DT))


def _interval_reference(before_ms: int, after_ms: int = -1) -> pl.DataFrame:
    """Clicks and views of a user with view.t - before <= click.t <= view.t + after."""
    after_ms = before_ms if after_ms < 0 else after_ms
    pairs = CLICKS.join(VIEWS, on="user", suffix="_v")
    gap = pl.col("t") - pl.col("t_v")
    close = gap.is_between(-pl.duration(milliseconds=before_ms), pl.duration(milliseconds=after_ms))
    return pairs.filter(close).select("user", "page", "ad", pl.col("t").alias("click_time"))


@pytest.mark.parametrize("where", [False, True])
def test_interval_join(where: bool) -> None:
    condition = "c.t BETWEEN v.t - INTERVAL '2' SECOND AND v.t + INTERVAL '2' SECOND"
    text = "SELECT c.user, c.page, v.ad, c.t AS click_time FROM clicks c JOIN views v " + (
        f"ON c.user = v.user WHERE {condition}" if where else f"ON c.user = v.user AND {condition}"
    )
    query = sn.sql(
        text,
        clicks=sn.from_records(CLICKS, timestamp="t", batch_size=2),
        views=sn.from_records(VIEWS, timestamp="t", batch_size=2),
    )
    assert 'within="2s"' in str(query.explain())
    assert_same_rows(query.collect(), _interval_reference(2_000))


@pytest.mark.parametrize("flipped", [False, True])
def test_asymmetric_interval_join_moves_one_time_to_the_middle(flipped: bool) -> None:
    condition = (
        "v.t BETWEEN c.t - INTERVAL '3' SECOND AND c.t + INTERVAL '500' MILLISECOND"
        if flipped  # the same pairs, the bounds on the clicks' side
        else "c.t BETWEEN v.t - INTERVAL '500' MILLISECOND AND v.t + INTERVAL '3' SECOND"
    )
    query = sn.sql(
        "SELECT c.user, c.page, v.ad, c.t AS click_time FROM clicks c JOIN views v "
        f"ON c.user = v.user AND {condition}",
        clicks=sn.from_records(CLICKS, timestamp="t", batch_size=2),
        views=sn.from_records(VIEWS, timestamp="t", batch_size=2),
    )
    code = str(query.explain())
    assert 'within="1750ms"' in code
    assert ('t_shifted=pl.col("t") - pl' if flipped else 't_shifted=pl.col("t") + pl') in code
    want = _interval_reference(500, 3_000)
    assert 0 < want.height < _interval_reference(3_000).height  # the bounds matter here
    assert_same_rows(query.collect(), want)


def test_window_join_of_two_window_results() -> None:
    clicks = sn.from_records(CLICKS, timestamp="t", batch_size=2)
    views = sn.from_records(VIEWS, timestamp="t", batch_size=2)
    got = sql(
        """SELECT c.user, c.clicks, v.views, c.ws
           FROM (SELECT user, COUNT(*) AS clicks, window_start AS ws, window_end AS we
                 FROM TABLE(TUMBLE(TABLE clicks, DESCRIPTOR(t), INTERVAL '5' SECOND))
                 GROUP BY user, window_start, window_end) c
           JOIN (SELECT user AS viewer, COUNT(*) AS views, window_start AS ws, window_end AS we
                 FROM TABLE(TUMBLE(TABLE views, DESCRIPTOR(t), INTERVAL '5' SECOND))
                 GROUP BY user, window_start, window_end) v
           ON c.user = v.viewer AND c.ws = v.ws AND c.we = v.we""",
        clicks=clicks,
        views=views,
    )
    per_window = [
        frame.group_by("user", pl.col("t").dt.truncate("5s").alias("ws")).agg(pl.len().alias(n))
        for frame, n in ((CLICKS, "clicks"), (VIEWS, "views"))
    ]
    want = (
        per_window[0].join(per_window[1], on=["user", "ws"]).select("user", "clicks", "views", "ws")
    )
    assert_same_rows(got, want)


# -- names ---------------------------------------------------------------------------------------
def test_unknown_table_names_it_and_how_to_pass_it() -> None:
    with pytest.raises(
        ConfigError, match=r"unknown table 'bids' \(at line 1, column 15\).*bids=stream"
    ):
        sn.sql("SELECT * FROM bids", bid=events())


def test_unknown_and_ambiguous_columns() -> None:
    with pytest.raises(ConfigError, match=r"unknown column 'w' \(at line 1, column 11\)"):
        sn.sql("SELECT k, w FROM events", events=events())
    also_v = sn.table_from_records(NAMES.with_columns(v=pl.lit(1)), key="k")
    with pytest.raises(ConfigError, match=r"column 'v' is ambiguous \(at line 1, column 8\)"):
        sn.sql("SELECT v FROM events e JOIN names n ON e.k = n.k", events=events(), names=also_v)


def test_a_column_neither_grouped_nor_aggregated() -> None:
    with pytest.raises(ConfigError, match=r"'v' \(at line 1, column 11\) is neither grouped by"):
        sn.sql("SELECT k, v FROM events GROUP BY k", events=events())
