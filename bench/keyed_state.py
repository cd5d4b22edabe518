"""Keyed state at scale (issue 13): a running group_by and a stream–table join, 1 K to 5 M keys.

    .venv/bin/python bench/keyed_state.py [--keys 1000,100000,1000000,5000000]
        [--records 10000000] [--batch 50000] [--max-seconds 360] [--quick] [--write]

For each key count K, ``--records`` records ``(k, v)`` are generated in memory (``k`` uniform
over ``0..K-1``, ``v`` uniform over ``0..999``, seeded) and cut into pre-made batches of
``--batch`` rows. Four figures, all records per second of wall time, in one process:

1. streamnb's running ``group_by("k").agg(pl.len(), pl.col("v").sum())``: the batches are
   pushed through the engine's own ``Pipeline`` (no source reading or decoding, no result
   table: the sink only keeps the changelog deltas it is handed);
2. polars: ``df.group_by("k").agg(...)`` once over all records;
3. streamnb's stream–table left join of the records with a table of one row per key
   (``table_from_records``; the table is loaded first, untimed, then the stream's batches are
   pushed and timed);
4. polars: ``records.join(table, on="k", how="left")`` once.

Every streamnb run is checked against polars before its figure is printed: the key's final
row from the group_by changelog must equal polars' count and sum for every key, and the join
output must equal polars' left join row for row. A run is stopped after ``--max-seconds`` of
feeding; its rate is then over the records it processed (checked against polars on that
prefix), and the table marks it. ``--write`` puts the table into the ``keyed-state`` section
of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np
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
from streamnb.columns import visible
from streamnb.engine.core import Context, Delta
from streamnb.engine.executor import Pipeline, Step
from streamnb.engine.joins import StreamTableJoin
from streamnb.engine.operators import GroupByOperator

AGGS = (pl.len(), pl.col("v").sum())
FIVE = (  # the aggregates whose state per key is reported
    pl.len(),
    pl.col("v").sum().alias("sum"),
    pl.col("v").min().alias("min"),
    pl.col("v").max().alias("max"),
    pl.col("v").mean().alias("mean"),
)
SEED = 13


@dataclass
class Run:
    """One timed run: records processed, wall and CPU seconds, and whether it was capped."""

    records: int
    wall: float
    cpu: float
    capped: bool = False
    others: float | None = None
    extra: float = 0.0  # untimed set-up seconds (the table load of the join)
    state_bytes: int = 0  # the operator's state at the end
    state_keys: int = 0  # the keys it holds

    @property
    def rate(self) -> float:
        return self.records / self.wall if self.wall > 0 else float("nan")


# -- data -----------------------------------------------------------------------------------
def records(n: int, keys: int, seed: int = SEED) -> pl.DataFrame:
    rng = np.random.default_rng([seed, keys])
    return pl.DataFrame(
        {
            "k": rng.integers(0, keys, n, dtype=np.int64),
            "v": rng.integers(0, 1000, n, dtype=np.int64),
        }
    )


def table(keys: int) -> pl.DataFrame:
    """One row per key: the key and two attributes."""
    return pl.DataFrame({"k": np.arange(keys, dtype=np.int64)}).with_columns(
        w=pl.col("k") * 7 % 1013, tier=(pl.col("k") % 5).cast(pl.Int32)
    )


def batches(df: pl.DataFrame, size: int) -> list[pl.DataFrame]:
    return [df.slice(i, size) for i in range(0, df.height, size)]


# -- driving the engine's pipeline ------------------------------------------------------------
class Collect:
    """A pipeline sink that only keeps the deltas it is handed (no result table)."""

    def __init__(self) -> None:
        self.deltas: list[Delta] = []

    def __call__(self, delta: Delta) -> None:
        self.deltas.append(delta)

    def rows(self) -> pl.DataFrame:
        frames = [visible(d.rows) for d in self.deltas if d.rows.height]
        return pl.concat(frames) if frames else pl.DataFrame()


def feed(
    pipeline: Pipeline, source: Step, parts: list[pl.DataFrame], max_seconds: float
) -> tuple[int, bool]:
    """Push ``parts`` into ``source``; stop early after ``max_seconds``. (records, capped)"""
    fed, total = 0, sum(p.height for p in parts)
    deadline = time.perf_counter() + max_seconds
    for part in parts:
        pipeline.push(source, part)
        fed += part.height
        if fed < total and time.perf_counter() > deadline:
            return fed, True
    pipeline.finish(source)
    return fed, False


def close(pipeline: Pipeline) -> None:
    for step in pipeline.steps:
        if step.op is not None:
            step.op.close()


# -- 1 / 2: running group_by ------------------------------------------------------------------
def streamnb_group_by(
    df: pl.DataFrame, size: int, max_seconds: float, aggs: tuple[pl.Expr, ...] = AGGS
) -> tuple[Run, pl.DataFrame]:
    stream = sn.from_records(df.clear()).group_by("k").agg(*aggs)
    sink = Collect()
    pipeline = Pipeline(stream.plan.root, Context(), sink)
    (source,) = pipeline.sources
    parts = batches(df, size)
    meter = CpuMeter()
    fed, capped = feed(pipeline, source, parts, max_seconds)
    m = meter.stop()
    (op,) = [s.op for s in pipeline.steps if isinstance(s.op, GroupByOperator)]
    held = op.store.nbytes if op.store is not None else op.whole.estimated_size()  # type: ignore[union-attr]
    count = len(op.store) if op.store is not None else op.whole.height  # type: ignore[union-attr]
    close(pipeline)
    # the changelog is an upsert stream keyed by k: each key's last row is its final value
    final = sink.rows().unique("k", keep="last", maintain_order=True)
    run = Run(fed, m.wall, m.cpu, capped, m.others, state_bytes=held, state_keys=count)
    return run, final


def state_per_key(df: pl.DataFrame, size: int) -> tuple[Run, Run]:
    """Bytes per key held by the running group_by of :data:`FIVE` (untimed), next to polars'
    own frame of the same result."""
    run, final = streamnb_group_by(df, size, float("inf"), FIVE)
    want = df.group_by("k").agg(*FIVE)
    assert final.height == want.height, "group_by of five aggregates: keys differ"
    return run, Run(df.height, 0, 0, state_bytes=want.estimated_size(), state_keys=want.height)


def polars_group_by(df: pl.DataFrame) -> tuple[Run, pl.DataFrame]:
    meter = CpuMeter()
    out = df.group_by("k").agg(*AGGS)
    m = meter.stop()
    return Run(df.height, m.wall, m.cpu, others=m.others), out


def check_group_by(got: pl.DataFrame, want: pl.DataFrame) -> None:
    cols = ["k", "len", "v"]
    a = got.select(cols).cast(pl.Int64).sort("k")
    b = want.select(cols).cast(pl.Int64).sort("k")
    if not a.equals(b):
        diff = a.join(b, on="k", how="full", suffix="_pl").filter(
            pl.col("len").ne_missing(pl.col("len_pl")) | pl.col("v").ne_missing(pl.col("v_pl"))
        )
        raise RuntimeError(
            f"group_by mismatch: streamnb {a.height:,} keys, polars {b.height:,}; "
            f"{diff.height:,} differ, e.g.\n{diff.head(5)}"
        )


# -- 3 / 4: stream–table join -----------------------------------------------------------------
def streamnb_join(
    df: pl.DataFrame, tab: pl.DataFrame, size: int, max_seconds: float
) -> tuple[Run, pl.DataFrame]:
    stream = sn.from_records(df.clear())
    keyed = sn.table_from_records(tab.clear(), key="k")
    sink = Collect()
    pipeline = Pipeline(stream.join(keyed, on="k", how="left").plan.root, Context(), sink)
    (table_source,) = [s for s in pipeline.sources if pipeline.feeds_table(s)]
    (stream_source,) = [s for s in pipeline.sources if not pipeline.feeds_table(s)]
    # the table is read to its end before any stream record is joined (as the Runner does)
    load = CpuMeter()
    feed(pipeline, table_source, batches(tab, size), float("inf"))
    loaded = load.stop().wall
    parts = batches(df, size)
    meter = CpuMeter()
    fed, capped = feed(pipeline, stream_source, parts, max_seconds)
    m = meter.stop()
    (op,) = [s.op for s in pipeline.steps if isinstance(s.op, StreamTableJoin)]
    held, count = op.keyed.store.nbytes, len(op.keyed.store)
    close(pipeline)
    run = Run(fed, m.wall, m.cpu, capped, m.others, loaded, held, count)
    return run, sink.rows()


def polars_join(df: pl.DataFrame, tab: pl.DataFrame) -> tuple[Run, pl.DataFrame]:
    meter = CpuMeter()
    out = df.join(tab, on="k", how="left")
    m = meter.stop()
    return Run(
        df.height,
        m.wall,
        m.cpu,
        others=m.others,
        state_bytes=tab.estimated_size(),
        state_keys=tab.height,
    ), out


def check_join(got: pl.DataFrame, df: pl.DataFrame, tab: pl.DataFrame) -> None:
    want = df.join(tab, on="k", how="left", maintain_order="left")
    if got.height != want.height:
        raise RuntimeError(f"join: streamnb {got.height:,} rows, polars {want.height:,}")
    if not got.select(want.columns).equals(want):
        raise RuntimeError("join: streamnb's rows differ from polars' left join")


# -- one configuration ----------------------------------------------------------------------
def report(label: str, run: Run) -> None:
    note = f" (CAPPED after {run.records:,} records)" if run.capped else ""
    print(
        f"  {label}: {fmt_rate(run.rate)} records/s ({run.records:,} in {run.wall:.2f} s, "
        f"{run.cpu:.2f} CPU-s){note}; RSS {fmt_mib(current_rss())} MiB",
        flush=True,
    )


def configuration(keys: int, n: int, size: int, max_seconds: float) -> dict[str, Run]:
    print(f"keys {keys:,}: {n:,} records in batches of {size:,}", flush=True)
    df = records(n, keys)
    tab = table(keys)
    runs: dict[str, Run] = {}

    # each streamnb figure is reported only once its result equals polars'
    gc.collect()
    runs["pl_gb"], want = polars_group_by(df)
    report("polars group_by", runs["pl_gb"])
    gc.collect()
    runs["sn_gb"], got = streamnb_group_by(df, size, max_seconds)
    if runs["sn_gb"].capped:  # check what was processed: the records fed so far
        want = df.head(runs["sn_gb"].records).group_by("k").agg(*AGGS)
    check_group_by(got, want)
    runs["pl_gb"].state_bytes = want.estimated_size()  # polars' own frame of the result
    runs["pl_gb"].state_keys = want.height
    report(f"streamnb running group_by (checked: {got.height:,} keys equal)", runs["sn_gb"])
    print(f"  state {per_key(runs['sn_gb'])} B/key; polars' frame {per_key(runs['pl_gb'])} B/key")
    del got, want
    gc.collect()
    runs["sn_five"], runs["pl_five"] = state_per_key(df, size)
    print(
        f"  group_by of count, sum, min, max, mean: state {per_key(runs['sn_five'])} B/key; "
        f"polars' result frame {per_key(runs['pl_five'])} B/key"
    )

    gc.collect()
    runs["pl_join"], out = polars_join(df, tab)
    report("polars join", runs["pl_join"])
    del out
    gc.collect()
    runs["sn_join"], joined = streamnb_join(df, tab, size, max_seconds)
    check_join(joined, df.head(runs["sn_join"].records), tab)
    report(f"streamnb stream–table join (checked: {joined.height:,} rows equal)", runs["sn_join"])
    print(f"  (table of {keys:,} rows loaded first in {runs['sn_join'].extra:.2f} s, untimed)")
    del joined, df, tab
    return runs


# -- report ---------------------------------------------------------------------------------
def per_key(run: Run) -> str:
    return f"{run.state_bytes / max(run.state_keys, 1):.0f}"


def cell(run: Run) -> str:
    return fmt_rate(run.rate) + (" ‡" if run.capped else "")


def ratio(a: Run, b: Run) -> str:
    r = b.rate / a.rate
    return f"{r:,.0f}×" if r >= 10 else f"{r:.1f}×"


def table_lines(results: list[tuple[int, dict[str, Run]]]) -> list[str]:
    lines = [
        "| keys | running group_by | polars batch | ratio | stream–table join | polars batch "
        "join | ratio | B/key: group_by count, sum (polars) | B/key: group_by count, sum, min, "
        "max, mean (polars) | B/key: table row (polars) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for keys, r in results:
        lines.append(
            f"| {keys:,} | {cell(r['sn_gb'])} | {cell(r['pl_gb'])} | "
            f"{ratio(r['sn_gb'], r['pl_gb'])} | {cell(r['sn_join'])} | "
            f"{cell(r['pl_join'])} | {ratio(r['sn_join'], r['pl_join'])} | "
            f"{per_key(r['sn_gb'])} ({per_key(r['pl_gb'])}) | "
            f"{per_key(r['sn_five'])} ({per_key(r['pl_five'])}) | "
            f"{per_key(r['sn_join'])} ({per_key(r['pl_join'])}) |"
        )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", default="1000,100000,1000000,5000000")
    parser.add_argument("--records", type=int, default=10_000_000)
    parser.add_argument("--batch", type=int, default=50_000)
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=360.0,
        help="stop feeding a streamnb run after this long; its rate is over what it processed",
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run: 200k records, 1K/100K")
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md (keyed-state)")
    args = parser.parse_args()
    if args.quick:
        args.records, args.keys = 200_000, "1000,100000"
    key_counts = [int(k.replace("_", "")) for k in args.keys.split(",") if k.strip()]
    info = machine_info()
    print(machine_line(info), flush=True)

    results = []
    spawn = multiprocessing.get_context("spawn")
    for keys in key_counts:  # each in a process of its own: one size's heap never slows the next
        with ProcessPoolExecutor(1, mp_context=spawn) as pool:
            run = pool.submit(configuration, keys, args.records, args.batch, args.max_seconds)
            results.append((keys, run.result()))

    capped = [k for k, r in results if r["sn_gb"].capped or r["sn_join"].capped]
    rows = table_lines(results)
    loads = ", ".join(f"{k:,} keys {r['sn_join'].extra:.2f} s" for k, r in results)
    others = [  # too short a run makes /proc/stat's tick counts meaningless
        run.others
        for _, r in results
        for run in r.values()
        if run.others is not None and run.wall >= 1.0
    ]
    command = " ".join(["bench/keyed_state.py", *sys.argv[1:]])
    notes = [
        "Records per second of wall time. *ratio*: polars batch ÷ streamnb. streamnb runs push "
        f"pre-made batches of {args.batch:,} records through the engine's `Pipeline` (no "
        "decoding, no result table); polars runs once over all records. Each key count runs in "
        "a fresh process (streamnb and polars alike).",
        "Each streamnb result was checked against polars first (group_by: count and sum of "
        "every key from the changelog's last row per key; join: every output row).",
        f"Join: the table (one row per key) was loaded before the timed stream, untimed: {loads}.",
        "*B/key*: the operator's state at the end per key held (keyed state: its columns "
        "with their spare capacity, its row flags and its hash table; below the keyed "
        "threshold, its one frame); in brackets, polars' own frame of the same result "
        "(`estimated_size`: the group_by's result; the table itself). The group_by of five "
        "aggregates runs untimed on the same records.",
    ]
    if capped:
        notes.append(
            f"‡ stopped after {args.max_seconds:g} s of feeding (`--max-seconds`): the rate "
            "is over the records processed by then (checked against polars on that prefix)."
        )
    if others:
        notes.append(
            f"Other processes used up to {max(others):.2f} cores during a run of 1 s or more."
        )
    print()
    print("\n".join(rows))
    print()
    print("\n".join(f"- {n}" for n in notes))

    if args.write:
        stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        lines = [
            "## Keyed state at scale: running group_by and stream–table join",
            "",
            f"_Written by `{command}` on {stamp}._",
            "",
            f"- **Machine:** {machine_line(info)}",
            f"- **Data:** {args.records:,} in-memory records `(k, v)` per key count, `k` uniform "
            f'over the keys (seeded), `v` in 0..999; `group_by("k").agg(pl.len(), '
            'pl.col("v").sum())`; stream `join(table, on="k", how="left")` with a '
            "`table_from_records` of one row per key.",
            "",
            *rows,
            "",
            *(f"- {n}" for n in notes),
        ]
        write_section("keyed-state", "\n".join(lines))
        print("\nwrote the keyed-state section of BENCHMARKS.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
