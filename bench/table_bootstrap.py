"""Tables are bootstrapped: the time from start to the first joined row, with a table to load.

    .venv/bin/python bench/table_bootstrap.py [--keys 1000000] [--orders 100000] [--bootstrap H:P]

An enrichment join (orders ⋈ customers on ``cid``, left) with a customers table of ``--keys``
rows: in memory (``table_from_records``) and from Kafka (``table_from_kafka`` over a topic of
keyed JSON records, produced before the query starts). The table is read to its end before
any order is joined, so the first joined row waits for the whole table; the figure is that
wait, and the table's load rate. Every order must find its customer (checked before any
figure is quoted). Results go to the ``table-bootstrap`` section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import time
import uuid

import benchutil
import polars as pl
from nexmark_kafka import Broker

import streamnb as sn


def customers(keys: int) -> pl.DataFrame:
    return pl.DataFrame({"cid": [f"c{i}" for i in range(keys)]}).with_columns(
        name=pl.lit("customer ") + pl.col("cid"), tier=pl.int_range(keys) % 5
    )


def orders(n: int, keys: int) -> pl.DataFrame:
    return pl.DataFrame({"oid": range(n)}).with_columns(
        cid=pl.lit("c") + ((pl.col("oid") * 7919) % keys).cast(pl.String),
        ts=pl.col("oid") + 1_700_000_000_000,
    )


def first_row(query: sn.Query, total: int, timeout: float = 600) -> tuple[float, float]:
    """Seconds from now to the first joined row, and to the last."""
    started = time.perf_counter()
    first = None
    while time.perf_counter() - started < timeout:
        out = query.status()["records_out"]
        if first is None and out > 0:
            first = time.perf_counter() - started
        if out >= total:
            return first or 0.0, time.perf_counter() - started
        time.sleep(0.002)
    raise TimeoutError(f"{query.status()}")


def check(query: sn.Query, n: int) -> None:
    result = query.result()
    missing = result.filter(pl.col("name").is_null()).height
    if result.height != n or missing:
        raise RuntimeError(f"{result.height} rows, {missing} orders without their customer")


def in_memory(keys: int, n: int) -> dict[str, float]:
    table = sn.table_from_records(customers(keys), key="cid", batch_size=50_000)
    stream = sn.from_records(orders(n, keys), timestamp="ts", batch_size=10_000)
    query = stream.join(table, on="cid", how="left").start("bootstrap-memory", keep=None)
    first, last = first_row(query, n)
    check(query, n)
    query.stop()
    return {"first": first, "last": last}


def produce(bootstrap: str, topic: str, frame: pl.DataFrame, key: str | None) -> None:
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
    values = frame.drop(key).write_ndjson().encode().split(b"\n") if key else []
    values = values or frame.write_ndjson().encode().split(b"\n")
    keys = frame[key].to_list() if key else [None] * frame.height
    for k, v in zip(keys, values[: frame.height], strict=True):
        while True:
            try:
                producer.produce(topic, v, k.encode() if k else None)
                break
            except BufferError:
                producer.poll(0.05)
    if producer.flush(120):
        raise RuntimeError(f"records to {topic} not delivered")


def from_kafka(bootstrap: str, keys: int, n: int) -> dict[str, float]:
    from confluent_kafka.admin import AdminClient, NewTopic

    customer_topic, order_topic = f"customers-{uuid.uuid4().hex[:8]}", f"orders-{uuid.uuid4()}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics(
        [NewTopic(customer_topic, 1, 1), NewTopic(order_topic, 1, 1)]
    ).values():
        future.result(30)
    produce(bootstrap, order_topic, orders(n, keys), None)  # the orders first, as in the issue
    produce(bootstrap, customer_topic, customers(keys), "cid")
    table = sn.table_from_kafka(
        customer_topic, key="cid", bootstrap_servers=bootstrap,
        schema={"name": pl.String, "tier": pl.Int64},
    )  # fmt: skip
    stream = sn.from_kafka(
        order_topic,
        bootstrap_servers=bootstrap,
        timestamp="ts",
        start="earliest",
        schema={"oid": pl.Int64, "cid": pl.String, "ts": pl.Int64},
    )
    query = stream.join(table, on="cid", how="left").start("bootstrap-kafka", keep=None)
    first, last = first_row(query, n)
    check(query, n)
    query.stop()
    return {"first": first, "last": last}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--orders", type=int, default=100_000)
    parser.add_argument("--bootstrap", default=None, help="an external broker (default: start one)")
    args = parser.parse_args()
    memory = in_memory(args.keys, args.orders)
    broker = Broker(args.bootstrap)
    broker.start()
    try:
        kafka = from_kafka(broker.bootstrap, args.keys, args.orders)
    finally:
        broker.stop()
    rows = [("in memory (`table_from_records`)", memory), (f"Kafka ({broker.version})", kafka)]
    lines = [
        "## Tables are bootstrapped: time to the first joined row",
        "",
        f"`bench/table_bootstrap.py --keys {args.keys:,} --orders {args.orders:,}`; "
        f"{benchutil.machine_line(benchutil.machine_info())}. Orders ⋈ customers (left) on "
        "`cid`; the orders were produced before the customers. Every order found its customer "
        "(checked before the figures were taken).",
        "",
        "| table source | first joined row after start | table load rate | all orders joined |",
        "|---|---|---|---|",
    ]
    for name, m in rows:
        lines.append(
            f"| {name} | {m['first']:.2f} s | {args.keys / m['first']:,.0f} rows/s | "
            f"{m['last']:.2f} s |"
        )
    text = "\n".join(lines)
    print(text)
    benchutil.write_section("table-bootstrap", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
