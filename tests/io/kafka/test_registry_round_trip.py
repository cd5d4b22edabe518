"""streamnb to streamnb through a real Schema Registry: what ``to_kafka`` writes framed in
each format, ``from_kafka`` reads back as the rows it was given (the oracle), with the schema
the writer registered."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import polars as pl
import pytest

import streamnb as sn
from tests.io.kafka.registry import SchemaRegistry
from tests.threads import wait_until

UTC = dt.timezone.utc

ROWS = pl.DataFrame(
    {
        "id": [1, 2, 3, 4],
        "price": [9.5, None, 0.25, 1e12],
        "channel": ["web", "app", None, "é ✓"],
        "tags": [["a", "b"], [], ["c"], ["d", "e", "f"]],
        "bidder": [
            {"name": "ann", "age": 31},
            None,
            {"name": None, "age": 7},
            {"name": "x", "age": 0},
        ],
    },
    schema={
        "id": pl.Int64,
        "price": pl.Float64,
        "channel": pl.String,
        "tags": pl.List(pl.String),
        "bidder": pl.Struct({"name": pl.String, "age": pl.Int32}),
    },
)


@pytest.mark.parametrize("fmt", ["avro", "protobuf", "jsonschema"])
def test_what_to_kafka_writes_from_kafka_reads_back(
    fmt: str,
    make_topic: Callable[..., str],
    bootstrap: str,
    schema_registry: SchemaRegistry,
) -> None:
    topic = make_topic(partitions=1)
    written = (
        sn.from_records(ROWS)
        .to_kafka(
            topic, bootstrap_servers=bootstrap, format=fmt, schema_registry=schema_registry.url
        )
        .start()
    )
    assert written.wait(30), written.status()
    assert written.status()["state"] == "finished", written.exception
    query = sn.from_kafka(
        topic,
        bootstrap_servers=bootstrap,
        format=fmt,  # type: ignore[arg-type]
        schema_registry=schema_registry.url,
        start="earliest",
    ).start()
    try:
        wait_until(lambda: query.status()["records_in"] >= ROWS.height)
    finally:
        query.stop()
    assert query.status()["errors"] == 0, query.errors()
    want = ROWS
    if fmt == "jsonschema":  # a JSON Schema integer has no width: it reads as Int64
        want = ROWS.with_columns(
            pl.col("bidder").cast(pl.Struct({"name": pl.String, "age": pl.Int64}))
        )
    got = query.result().drop("timestamp").sort("id")
    assert got.schema == want.schema
    assert got.equals(want), (got, want)
