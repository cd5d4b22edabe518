"""What a light load's batch costs on the Kafka path, read to written, against the plain loop.

``.venv/bin/python bench/kafka_batches.py [--sizes 20,150,1000] [--records 60000]
[--bootstrap HOST:PORT]`` loads Nexmark bids as JSON into a fresh topic (a broker of its own
unless ``--bootstrap`` names one), then reads the topic through in batches of each size, on
one thread and one batch after another, as a lightly loaded query does:

* **streamnb**: q1 (``bench/queries.py``) from ``sn.from_kafka`` to ``to_kafka``, the
  source read on the query's thread (``KafkaReader(prefetch=False)``: the threads park under
  a light load) and each batch pushed through the pipeline, sink included;
* **plain loop**: ``consume_available``, ``orjson`` per record and ``produce``, as
  ``bench/peers/python/plain_loop.py`` does.

It prints, per size, the median and p90 milliseconds of a batch's read and of its processing
(for streamnb; the plain loop's is one number), and the CPU microseconds a record, for both.
A batch's cost at a light load is what the latency harness's engines pay per batch, without
its contention (producer, broker and reader on the same two cores). No timed assertions, and
it writes nothing to ``BENCHMARKS.md``.
"""

from __future__ import annotations

import argparse
import time
import uuid
from collections.abc import Callable

import benchutil  # noqa: F401  (the working tree's streamnb)
import numpy as np
import orjson
from nexmark_kafka import BID_SCHEMA, Broker, encode, load_topic, make_bids
from queries import QUERIES

import streamnb as sn
from streamnb.engine.compile import runnable_source
from streamnb.engine.core import Context, Delta
from streamnb.engine.executor import Pipeline
from streamnb.io.kafka.client import consume_available
from streamnb.io.sinks.kafka import PRODUCER_SETTINGS
from streamnb.io.sources.kafka.reader import CONSUMER_SETTINGS, KafkaReader


def streamnb_batches(
    bootstrap: str, topic: str, size: int, records: int
) -> list[tuple[float, ...]]:
    """(read s, process s, rows, cpu s) of each batch of q1 read from ``topic``."""
    stream = (
        QUERIES["q1"]
        .build(
            sn.from_kafka(
                topic,
                bootstrap_servers=bootstrap,
                start="earliest",
                timestamp="dateTime",
                schema=BID_SCHEMA,
            )
        )
        .to_kafka(f"{topic}-out-{uuid.uuid4().hex[:6]}", bootstrap_servers=bootstrap)
    )

    def drop(delta: Delta) -> None:
        pass

    ctx = Context()
    pipe = Pipeline(stream.plan.root, ctx, drop)
    (step,) = pipe.sources
    reader = KafkaReader(runnable_source(step.node), ctx, prefetch=False)  # type: ignore[arg-type]
    out: list[tuple[float, ...]] = []
    try:
        seen = 0
        while seen < records:
            c0, t0 = time.process_time(), time.perf_counter()
            rows = reader.read(size, 1.0)
            t1 = time.perf_counter()
            if rows is None:
                continue
            pipe.push(step, rows)
            t2 = time.perf_counter()
            out.append((t1 - t0, t2 - t1, rows.height, time.process_time() - c0))
            seen += rows.height
    finally:
        for s in pipe.steps:
            if s.op is not None:
                s.op.close()
        reader.close()
    return out


def plain_batches(bootstrap: str, topic: str, size: int, records: int) -> list[tuple[float, ...]]:
    """The same through the plain loop (q1: ``price * 0.908`` per record, by orjson)."""
    from confluent_kafka import Consumer, Producer

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-{uuid.uuid4()}",
            **CONSUMER_SETTINGS,
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([topic])
    producer = Producer({"bootstrap.servers": bootstrap, **PRODUCER_SETTINGS})
    target, loads, dumps, send = f"{topic}-plain", orjson.loads, orjson.dumps, producer.produce
    out: list[tuple[float, ...]] = []
    try:
        seen = 0
        while seen < records:
            c0, t0 = time.process_time(), time.perf_counter()
            messages = consume_available(consumer, size, 1.0)
            t1 = time.perf_counter()
            if not messages:
                continue
            for m in messages:
                row = loads(m.value())
                row["price"] = row["price"] * 0.908
                send(target, dumps(row))
            producer.poll(0)
            t2 = time.perf_counter()
            out.append((t1 - t0, t2 - t1, len(messages), time.process_time() - c0))
            seen += len(messages)
    finally:
        producer.flush(30)
        consumer.close()
    return out


def summary(rows: list[tuple[float, ...]]) -> tuple[str, str, float]:
    """Read and process cells (median | p90 ms) of the batches after the first tenth (the
    consumer's first fetches fill its queue), and CPU µs a record."""
    a = np.array(rows[len(rows) // 10 :])
    read, work, n, cpu = a[:, 0] * 1e3, a[:, 1] * 1e3, a[:, 2], a[:, 3]
    cell: Callable[[np.ndarray], str] = lambda x: f"{np.median(x):.3f} | {np.percentile(x, 90):.3f}"  # noqa: E731
    return cell(read), cell(work), float(cpu.sum() / n.sum() * 1e6)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="20,150,1000", help="records a batch (comma-separated)")
    p.add_argument("--records", type=int, default=60_000, help="records read per size")
    p.add_argument("--bootstrap", help="a running broker (default: one of its own)")
    args = p.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    broker = Broker(args.bootstrap)
    broker.start()
    bootstrap = broker.bootstrap
    try:
        topic = f"bench-kafka-batches-{uuid.uuid4().hex[:8]}"
        lines = encode(make_bids(args.records))
        load_topic(bootstrap, topic, 1, lines)
        print(
            "| batch | engine | read median ms | read p90 ms | process median ms | "
            "process p90 ms | CPU µs a record |"
        )
        print("|---:|---|---:|---:|---:|---:|---:|")
        for size in sizes:
            for name, run in (("plain loop", plain_batches), ("streamnb", streamnb_batches)):
                read, work, cpu = summary(run(bootstrap, topic, size, args.records))
                print(f"| {size:,} | {name} | {read} | {work} | {cpu:.2f} |", flush=True)
    finally:
        broker.stop()


if __name__ == "__main__":
    main()
