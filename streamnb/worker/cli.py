"""The ``streamnb`` command.

* ``streamnb demo``: a live windowed query over the built-in Nexmark generator, shown as a
  table updating in the terminal (no Kafka, no notebook needed);
* ``streamnb run NOTEBOOK.ipynb --query NAME`` / ``streamnb run module:attribute``: run one
  query headless, the same ``Stream`` the notebook builds;
* ``streamnb export NOTEBOOK.ipynb --query NAME -o job.py``: a standalone job script.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, get_args

import polars as pl

from streamnb.exceptions import StreamnbError
from streamnb.types import Guarantee

if TYPE_CHECKING:
    from streamnb.stream import Stream


def _demo(args: argparse.Namespace) -> int:
    from streamnb.api import nexmark
    from streamnb.definitions.windows import Tumbling
    from streamnb.ui.terminal import watch

    # Event time runs at wall-clock speed, so 10 s windows close every 10 s of real time.
    bids = nexmark(rate=args.rate, event_rate=args.rate, seed=args.seed)
    hot_auctions = bids.window(Tumbling("10s"), by="auction", emit="update").agg(
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


def _load(args: argparse.Namespace) -> Stream:
    from streamnb.exceptions import ConfigError
    from streamnb.promote import load_attribute, load_notebook_query

    if args.target.endswith(".ipynb"):
        if not args.query:
            raise ConfigError(f"{args.target}: name the query to run with --query NAME")
        return load_notebook_query(args.target, args.query)
    return load_attribute(args.target)


def _run(args: argparse.Namespace) -> int:
    from streamnb.worker.run import run

    stream = _load(args)
    name = args.name or args.query or args.target.rpartition(":")[2]
    return run(
        stream,
        name=name,
        sink=args.sink,
        guarantee=args.guarantee,
        group_id=args.group_id,
        checkpoint_interval=args.checkpoint_interval,
        state_dir=args.state_dir,
        state=args.state,
        metrics_port=args.metrics_port,
        duration=args.duration,
    )


def _export(args: argparse.Namespace) -> int:
    from streamnb.promote import export_job

    path = export_job(args.notebook, args.query, args.output)
    print(f"wrote {path}: run it with `python {path}` or `streamnb run {path}:STREAM`")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="streamnb", description=(__doc__ or "").split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="live hot-auctions query on the Nexmark generator")
    demo.add_argument("--rate", type=int, default=20_000, help="bids per second (default 20000)")
    demo.add_argument(
        "--duration", type=float, default=None, help="seconds to run (default: until Ctrl-C)"
    )
    demo.add_argument("--rows", type=int, default=12, help="table rows shown")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(run=_demo)

    run = commands.add_parser("run", help="run a query headless")
    run.add_argument("target", help="NOTEBOOK.ipynb, module:attribute or file.py:attribute")
    run.add_argument("--query", help="the query's name in the notebook")
    run.add_argument("--name", help=argparse.SUPPRESS)
    run.add_argument("--sink", help="kafka:TOPIC, parquet:PATH or console")
    run.add_argument("--guarantee", default="at_least_once", choices=get_args(Guarantee))
    run.add_argument(
        "--checkpoint-interval",
        help="how often state and offsets are committed, e.g. 500ms, 1s (default 100ms "
        "with exactly_once: output is visible to read_committed readers at each commit; 1s "
        "with at_least_once)",
    )
    run.add_argument(
        "--state-dir",
        type=Path,
        help="where this worker keeps its instance id, and its keyed state with --state disk "
        "(default $XDG_STATE_HOME/streamnb)",
    )
    run.add_argument(
        "--state",
        default="memory",
        choices=["memory", "disk"],
        help="keep running aggregates' and tables' keyed state in memory, or in files under "
        "--state-dir, where it may grow past memory (default memory)",
    )
    run.add_argument("--group-id", help="Kafka consumer group (default streamnb-<name>)")
    run.add_argument("--metrics-port", type=int, help="Prometheus /metrics on 127.0.0.1:PORT")
    run.add_argument("--duration", type=float, help="stop after this many seconds")
    run.set_defaults(run=_run)

    export = commands.add_parser("export", help="write a standalone job script")
    export.add_argument("notebook")
    export.add_argument("--query", required=True)
    export.add_argument("-o", "--output", required=True)
    export.set_defaults(run=_export)

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        result: int = args.run(args)
    except StreamnbError as exc:
        print(f"streamnb {args.command}: {exc}", file=sys.stderr)
        return 2
    return result


if __name__ == "__main__":
    sys.exit(main())
