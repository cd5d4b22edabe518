"""Smoke test of the JVM peers (Kafka Streams, Spark): load Nexmark topics, run a peer's
query through its `run` script, read its output topic and compare with the polars reference.

    .venv/bin/python bench/peers/kafka_streams/smoke.py load --bootstrap B --events 200000
    .venv/bin/python bench/peers/kafka_streams/smoke.py check --bootstrap B --peer kafka_streams \
        --queries q0,q2,q5 [--run-arg --trigger --run-arg 1s]

Not the benchmark harness (bench/peers.py): a correctness check with rough timings, for the
peer author. Topics: <prefix>-bids, <prefix>-persons, <prefix>-auctions (1 partition); the
data is kept in /tmp/jvmpeers-data/<prefix>.parquet-* for the references.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO))

import polars as pl  # noqa: E402

from streamnb.io.sources.nexmark import generate  # noqa: E402

DATA = Path("/tmp/jvmpeers-data")
TEN_S, WM = 10_000, 4_000


def frames(events: int, event_rate: int) -> dict[str, pl.DataFrame]:
    out = {}
    for kind in ("bid", "person", "auction"):
        df = generate(kind, 0, events, event_rate=event_rate)
        out[kind] = df.with_columns(pl.col(pl.Datetime).dt.epoch("ms"))
    return out


def load(args: argparse.Namespace) -> None:
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    DATA.mkdir(exist_ok=True)
    data = frames(args.events, args.event_rate)
    admin = AdminClient({"bootstrap.servers": args.bootstrap})
    producer = Producer(
        {
            "bootstrap.servers": args.bootstrap,
            "linger.ms": 50,
            "batch.size": 1_000_000,
            "queue.buffering.max.messages": 2_000_000,
            "queue.buffering.max.kbytes": 2_097_152,
        }
    )
    for kind, df in data.items():
        topic = f"{args.prefix}-{kind}s"
        for f in admin.create_topics([NewTopic(topic, 1, 1)]).values():
            f.result()
        df.write_parquet(DATA / f"{args.prefix}-{kind}.parquet")
        lines = df.write_ndjson().encode().split(b"\n")
        lines = [x for x in lines if x]
        for value in lines:
            try:
                producer.produce(topic, value)
            except BufferError:
                producer.poll(0.05)
                producer.produce(topic, value)
        assert producer.flush(120) == 0
        print(f"{topic}: {len(lines)} records", flush=True)


# -- references ---------------------------------------------------------------------------------
def reference(q: str, prefix: str) -> tuple[pl.DataFrame, list[str]]:
    from queries import QUERIES

    bids = pl.read_parquet(DATA / f"{prefix}-bid.parquet")
    if q == "q8":
        persons = pl.read_parquet(DATA / f"{prefix}-person.parquet")
        auctions = pl.read_parquet(DATA / f"{prefix}-auction.parquet")
        w = (pl.col("dateTime") // TEN_S * TEN_S).alias("window_start")
        people = persons.select(w, "id", "name")
        sellers = auctions.select(w, pl.col("seller").alias("id")).unique()
        ref = people.join(sellers, on=["window_start", "id"]).select(
            "window_start", (pl.col("window_start") + TEN_S).alias("window_end"), "id", "name"
        )
        wm = max(int(persons["dateTime"].max()), int(auctions["dateTime"].max())) - WM  # type: ignore[arg-type]
        wm_min = min(int(persons["dateTime"].max()), int(auctions["dateTime"].max())) - WM  # type: ignore[arg-type]
        if wm != wm_min:
            print(f"  (q8: final watermark max {wm}, min {wm_min})")
        return ref.filter(pl.col("window_end") <= wm), list(ref.columns)
    b = bids.with_columns(pl.col("dateTime").cast(pl.Datetime("ms", "UTC")))
    ref = QUERIES[q].reference(b).with_columns(pl.col(pl.Datetime).dt.epoch("ms"))
    if QUERIES[q].windowed:
        ref = ref.filter(pl.col("window_end") <= int(bids["dateTime"].max()) - WM)  # type: ignore[arg-type]
    return ref, list(ref.columns)


# -- running a peer -----------------------------------------------------------------------------
def proc_tree_cpu(pgid: int) -> tuple[float, int]:
    """CPU seconds (utime+stime, children reaped included) and RSS sum of a process group."""
    cpu, rss, tick, page = 0.0, 0, os.sysconf("SC_CLK_TCK"), os.sysconf("SC_PAGE_SIZE")
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) != pgid:
            continue
        cpu += (int(fields[11]) + int(fields[12])) / tick
        rss += int(fields[21]) * page
    return cpu, rss


def read_stdout(proc: subprocess.Popen[str], lines: list[str], first: list[float]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line.rstrip())
        if line.startswith("SN_FIRST_RECORD") and not first:
            first.append(int(line.split()[1]) / 1000)


def check(args: argparse.Namespace) -> int:
    from confluent_kafka import Consumer
    from queries import compare

    failures = 0
    for q in args.queries.split(","):
        want, cols = reference(q, args.prefix)
        out_topic = f"{args.prefix}-out-{args.peer}-{q}-{uuid.uuid4().hex[:6]}"
        group = f"sn-{args.peer}-{q}-{uuid.uuid4().hex[:6]}"
        cmd = [
            str(REPO / "bench/peers" / args.peer / "run"),
            "--bootstrap",
            args.bootstrap,
            "--query",
            q,
            "--bids",
            f"{args.prefix}-bids",
            "--persons",
            f"{args.prefix}-persons",
            "--auctions",
            f"{args.prefix}-auctions",
            "--output",
            out_topic,
            "--group",
            group,
            *args.run_arg,
        ]
        consumer = Consumer(
            {
                "bootstrap.servers": args.bootstrap,
                "group.id": f"smoke-{uuid.uuid4()}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "topic.metadata.refresh.interval.ms": 1000,
            }
        )
        consumer.subscribe([out_topic])
        t0 = time.time()
        with open(f"/tmp/jvmpeers-{args.peer}-{q}.log", "w") as log:
            proc = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True
            )
        first: list[float] = []
        lines: list[str] = []
        threading.Thread(target=read_stdout, args=(proc, lines, first), daemon=True).start()
        rows: list[bytes] = []
        deadline, last_row = t0 + args.timeout, 0.0
        while time.time() < deadline and proc.poll() is None:
            for m in consumer.consume(10_000, 0.2):
                if m.error() is None:
                    rows.append(m.value())
                    last_row = time.time()
            if len(rows) >= want.height and time.time() - last_row > args.settle:
                break
        cpu, rss = proc_tree_cpu(proc.pid)
        t_end = time.time()
        rc = proc.poll()
        if rc is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                rc = proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                rc = proc.wait()
        stop_s = time.time() - t_end
        consumer.close()
        if rc == 3:
            print(
                f"{args.peer} {q}: {' '.join(x for x in lines if x.startswith('SN_UNSUPPORTED'))}"
            )
            continue
        got = pl.DataFrame([json.loads(r) for r in rows]) if rows else pl.DataFrame()
        n_in = {"q8": None}.get(q, pl.read_parquet(DATA / f"{args.prefix}-bid.parquet").height)
        if got.height:
            got = got.select(cols).cast(dict(want.schema))  # type: ignore[arg-type]
        got.write_parquet(f"/tmp/jvmpeers-got-{args.peer}-{q}.parquet")
        diff = compare(got, want) if got.height or want.height else None
        start = first[0] if first else None
        busy = (last_row - start) if start and last_row else None
        rate = f"{n_in / busy:,.0f} ev/s" if busy and n_in else "-"
        verdict = "OK" if diff is None else f"FAIL {diff}"
        launch = (start - t0) if start else float("nan")
        print(
            f"{args.peer} {q} {' '.join(args.run_arg)}: {verdict} | "
            f"rows {got.height}/{want.height} | first-record +{launch:.1f}s "
            f"after launch | first→last output {busy if busy else float('nan'):.2f}s ({rate}) | "
            f"JVM cpu {cpu:.1f}s rss {rss / 2**20:.0f}MiB | stop {stop_s:.1f}s rc={rc}",
            flush=True,
        )
        failures += diff is not None
    return 1 if failures else 0


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("action", choices=["load", "check"])
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--events", type=int, default=200_000)
    p.add_argument("--event-rate", type=int, default=5_000, help="events/s of event time")
    p.add_argument("--prefix", default="smoke")
    p.add_argument("--peer", default="kafka_streams")
    p.add_argument("--queries", default="q0,q1,q2,q5,q7,q11,q8")
    p.add_argument("--run-arg", action="append", default=[])
    p.add_argument("--timeout", type=float, default=180)
    p.add_argument("--settle", type=float, default=3.0)
    args = p.parse_args()
    if args.action == "load":
        load(args)
        return 0
    return check(args)


if __name__ == "__main__":
    sys.exit(main())
