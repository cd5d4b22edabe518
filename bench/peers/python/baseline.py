"""The no-framework baseline: confluent-kafka ``consume(10000)`` + orjson + dicts.

One loop, no engine: fetch up to 10 000 records, ``orjson.loads`` each, update plain dicts,
and produce each result row with ``orjson.dumps``. Windows are done by hand with the suite's
semantics (event time ``dateTime``, watermark = max event time - 4 s, a window is emitted
once, when the watermark reaches its end; sessions end at last time + gap). The watermark is
advanced after each fetched batch: the data is in order, so nothing a batch holds can be late.
"""

from __future__ import annotations

import signal
import sys
from collections import OrderedDict, defaultdict
from typing import Any

import orjson
import peercommon as pc
from confluent_kafka import Consumer, Producer

CONSUMER: dict[str, Any] = {
    "auto.offset.reset": "earliest",
    "enable.auto.commit": False,
    "fetch.queue.backoff.ms": 10,  # keep the pre-fetch queue full while catching up
    "queued.min.messages": 200_000,
}
PRODUCER: dict[str, Any] = {
    "linger.ms": 5,
    "batch.size": 1_000_000,
    "compression.type": "none",
    "queue.buffering.max.messages": 1_000_000,
}


class Emitter:
    def __init__(self, bootstrap: str, topic: str) -> None:
        self.producer = Producer({"bootstrap.servers": bootstrap, **PRODUCER})
        self.topic = topic

    def __call__(self, row: dict[str, Any]) -> None:
        value = orjson.dumps(row)
        try:
            self.producer.produce(self.topic, value)
        except BufferError:
            self.producer.poll(0.05)
            self.producer.produce(self.topic, value)

    def poll(self) -> None:
        self.producer.poll(0)


# -- queries: process(records) per fetched batch, each a list of decoded dicts ----------------
class Stateless:
    def __init__(self, query: str, emit: Emitter) -> None:
        self.query, self.emit = query, emit

    def process(self, rows: list[dict[str, Any]], topic: str) -> None:
        emit = self.emit
        if self.query == "q0":
            for r in rows:
                emit(r)
        elif self.query == "q1":
            for r in rows:
                r["price"] = r["price"] * 0.908
                emit(r)
        else:  # q2
            for r in rows:
                if r["auction"] % 123 == 0:
                    emit({"auction": r["auction"], "price": r["price"]})


class Q5:
    """Bids per auction in hopping windows (10 s every 2 s); the auctions at the max."""

    def __init__(self, emit: Emitter) -> None:
        self.emit = emit
        self.windows: dict[int, dict[int, int]] = {}
        self.max_t = -(2**62)

    def process(self, rows: list[dict[str, Any]], topic: str) -> None:
        windows, size, every = self.windows, pc.HOP_SIZE_MS, pc.HOP_EVERY_MS
        max_t = self.max_t
        for r in rows:
            t = r["dateTime"]
            max_t = t if t > max_t else max_t
            a = r["auction"]
            ws = t - t % every
            while ws > t - size:
                counts = windows.get(ws)
                if counts is None:
                    counts = windows[ws] = defaultdict(int)
                counts[a] += 1
                ws -= every
        self.max_t = max_t
        wm = max_t - pc.WATERMARK_MS
        for ws in sorted(w for w in windows if w + size <= wm):
            counts = windows.pop(ws)
            top = max(counts.values())
            for a, n in counts.items():
                if n == top:
                    self.emit(
                        {"window_start": ws, "window_end": ws + size, "auction": a, "bids": n}
                    )


class Q7:
    """Maximum price per tumbling 10 s window."""

    def __init__(self, emit: Emitter) -> None:
        self.emit = emit
        self.windows: dict[int, int] = {}
        self.max_t = -(2**62)

    def process(self, rows: list[dict[str, Any]], topic: str) -> None:
        windows, size, max_t = self.windows, pc.TUMBLE_MS, self.max_t
        for r in rows:
            t = r["dateTime"]
            max_t = t if t > max_t else max_t
            ws = t - t % size
            p = r["price"]
            if p > windows.get(ws, -1):
                windows[ws] = p
        self.max_t = max_t
        wm = max_t - pc.WATERMARK_MS
        for ws in sorted(w for w in windows if w + size <= wm):
            self.emit({"window_start": ws, "window_end": ws + size, "price": windows.pop(ws)})


class W1:
    """Bids per auction in tumbling 1 s windows (the latency harness's window emit)."""

    def __init__(self, emit: Emitter) -> None:
        self.emit = emit
        self.counts = pc.TumblingCounts()

    def process(self, rows: list[dict[str, Any]], topic: str) -> None:
        add = self.counts.add
        for r in rows:
            add(r["dateTime"], r["auction"])
        for row in self.counts.closed():
            self.emit(row)


class Q11:
    """Bids per bidder session (gap 10 s): open sessions kept in order of their last time."""

    def __init__(self, emit: Emitter) -> None:
        self.emit = emit
        self.open: OrderedDict[int, list[int]] = OrderedDict()  # bidder -> [start, last, n]
        self.max_t = -(2**62)

    def process(self, rows: list[dict[str, Any]], topic: str) -> None:
        sessions, gap, emit, max_t = self.open, pc.GAP_MS, self.emit, self.max_t
        for r in rows:
            t, b = r["dateTime"], r["bidder"]
            max_t = t if t > max_t else max_t
            s = sessions.get(b)
            if s is not None and t - s[1] < gap:
                s[1] = t
                s[2] += 1
                sessions.move_to_end(b)
                continue
            if s is not None:  # the gap is over: that session can take nothing more
                emit({"window_start": s[0], "window_end": s[1] + gap, "bidder": b, "bids": s[2]})
            sessions[b] = [t, t, 1]
            sessions.move_to_end(b)
        self.max_t = max_t
        wm = max_t - pc.WATERMARK_MS
        while sessions:
            b, s = next(iter(sessions.items()))
            if s[1] + gap > wm:
                break
            sessions.popitem(last=False)
            emit({"window_start": s[0], "window_end": s[1] + gap, "bidder": b, "bids": s[2]})


class Q8:
    """Persons who opened an auction (seller = id) in the same tumbling 10 s window."""

    def __init__(self, emit: Emitter, persons: str, auctions: str) -> None:
        self.emit, self.persons, self.auctions = emit, persons, auctions
        self.people: dict[int, dict[int, str]] = defaultdict(dict)  # window -> id -> name
        self.sellers: dict[int, set[int]] = defaultdict(set)
        self.max_p = self.max_a = -(2**62)

    def process(self, rows: list[dict[str, Any]], topic: str) -> None:
        size = pc.TUMBLE_MS
        if topic == self.persons:
            people, max_t = self.people, self.max_p
            for r in rows:
                t = r["dateTime"]
                max_t = t if t > max_t else max_t
                people[t - t % size].setdefault(r["id"], r["name"])
            self.max_p = max_t
        else:
            sellers, max_t = self.sellers, self.max_a
            for r in rows:
                t = r["dateTime"]
                max_t = t if t > max_t else max_t
                sellers[t - t % size].add(r["seller"])
            self.max_a = max_t
        wm = min(self.max_p, self.max_a) - pc.WATERMARK_MS
        for ws in sorted(w for w in set(self.people) | set(self.sellers) if w + size <= wm):
            names = self.people.pop(ws, {})
            for pid in self.sellers.pop(ws, set()):
                if pid in names:
                    self.emit(
                        {"window_start": ws, "window_end": ws + size, "id": pid, "name": names[pid]}
                    )


def main() -> None:
    args = pc.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    emit = Emitter(args.bootstrap, args.output)
    q = args.query
    topics = [args.bids]
    op: Any
    if q in ("q0", "q1", "q2"):
        op = Stateless(q, emit)
    elif q == "q5":
        op = Q5(emit)
    elif q == "q7":
        op = Q7(emit)
    elif q == "q11":
        op = Q11(emit)
    elif q == "w1":
        op = W1(emit)
    else:
        op = Q8(emit, args.persons, args.auctions)
        topics = [args.persons, args.auctions]
    consumer = Consumer({"bootstrap.servers": args.bootstrap, "group.id": args.group, **CONSUMER})
    consumer.subscribe(topics)
    first = pc.FirstRecord()
    loads = orjson.loads
    while True:
        msgs = consumer.consume(10_000, 0.1)
        if not msgs:
            emit.poll()
            continue
        first()
        by_topic: dict[str, list[dict[str, Any]]] = {}
        for m in msgs:
            if m.error() is None:
                by_topic.setdefault(m.topic(), []).append(loads(m.value()))
        for topic, rows in by_topic.items():
            op.process(rows, topic)
        emit.poll()


if __name__ == "__main__":
    main()
