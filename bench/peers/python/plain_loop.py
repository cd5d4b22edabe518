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
* fetch: "take what has arrived", streamnb's own ``streamnb.io.kafka.client.
  consume_available`` (it waits only for a first message when none has arrived); ``n`` =
  ``streamnb.engine.executor.DEFAULT_MAX_BATCH``, ``timeout`` 0.1 s (the executor's wait when
  one input is read);
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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402
import peercommon as pc  # noqa: E402
from confluent_kafka import Consumer, Producer  # noqa: E402

from streamnb.engine.executor import DEFAULT_MAX_BATCH  # noqa: E402
from streamnb.io.kafka.client import consume_available  # noqa: E402
from streamnb.io.sinks.kafka import PRODUCER_SETTINGS  # noqa: E402
from streamnb.io.sources.kafka.reader import CONSUMER_SETTINGS  # noqa: E402

WAIT = 0.1
"""Seconds to wait for the first message when none has arrived (the executor's wait)."""


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

    w1 = pc.TumblingCounts()
    first = pc.FirstRecord()
    while True:
        messages = consume_available(consumer, DEFAULT_MAX_BATCH, WAIT)
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
                w1.add(r["dateTime"], r["auction"])
        if q == "w1":
            for row in w1.closed():
                produce(dumps(row))
        producer.poll(0)


if __name__ == "__main__":
    main()
