"""Session windows over input with records far out of order: what they cost the query.

    .venv/bin/python bench/late_sessions.py [--records 100000] [--bad 0.02] [--near 0,0.01]

A session query, ``window(Session("5s"), by="k").agg(pl.len(), pl.col("v").sum())`` with a
2 s watermark delay, over ``(k, t, v)``: 500 keys, a record every 10 ms of event time, in
batches of 5 000. A share ``--bad`` of the records comes from clocks far behind (1 minute to
1 hour): each is late. A share ``--near`` comes 4 to 12 s behind: out of order by more than
delay + grace too, but such a record may still reach a session of its key, so some of them
link. Both kinds are *suspects*, records the session operator cannot take with the rest of
their batch; the first kind it sets aside in one vectorised pass, the second it takes one by
one (``streamnb/engine/sessions.py``).

For each ``--near``, it prints the records per second of the query on that input next to the
same query on the in-order records alone (the bad and near records dropped), measured in the
same run, and checks that the result equals the record-at-a-time reference of
``tests/oracle.py`` (window rows and late records, in order).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import benchutil
import numpy as np
import polars as pl
from polars.testing import assert_frame_equal

import streamnb as sn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.oracle import reference

KEYS = 500
STEP_MS = 10
BATCH = 5_000
GAP_MS, DELAY_MS = 5_000, 2_000
AGGS = [pl.len().alias("n"), pl.col("v").sum().alias("total")]


def records(n: int, bad: float, near: float, seed: int = 7) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    t = 1_700_000_000_000 + np.arange(n, dtype=np.int64) * STEP_MS
    far = rng.random(n) < bad
    t = np.where(far, t - rng.integers(60_000, 3_600_000, n), t)
    close = (rng.random(n) < near) & ~far
    t = np.where(close, t - rng.integers(4_000, 12_000, n), t)
    return pl.DataFrame(
        {"k": rng.integers(0, KEYS, n), "t": t, "v": np.arange(n, dtype=np.int64)}
    ).with_columns(in_order=pl.Series(~(far | close)))


def run(df: pl.DataFrame) -> tuple[float, pl.DataFrame, pl.DataFrame]:
    batches = [df.slice(i, BATCH) for i in range(0, df.height, BATCH)]
    query = (
        sn.from_records(batches, timestamp="t")
        .with_watermark("t", f"{DELAY_MS}ms")
        .window(sn.Session(f"{GAP_MS}ms"), by="k")
        .agg(AGGS)
        .start("late-sessions")
    )
    started = time.perf_counter()
    query.wait()
    return time.perf_counter() - started, query.result(), query.late()


def check(df: pl.DataFrame, result: pl.DataFrame, late: pl.DataFrame) -> str:
    want = reference(
        df, time="t", kind="session", size=0, every=0, gap=GAP_MS, delay=DELAY_MS, grace=0,
        by=["k"], aggs=AGGS,
    )  # fmt: skip
    try:
        assert_frame_equal(result, want.emitted)
        assert_frame_equal(late, df[want.late], check_dtypes=False)
    except AssertionError:
        return "**differs**"
    return "ok"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--records", type=int, default=100_000)
    p.add_argument("--bad", type=float, default=0.02, help="share of records far behind")
    p.add_argument("--near", default="0,0.01", help="shares of records 4-12 s behind")
    args = p.parse_args()
    print(benchutil.machine_line(benchutil.machine_info()))
    print(
        "| records | far behind | near behind | late | records/s | in-order alone records/s "
        "| ratio | check |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---|")
    for near in (float(x) for x in args.near.split(",")):
        df = records(args.records, args.bad, near)
        clean = df.filter("in_order").drop("in_order")
        df = df.drop("in_order")
        seconds, result, late = run(df)
        clean_seconds, _, _ = run(clean)
        rate, clean_rate = df.height / seconds, clean.height / clean_seconds
        print(
            f"| {df.height:,} | {args.bad:.0%} | {near:.0%} | {late.height:,} | {rate:,.0f} | "
            f"{clean_rate:,.0f} | {rate / clean_rate:.2f}× | {check(df, result, late)} |"
        )


if __name__ == "__main__":
    main()
