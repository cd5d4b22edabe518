"""``Stream.explain()``: the fluent Python code of a query, from SQL or written fluently."""

from __future__ import annotations

import polars as pl
from IPython.lib.pretty import pretty

import streamnb as sn

WINDOWED = """
    SELECT window_start, window_end, auction, COUNT(*) AS bids
    FROM TABLE(TUMBLE(TABLE bids, DESCRIPTOR(`dateTime`), INTERVAL '10' SECOND))
    GROUP BY auction, window_start, window_end
"""


def test_sql_explains_as_the_fluent_query_it_runs() -> None:
    query = sn.sql(WINDOWED, bids=sn.nexmark(events=1_000))
    code = 'bids.window(sn.Tumbling("10s"), by="auction").agg(pl.len().alias("bids"))'
    assert str(query.explain()) == code
    bids = sn.nexmark(events=1_000)
    assert query.collect().equals(eval(code, {"pl": pl, "sn": sn, "bids": bids}).collect())


def test_sql_explain_of_projection_filter_and_join() -> None:
    bid = sn.nexmark(events=1_000)
    q2 = sn.sql("SELECT auction, price FROM bid WHERE MOD(auction, 123) = 0", bid=bid)
    assert (
        str(q2.explain()) == 'bid.filter((pl.col("auction") % 123) == 0).select("auction", "price")'
    )
    names = sn.table_from_records([{"id": 1000, "name": "x"}], key="id")
    joined = sn.sql(
        "SELECT b.price * 2 AS double, n.name FROM bid b LEFT JOIN names n ON b.auction = n.id",
        bid=bid,
        names=names,
    )
    assert str(joined.explain()) == (
        'bid.join(names.rename({"id": "auction"}), on="auction", how="left")'
        '.select((pl.col("price") * 2).alias("double"), "name")'
    )


def test_explain_shows_as_code_in_a_repl_and_a_notebook() -> None:
    explained = sn.sql(WINDOWED, bids=sn.nexmark(events=1_000)).explain()
    assert isinstance(explained, str)
    assert repr(explained) == str(explained)  # no quotes around it
    assert pretty(explained) == str(explained)


def test_fluent_queries_explain_their_calls() -> None:
    query = (
        sn.nexmark(events=1_000)
        .with_watermark("dateTime", "4s")
        .window(sn.Hopping("10s", "2s"), by="auction", grace="1s")
        .agg(pl.len().alias("bids"))
    )
    assert str(query.explain()) == (
        'sn.nexmark(1000, kind="bid").with_watermark("dateTime", "4s")'
        '.window(sn.Hopping("10s", "2s"), by="auction", grace="1s").agg(pl.len().alias("bids"))'
    )
    records = sn.from_records([{"k": "col(", "v": 1}]).filter(pl.col("k") == "col(")
    code = str(records.explain())
    assert code.startswith("sn.from_records(...).filter(")
    assert 'pl.col("k")' in code and '"col("' in code  # string literals are left alone
    table = sn.table_from_records([{"k": "a"}], key="k")
    joined = sn.from_records([{"k": "a", "v": 1}]).join(table, on="k").drop("v")
    assert str(joined.explain()) == (
        'sn.from_records(...).join(sn.table_from_records(..., key="k"), on="k").drop("v")'
    )
