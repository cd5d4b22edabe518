"""What a lightly loaded window query costs a batch, and what it costs to close a window.

``.venv/bin/python bench/window_batches.py [--rates 10000,50000] [--seconds 10]`` runs w1
(bids per auction in tumbling 1 s windows, emitted final, the latency harness's window
query: ``bench/queries.py``) through the engine's pipeline in the batches a query sees at
``RATE`` records/s under a light load (the records of 1.5 ms each: 15 at 10 000/s), with the
sink's JSON encoding, and the same batches through the plain loop's window by hand
(``TumblingCounts`` of ``bench/peers/python/peercommon.py``, a dict per window, JSON by
``orjson``), which is the baseline. Event time is the record's place at ``RATE``, so a
window closes every second. It prints, per rate, the milliseconds of a batch (median and
p99) and of a batch that closes a window (median and worst), for both. No broker; it writes
nothing to ``BENCHMARKS.md``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import benchutil  # noqa: F401  (the working tree's streamnb)
import numpy as np
import orjson
import polars as pl
from queries import QUERIES

import streamnb as sn
from streamnb.columns import visible
from streamnb.engine.core import Context, Delta
from streamnb.engine.executor import Pipeline
from streamnb.io.codecs.json_write import json_lines
from streamnb.io.sources.nexmark import generate

sys.path.insert(0, str(Path(__file__).resolve().parent / "peers" / "python"))
from peercommon import TumblingCounts

BATCH_SECONDS = 0.0015
"""A light load's batch: what arrives while the one before it runs (about 1.5 ms)."""
BASE_MS = 1_700_000_000_000


def bids_at(rate: int, seconds: float) -> pl.DataFrame:
    """Nexmark bids, ``dateTime`` their place at ``rate`` records/s (epoch ms, in order)."""
    n = int(rate * seconds)
    bids = generate("bid", 0, n * 11 // 10 + 100).head(n)
    ms = pl.int_range(0, n, dtype=pl.Int64) * 1000 // rate + BASE_MS
    return bids.with_columns(dateTime=ms)


def streamnb_costs(batches: list[pl.DataFrame]) -> tuple[list[float], list[bool]]:
    """Seconds of each batch through w1 and the sink's encoding; whether it closed a window."""
    stream = QUERIES["w1"].build(sn.from_records(batches[0].clear(), timestamp="dateTime"))
    emitted: list[int] = []

    def sink(delta: Delta) -> None:
        rows = visible(delta.rows)
        if rows.height:
            emitted.append(len(json_lines(rows)))

    pipe = Pipeline(stream.plan.root, Context(), sink)
    (source,) = pipe.sources
    times, closes = [], []
    for batch in batches:
        before = len(emitted)
        start = time.perf_counter()
        pipe.push(source, batch)
        times.append(time.perf_counter() - start)
        closes.append(len(emitted) > before)
    return times, closes


def plain_costs(batches: list[pl.DataFrame]) -> tuple[list[float], list[bool]]:
    """The same batches through the plain loop's window (the records as dicts, as decoded)."""
    rows = [b.select("dateTime", "auction").to_dicts() for b in batches]
    counts = TumblingCounts()
    times, closes = [], []
    for batch in rows:
        start = time.perf_counter()
        for r in batch:
            counts.add(r["dateTime"], r["auction"])
        out = [orjson.dumps(row) for row in counts.closed()]
        times.append(time.perf_counter() - start)
        closes.append(bool(out))
    return times, closes


def summary(times: list[float], closes: list[bool], warm: int) -> str:
    t = np.array(times[warm:]) * 1e3
    c = np.array(closes[warm:])
    other, closing = t[~c], t[c]
    batch = f"{np.median(other):.3f} | {np.percentile(other, 99):.2f}"
    close = f"{np.median(closing):.2f} | {closing.max():.2f}" if closing.size else "– | –"
    return f"{batch} | {close} | {c.sum()}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rates", default="10000,50000", help="records/s (comma-separated)")
    p.add_argument("--seconds", type=float, default=10.0, help="seconds of event time")
    args = p.parse_args()
    print(
        "| rate | engine | batch | batch median ms | batch p99 ms | close median ms | "
        "close worst ms | closes |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for rate in (int(r) for r in args.rates.split(",")):
        bids = bids_at(rate, args.seconds)
        size = max(1, round(rate * BATCH_SECONDS))
        batches = [bids.slice(i, size) for i in range(0, bids.height, size)]
        warm = len(batches) // 10
        for name, run in (("plain loop", plain_costs), ("streamnb", streamnb_costs)):
            times, closes = run(batches)
            print(f"| {rate:,} | {name} | {size} | {summary(times, closes, warm)} |")


if __name__ == "__main__":
    main()
