"""Decode throughput of Schema Registry framed values (records/s), per format.

``.venv/bin/python bench/registry_decode.py [N]`` frames N Nexmark-bid-like records the way
Confluent's serializers do (magic byte, schema id, Avro / Protobuf / JSON body) and times
what ``from_kafka`` does with a fetched batch of them: split the frames by schema id, decode
each id's bodies with its writer schema, resolve to the reader schema. No broker, no
registry: the writer schemas are built from their text as the registry would return it. It
prints the numbers (it writes nothing to ``BENCHMARKS.md``).
"""

from __future__ import annotations

import io
import json
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import benchutil  # noqa: F401  (the working tree's streamnb)
import fastavro
import polars as pl

from streamnb.io.codecs import framed
from streamnb.io.kafka.registry import frame_header, split_framed

BID = {
    "type": "record",
    "name": "Bid",
    "namespace": "nexmark",
    "fields": [
        {"name": "auction", "type": "long"},
        {"name": "bidder", "type": "long"},
        {"name": "price", "type": "long"},
        {"name": "channel", "type": "string"},
        {"name": "url", "type": "string"},
        {"name": "dateTime", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "extra", "type": "string"},
    ],
}


def bids(n: int) -> list[dict[str, Any]]:
    base = 1_700_000_000_000
    return [
        {
            "auction": 1000 + i % 997,
            "bidder": 2000 + i % 7919,
            "price": 100 + i % 10_000,
            "channel": f"channel-{i % 5}",
            "url": f"https://www.nexmark.com/item/{i % 1000}",
            "dateTime": base + i,
            "extra": "",
        }
        for i in range(n)
    ]


def avro_case(records: list[dict[str, Any]]) -> tuple[list[bytes], framed.Writer]:
    parsed = fastavro.parse_schema(BID)
    head = frame_header(1)
    values = []
    for r in records:
        buffer = io.BytesIO()
        fastavro.schemaless_writer(buffer, parsed, r)
        values.append(head + buffer.getvalue())
    return values, framed.avro_writer(json.dumps(BID))


def avro_per_record_case(records: list[dict[str, Any]]) -> tuple[list[bytes], framed.Writer]:
    """The path of schemas with maps (and of a block with a bad record): fastavro per record."""
    from streamnb.io.codecs import avro

    values, block = avro_case(records)
    parsed = avro.parse_schema(BID)

    def per_record(bodies: list[bytes], on_error: Any) -> tuple[pl.DataFrame, list[int]]:
        return avro.decode(bodies, parsed, block.schema, on_error)

    return values, framed.Writer(block.schema, per_record)


def protobuf_case(records: list[dict[str, Any]]) -> tuple[list[bytes], framed.Writer]:
    from confluent_kafka.schema_registry import Schema
    from confluent_kafka.schema_registry.common.protobuf import _proto_to_str
    from google.protobuf import descriptor_pb2, descriptor_pool, timestamp_pb2
    from google.protobuf.message_factory import GetMessageClass

    from streamnb.io.codecs.protobuf import protobuf_writer

    f = descriptor_pb2.FileDescriptorProto(
        name="bid.proto",
        package="nexmark",
        syntax="proto3",
        dependency=["google/protobuf/timestamp.proto"],
    )
    t = descriptor_pb2.FieldDescriptorProto
    msg = f.message_type.add(name="Bid")
    for number, (name, kind) in enumerate(
        [
            ("auction", t.TYPE_INT64),
            ("bidder", t.TYPE_INT64),
            ("price", t.TYPE_INT64),
            ("channel", t.TYPE_STRING),
            ("url", t.TYPE_STRING),
            ("extra", t.TYPE_STRING),
        ],
        start=1,
    ):
        msg.field.add(name=name, number=number, type=kind, label=t.LABEL_OPTIONAL)
    msg.field.add(
        name="dateTime",
        number=7,
        type=t.TYPE_MESSAGE,
        type_name=".google.protobuf.Timestamp",
        label=t.LABEL_OPTIONAL,
    )
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(timestamp_pb2.DESCRIPTOR.serialized_pb)
    pool.Add(f)
    bid = GetMessageClass(pool.FindMessageTypeByName("nexmark.Bid"))
    head = frame_header(2) + b"\x00"  # message index [0]
    values = []
    for r in records:
        m = bid(**{k: v for k, v in r.items() if k != "dateTime"})
        m.dateTime.FromMilliseconds(r["dateTime"])
        values.append(head + m.SerializeToString())
    return values, protobuf_writer(Schema(_proto_to_str(f), "PROTOBUF"), None)


def json_case(records: list[dict[str, Any]]) -> tuple[list[bytes], framed.Writer]:
    schema = {
        "type": "object",
        "properties": {
            k: {"type": "integer" if isinstance(v, int) else "string"}
            for k, v in records[0].items()
        },
    }
    head = frame_header(3)
    values = [head + json.dumps(r).encode() for r in records]
    return values, framed.json_writer(json.dumps(schema))


def decode(values: list[bytes], writer: framed.Writer) -> pl.DataFrame:
    """What FramedDecoder.decode does with a batch of one schema id."""
    ids, bodies = split_framed(values)
    df, kept = writer.decode(bodies, lambda i, doc, why: None)
    assert len(kept) == len(values) and (ids >= 0).all()
    return framed.conform(df, writer.schema)


def measure(name: str, case: Callable[..., Any], records: list[dict[str, Any]], batch: int) -> None:
    values, writer = case(records)
    decode(values[:batch], writer)  # warm up
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for at in range(0, len(values), batch):
            decode(values[at : at + batch], writer)
        best = min(best, time.perf_counter() - start)
    print(f"{name:<11} batch {batch:>6}: {len(values) / best:>12,.0f} records/s")


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    print(f"{n:,} Nexmark bids, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC")
    records = bids(n)
    for batch in (10_000, 50_000):
        for name, case in (
            ("avro", avro_case),
            ("avro/record", avro_per_record_case),
            ("protobuf", protobuf_case),
            ("jsonschema", json_case),
        ):
            measure(name, case, records, batch)


if __name__ == "__main__":
    main()
