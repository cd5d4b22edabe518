"""Faust (``faust-streaming`` from PyPI, in its own virtual environment) as a peer.

An agent over the bids topic (raw values, ``orjson`` to decode, ``stream.take(10000,
within=0.05)`` batches as Faust's docs suggest for throughput) that sends each result row to
the output topic. Only the stateless queries: Faust's windowed tables (``tumbling`` /
``hopping``, ``on_window_close``) expire windows by **wall-clock** time
(``Table._del_old_keys`` compares each window's end with ``time.time()``), not by an
event-time watermark, so final per-window results on event time cannot be expressed with
them (on replayed data every window would be closed at once, partial, and re-opened by its
next record); Faust has no session windows and no window join.
"""

from __future__ import annotations

import sys
from typing import Any

import faust
import orjson
import peercommon as pc


def main() -> None:
    args = pc.parse_args()
    if args.query not in ("q0", "q1", "q2"):
        pc.unsupported(
            f"{args.query}: Faust's windowed tables close windows by wall-clock time, not "
            "by an event-time watermark (no final event-time windows, no sessions, no "
            "window join)"
        )
    app = faust.App(
        args.group,
        broker=f"kafka://{args.bootstrap}",
        value_serializer="raw",
        key_serializer="raw",
        consumer_auto_offset_reset="earliest",
        topic_partitions=1,
        topic_allow_declare=False,
        web_enabled=False,
        stream_buffer_maxsize=100_000,
        producer_linger_ms=5,
        producer_max_batch_size=1_000_000,
    )
    bids = app.topic(args.bids, value_serializer="raw")
    out = app.topic(args.output, value_serializer="raw")
    first = pc.FirstRecord()
    query = args.query
    loads, dumps = orjson.loads, orjson.dumps

    @app.agent(bids)
    async def process(stream: Any) -> None:
        async for batch in stream.take(10_000, within=0.05):
            first()
            for value in batch:
                r = loads(value)
                if query == "q1":
                    r["price"] = r["price"] * 0.908
                elif query == "q2":
                    if r["auction"] % 123:
                        continue
                    r = {"auction": r["auction"], "price": r["price"]}
                await out.send(value=dumps(r))

    sys.argv = [sys.argv[0], "worker", "--loglevel", "warn"]
    app.main()


if __name__ == "__main__":
    main()
