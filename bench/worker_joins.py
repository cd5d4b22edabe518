"""The headless worker on Nexmark joins from Kafka (q3, q8): exactly-once against at-least-once.

Run from the repository root::

    .venv/bin/python bench/worker_joins.py [--events N] [--queries q3,q8] [--bootstrap HOST:PORT]
        [--checkpoint-interval 1s] [--out BENCHMARKS.md]

1. **Broker and data** as in ``nexmark_kafka.py``: the persons and auctions among the first N
   generated Nexmark events (about 2 % and 6 % of them), ``dateTime`` as epoch-ms integers, as
   JSON in two one-partition topics.
2. **Throughput**: for each query and guarantee, the worker's runtime (``streamnb.worker.run.
   start``: checkpointed tasks, output ``to_kafka``) catches up on both topics from the earliest
   offset; the clock runs until ``records_in`` reaches persons + auctions. Both guarantees write
   the state changelog; exactly-once also wraps output, changelog and offsets in one
   transaction per checkpoint.
3. **Correctness before speed**: the committed output (read ``read_committed``) is compared
   with a polars reference of what the worker must emit, as a multiset of rows:

   * q3: the worker merges its two inputs by event time (ties: the table side first), and its
     persons table is a running aggregate of the persons topic, so an auction meets the
     persons (state OR / ID / CA) whose ``dateTime`` ≤ the auction's. Compared on
     (auction, id, name).
   * q8: 10 s windows of each input, closed by that input's own final watermark (its largest
     ``dateTime``, no delay): a window is emitted iff its end ≤ that maximum. Output = closed
     person windows (first name per id) ⋈ closed auction windows (auctions per seller) on
     window and id. Compared on (window_start, window_end, id, name, auctions).

Writes the ``worker-joins`` section of ``BENCHMARKS.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import benchutil
import polars as pl
from benchutil import CpuMeter
from nexmark_joins import STATES, TEN_S, q3, q8, q8_reference
from nexmark_kafka import Broker, encode, load_topic
from worker_kafka import create_topic, guarantee_rows, read_output

import streamnb as sn
from streamnb.io.sources.nexmark import SCHEMAS, generate
from streamnb.worker.run import start

SECTION = "worker-joins"
QUERIES = {"q3": q3, "q8": q8}
KEYS = {
    "q3": ["auction", "id", "name"],
    "q8": ["window_start", "window_end", "id", "name", "auctions"],
}
SCHEMA = {
    kind: pl.Schema({**SCHEMAS[kind], "dateTime": pl.Int64()}) for kind in ("person", "auction")
}
"""The records as they are in the topics: ``dateTime`` in epoch milliseconds."""


# -- data ----------------------------------------------------------------------------------------
def make(kind: str, events: int) -> pl.DataFrame:
    """The ``kind`` records among the first ``events`` generated events, ``dateTime`` in ms."""
    return generate(kind, 0, events).with_columns(pl.col("dateTime").cast(pl.Int64))


def kafka_source(bootstrap: str, topic: str, kind: str) -> sn.Stream:
    return sn.from_kafka(
        topic,
        bootstrap_servers=bootstrap,
        start="earliest",
        timestamp="dateTime",
        schema=SCHEMA[kind],
    )


# -- references ----------------------------------------------------------------------------------
def q3_expected(persons: pl.DataFrame, auctions: pl.DataFrame) -> pl.DataFrame:
    """Each auction of category 10 with the persons in OR / ID / CA, its seller, that the
    persons topic had shown by the auction's time (person.dateTime ≤ auction.dateTime)."""
    table = persons.filter(pl.col("state").is_in(STATES)).select(
        "id", "name", pl.col("dateTime").alias("person_time")
    )
    return (
        auctions.filter(pl.col("category") == 10)
        .select(pl.col("id").alias("auction"), pl.col("seller").alias("id"), "dateTime")
        .join(table, on="id")
        .filter(pl.col("person_time") <= pl.col("dateTime"))
        .select(KEYS["q3"])
    )


def q8_expected(persons: pl.DataFrame, auctions: pl.DataFrame) -> pl.DataFrame:
    """The windows both inputs have closed (end ≤ that input's largest ``dateTime``)."""
    as_dt = {c: pl.col(c).cast(pl.Datetime("ms", "UTC")) for c in ("dateTime",)}
    full = q8_reference(persons.with_columns(**as_dt), auctions.with_columns(**as_dt))
    p_max = int(persons.get_column("dateTime").max())  # type: ignore[arg-type]
    a_max = int(auctions.get_column("dateTime").max())  # type: ignore[arg-type]
    closed = full.filter(pl.col("w") + TEN_S <= min(p_max, a_max))
    return closed.select(
        pl.col("w").alias("window_start"),
        (pl.col("w") + TEN_S).alias("window_end"),
        "id",
        "name",
        pl.col("auctions").cast(pl.Int64),
    )


def normalise(df: pl.DataFrame, name: str) -> pl.DataFrame:
    """The worker's output, decoded from JSON, in the reference's column types."""
    cols = []
    for c in KEYS[name]:
        dtype = df.schema[c]
        if c.startswith("window_") and dtype == pl.String:
            cols.append(pl.col(c).str.to_datetime(time_zone="UTC").dt.epoch("ms").alias(c))
        elif c.startswith("window_") and isinstance(dtype, pl.Datetime):
            cols.append(pl.col(c).dt.epoch("ms"))
        elif dtype.is_integer():
            cols.append(pl.col(c).cast(pl.Int64))
        else:
            cols.append(pl.col(c))
    return df.select(cols)


def diff(got: pl.DataFrame, want: pl.DataFrame) -> str | None:
    """None when ``got`` and ``want`` hold the same rows with the same multiplicities."""
    keys = want.columns
    a = got.group_by(keys).agg(pl.len().alias("got"))
    b = want.group_by(keys).agg(pl.len().alias("want"))
    both = a.join(b, on=keys, how="full", coalesce=True, nulls_equal=True).with_columns(
        pl.col("got", "want").fill_null(0)
    )
    bad = both.filter(pl.col("got") != pl.col("want"))
    if bad.is_empty():
        return None
    missing = bad.filter(pl.col("got") < pl.col("want"))
    extra = bad.filter(pl.col("got") > pl.col("want"))
    n_missing = int((missing["want"] - missing["got"]).sum())
    n_extra = int((extra["got"] - extra["want"]).sum())
    return (
        f"{got.height} rows, expected {want.height}: {n_missing}"
        f" missing (first {missing.sort(keys).head(2).to_dicts()}), {n_extra} extra "
        f"(first {extra.sort(keys).head(2).to_dicts()})"
    )


# -- runs ----------------------------------------------------------------------------------------
def drain(worker: Any, quiet_s: float = 1.0, limit_s: float = 30.0) -> tuple[int, float]:
    """Wait (untimed) until the worker's output has not grown for ``quiet_s``: the rows it
    emitted meanwhile, and the seconds until the last of them.

    ``records_in`` counts records *read*: the last batch is still being processed, and with
    two inputs the event-time merge holds the last records (those at one input's latest time
    wait until the other input has been idle for ``max_idle``, 100 ms). Stopping at once
    would leave them unprocessed (offsets uncommitted, read again on a restart) and missing
    from the output.
    """
    t0 = time.monotonic()
    first = last = worker.status()["records_out"]
    changed = quiet_since = t0
    while time.monotonic() - quiet_since < quiet_s and time.monotonic() - t0 < limit_s:
        time.sleep(0.01)
        now = worker.status()["records_out"]
        if now != last:
            last, changed = now, time.monotonic()
            quiet_since = changed
    return int(last - first), changed - t0


def throughput(
    args: argparse.Namespace,
    bootstrap: str,
    topics: dict[str, str],
    wants: dict[str, pl.DataFrame],
    *,
    n: int,
    state_dir: Path,
) -> list[dict[str, Any]]:
    rows = []
    for name in args.queries.split(","):
        want = wants[name]
        for guarantee in ("at_least_once", "exactly_once"):
            out = create_topic(bootstrap, f"bench-wjoin-out-{uuid.uuid4().hex[:8]}")
            persons = kafka_source(bootstrap, topics["person"], "person")
            auctions = kafka_source(bootstrap, topics["auction"], "auction")
            stream = QUERIES[name](persons, auctions).to_kafka(out, bootstrap_servers=bootstrap)
            meter = CpuMeter()
            worker = start(
                stream,
                name=f"{name}-{guarantee}",
                guarantee=guarantee,
                group_id=f"bench-{uuid.uuid4().hex[:8]}",
                checkpoint_interval=args.checkpoint_interval,
                state_dir=state_dir,
            )
            while worker.status()["records_in"] < n:
                if worker.status()["state"] == "failed":
                    raise RuntimeError(f"{name} {guarantee}: {worker.exception!r}")
                time.sleep(0.02)
            measure = meter.stop()
            status = worker.status()
            tail_rows, tail_s = drain(worker)
            worker.stop()
            values = read_output(bootstrap, out)
            if values:
                got = normalise(pl.read_ndjson(b"\n".join(values)), name)
                problem = diff(got, want)
            else:
                problem = "no output" if want.height else None
            rows.append(
                {
                    "query": name,
                    "guarantee": guarantee,
                    "records": n,
                    "wall": measure.wall,
                    "rate": n / measure.wall,
                    "cpu_rate": n / measure.cpu,
                    "checkpoints": status["checkpoints"],
                    "commit_ms": status["commit_ms"],
                    "rows_out": len(values),
                    "tail_rows": tail_rows,
                    "tail_ms": tail_s * 1000,
                    "check": problem or "ok",
                    "others": measure.others,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def report(
    args: argparse.Namespace,
    rows: list[dict[str, Any]],
    broker: Broker,
    counts: dict[str, int],
    wants: dict[str, pl.DataFrame],
) -> str:
    info = benchutil.machine_info()
    lines = [
        f"`bench/worker_joins.py --events {args.events} --checkpoint-interval "
        f"{args.checkpoint_interval}`; {benchutil.machine_line(info)}; {broker.version}.",
        "",
        f"Nexmark q3 (auctions ⋈ persons table) and q8 (window join) read from Kafka by the "
        f"worker's runtime (checkpointed tasks, state changelog, output `to_kafka`): "
        f"{counts['person']:,} persons and {counts['auction']:,} auctions (of {args.events:,} "
        "generated events) as JSON in two pre-loaded one-partition topics, caught up from the "
        "earliest offset. Exactly-once also commits output, changelog and offsets in one "
        "transaction per checkpoint. Each output was read `read_committed` and compared, as a "
        "multiset of rows, with a polars reference of the worker's semantics (inputs merged by "
        "event time; q3: an auction meets the persons seen up to its time; q8: windows closed "
        "by each input's final watermark) before its speed is quoted: q3 "
        f"{wants['q3'].height:,} rows, q8 {wants['q8'].height:,} rows.",
        "",
        "| query | guarantee | records/s | records/CPU-s | checkpoints | last commit ms | check "
        "| output tail | other load (cores) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    lines += guarantee_rows(
        rows,
        args.queries.split(","),
        "records/s",
        lambda r: f"{r['tail_rows']:,} rows, {r['tail_ms']:.0f} ms",
    )
    lines += [
        "",
        "*records/s*: persons + auctions over the wall time from `start()` until "
        '`status()["records_in"]` reached them; *records/CPU-s*: over this process\'s CPU '
        "time (all threads; the broker's JVM not included). *other load*: cores used by other "
        "processes meanwhile (the broker among them; the machine is shared). *output tail*: "
        "the clock stops when the last record is *read*; the output rows emitted after that "
        "(the last batch processed, and the records the event-time merge held back: those at "
        "one input's latest time wait until the other input has been idle for 100 ms), and "
        "when the last came. The worker is stopped only once its output has been still for "
        "1 s: stopped at once, the held records stay unprocessed (their offsets uncommitted) "
        "and q3 missed the auctions of the final millisecond.",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--events", type=int, default=6_000_000, help="generated events (≈8 %% are read)"
    )
    parser.add_argument("--queries", default="q3,q8")
    parser.add_argument("--checkpoint-interval", default="1s")
    parser.add_argument("--bootstrap")
    parser.add_argument("--out", type=Path, default=benchutil.BENCHMARKS_MD)
    parser.add_argument("--no-write", action="store_true", help="do not write BENCHMARKS.md")
    args = parser.parse_args()
    bad = [q for q in args.queries.split(",") if q not in QUERIES]
    if bad:
        parser.error(f"unknown queries {bad}; choose from {list(QUERIES)}")
    frames = {kind: make(kind, args.events) for kind in ("person", "auction")}
    counts = {kind: df.height for kind, df in frames.items()}
    n = sum(counts.values())
    wants = {
        "q3": q3_expected(frames["person"], frames["auction"]),
        "q8": q8_expected(frames["person"], frames["auction"]),
    }
    print(f"data: {counts}; expected rows: { {k: v.height for k, v in wants.items()} }")
    broker = Broker(args.bootstrap)
    broker.start()
    try:
        print(f"broker: {broker.bootstrap} ({broker.version})", flush=True)
        topics = {}
        for kind, df in frames.items():
            topics[kind] = f"bench-wjoin-{kind}-{args.events}"
            load_topic(broker.bootstrap, topics[kind], 1, encode(df))
        with tempfile.TemporaryDirectory() as state:
            rows = throughput(args, broker.bootstrap, topics, wants, n=n, state_dir=Path(state))
    finally:
        broker.stop()
    text = report(args, rows, broker, counts, wants)
    print(text)
    if not args.no_write:
        benchutil.write_section(SECTION, text, args.out)
        print(f"wrote the '{SECTION}' section of {args.out}")
    return 0 if all(r["check"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
