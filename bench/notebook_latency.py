"""Notebook latency: first live-table update, kernel responsiveness, widget message rate.

A real kernel (jupyter_client) runs the magics the way a notebook does, with this script as
its frontend (it receives the widget messages but renders nothing):

* **first update**: a ``%%stream NAME --show`` cell over ``sn.nexmark(rate=100_000)`` (a
  filter, so the first micro-batch already has results), measured in the kernel (the cell
  body starts → the first redraw that shows rows, ``time.monotonic()``) and as this frontend
  sees it (execute request sent → first widget message carrying table rows, by the kernel's
  message timestamp);
* **responsiveness**: round-trip time of ``1+1`` cells, idle and while two ``--show``
  queries stream 100 K events/s each;
* **message rate**: widget ``comm_msg`` updates per second per live table, against the cap
  (``StreamMagics.max_updates_per_second``, 10).

Writes the ``notebook`` section of BENCHMARKS.md.

    .venv/bin/python bench/notebook_latency.py [--runs 5] [--pings 100] [--out BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import ast
import os
import statistics
import sys
import time
from collections import Counter, defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import benchutil
from jupyter_client.manager import start_new_kernel

CAP = 10
SETUP = "import time\nimport polars as pl\nimport streamnb as sn\n%load_ext streamnb"
FIRST = """%%stream first-{i} --show
t_body = time.monotonic()
sn.nexmark(rate=100_000).filter(pl.col("price") > 0)"""
LOAD = """%%stream load-{i} --show
sn.nexmark(rate=100_000).window(sn.Tumbling("1s"), by="channel", emit="update").agg(
    pl.len().alias("bids"), pl.col("price").max().alias("top_price"))"""


class Kernel:
    """A kernel and a client that keeps every iopub message with its kernel timestamp."""

    def __init__(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(benchutil.ROOT), env.get("PYTHONPATH")) if p
        )
        self.manager, self.client = start_new_kernel(kernel_name="python3", env=env)
        self.iopub: list[dict[str, Any]] = []

    def drain(self) -> None:
        while True:
            try:
                self.iopub.append(self.client.get_iopub_msg(timeout=0))
            except Exception:
                return

    def run(self, code: str, timeout: float = 60.0) -> tuple[float, dict[str, Any]]:
        """Execute ``code``; return (round trip in s, reply content)."""
        began = time.perf_counter()
        msg_id = self.client.execute(code, store_history=True)
        while True:
            reply = self.client.get_shell_msg(timeout=timeout)
            if reply["parent_header"].get("msg_id") == msg_id:
                elapsed = time.perf_counter() - began
                self.drain()
                if reply["content"]["status"] != "ok":
                    raise RuntimeError(f"{code!r} failed: {reply['content'].get('evalue')}")
                return elapsed, reply["content"]

    def value(self, expression: str) -> Any:
        msg_id = self.client.execute("", user_expressions={"v": expression})
        while True:
            reply = self.client.get_shell_msg(timeout=60)
            if reply["parent_header"].get("msg_id") == msg_id:
                result = reply["content"]["user_expressions"]["v"]
                if result["status"] != "ok":
                    raise RuntimeError(f"{expression!r}: {result.get('evalue')}")
                return ast.literal_eval(result["data"]["text/plain"])

    def close(self) -> None:
        self.client.stop_channels()
        self.manager.shutdown_kernel(now=True)


def table_updates(messages: list[dict[str, Any]]) -> list[tuple[str, datetime]]:
    """(model id, kernel time) of every widget update that carries table rows."""
    found = []
    for m in messages:
        if m["msg_type"] != "comm_msg":
            continue
        data = m["content"].get("data", {})
        value = data.get("state", {}).get("value", "")
        rows = isinstance(value, str) and "<td" in value and "no rows yet" not in value
        if data.get("method") == "update" and rows and "streamnb-table" in value:
            found.append((m["content"]["comm_id"], m["header"]["date"]))
    return found


def first_update(kernel: Kernel, runs: int) -> dict[str, list[float]]:
    in_kernel, seen = [], []
    for i in range(runs):
        sent = datetime.now(timezone.utc)
        kernel.iopub.clear()
        kernel.run(FIRST.format(i=i))
        deadline = time.monotonic() + 30
        while True:
            view = f"[q for q in sn.queries() if q.name == 'first-{i}'][0].widget"
            first = kernel.value(f"{view}.first_result_at and {view}.first_result_at - t_body")
            if first or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        kernel.drain()
        in_kernel.append(first * 1000)
        updates = table_updates(kernel.iopub)
        seen.append((updates[0][1] - sent).total_seconds() * 1000)
        kernel.run(f"%stream stop first-{i}")
    return {"in_kernel_ms": in_kernel, "frontend_ms": seen}


def pings(kernel: Kernel, count: int) -> list[float]:
    times = []
    for _ in range(count):
        times.append(kernel.run("1+1")[0] * 1000)
        time.sleep(0.05)
    return times


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--pings", type=int, default=100)
    parser.add_argument("--out", type=Path, default=benchutil.BENCHMARKS_MD)
    args = parser.parse_args()

    kernel = Kernel()
    try:
        kernel.run(SETUP)
        first = first_update(kernel, args.runs)
        idle = pings(kernel, args.pings)
        for i in range(2):  # the same load without live tables: the engine's share
            kernel.run(LOAD.format(i=i).replace(" --show", ""))
        time.sleep(2.0)
        headless = pings(kernel, args.pings)
        kernel.run("%stream stop --all")
        for i in range(2):
            kernel.run(LOAD.format(i=i))
        time.sleep(2.0)  # both queries at full rate
        kernel.iopub.clear()
        began = datetime.now(timezone.utc)
        busy = pings(kernel, args.pings)
        ended = datetime.now(timezone.utc)
        kernel.drain()
        rates = [kernel.value(f"sn.queries()[{i}].status()['rate']") for i in range(2)]
        kernel.run("%stream stop --all")
    finally:
        kernel.close()

    per_second: dict[str, Counter[int]] = defaultdict(Counter)
    all_msgs = 0
    for m in kernel.iopub:
        if m["msg_type"] == "comm_msg" and began <= m["header"]["date"] <= ended:
            all_msgs += 1
    for comm, stamp in table_updates(kernel.iopub):
        if began <= stamp <= ended:
            per_second[comm][int((stamp - began).total_seconds())] += 1
    window = (ended - began).total_seconds()
    full_seconds = int(window) - 1  # whole seconds only
    peaks = [max(c[s] for s in range(full_seconds)) for c in per_second.values()]
    means = [sum(c.values()) / window for c in per_second.values()]
    rows = [
        (
            "`%%stream --show` cell → first redraw with rows, in the kernel: cold (first run)",
            f"{first['in_kernel_ms'][0]:.1f} ms",
        ),
        (
            f"the same, warm ({args.runs - 1} more runs)",
            ms(first["in_kernel_ms"][1:]),
        ),
        (
            "request sent → first widget message with rows, as a frontend sees it (warm)",
            ms(first["frontend_ms"][1:]),
        ),
        (f"`1+1` round trip, idle ({len(idle)} cells)", ms(idle)),
        ("`1+1` round trip, the two load queries without live tables", ms(headless)),
        (f"`1+1` round trip, two `--show` queries streaming ({len(busy)} cells)", ms(busy)),
        (
            "the two `--show` queries' rates meanwhile",
            ", ".join(f"{r:,.0f}" for r in rates) + " events/s",
        ),
        (
            f"table redraws per second per live table (cap {CAP})",
            f"peak {max(peaks)}, mean {statistics.mean(means):.1f}",
        ),
        (f"widget messages per second, two tables ({window:.0f} s)", f"{all_msgs / window:.1f}"),
    ]
    write(args, rows)


def ms(values: list[float]) -> str:
    return (
        f"median {statistics.median(values):.1f} ms, p95 {percentile(values, 0.95):.1f} ms, "
        f"max {max(values):.1f} ms"
    )


def write(args: argparse.Namespace, rows: list[tuple[str, str]]) -> None:
    info = benchutil.machine_info()
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    table = "\n".join(f"| {what} | {value} |" for what, value in rows)
    body = f"""## Notebook latency (a real kernel, driven by jupyter_client)

_Written by `bench/notebook_latency.py` on {now}; rerun it rather than editing this section._

- **Machine:** {benchutil.machine_line(info)}
- **Command:** `.venv/bin/python bench/notebook_latency.py --runs {args.runs} --pings {args.pings}`

| measure | result |
|---|---|
{table}

Notes

- First update: the query is `sn.nexmark(rate=100_000).filter(...)`, so its first
  micro-batch has rows; the in-kernel time runs from the cell body's first line to the
  redraw that first showed rows (`query.widget.first_result_at`). The frontend time uses the
  kernel's timestamp on the widget message (same machine, same clock). Both include the
  engine's first batch; a window query adds the time its first window takes to close.
  The cold run is the first `--show` of a fresh kernel: it also imports ipywidgets and
  builds the generator's string tables once.
- Responsiveness: the load queries are tumbling 1 s windows per channel with
  `emit="update"` over `sn.nexmark(rate=100_000)`, each with a live table; `1+1` cells are
  sent 50 ms apart while they run. The engine threads share the GIL with the kernel, so the
  round trip grows with the engine's Python share, not with the event rate.
- Messages: each redraw sends one `comm_msg` per widget that changed (status bar, table,
  and the toggles' counts when they change); *redraws* counts the table messages per model,
  per whole second of the busy window, whose peak must stay at or below the cap.
"""
    benchutil.write_section("notebook", body, args.out)
    print(body)


if __name__ == "__main__":
    sys.exit(main())
