"""The ``streamnb`` command.

``streamnb demo`` runs a live windowed query over the built-in Nexmark generator and shows
its result table updating in the terminal (no Kafka, no notebook needed).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import polars as pl


def _demo(args: argparse.Namespace) -> int:
    import streamnb as sn
    from streamnb.sinks.console import watch

    # Event time runs at wall-clock speed, so 10 s windows close every 10 s of real time.
    bids = sn.nexmark(rate=args.rate, event_rate=args.rate, seed=args.seed)
    hot_auctions = bids.window(sn.Tumbling("10s"), by="auction", emit="update").agg(
        pl.len().alias("bids"),
        pl.col("price").max().alias("top_price"),
        pl.col("bidder").n_unique().alias("bidders"),
    )
    query = hot_auctions.start("demo")
    print(
        f"streamnb demo: Nexmark bids at {args.rate:,}/s, hot auctions per 10 s window "
        "(Ctrl-C to stop)",
        flush=True,
    )
    watch(
        query,
        view=lambda t: t.sort(["window_end", "bids"], descending=True),
        rows=args.rows,
        duration=args.duration,
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="streamnb", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="live hot-auctions query on the Nexmark generator")
    demo.add_argument("--rate", type=int, default=20_000, help="bids per second (default 20000)")
    demo.add_argument(
        "--duration", type=float, default=None, help="seconds to run (default: until Ctrl-C)"
    )
    demo.add_argument("--rows", type=int, default=12, help="table rows shown")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(run=_demo)
    args = parser.parse_args(argv)
    result: int = args.run(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
