"""In-kernel throughput as a fraction of headless: the same query, in a Jupyter kernel (started
from a ``%%stream`` cell, with a live table) and in a plain Python process.

    .venv/bin/python bench/kernel_throughput.py [--events N]

Both runs stream ``N`` Nexmark events through hopping windows (q5's counts) and time from
start to the end of the bounded source. The kernel run keeps a live table widget updating
(at most 10 redraws a second), as a notebook user would. Writes the ``kernel`` section of
BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

import benchutil
from benchutil import fmt_rate, machine_info, machine_line, write_section
from notebook_latency import Kernel

QUERY = """sn.nexmark(events={events}).with_watermark("dateTime", "4s").window(
    sn.Hopping("10s", "2s"), by="auction").agg(pl.len().alias("bids"))"""

HEADLESS = """
import time, polars as pl, streamnb as sn
stream = {query}
began = time.perf_counter()
query = stream.start("bench")
query.wait()
print(time.perf_counter() - began)
"""


def headless(events: int) -> float:
    code = HEADLESS.format(query=QUERY.format(events=events))
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=benchutil.ROOT
    )
    return float(out.stdout.strip().splitlines()[-1])


def in_kernel(events: int) -> float:
    kernel = Kernel()
    try:
        kernel.run("import time, polars as pl, streamnb as sn\n%load_ext streamnb")
        kernel.run("sn.nexmark(events=1000).collect()")  # warm the generator's tables
        kernel.run("__began = time.perf_counter()")
        kernel.run(f"%%stream bench --show\n{QUERY.format(events=events)}")
        kernel.run(
            "sn.queries()[0].wait() if sn.queries() else None\n"
            "__elapsed = time.perf_counter() - __began"
        )
        return float(kernel.value("__elapsed"))
    finally:
        kernel.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=5_000_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    head = [headless(args.events) for _ in range(args.runs)]
    kern = [in_kernel(args.events) for _ in range(args.runs)]
    bids = args.events * 0.92
    best_head, best_kern = min(head), min(kern)
    lines = [
        "## In-kernel throughput vs headless",
        "",
        f"_Written by `bench/kernel_throughput.py` on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}._",
        "",
        f"- **Machine:** {machine_line(machine_info())}",
        f"- **Query:** q5's hopping-window counts over `sn.nexmark(events={args.events:,})`; "
        "in the kernel as a `%%stream bench --show` cell (live table redrawing meanwhile), "
        "headless as `stream.start().wait()` in a plain process. Best of "
        f"{args.runs} runs each.",
        "",
        "| where | seconds | bids/s |",
        "|---|---|---|",
        f"| headless | {best_head:.2f} | {fmt_rate(bids / best_head)} |",
        f"| in the kernel, live table | {best_kern:.2f} | {fmt_rate(bids / best_kern)} |",
        "",
        f"In-kernel throughput is **{best_head / best_kern:.0%}** of headless (target ≥ 90 %).",
    ]
    write_section("kernel", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
