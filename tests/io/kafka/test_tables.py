"""Tables from Kafka are bootstrapped (docs/semantics.md §3.10): read to the end they had when
the query started before any stream record is joined, whatever was produced first."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import polars as pl
import pytest

import streamnb as sn
from streamnb.engine.core import Context

Produce = Callable[..., list[tuple[int, int]]]
BASE = 1_700_000_000_000
ORDERS, CUSTOMERS = 20_000, 300


def orders() -> list[dict[str, Any]]:
    return [{"oid": i, "cid": f"c{i % CUSTOMERS}", "ts": BASE + 10_000 + i} for i in range(ORDERS)]


def customers() -> list[dict[str, Any]]:
    """Values of the customers topic; the message key is the customer id (``c<n>``)."""
    return [{"name": f"customer c{c}", "ts": BASE + c} for c in range(CUSTOMERS)]


CUSTOMER_KEYS = [f"c{c}".encode() for c in range(CUSTOMERS)]


@pytest.mark.parametrize("orders_first", [True, False])
def test_an_enrichment_join_finds_every_customer_whatever_was_produced_first(
    make_topic: Callable[..., str], produce: Produce, bootstrap: str, orders_first: bool
) -> None:
    order_topic, customer_topic = make_topic(partitions=2), make_topic()
    produce_orders = lambda: produce(  # noqa: E731
        order_topic, orders(), partition=[i % 2 for i in range(ORDERS)]
    )
    produce_customers = lambda: produce(customer_topic, customers(), key=CUSTOMER_KEYS)  # noqa: E731
    for step in (
        (produce_orders, produce_customers)
        if orders_first
        else (
            produce_customers,
            produce_orders,
        )
    ):
        step()
    table = sn.table_from_kafka(
        customer_topic, key="cid", bootstrap_servers=bootstrap, schema={"name": pl.String}
    )
    stream = sn.from_kafka(
        order_topic,
        bootstrap_servers=bootstrap,
        timestamp="ts",
        start="earliest",
        schema={"oid": pl.Int64, "cid": pl.String, "ts": pl.Int64},
    )
    query = stream.join(table, on="cid", how="left").start()
    try:
        deadline_rows = ORDERS
        for _ in range(600):
            if query.status()["records_out"] >= deadline_rows:
                break
            query.wait(timeout=0.1)
        result = query.result()
        status = query.status()
    finally:
        query.stop()
    assert result.height == ORDERS
    missing = result.filter(pl.col("name").is_null()).height
    assert missing == 0, f"{missing} of {ORDERS} orders without their customer"
    assert (result["name"] == ("customer " + result["cid"])).all()
    assert status["loading"] == {}


def test_the_reader_knows_when_a_table_is_caught_up(
    make_topic: Callable[..., str], produce: Produce, bootstrap: str
) -> None:
    topic = make_topic(partitions=2)
    produce(topic, customers(), partition=[c % 2 for c in range(CUSTOMERS)])
    source = sn.table_from_kafka(topic, bootstrap_servers=bootstrap).plan.sources()[0]
    reader = source.open(Context())  # type: ignore[attr-defined]
    try:
        assert not reader.caught_up()
        assert reader.bootstrap_progress() == 0.0
        read = 0
        for _ in range(200):
            rows = reader.read(100, 0.1)
            read += rows.height if rows is not None else 0
            if reader.caught_up():
                break
        assert read == CUSTOMERS and reader.bootstrap_progress() == 1.0
        produce(topic, customers()[:5])  # records after the start are not bootstrapped
        assert reader.caught_up()
    finally:
        reader.close()


def test_an_empty_table_topic_is_caught_up_at_once(
    make_topic: Callable[..., str], bootstrap: str
) -> None:
    source = sn.table_from_kafka(make_topic(), bootstrap_servers=bootstrap).plan.sources()[0]
    reader = source.open(Context())  # type: ignore[attr-defined]
    try:
        assert reader.caught_up() and reader.bootstrap_progress() == 1.0
    finally:
        reader.close()
