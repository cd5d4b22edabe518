"""What every Python peer shares: the command line of the peer contract and its two signals.

Imported by the peer scripts next to it (each runs in its own virtual environment, so this
module uses the standard library only).
"""

from __future__ import annotations

import argparse
import sys
import time

QUERIES = ("q0", "q1", "q2", "q5", "q7", "q8", "q11", "w1")
WATERMARK_MS = 4_000  # watermark = max event time - 4 s (grace 4 s where there is no delay)
HOP_SIZE_MS, HOP_EVERY_MS = 10_000, 2_000  # q5
TUMBLE_MS = 10_000  # q7, q8
GAP_MS = 10_000  # q11
W1_MS = 1_000  # w1 (tumbling 1 s, the latency harness's window emit)
BID_COLUMNS = ("auction", "bidder", "price", "channel", "url", "dateTime", "extra")
UNSUPPORTED_EXIT = 3


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="a Nexmark peer (bench/peers.py contract)")
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--query", required=True, choices=QUERIES)
    p.add_argument("--bids", default="bids")
    p.add_argument("--persons", default="persons")
    p.add_argument("--auctions", default="auctions")
    p.add_argument("--output", required=True)
    p.add_argument("--group", required=True)
    return p.parse_args(argv)


def unsupported(reason: str) -> None:
    """Say the engine cannot express the query, and exit 3."""
    print(f"SN_UNSUPPORTED {reason}", flush=True)
    sys.exit(UNSUPPORTED_EXIT)


class FirstRecord:
    """Prints ``SN_FIRST_RECORD <epoch ms>`` once, when called the first time."""

    def __init__(self) -> None:
        self.done = False

    def __call__(self) -> None:
        if not self.done:
            self.done = True
            print(f"SN_FIRST_RECORD {time.time_ns() // 1_000_000}", flush=True)


class TumblingCounts:
    """w1 by hand: bids per auction in tumbling ``W1_MS`` windows, a window's rows handed out
    once the watermark (max event time - ``WATERMARK_MS``, as of the last :meth:`closed`)
    reaches its end. The data is in order, so nothing added can be late."""

    def __init__(self) -> None:
        self.windows: dict[int, dict[int, int]] = {}  # window start -> auction -> bids
        self.max_t = -(2**62)

    def add(self, t: int, auction: int) -> None:
        self.max_t = max(self.max_t, t)
        start = t - t % W1_MS
        counts = self.windows.get(start)
        if counts is None:
            counts = self.windows[start] = {}
        counts[auction] = counts.get(auction, 0) + 1

    def closed(self) -> list[dict[str, int]]:
        """The rows of every window the watermark has passed, oldest first (then forgotten)."""
        wm = self.max_t - WATERMARK_MS
        return [
            {"window_start": ws, "window_end": ws + W1_MS, "auction": a, "bids": n}
            for ws in sorted(w for w in self.windows if w + W1_MS <= wm)
            for a, n in self.windows.pop(ws).items()
        ]
