"""Catch-up from Kafka: Avro values framed for a Schema Registry against JSON, same Nexmark bids.

Run from the repository root::

    .venv/bin/python bench/registry_kafka.py [--events N] [--repeat 3] [--bootstrap HOST:PORT]
        [--schema-registry URL]

What it does, in order:

1. **Broker and registry**: a throw-away broker (``scripts/kafka-local``) and a throw-away
   Schema Registry (``scripts/schema-registry-local``: Apicurio Registry, its
   Confluent-compatible API), unless ``--bootstrap`` / ``--schema-registry`` name running ones.
2. **Load**: the first N bids (``dateTime`` as epoch ms) into two one-partition topics: JSON
   lines (as ``nexmark_kafka.py`` loads them) and Avro values written by confluent-kafka's own
   ``AvroSerializer`` (Confluent framing, the schema registered under ``<topic>-value``), as a
   user's services would write them.
3. **Catch-up runs**, alternating JSON and Avro ``--repeat`` times:
   ``sn.from_kafka(topic, start="earliest", timestamp="dateTime", format=...)`` (JSON with the
   bid schema given; Avro with ``schema_registry=``: the schema comes from the registry), q0
   (every bid through, the newest ``KEEP`` rows kept); the clock runs from ``start()`` until
   ``records_in`` reaches N. The kept tail must equal the bids' tail (same values, same
   types) before a speed is quoted; the best run of each format is kept.

It prints a table and rewrites the ``registry`` section of ``BENCHMARKS.md``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import benchutil
import polars as pl
from benchutil import CpuMeter, Measure, fmt_rate
from nexmark_kafka import (
    BID_SCHEMA,
    Broker,
    encode,
    load_topic,
    make_bids,
    wait_for,
)

import streamnb as sn

REGISTRY_LOCAL = Path(__file__).resolve().parents[1] / "scripts" / "schema-registry-local"
KEEP = 100_000
"""``start(keep=...)``: the result table holds the newest rows only (q0)."""

AVRO_BID = {
    "type": "record",
    "name": "Bid",
    "namespace": "nexmark",
    "fields": [
        {"name": "auction", "type": "long"},
        {"name": "bidder", "type": "long"},
        {"name": "price", "type": "long"},
        {"name": "channel", "type": "string"},
        {"name": "url", "type": "string"},
        {"name": "dateTime", "type": "long"},
        {"name": "extra", "type": "string"},
    ],
}
"""The bids' Avro schema: the JSON topic's columns and types (``dateTime`` epoch ms)."""


class Registry:
    """A registry from ``scripts/schema-registry-local`` in a temporary dir, or an external one."""

    def __init__(self, url: str | None) -> None:
        self.external = url is not None
        self.url = url or ""
        self.dir: Path | None = None

    def start(self) -> None:
        if self.external:
            return
        self.dir = Path(tempfile.mkdtemp(prefix="streamnb-registry-bench-"))
        out = subprocess.run(
            [str(REGISTRY_LOCAL), "start", "--dir", str(self.dir), "--watch-pid", str(os.getpid())],
            capture_output=True,
            text=True,
            check=False,
        )
        if out.returncode != 0:
            raise RuntimeError(f"schema-registry-local start failed:\n{out.stderr}")
        lines = [x for x in out.stdout.splitlines() if x.startswith("SCHEMA_REGISTRY=")]
        self.url = lines[-1].split("=", 1)[1]

    def stop(self) -> None:
        if self.external or self.dir is None:
            return
        subprocess.run(
            [str(REGISTRY_LOCAL), "stop", "--dir", str(self.dir)], capture_output=True, check=False
        )
        shutil.rmtree(self.dir, ignore_errors=True)


def avro_values(bids: pl.DataFrame, topic: str, registry: str) -> tuple[list[bytes], Measure]:
    """The bids as confluent-kafka's ``AvroSerializer`` writes them (framed; it registers the
    schema under ``<topic>-value``), and what serializing cost."""
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.avro import AvroSerializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    serializer = AvroSerializer(SchemaRegistryClient({"url": registry}), json.dumps(AVRO_BID))
    ctx = SerializationContext(topic, MessageField.VALUE)
    meter = CpuMeter()
    values = [serializer(row, ctx) for row in bids.iter_rows(named=True)]
    return values, meter.stop()


@dataclass
class Run:
    format: str
    events: int
    measure: Measure
    problem: str | None

    @property
    def rate(self) -> float:
        return self.events / self.measure.wall

    @property
    def cpu_rate(self) -> float:
        return self.events / self.measure.cpu if self.measure.cpu > 0 else float("inf")


def catch_up(stream: sn.Stream, fmt: str, bids: pl.DataFrame) -> Run:
    """q0 over ``stream`` until every bid is in; the kept tail checked against the bids."""
    n = bids.height
    gc.collect()
    meter = CpuMeter()
    query = stream.start(keep=KEEP)
    problem = wait_for(
        lambda: query.status()["records_in"], n, lambda: query.status()["state"] == "running"
    )
    measure = meter.stop()
    query.stop(timeout=60)
    if query.exception is not None:
        problem = f"query failed: {query.exception!r}"
    status = query.status()
    if problem is None and status["errors"]:
        problem = f"{status['errors']} records in errors(): {query.errors().head(3)}"
    if problem is None:
        got = query.result().select(bids.columns)
        want = bids.tail(KEEP)
        if got.schema != want.schema:
            problem = f"schema {dict(got.schema)} != {dict(want.schema)}"
        elif not got.equals(want):
            problem = "the kept tail differs from the bids' tail"
    return Run(fmt, n, measure, problem)


def markdown(runs: dict[str, Run], serialize: Measure, n: int, info: dict[str, str]) -> str:
    json_run, avro_run = runs["json"], runs["avro"]
    ratio = avro_run.rate / json_run.rate
    lines = [
        "## Schema Registry — Avro (Confluent framing) against JSON, catch-up from Kafka",
        "",
        f"Machine: {benchutil.machine_line(info)}.",
        "",
        f"{n:,} Nexmark bids in one partition, read from earliest by one query (q0: every bid "
        "through, the newest 100 000 rows kept), until `records_in` reaches N; the best of "
        'the runs (JSON and Avro alternating). JSON: `format="json"` with the bid schema '
        "given. Avro: written by confluent-kafka's `AvroSerializer` (the schema registered in "
        'Apicurio Registry), read with `format="avro", schema_registry=...`: the schema comes '
        "from the registry, each batch's values are grouped by schema id and decoded in one "
        "`pl.read_avro` call per id. Both results were checked: the kept tail equals the "
        "bids' tail.",
        "",
        "| format | events/s | events per CPU-second | bytes per record |",
        "|---|---|---|---|",
    ]
    for run in (json_run, avro_run):
        size = SIZES[run.format] / n
        lines.append(
            f"| {run.format} | {fmt_rate(run.rate)} | {fmt_rate(run.cpu_rate)} | {size:.0f} |"
        )
    lines += [
        "",
        f"Avro reaches **{ratio:.2f}×** JSON's events/s. For scale, confluent-kafka's "
        f"`AvroSerializer` wrote the Avro topic at {fmt_rate(n / serialize.wall)} records/s "
        "(one call per record, the producer side).",
    ]
    return "\n".join(lines)


SIZES: dict[str, int] = {}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--bootstrap", default=None)
    parser.add_argument("--schema-registry", default=None)
    parser.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    broker, registry = Broker(args.bootstrap), Registry(args.schema_registry)
    broker.start()
    registry.start()
    try:
        n = args.events
        bids = make_bids(n)
        tag = f"{n}-{os.getpid()}"
        topics = {"json": f"bench-registry-json-{tag}", "avro": f"bench-registry-avro-{tag}"}
        lines = encode(bids)
        avro, serialize = avro_values(bids, topics["avro"], registry.url)
        for fmt, values in (("json", lines), ("avro", avro)):
            load = load_topic(broker.bootstrap, topics[fmt], 1, values)
            SIZES[fmt] = load.bytes
            print(f"loaded {fmt}: {load.records:,} records, {load.bytes / n:.0f} bytes each")
        streams = {
            "json": lambda: sn.from_kafka(
                topics["json"],
                bootstrap_servers=broker.bootstrap,
                start="earliest",
                timestamp="dateTime",
                schema=BID_SCHEMA,
            ),
            "avro": lambda: sn.from_kafka(
                topics["avro"],
                bootstrap_servers=broker.bootstrap,
                start="earliest",
                timestamp="dateTime",
                format="avro",
                schema_registry=registry.url,
            ),
        }
        best: dict[str, Run] = {}
        for _ in range(args.repeat):
            for fmt in ("json", "avro"):
                run = catch_up(streams[fmt](), fmt, bids)
                state = "ok" if run.problem is None else f"PROBLEM: {run.problem}"
                print(f"{fmt:5} {fmt_rate(run.rate):>10} events/s  {state}", flush=True)
                if run.problem is not None:
                    return 1
                if fmt not in best or run.rate > best[fmt].rate:
                    best[fmt] = run
        body = markdown(best, serialize, n, benchutil.machine_info())
        print(body)
        if not args.no_write:
            benchutil.write_section("registry", body)
        return 0
    finally:
        registry.stop()
        broker.stop()


if __name__ == "__main__":
    sys.exit(main())
