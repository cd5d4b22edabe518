"""Draws the two PNGs of ``bench/peers.py`` (run by it in a matplotlib-only environment).

Reads a JSON document on stdin: ``{"engines": [[name, label]...], "queries": [...],
"results": [...], "out": DIR}`` and writes ``DIR/throughput.png`` (catch-up events/s per
query and engine, log scale; failed runs left out and named in the legend's title) and
``DIR/latency.png`` (open-loop p50 / p99 per engine, query and input rate).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def main() -> None:
    data = json.load(sys.stdin)
    out = Path(data["out"])
    labels = dict(data["engines"])
    engines = [e for e, _ in data["engines"]]
    queries = data["queries"]
    results = data["results"]

    catch = {(r["engine"], r["query"]): r for r in results if r["mode"] == "catchup"}
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(queries)), 4.5))
    width = 0.8 / max(1, len(engines))
    for i, e in enumerate(engines):
        xs, ys = [], []
        for j, q in enumerate(queries):
            r = catch.get((e, q))
            if r and r["status"] == "ok" and r["eps"] and math.isfinite(r["eps"]):
                xs.append(j + (i - (len(engines) - 1) / 2) * width)
                ys.append(r["eps"])
        ax.bar(xs, ys, width, label=labels[e])
    ax.set_xticks(range(len(queries)), queries)
    ax.set_yscale("log")
    ax.set_ylabel("events/s (catch-up from Kafka)")
    ax.set_title("Nexmark catch-up throughput, one engine at a time (correct runs only)")
    ax.legend(fontsize=8, ncols=2)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "throughput.png", dpi=120)
    plt.close(fig)

    lat = [r for r in results if r["mode"] == "latency" and r["status"] == "ok"]
    if not lat:
        return
    lq = sorted({r["query"] for r in lat})
    fig, axes = plt.subplots(1, len(lq), figsize=(6 * len(lq), 4.5), squeeze=False)
    for ax, q in zip(axes[0], lq, strict=True):
        for e in engines:
            rs = sorted((r for r in lat if r["engine"] == e and r["query"] == q),
                        key=lambda r: r["rate"])  # fmt: skip
            if not rs:
                continue
            x = [r["achieved"] for r in rs]
            line = ax.plot(x, [r["p50"] for r in rs], marker="o", label=f"{labels[e]} p50")[0]
            ax.plot(x, [r["p99"] for r in rs], marker="x", linestyle="--",
                    color=line.get_color(), label=f"{labels[e]} p99")  # fmt: skip
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("input events/s (achieved)")
        ax.set_ylabel("latency ms")
        ax.set_title(f"{q}: open-loop latency")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "latency.png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
