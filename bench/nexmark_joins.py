"""Nexmark join queries in memory (q3, q7, q8), and the memory of join state over time.

    .venv/bin/python bench/nexmark_joins.py [--events N] [--memory-events M]

* q3  auctions of category 10 ⋈ persons in OR / ID / CA on seller = id (stream–table join:
      the persons table is the latest row per person id).
* q7  highest bid per 10 s tumbling window, with the bids that reach it (the window maximum
      joined back to the bids: an interval join on window and price).
* q8  new users: persons and auctions in the same 10 s tumbling window, person id = seller
      (a window join).

Each query is checked against a polars batch computation on the same data before its speed
is quoted. The memory run streams ``M`` generated events through q7 and q8 and samples the
join state (rows held) and the process RSS: both must stay flat, because the watermark
evicts what no partner can reach any more. Results go to the ``joins`` section of
BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import polars as pl
from benchutil import (
    CpuMeter,
    current_rss,
    fmt_mib,
    fmt_rate,
    machine_info,
    machine_line,
    write_section,
)

import streamnb as sn
from streamnb.io.sources.nexmark import generate

STATES = ["OR", "ID", "CA"]
TEN_S = 10_000


def q3(persons: sn.Stream, auctions: sn.Stream) -> sn.Stream:
    table = (
        persons.filter(pl.col("state").is_in(STATES))
        .group_by("id")
        .agg(pl.col("name").last(), pl.col("city").last(), pl.col("state").last())
    )
    return (
        auctions.filter(pl.col("category") == 10)
        .select(pl.col("id").alias("auction"), pl.col("seller").alias("id"))
        .join(table, on="id")
    )


def q7(bids: sn.Stream) -> sn.Stream:
    bids = bids.with_watermark("dateTime", "4s").select(
        "auction",
        "bidder",
        "price",
        "dateTime",
        window=(pl.col("dateTime").dt.epoch("ms") // TEN_S) * TEN_S,
    )
    highest = (
        bids.window(sn.Tumbling("10s"))
        .agg(pl.col("price").max())
        .select(
            pl.col("window_start").alias("dateTime"),
            "price",
            window=pl.col("window_start").dt.epoch("ms"),
        )
        .with_watermark("dateTime", "4s")
    )
    return bids.join(highest, on=["window", "price"], within="10s", grace="10s").select(
        "auction", "bidder", "price", "dateTime"
    )


def q8(persons: sn.Stream, auctions: sn.Stream) -> sn.Stream:
    new_people = persons.window(sn.Tumbling("10s"), by="id").agg(pl.col("name").first())
    sellers = (
        auctions.select("dateTime", id="seller")
        .window(sn.Tumbling("10s"), by="id")
        .agg(pl.len().alias("auctions"))
    )
    return new_people.join(sellers, on="id")


# -- polars references --------------------------------------------------------------------------
def q3_reference(persons: pl.DataFrame, auctions: pl.DataFrame) -> pl.DataFrame:
    """The batch join: the persons table (a bounded source) is read to its end before any
    auction is joined (docs/semantics.md §3.10), so every auction meets every person."""
    table = persons.filter(pl.col("state").is_in(STATES)).select("id", "name", "city", "state")
    return (
        auctions.filter(pl.col("category") == 10)
        .select(pl.col("id").alias("auction"), pl.col("seller").alias("id"))
        .join(table, on="id")
    )


def q7_reference(bids: pl.DataFrame) -> pl.DataFrame:
    window = (pl.col("dateTime").dt.epoch("ms") // TEN_S) * TEN_S
    top = bids.group_by(window.alias("w")).agg(pl.col("price").max())
    return (
        bids.with_columns(window.alias("w"))
        .join(top, on=["w", "price"])
        .select("auction", "bidder", "price", "dateTime")
    )


def q8_reference(persons: pl.DataFrame, auctions: pl.DataFrame) -> pl.DataFrame:
    window = (pl.col("dateTime").dt.epoch("ms") // TEN_S) * TEN_S
    people = persons.group_by(window.alias("w"), "id").agg(pl.col("name").first())
    sellers = auctions.group_by(window.alias("w"), pl.col("seller").alias("id")).agg(
        pl.len().alias("auctions")
    )
    return people.join(sellers, on=["w", "id"]).select("id", "name", "auctions", "w")


def same(got: pl.DataFrame, want: pl.DataFrame, columns: list[str]) -> bool:
    a, b = got.select(columns), want.select(columns)
    return a.sort(columns).equals(b.sort(columns))


# -- runs ---------------------------------------------------------------------------------------
def frames(kind: str, events: int, size: int = 50_000) -> list[pl.DataFrame]:
    df = generate(kind, 0, events)
    return [df.slice(i, size) for i in range(0, df.height, size)]


def source(parts: list[pl.DataFrame]) -> sn.Stream:
    return sn.from_records(parts, timestamp="dateTime", batch_size=50_000)


def timed(build: Callable[[], sn.Stream], events: int) -> tuple[pl.DataFrame, float, float]:
    stream = build()
    meter = CpuMeter()
    out = stream.collect()
    m = meter.stop()
    return out, events / m.wall, events / m.cpu


def correctness(events: int) -> dict[str, bool]:
    persons, auctions, bids = (generate(k, 0, events) for k in ("person", "auction", "bid"))
    p, a, b = ([df] for df in (persons, auctions, bids))
    checks = {}
    got = q3(source(p), source(a)).collect()
    checks["q3"] = same(got, q3_reference(persons, auctions), ["auction", "id", "name"])
    checks["q7"] = same(
        q7(source(b)).collect(), q7_reference(bids), ["auction", "bidder", "price", "dateTime"]
    )
    got8 = q8(source(p), source(a)).collect().with_columns(w=pl.col("window_start").dt.epoch("ms"))
    checks["q8"] = same(got8, q8_reference(persons, auctions), ["id", "name", "auctions", "w"])
    return checks


def memory_run(events: int, samples: int = 10) -> list[tuple[int, int, int, int]]:
    """(events so far, q7 join rows held, q8 join rows held, RSS) while streaming ``events``
    generated events through q7, then through q8 (one query at a time)."""
    runs = {
        # q7 reads the bids twice (the bids and, through the window, their maxima)
        "q7": (lambda: q7(sn.nexmark(events=events)), 2 * 0.92),
        "q8": (
            lambda: q8(
                sn.nexmark(events=events, kind="person"), sn.nexmark(events=events, kind="auction")
            ),
            0.08,
        ),
    }
    held: dict[str, list[tuple[int, int, int]]] = {}
    for name, (build, share) in runs.items():
        query = build().start(f"{name}-memory", keep=1_000)
        points: list[tuple[int, int, int]] = []
        next_mark = events // samples
        while query.status()["state"] == "running":
            seen = query.status()["records_in"] / share
            if seen >= next_mark:
                points.append((int(seen), _join_rows(query), current_rss()))
                next_mark += events // samples
            time.sleep(0.02)
        query.wait()
        held[name] = points
    rows = []
    for (e7, h7, r7), (_, h8, r8) in zip(held["q7"], held["q8"], strict=False):
        rows.append((e7, h7, h8, max(r7, r8)))
    return rows


def _join_rows(query: sn.Query) -> int:
    from streamnb.engine import joins

    held = 0
    for step in query._exec.pipeline.steps:
        op = step.op
        if isinstance(op, (joins.IntervalJoin, joins.WindowJoin)):
            held += sum(b.height for b in op.buffers)
    return held


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=5_000_000)
    parser.add_argument("--memory-events", type=int, default=10_000_000)
    parser.add_argument("--check-events", type=int, default=500_000)
    args = parser.parse_args()
    info = machine_info()
    checks = correctness(args.check_events)
    print("correctness:", checks)
    p, a, b = (frames(k, args.events) for k in ("person", "auction", "bid"))
    n_pa = sum(f.height for f in p) + sum(f.height for f in a)
    n_b = sum(f.height for f in b)
    results = []
    for name, build, n in [
        ("q3 auctions ⋈ persons (stream–table)", lambda: q3(source(p), source(a)), n_pa),
        ("q7 highest bid, joined back (interval join)", lambda: q7(source(b)), n_b),
        ("q8 new users (window join)", lambda: q8(source(p), source(a)), n_pa),
    ]:
        out, rate, per_cpu = timed(build, n)
        results.append((name, n, rate, per_cpu, out.height))
        print(f"{name}: {fmt_rate(rate)}/s, {fmt_rate(per_cpu)}/CPU-s, {out.height} rows")
    memory = memory_run(args.memory_events)
    for row in memory:
        print("memory", row)
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [
        "## Joins — in memory (q3, q7, q8) and join state over time",
        "",
        f"_Written by `bench/nexmark_joins.py` on {stamp}._",
        "",
        f"- **Machine:** {machine_line(info)}",
        f"- **Data:** {args.events:,} generated events per kind (pre-generated frames of 50,000 "
        "rows; q3/q8 read persons and auctions, q7 reads bids); 100,000 events/s of event time.",
        "- **Correctness** (polars batch reference, "
        f"{args.check_events:,} events): "
        + ", ".join(f"{k} {'ok' if v else 'MISMATCH'}" for k, v in checks.items()),
        "",
        "| query | records in | events/s | events/CPU-s | output rows |",
        "|---|---|---|---|---|",
        *(f"| {n} | {k:,} | {fmt_rate(r)} | {fmt_rate(c)} | {o:,} |" for n, k, r, c, o in results),
        "",
        f"**State over {args.memory_events:,} generated events** (`sn.nexmark` sources; q7, then "
        "q8; rows held in the join operators' buffers, process RSS):",
        "",
        "| events so far | q7 join rows held | q8 join rows held | RSS MiB |",
        "|---|---|---|---|",
        *(f"| {e:,} | {h7:,} | {h8:,} | {fmt_mib(rss)} |" for e, h7, h8, rss in memory),
        "",
        "The rows held stay flat: each buffered record is evicted once the watermark shows no "
        "partner can still arrive (interval join: `W ≥ time + within + grace`; window join: "
        "the other side has emitted a later window).",
    ]
    write_section("joins", "\n".join(lines))


if __name__ == "__main__":
    main()
