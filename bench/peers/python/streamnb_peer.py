"""streamnb as a peer: ``sn.from_kafka`` -> the query of ``bench/queries.py`` -> ``to_kafka``.

Runs with the repository's own ``.venv`` python and the working tree's ``streamnb``. The
queries are exactly those of the other benchmarks (``bench/queries.py``); q8 is the window
join of ``bench/nexmark_joins.py`` (persons and sellers per tumbling 10 s window, on id).
``SN_FIRST_RECORD`` is printed when the query's ``records_in`` first turns positive
(polled every 2 ms from the main thread).

``--guarantee at_least_once|exactly_once`` (before or after the contract's arguments) runs
the query the way the headless worker does (``streamnb run module:attr --guarantee G --sink
kafka:TOPIC``): ``streamnb.worker.run.start`` with the Kafka sink of ``with_sink``, the
consumer group ``--group``, the worker's default checkpoint interval, and a throw-away state
directory; SIGTERM stops it as the worker does (``query.stop(timeout=60)``).
"""

from __future__ import annotations

import shutil
import signal
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(BENCH))

import benchutil  # noqa: E402, F401  (puts the repository on sys.path)
import peercommon as pc  # noqa: E402
import polars as pl  # noqa: E402
from queries import QUERIES, WATERMARK_DELAY  # noqa: E402

import streamnb as sn  # noqa: E402
from streamnb.io.sources.nexmark import SCHEMAS  # noqa: E402


def _schema(kind: str) -> pl.Schema:
    """The records as they are in the topics: ``dateTime`` (and ``expires``) epoch-ms ints."""
    return pl.Schema(
        {k: (pl.Int64() if isinstance(v, pl.Datetime) else v) for k, v in SCHEMAS[kind].items()}
    )


def source(args: Any, topic: str, kind: str) -> sn.Stream:
    return sn.from_kafka(
        topic,
        bootstrap_servers=args.bootstrap,
        start="earliest",
        timestamp="dateTime",
        schema=_schema(kind),
        # a group per topic: q8's two sources in one group would rebalance each other
        group_id=f"{args.group}-{kind}",
    )


def q8(persons: sn.Stream, auctions: sn.Stream) -> sn.Stream:
    """New users: a window join of persons and sellers, tumbling 10 s, on person id."""
    new_people = (
        persons.with_watermark("dateTime", WATERMARK_DELAY)
        .window(sn.Tumbling(f"{pc.TUMBLE_MS}ms"), by="id")
        .agg(pl.col("name").first())
    )
    sellers = (
        auctions.with_watermark("dateTime", WATERMARK_DELAY)
        .select("dateTime", id="seller")
        .window(sn.Tumbling(f"{pc.TUMBLE_MS}ms"), by="id")
        .agg(pl.len().alias("auctions"))
    )
    return new_people.join(sellers, on="id").select("window_start", "window_end", "id", "name")


def build(args: Any) -> sn.Stream:
    if args.query == "q8":
        return q8(source(args, args.persons, "person"), source(args, args.auctions, "auction"))
    return QUERIES[args.query].build(source(args, args.bids, "bid"))


def worker_guarantee(argv: list[str]) -> tuple[str | None, list[str]]:
    """``--guarantee G`` taken out of ``argv`` (the rest is the peer contract's)."""
    if "--guarantee" not in argv:
        return None, argv
    i = argv.index("--guarantee")
    return argv[i + 1], argv[:i] + argv[i + 2 :]


def run_worker(args: Any, guarantee: str) -> None:
    """The query under the headless worker's runtime, as ``streamnb run`` starts it."""
    from streamnb.worker.run import start, with_sink

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    state_dir = Path(tempfile.mkdtemp(prefix="streamnb-peer-worker-"))
    try:
        query = start(
            with_sink(build(args), f"kafka:{args.output}"),
            name=f"peer-{args.query}",
            guarantee=guarantee,  # type: ignore[arg-type]
            group_id=args.group,
            state_dir=state_dir,
        )
        first = pc.FirstRecord()
        while not stop.is_set() and query.status()["state"] in ("running", "paused"):
            if not first.done and query.status()["records_in"] > 0:
                first()
            stop.wait(0.002 if not first.done else 0.2)
        query.stop(timeout=60)
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)


def main() -> None:
    guarantee, argv = worker_guarantee(sys.argv[1:])
    args = pc.parse_args(argv)
    if guarantee is not None:
        run_worker(args, guarantee)
        return
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    stream = build(args)
    query = stream.to_kafka(args.output, bootstrap_servers=args.bootstrap).start(
        f"peer-{args.query}", keep=0
    )
    first = pc.FirstRecord()
    while not first.done:
        if query.status()["records_in"] > 0:
            first()
            break
        if query.wait(0.002):
            break
    query.wait()


if __name__ == "__main__":
    main()
