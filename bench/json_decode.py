"""Decode cost of a batch of JSON values (ms a batch, µs a record), by batch size.

``.venv/bin/python bench/json_decode.py`` times ``decode_ndjson`` (what ``from_kafka`` does
with a fetched batch of JSON values) on the first Nexmark bids as they are in the benchmark
topics, at the batch sizes a lightly loaded query sees (tens to hundreds of records) up to a
catch-up's. Two paths in the same run: the codec as it is, and the codec held to
``pl.read_ndjson`` alone (the eager path for small batches switched off), which is the
baseline. No broker. It prints the numbers (it writes nothing to ``BENCHMARKS.md``).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import benchutil  # noqa: F401  (the working tree's streamnb)
import polars as pl
from nexmark_kafka import encode, make_bids

from streamnb.io.codecs import json as codec

SIZES = (20, 150, 500, 501, 1_000, 5_000, 20_000)


def best_of(run: Callable[[], object], reps: int, rounds: int = 5) -> float:
    """The fastest round's seconds per call."""
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(reps):
            run()
        best = min(best, (time.perf_counter() - start) / reps)
    return best


def main() -> None:
    bids = make_bids(max(SIZES))
    docs = encode(bids)
    schema = pl.Schema(bids.schema)
    eager = codec._small_flat

    def decode(n: int) -> Callable[[], object]:
        return lambda: codec.decode_ndjson(docs[:n], schema, lambda *_: sys.exit("bad record"))

    print("| records | read_ndjson alone, ms | codec, ms | codec, µs a record | ratio |")
    print("|---:|---:|---:|---:|---:|")
    for n in SIZES:
        reps = max(5, 40_000 // n)
        codec._small_flat = lambda *_: None  # type: ignore[assignment]
        base = best_of(decode(n), reps)
        codec._small_flat = eager
        now = best_of(decode(n), reps)
        ms, us = f"{base * 1e3:.3f} | {now * 1e3:.3f}", f"{now / n * 1e6:.2f}"
        print(f"| {n:,} | {ms} | {us} | {base / now:.2f}× |")


if __name__ == "__main__":
    main()
