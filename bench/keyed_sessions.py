"""Keyed state at scale (issue 13), windows and joins: session windows with 1 K to 1 M open
sessions, and an interval join with 100 K to 5 M buffered records.

    .venv/bin/python bench/keyed_sessions.py [--sessions 1000,100000,1000000]
        [--buffers 100000,1000000,5000000] [--batch 50000] [--max-seconds 120] [--quick]

Two workloads, figures in records per second of wall time, in one process:

1. **sessions**: ``window(Session("10s"), by="k").agg(pl.len())``. For K open sessions, K keys
   each send a record every 5 s on average (times in order, ``t = i · 5000 / K`` ms, ``k``
   uniform, seeded), so about K sessions are open at once (a key pauses ≥ 10 s now and then:
   its session closes). ``max(3 K, 1 M)`` records. Checked against polars: sort by key and
   time, a new session where a key's gap reaches 10 s, count per session.
2. **interval join**: two streams ``(k, t, v)`` and ``(k, t, x)`` over the same B keys, an
   inner ``join(on="k", within="10s")``; each side brings B / 20 records per second of event
   time, so about B records are buffered (B / 2 per side, kept ``within`` = 10 s) and a record
   has about one partner. B records per side, fed alternately (a left batch, then the right
   batch of the same time span) with a watermark delay of a batch's span + 1 s, so every
   pair within 10 s counts and the result is polars' join filtered on
   ``|t - t_right| ≤ 10 s``, which checks it row for row).

The batches are pre-made and pushed through the engine's own ``Pipeline`` (no source, no
result table). A run stops feeding after ``--max-seconds``: its rate is over the records fed
(marked ‡), and the check is over those records (the pipeline is finished, untimed).
"""

from __future__ import annotations

import argparse
import gc
import sys
import time

import numpy as np
import polars as pl
from benchutil import CpuMeter, fmt_rate, machine_info, machine_line
from keyed_state import Collect, Run, batches, close, report

import streamnb as sn
from streamnb.engine.core import Context
from streamnb.engine.executor import Pipeline, Step

SEED = 13
GAP_MS = 10_000
WITHIN_MS = 10_000


# -- sessions ---------------------------------------------------------------------------------
def session_records(keys: int) -> pl.DataFrame:
    n = max(3 * keys, 1_000_000)
    rng = np.random.default_rng([SEED, keys])
    return pl.DataFrame(
        {
            "t": (np.arange(n, dtype=np.int64) * 5000) // keys,
            "k": rng.integers(0, keys, n, dtype=np.int64),
        }
    )


def polars_sessions(df: pl.DataFrame) -> tuple[Run, pl.DataFrame]:
    meter = CpuMeter()
    out = (
        df.sort("k", "t")
        .with_columns(s=(pl.col("t").diff().over("k").fill_null(GAP_MS) >= GAP_MS).cum_sum())
        .group_by("k", "s")
        .agg(
            window_start=pl.col("t").min(),
            window_end=pl.col("t").max() + GAP_MS,
            n=pl.len(),
        )
        .drop("s")
    )
    m = meter.stop()
    return Run(df.height, m.wall, m.cpu, others=m.others), out


def feed(pipeline: Pipeline, source: Step, parts: list[pl.DataFrame], max_seconds: float) -> Run:
    """Push ``parts``; stop early after ``max_seconds`` (then finish, untimed)."""
    fed, capped = 0, False
    meter = CpuMeter()
    deadline = time.perf_counter() + max_seconds
    for part in parts:
        pipeline.push(source, part)
        fed += part.height
        if fed < sum(p.height for p in parts) and time.perf_counter() > deadline:
            capped = True
            break
    if not capped:
        pipeline.finish(source)
    m = meter.stop()
    if capped:
        pipeline.finish(source)
    return Run(fed, m.wall, m.cpu, capped, m.others)


def streamnb_sessions(df: pl.DataFrame, size: int, max_seconds: float) -> tuple[Run, pl.DataFrame]:
    stream = sn.from_records(df.clear(), timestamp="t")
    query = stream.window(sn.Session(f"{GAP_MS}ms"), by="k").agg(pl.len().alias("n"))
    sink = Collect()
    pipeline = Pipeline(query.plan.root, Context(), sink)
    (source,) = pipeline.sources
    run = feed(pipeline, source, batches(df, size), max_seconds)
    close(pipeline)
    return run, sink.rows()


def check_sessions(got: pl.DataFrame, want: pl.DataFrame) -> None:
    cols = ["k", "window_start", "window_end", "n"]
    a = got.select(cols).cast(pl.Int64).sort(cols)
    b = want.select(cols).cast(pl.Int64).sort(cols)
    if not a.equals(b):
        raise RuntimeError(f"sessions: streamnb {a.height:,} sessions, polars {b.height:,} differ")


# -- interval join ----------------------------------------------------------------------------
def join_sides(buffer: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    n = buffer
    t = (np.arange(n, dtype=np.int64) * 20_000) // buffer
    sides = []
    for side, name in ((0, "v"), (1, "x")):
        rng = np.random.default_rng([SEED, buffer, side])
        sides.append(
            pl.DataFrame(
                {
                    "k": rng.integers(0, buffer, n, dtype=np.int64),
                    "t": t,
                    name: rng.integers(0, 1000, n, dtype=np.int64),
                }
            )
        )
    return sides[0], sides[1]


def polars_join(left: pl.DataFrame, right: pl.DataFrame) -> tuple[Run, pl.DataFrame]:
    meter = CpuMeter()
    out = left.join(right, on="k", suffix="_right").filter(
        (pl.col("t") - pl.col("t_right")).abs() <= WITHIN_MS
    )
    m = meter.stop()
    return Run(left.height + right.height, m.wall, m.cpu, others=m.others), out


def streamnb_join(
    left: pl.DataFrame, right: pl.DataFrame, size: int, max_seconds: float
) -> tuple[Run, pl.DataFrame]:
    # a watermark delay longer than a batch's span of event time: no pair is missed
    delay = f"{size * 20_000 // left.height + 1000}ms"
    ls = sn.from_records(left.clear()).with_watermark("t", delay)
    rs = sn.from_records(right.clear()).with_watermark("t", delay)
    sink = Collect()
    pipeline = Pipeline(ls.join(rs, on="k", within=f"{WITHIN_MS}ms").plan.root, Context(), sink)
    lsrc, rsrc = pipeline.sources  # in the plan's order: left, right
    fed, capped = 0, False
    meter = CpuMeter()
    deadline = time.perf_counter() + max_seconds
    for lpart, rpart in zip(batches(left, size), batches(right, size), strict=True):
        pipeline.push(lsrc, lpart)
        pipeline.push(rsrc, rpart)
        fed += lpart.height + rpart.height
        if fed < left.height + right.height and time.perf_counter() > deadline:
            capped = True
            break
    m = meter.stop()
    for src in (lsrc, rsrc):
        pipeline.finish(src)
    close(pipeline)
    return Run(fed, m.wall, m.cpu, capped, m.others), sink.rows()


def check_join(got: pl.DataFrame, want: pl.DataFrame) -> None:
    cols = ["k", "t", "v", "t_right", "x"]
    a = got.select(cols).sort(cols)
    b = want.select(cols).sort(cols)
    if not a.equals(b):
        raise RuntimeError(
            f"interval join: streamnb {a.height:,} pairs, polars {b.height:,} differ"
        )


# -- report -----------------------------------------------------------------------------------
def cell(run: Run) -> str:
    return fmt_rate(run.rate) + (" ‡" if run.capped else "")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", default="1000,100000,1000000")
    parser.add_argument("--buffers", default="100000,1000000,5000000")
    parser.add_argument("--batch", type=int, default=50_000)
    parser.add_argument("--max-seconds", type=float, default=120.0, help="per streamnb run")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1K/100K sessions, 100K")
    args = parser.parse_args()
    sessions = [int(k) for k in args.sessions.split(",") if k]
    buffers = [int(b) for b in args.buffers.split(",") if b]
    if args.quick:
        sessions, buffers = [1000, 100_000], [100_000]
    print(machine_line(machine_info()), flush=True)
    print(f"streamnb from {sn.__file__}", flush=True)
    lines = ["| workload | size | records | streamnb | polars batch |", "|---|---|---|---|---|"]
    for keys in sessions:
        print(f"sessions: {keys:,} keys, gap {GAP_MS} ms", flush=True)
        df = session_records(keys)
        gc.collect()
        pl_run, want = polars_sessions(df)
        report("polars", pl_run)
        gc.collect()
        sn_run, got = streamnb_sessions(df, args.batch, args.max_seconds)
        if sn_run.capped:
            _, want = polars_sessions(df.head(sn_run.records))
        check_sessions(got, want)
        report(f"streamnb (checked: {got.height:,} sessions equal)", sn_run)
        lines.append(
            f"| sessions | {keys:,} open | {df.height:,} | {cell(sn_run)} | {cell(pl_run)} |"
        )
        del df, want, got
    for buffer in buffers:
        print(f"interval join: ~{buffer:,} records buffered, within {WITHIN_MS} ms", flush=True)
        left, right = join_sides(buffer)
        gc.collect()
        pl_run, want = polars_join(left, right)
        report("polars", pl_run)
        gc.collect()
        sn_run, got = streamnb_join(left, right, args.batch, args.max_seconds)
        if sn_run.capped:
            half = sn_run.records // 2
            _, want = polars_join(left.head(half), right.head(half))
        check_join(got, want)
        report(f"streamnb (checked: {got.height:,} pairs equal)", sn_run)
        lines.append(
            f"| interval join | {buffer:,} buffered | {2 * buffer:,} | {cell(sn_run)} | "
            f"{cell(pl_run)} |"
        )
        del left, right, want, got
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
