"""The latency floor: a plain confluent-kafka consume -> produce loop, tuned like streamnb.

No engine, no frames, no batching beyond what the consumer hands over::

    while True:
        messages = take what has arrived (up to streamnb's max batch)
        for each message: the query's work in Python (orjson), producer.produce(row)
        producer.poll(0)

It is tuned exactly as streamnb reads and writes Kafka, with the settings read at run time
from the repository it runs in (so it follows them when they change):

* consumer: ``streamnb.io.sources.kafka.reader.CONSUMER_SETTINGS``, ``auto.offset.reset=
  earliest``;
* fetch: "take what has arrived", the pattern of ``streamnb.io.kafka.client.
  consume_available``: ``consume(n, 0)``; only if that is empty, ``consume(1, timeout)`` then
  ``consume(n - 1, 0)``; ``n`` = ``streamnb.engine.executor.DEFAULT_MAX_BATCH``, ``timeout``
  0.1 s (the executor's wait when one input is read);
* producer: ``streamnb.io.sinks.kafka.PRODUCER_SETTINGS``, ``poll(0)`` after each batch.

Queries: q0 hands each record's bytes on untouched (no decoding: the floor of the harness's
produce -> broker -> consume -> produce -> broker -> read path); q1 and q2 ``orjson.loads``,
the change, ``orjson.dumps``; w1 counts bids per auction in a dict per tumbling 1 s window and
emits a window's rows once the watermark (max event time - 4 s, advanced after each batch)
reaches its end. Other queries print ``SN_UNSUPPORTED``. Offsets are not committed (the
harness reads every run from a fresh group).
"""

from __future__ import annotations

import signal
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402
import peercommon as pc  # noqa: E402
from confluent_kafka import Consumer, Producer  # noqa: E402

from streamnb.engine.executor import DEFAULT_MAX_BATCH  # noqa: E402
from streamnb.io.sinks.kafka import PRODUCER_SETTINGS  # noqa: E402
from streamnb.io.sources.kafka.reader import CONSUMER_SETTINGS  # noqa: E402

WAIT = 0.1
"""Seconds to wait for the first message when none has arrived (the executor's wait)."""


def take_available(consumer: Consumer, n: int, timeout: float) -> list[Any]:
    """Up to ``n`` messages that have arrived; waits (up to ``timeout``) only when none has.

    ``consume(n, timeout)`` would wait for ``n`` messages or the whole timeout."""
    messages = consumer.consume(n, 0)
    if messages:
        return messages
    messages = consumer.consume(1, timeout)
    if messages and n > 1:
        messages += consumer.consume(n - 1, 0)
    return messages


def main() -> None:
    args = pc.parse_args()
    q = args.query
    if q not in ("q0", "q1", "q2", "w1"):
        pc.unsupported(f"the plain loop does the stateless queries and w1, not {q}")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    consumer = Consumer(
        {
            "bootstrap.servers": args.bootstrap,
            "group.id": args.group,
            **CONSUMER_SETTINGS,
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([args.bids])
    producer = Producer({"bootstrap.servers": args.bootstrap, **PRODUCER_SETTINGS})
    topic, loads, dumps = args.output, orjson.loads, orjson.dumps

    def produce(value: bytes) -> None:
        try:
            producer.produce(topic, value)
        except BufferError:  # the producer's queue is full: let it deliver
            producer.poll(0.05)
            producer.produce(topic, value)

    windows: dict[int, dict[int, int]] = {}  # w1: window start -> auction -> bids
    max_t, size = -(2**62), pc.W1_MS
    first = pc.FirstRecord()
    while True:
        messages = take_available(consumer, DEFAULT_MAX_BATCH, WAIT)
        if messages:
            first()
        for m in messages:
            if m.error() is not None:
                continue
            if q == "q0":
                produce(m.value())
                continue
            r = loads(m.value())
            if q == "q1":
                r["price"] = r["price"] * 0.908
                produce(dumps(r))
            elif q == "q2":
                if r["auction"] % 123 == 0:
                    produce(dumps({"auction": r["auction"], "price": r["price"]}))
            else:  # w1
                t = r["dateTime"]
                max_t = t if t > max_t else max_t
                ws = t - t % size
                counts = windows.get(ws)
                if counts is None:
                    counts = windows[ws] = defaultdict(int)
                counts[r["auction"]] += 1
        if q == "w1":
            wm = max_t - pc.WATERMARK_MS
            for ws in sorted(w for w in windows if w + size <= wm):
                for a, n in windows.pop(ws).items():
                    produce(
                        dumps(
                            {"window_start": ws, "window_end": ws + size, "auction": a, "bids": n}
                        )
                    )
        producer.poll(0)


if __name__ == "__main__":
    main()
