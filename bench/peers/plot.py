"""Draws the two PNGs of ``bench/peers.py`` (run by it in a matplotlib-only environment).

Reads a JSON document on stdin: ``{"engines": [[name, label]...], "queries": [...],
"results": [...], "out": DIR}`` and writes ``DIR/throughput.png`` (catch-up events/s per
query and engine, log scale; failed runs left out) and ``DIR/latency.png``: the latency
curve, one panel per query of the latency mode, p50 (solid) and p99 (dashed) against the
achieved input rate, log x and log y, one colour per engine (the same in every panel; the
plain loop is the floor, and its q0 panel the harness's own floor).
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
    colour = {e: f"C{i % 10}" for i, e in enumerate(engines)}
    order = ["q0", "q1", "q2", "q5", "q7", "q8", "q11", "w1"]
    lq = sorted({r["query"] for r in lat}, key=lambda q: order.index(q) if q in order else 99)
    fig, axes = plt.subplots(1, len(lq), figsize=(6 * len(lq), 4.5), squeeze=False)
    for ax, q in zip(axes[0], lq, strict=True):
        for e in engines:
            rs = sorted((r for r in lat if r["engine"] == e and r["query"] == q),
                        key=lambda r: r["achieved"])  # fmt: skip
            if not rs:
                continue
            x = [r["achieved"] for r in rs]
            ax.plot(x, [r["p50"] for r in rs], marker="o", color=colour[e],
                    label=f"{labels[e]} p50")  # fmt: skip
            ax.plot(x, [r["p99"] for r in rs], marker="x", linestyle="--", color=colour[e],
                    label=f"{labels[e]} p99")  # fmt: skip
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("input events/s (achieved)")
        ax.set_ylabel(
            "latency ms" + (" after window end + 4 s" if q not in ("q0", "q1", "q2") else "")
        )
        what = "harness floor (plain loop, bytes handed on)" if q == "q0" else "p50 and p99"
        ax.set_title(f"{q}: {what}", fontsize=10)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "latency.png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
