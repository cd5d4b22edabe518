"""Bytewax as a peer (``bytewax[kafka]`` from PyPI, in its own virtual environment).

A dataflow with the Kafka connector (``bytewax.connectors.kafka.operators.input`` /
``output``, batches of 10 000), ``orjson`` to decode, and the event-time windowing operators
of ``bytewax.operators.windowing`` with ``EventClock(ts_getter=dateTime,
wait_for_system_duration=4 s)``: Bytewax's watermark is the largest event time − 4 s *plus
the system time elapsed since that event was seen*, so once the input stops, windows past
the final watermark close too (the harness accepts such extra rows when they equal the
reference). Windowed operators emit when a window closes (final results).

* q5: one ``fold_window`` (key "all", sliding 10 s / 2 s) building the counts of every
  auction of a window; at close, the auctions at the max.
* q7: ``max_window`` (key "all", tumbling 10 s).
* q8: ``join_window`` of persons keyed by id and auctions keyed by seller (tumbling 10 s).
* q11: ``fold_window`` keyed by bidder with ``SessionWindower(gap=10 s)``.

Runs with one worker (``bytewax.run``'s ``cli_main``, as ``python -m bytewax.run`` does).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import bytewax.operators as op
import bytewax.operators.windowing as win
import orjson
import peercommon as pc
from bytewax._bytewax import cli_main
from bytewax.connectors.kafka import KafkaSinkMessage
from bytewax.connectors.kafka import operators as kop
from bytewax.dataflow import Dataflow

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
MS = timedelta(milliseconds=1)


def ts(row: dict[str, Any]) -> datetime:
    return EPOCH + row["dateTime"] * MS


def clock() -> win.EventClock:
    return win.EventClock(ts_getter=ts, wait_for_system_duration=pc.WATERMARK_MS * MS)


def tumbling(ms: int) -> win.TumblingWindower:
    return win.TumblingWindower(length=ms * MS, align_to=EPOCH)


def build(args: Any) -> Dataflow:
    flow = Dataflow("nexmark")
    first = pc.FirstRecord()
    config = {"group.id": args.group, "fetch.queue.backoff.ms": "10"}

    def read(name: str, topic: str) -> op.Stream[dict[str, Any]]:
        msgs = kop.input(
            f"in-{name}", flow, brokers=[args.bootstrap], topics=[topic],
            add_config=config, batch_size=10_000,
        ).oks  # fmt: skip

        def parse(m: Any) -> dict[str, Any]:
            if not first.done:
                first()
            return orjson.loads(m.value)

        return op.map(f"parse-{name}", msgs, parse)

    q = args.query
    out: op.Stream[dict[str, Any]]
    if q == "q8":
        persons = op.key_on("by-id", read("persons", args.persons), lambda r: str(r["id"]))
        sellers = op.key_on(
            "by-seller", read("auctions", args.auctions), lambda r: str(r["seller"])
        )
        joined = win.join_window(
            "join", clock(), tumbling(pc.TUMBLE_MS), persons, sellers, emit_mode="final"
        )

        def q8_row(kv: tuple[str, tuple[int, tuple[Any, Any]]]) -> list[dict[str, Any]]:
            _, (wid, (person, auction)) = kv
            if person is None or auction is None:
                return []
            ws = wid * pc.TUMBLE_MS
            return [{"window_start": ws, "window_end": ws + pc.TUMBLE_MS,
                     "id": person["id"], "name": person["name"]}]  # fmt: skip

        out = op.flat_map("q8-rows", joined.down, q8_row)
    else:
        bids = read("bids", args.bids)
        if q == "q0":
            out = bids
        elif q == "q1":
            out = op.map("q1", bids, lambda r: {**r, "price": r["price"] * 0.908})
        elif q == "q2":
            out = op.filter_map(
                "q2",
                bids,
                lambda r: (
                    {"auction": r["auction"], "price": r["price"]}
                    if r["auction"] % 123 == 0
                    else None
                ),
            )
        elif q == "q7":
            keyed = op.key_on("all", bids, lambda _: "all")
            mx = win.max_window(
                "max", keyed, clock(), tumbling(pc.TUMBLE_MS), by=lambda r: r["price"]
            )

            def q7_row(kv: tuple[str, tuple[int, dict[str, Any]]]) -> dict[str, Any]:
                _, (wid, row) = kv
                ws = wid * pc.TUMBLE_MS
                return {"window_start": ws, "window_end": ws + pc.TUMBLE_MS, "price": row["price"]}

            out = op.map("q7-rows", mx.down, q7_row)
        elif q == "q5":
            keyed = op.key_on("all", bids, lambda _: "all")

            def count(acc: dict[int, int], r: dict[str, Any]) -> dict[int, int]:
                acc[r["auction"]] = acc.get(r["auction"], 0) + 1
                return acc

            def merge(a: dict[int, int], b: dict[int, int]) -> dict[int, int]:
                for k, v in b.items():
                    a[k] = a.get(k, 0) + v
                return a

            counts = win.fold_window(
                "counts", keyed, clock(),
                win.SlidingWindower(length=pc.HOP_SIZE_MS * MS, offset=pc.HOP_EVERY_MS * MS,
                                    align_to=EPOCH),
                dict, count, merge,
            )  # fmt: skip

            def hot(kv: tuple[str, tuple[int, dict[int, int]]]) -> list[dict[str, Any]]:
                _, (wid, acc) = kv
                ws = wid * pc.HOP_EVERY_MS
                top = max(acc.values())
                return [{"window_start": ws, "window_end": ws + pc.HOP_SIZE_MS,
                         "auction": a, "bids": n} for a, n in acc.items() if n == top]  # fmt: skip

            out = op.flat_map("q5-rows", counts.down, hot)
        else:  # q11
            keyed = op.key_on("by-bidder", bids, lambda r: str(r["bidder"]))

            def session(acc: list[int], r: dict[str, Any]) -> list[int]:
                t = r["dateTime"]
                if not acc:
                    return [t, t, 1, r["bidder"]]
                acc[0], acc[1], acc[2] = min(acc[0], t), max(acc[1], t), acc[2] + 1
                return acc

            def merge_s(a: list[int], b: list[int]) -> list[int]:
                if not a or not b:
                    return a or b
                return [min(a[0], b[0]), max(a[1], b[1]), a[2] + b[2], a[3]]

            sessions = win.fold_window(
                "sessions", keyed, clock(), win.SessionWindower(gap=pc.GAP_MS * MS),
                list, session, merge_s,
            )  # fmt: skip

            def q11_row(kv: tuple[str, tuple[int, list[int]]]) -> dict[str, Any]:
                _, (_, (start, last, n, bidder)) = kv
                return {"window_start": start, "window_end": last + pc.GAP_MS,
                        "bidder": bidder, "bids": n}  # fmt: skip

            out = op.map("q11-rows", sessions.down, q11_row)
    msgs = op.map("encode", out, lambda r: KafkaSinkMessage(None, orjson.dumps(r)))
    kop.output("out", msgs, brokers=[args.bootstrap], topic=args.output)
    return flow


def main() -> None:
    args = pc.parse_args()
    if args.query == "w1":
        pc.unsupported("w1 (the latency harness's window emit) is not written for Bytewax")
    cli_main(build(args), workers_per_process=1)


if __name__ == "__main__":
    main()
