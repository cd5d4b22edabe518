"""Keyed state at scale, windows (issue 13 point 1): a tumbling window's count and sum by key
with 1 K to 5 M distinct keys per window, ``emit="update"`` and ``emit="final"``.

    PYTHONPATH=. .venv/bin/python bench/keyed_windows.py [--keys 1000,100000,1000000,5000000]
        [--records 10000000] [--windows 2] [--batch 50000] [--max-seconds 120] [--quick]

For each key count K, ``--records`` records ``(t, k, v)`` are generated in memory (seeded):
event times rise evenly over ``--windows`` tumbling windows of 10 s, each up to 0.5 s out of
order (the watermark's delay is 1 s, so none is late and one or two windows are open at a
time); ``k`` runs through a random permutation of ``0..K-1`` over and over, so every window
holds min(K, records per window) distinct keys; ``v`` is uniform over ``0..999``. The
records are cut into pre-made batches of ``--batch`` rows and pushed through the engine's own
``Pipeline`` (no source reading or decoding, no result table: the sink keeps the deltas it is
handed), for

1. streamnb ``window(Tumbling("10s"), by="k", emit=...).agg(pl.len(), pl.col("v").sum())``
   with ``emit="update"`` and with ``emit="final"``;
2. polars: ``df.group_by(window_start, "k").agg(...)`` once over all records.

Each streamnb run is checked against polars before its figure is printed: with ``final``,
the emitted rows must be polars' rows, each (window, key) once; with ``update``, the last row
of each (window, key) in the changelog must be polars' row. A run is stopped after
``--max-seconds`` of feeding; its rate is then over the records it processed, the input is
then ended (untimed) and its output checked against polars on that prefix; the table marks
it. Run it with ``PYTHONPATH=.`` from the checkout to measure (the script prints which
``streamnb`` it imported and its commit).
"""

from __future__ import annotations

import argparse
import gc
import subprocess
from pathlib import Path

import numpy as np
import polars as pl
from benchutil import CpuMeter, fmt_rate, machine_info, machine_line
from keyed_state import Collect, Run, close, feed, report

import streamnb as sn
from streamnb.engine.core import Context
from streamnb.engine.executor import Pipeline

AGGS = (pl.len(), pl.col("v").sum())
SIZE_MS = 10_000
JITTER_MS = 500
SEED = 13
GROUPS = ["window_start", "k"]


# -- data -----------------------------------------------------------------------------------
def records(n: int, keys: int, windows: int, seed: int = SEED) -> pl.DataFrame:
    rng = np.random.default_rng([seed, keys])
    i = np.arange(n, dtype=np.int64)
    span = windows * SIZE_MS - JITTER_MS
    t = i * span // n + rng.integers(0, JITTER_MS, n)
    k = rng.permutation(keys).astype(np.int64)[i % keys]
    return pl.DataFrame({"t": t, "k": k, "v": rng.integers(0, 1000, n, dtype=np.int64)})


def batches(df: pl.DataFrame, size: int) -> list[pl.DataFrame]:
    return [df.slice(i, size) for i in range(0, df.height, size)]


# -- runs -----------------------------------------------------------------------------------
def streamnb_window(
    df: pl.DataFrame, emit: str, size: int, max_seconds: float
) -> tuple[Run, pl.DataFrame]:
    stream = (
        sn.from_records(df.clear(), timestamp="t")
        .with_watermark("t", "1s")
        .window(sn.Tumbling(f"{SIZE_MS}ms"), by="k", emit=emit)
        .agg(*AGGS)
    )
    sink = Collect()
    pipeline = Pipeline(stream.plan.root, Context(), sink)
    (source,) = pipeline.sources
    parts = batches(df, size)
    meter = CpuMeter()
    fed, capped = feed(pipeline, source, parts, max_seconds)
    m = meter.stop()
    if capped:  # end the input (untimed) so that the prefix's windows close and are checked
        pipeline.finish(source)
    close(pipeline)
    return Run(fed, m.wall, m.cpu, capped, m.others), sink.rows()


def polars_window(df: pl.DataFrame) -> tuple[Run, pl.DataFrame]:
    meter = CpuMeter()
    out = df.group_by(((pl.col("t") // SIZE_MS) * SIZE_MS).alias("window_start"), "k").agg(*AGGS)
    m = meter.stop()
    return Run(df.height, m.wall, m.cpu, others=m.others), out


def check(got: pl.DataFrame, want: pl.DataFrame, emit: str) -> None:
    cols = [*GROUPS, "len", "v"]
    if emit == "update":  # an upsert changelog: each (window, key)'s last row is its value
        got = got.unique(GROUPS, keep="last", maintain_order=True)
    elif got.select(GROUPS).is_duplicated().any():
        raise RuntimeError("final: a (window, key) was emitted twice")
    a = got.select(cols).cast(pl.Int64).sort(GROUPS)
    b = want.select(cols).cast(pl.Int64).sort(GROUPS)
    if not a.equals(b):
        raise RuntimeError(
            f"{emit}: streamnb {a.height:,} (window, key) rows, polars {b.height:,}; "
            f"they differ, e.g.\n{a.join(b, on=GROUPS, how='anti').head(5)}"
        )


# -- one configuration ----------------------------------------------------------------------
def configuration(
    keys: int, n: int, windows: int, size: int, max_seconds: float
) -> tuple[dict[str, Run], int]:
    df = records(n, keys, windows)
    gc.collect()
    runs: dict[str, Run] = {}
    runs["polars"], want = polars_window(df)
    per_window = int(want.group_by("window_start").len().get_column("len").max())  # type: ignore[arg-type]
    print(
        f"keys {keys:,}: {n:,} records over {windows} windows ({per_window:,} keys in the "
        f"largest) in batches of {size:,}",
        flush=True,
    )
    report("polars group_by(window, k)", runs["polars"])
    for emit in ("update", "final"):
        gc.collect()
        run, got = streamnb_window(df, emit, size, max_seconds)
        prefix = want if not run.capped else polars_window(df.head(run.records))[1]
        check(got, prefix, emit)
        report(f"streamnb emit={emit} (checked: {prefix.height:,} rows equal)", run)
        runs[emit] = run
        del got, prefix
    return runs, per_window


def cell(run: Run) -> str:
    return fmt_rate(run.rate) + (" ‡" if run.capped else "")


def ratio(a: Run, b: Run) -> str:
    r = b.rate / a.rate
    return f"{r:,.0f}×" if r >= 10 else f"{r:.1f}×"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", default="1000,100000,1000000,5000000")
    parser.add_argument("--records", type=int, default=10_000_000)
    parser.add_argument("--windows", type=int, default=2)
    parser.add_argument("--batch", type=int, default=50_000)
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=120.0,
        help="stop feeding a streamnb run after this long; its rate is over what it processed",
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run: 400k records, 1K/100K")
    args = parser.parse_args()
    if args.quick:
        args.records, args.keys = 400_000, "1000,100000"
    key_counts = [int(k.replace("_", "")) for k in args.keys.split(",") if k.strip()]
    here = Path(sn.__file__).resolve().parent.parent
    commit = subprocess.run(
        ["git", "-C", str(here), "rev-parse", "--short", "HEAD"],
        check=False,
        capture_output=True,
        text=True,
    ).stdout.strip()
    print(machine_line(machine_info()), flush=True)
    print(f"streamnb from {here} (git {commit})", flush=True)

    results = []
    for keys in key_counts:
        runs, per_window = configuration(
            keys, args.records, args.windows, args.batch, args.max_seconds
        )
        results.append((keys, per_window, runs))

    print()
    print(
        "| keys | keys per window | emit=update | emit=final | polars batch | ratio update "
        "| ratio final |"
    )
    print("|---|---|---|---|---|---|---|")
    for keys, per_window, r in results:
        print(
            f"| {keys:,} | {per_window:,} | {cell(r['update'])} | {cell(r['final'])} | "
            f"{cell(r['polars'])} | {ratio(r['update'], r['polars'])} | "
            f"{ratio(r['final'], r['polars'])} |"
        )
    print()
    print(
        f"- Records per second of wall time; git {commit}. *ratio*: polars batch ÷ streamnb. "
        f"{args.records:,} records over {args.windows} tumbling windows of 10 s, pre-made "
        f"batches of {args.batch:,} pushed through the engine's `Pipeline`."
    )
    if any(r[k].capped for _, _, r in results for k in ("update", "final")):
        print(
            f"- ‡ stopped after {args.max_seconds:g} s of feeding: the rate is over the "
            "records processed by then (checked against polars on that prefix)."
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
