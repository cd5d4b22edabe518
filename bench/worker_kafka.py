"""The headless worker from Kafka: exactly-once against at-least-once, and recovery after kill -9.

Run from the repository root::

    .venv/bin/python bench/worker_kafka.py [--events N] [--queries q5,q7] [--bootstrap HOST:PORT]
        [--checkpoint-interval 1s] [--recovery-events N] [--out BENCHMARKS.md]

1. **Broker and data** as in ``nexmark_kafka.py``: N bids as JSON in a one-partition topic.
2. **Throughput**: for each query and guarantee, the worker's runtime (``streamnb.worker.run.
   start``: one checkpointed task per partition, output ``to_kafka``) catches up from the
   earliest offset; the clock runs until ``records_in`` reaches N. Both guarantees write the
   state changelog; exactly-once also wraps output, changelog and offsets in one transaction
   per checkpoint. The committed output (read ``read_committed``) is checked against the polars
   reference (the windows closed by the final watermark) before a speed is quoted.
3. **Recovery**: ``streamnb run`` (a separate process, exactly-once) aggregates per
   (auction, bidder) over the topic — a state of about a million keys. When it has read half
   the topic, it is killed with SIGKILL and started again at once on the same state dir. Timed:
   kill → the new process owns the partition again (the group notices the dead member after
   its session timeout, 6 s here), the restore of the state from the changelog, and kill →
   processing again. The final committed output must hold every key's exact count once.

Writes the ``worker`` section of ``BENCHMARKS.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import benchutil
import polars as pl
from benchutil import CpuMeter, fmt_rate
from nexmark_kafka import (
    Broker,
    References,
    encode,
    epoch_ms,
    final_watermark,
    kafka_stream,
    load_topic,
    make_bids,
)
from queries import QUERIES, compare

from streamnb.worker.run import start

SECTION = "worker"
SESSION_TIMEOUT_MS = 6_000

RECOVERY_JOB = f"""
import os
import polars as pl
import streamnb as sn

stream = (
    sn.from_kafka(
        os.environ["BENCH_TOPIC"],
        bootstrap_servers=os.environ["BENCH_BOOTSTRAP"],
        start="earliest",
        timestamp="dateTime",
        config={{"session.timeout.ms": {SESSION_TIMEOUT_MS}}},
    )
    .group_by("auction", "bidder")
    .agg(pl.len().alias("bids"), pl.col("price").max().alias("top"))
)
"""


def create_topic(bootstrap: str, name: str) -> str:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(name, 1, 1)]).values():
        future.result(30)
    return name


def read_output(bootstrap: str, topic: str) -> list[bytes]:
    """Every committed record of ``topic`` (read until 3 s pass without one)."""
    from confluent_kafka import Consumer

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-check-{uuid.uuid4()}",
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    values: list[bytes] = []
    quiet_since = time.monotonic()
    try:
        while time.monotonic() - quiet_since < 3.0:
            batch = consumer.consume(10_000, timeout=0.5)
            good = [m.value() for m in batch if m.error() is None]
            if good:
                values.extend(good)
                quiet_since = time.monotonic()
    finally:
        consumer.close()
    return values


def throughput(
    args: argparse.Namespace, bootstrap: str, topic: str, refs: References, state_dir: Path
) -> list[dict[str, Any]]:
    rows = []
    for name in args.queries.split(","):
        q = QUERIES[name]
        want = refs.closed(name, final_watermark(refs.bids, 1))
        for guarantee in ("at_least_once", "exactly_once"):
            out = create_topic(bootstrap, f"bench-worker-out-{uuid.uuid4().hex[:8]}")
            stream = q.build(kafka_stream(bootstrap, topic, {})).to_kafka(
                out, bootstrap_servers=bootstrap
            )
            meter = CpuMeter()
            worker = start(
                stream,
                name=f"{name}-{guarantee}",
                guarantee=guarantee,
                group_id=f"bench-{uuid.uuid4().hex[:8]}",
                checkpoint_interval=args.checkpoint_interval,
                state_dir=state_dir,
            )
            while worker.status()["records_in"] < args.events:
                if worker.status()["state"] == "failed":
                    raise RuntimeError(f"{name} {guarantee}: {worker.exception!r}")
                time.sleep(0.02)
            measure = meter.stop()
            status = worker.status()
            worker.stop()
            values = read_output(bootstrap, out)
            got = pl.read_ndjson(b"\n".join(values), schema=want.schema) if values else None
            problem = "no output" if got is None else compare(got, want)
            rows.append(
                {
                    "query": name,
                    "guarantee": guarantee,
                    "rate": args.events / measure.wall,
                    "cpu_rate": args.events / measure.cpu,
                    "checkpoints": status["checkpoints"],
                    "commit_ms": status["commit_ms"],
                    "check": problem or "ok",
                    "others": measure.others,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _metrics(port: int) -> dict[str, float]:
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read()
    except OSError:
        return {}
    found = {}
    for line in text.decode().splitlines():
        if line and not line.startswith("#") and "{" in line:
            found[line.split("{", 1)[0]] = float(line.rsplit(" ", 1)[1])
    return found


def recovery(
    args: argparse.Namespace, bootstrap: str, topic: str, bids: pl.DataFrame
) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="streamnb-recovery-"))
    job = work / "job.py"
    job.write_text(RECOVERY_JOB)
    out = create_topic(bootstrap, f"bench-recovery-out-{uuid.uuid4().hex[:8]}")
    env = {**os.environ, "BENCH_TOPIC": topic, "BENCH_BOOTSTRAP": bootstrap}
    env["PYTHONPATH"] = str(benchutil.ROOT)
    group = f"bench-recovery-{uuid.uuid4().hex[:8]}"

    def launch(port: int, log: str) -> subprocess.Popen[bytes]:
        command = [sys.executable, "-m", "streamnb", "run", f"{job}:stream", "--sink",
                   f"kafka:{out}", "--guarantee", "exactly_once", "--group-id", group,
                   "--state-dir", str(work / "state"), "--checkpoint-interval",
                   args.checkpoint_interval, "--metrics-port", str(port)]  # fmt: skip
        return subprocess.Popen(
            command, env=env, stdout=open(work / log, "wb"), stderr=subprocess.STDOUT
        )

    n = bids.height
    port = _free_port()
    first = launch(port, "first.log")
    seen: dict[str, float] = {}
    checkpoints_at_half = None
    while True:  # half the topic read, and a checkpoint taken since
        if first.poll() is not None:
            raise RuntimeError((work / "first.log").read_text()[-3000:])
        time.sleep(0.05)
        seen = _metrics(port) or seen
        done = seen.get("streamnb_checkpoints_total", 0)
        if checkpoints_at_half is None and seen.get("streamnb_records_in_total", 0) >= n / 2:
            checkpoints_at_half = done
        if checkpoints_at_half is not None and done > checkpoints_at_half:
            break
    state_bytes = seen.get("streamnb_snapshot_bytes", 0.0)
    first.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    first.wait()
    port = _free_port()
    second = launch(port, "second.log")
    owned = resumed = None
    last: dict[str, float] = {}
    while time.monotonic() - killed < 120:
        now, m = time.monotonic(), _metrics(port)
        last = m or last
        if owned is None and m.get("streamnb_tasks", 0) > 0:
            owned = now - killed
        if resumed is None and m.get("streamnb_records_in_total", 0) > 0:
            resumed = now - killed
        if m.get("streamnb_lag_records", -1) == 0 and m.get("streamnb_records_in_total", 0) > 0:
            break
        time.sleep(0.02)
    second.send_signal(signal.SIGTERM)
    second.wait(60)
    values = read_output(bootstrap, out)
    got = pl.read_ndjson(b"\n".join(values)) if values else pl.DataFrame()
    final = got.group_by("auction", "bidder").agg(pl.col("bids").max(), pl.col("top").max())
    want = bids.group_by("auction", "bidder").agg(
        pl.len().alias("bids").cast(final.schema.get("bids", pl.UInt32)),
        pl.col("price").max().alias("top"),
    )
    problem = compare(final.select(want.columns), want) if final.height else "no output"
    return {
        "keys": want.height,
        "state_bytes": state_bytes,
        "owned_s": owned,
        "restore_ms": last.get("streamnb_restore_duration_seconds", float("nan")) * 1000,
        "resumed_s": resumed,
        "check": problem or "ok",
    }


def _seconds(value: float | None) -> str:
    """A duration, or "–" when it was not observed (nothing left to read after the kill)."""
    return "–" if value is None else f"{value:.2f} s"


def guarantee_rows(
    rows: list[dict[str, Any]],
    queries: list[str],
    unit: str,
    extra: Callable[[dict[str, Any]], str] | None = None,
) -> list[str]:
    """The table rows of a throughput run (``extra``: more cells of a row), then a line per
    query comparing exactly-once with at-least-once."""
    lines = []
    for r in rows:
        others = "?" if r["others"] is None else f"{r['others']:.2f}"
        more = f" {extra(r)} |" if extra is not None else ""
        lines.append(
            f"| {r['query']} | {r['guarantee']} | {fmt_rate(r['rate'])} | "
            f"{fmt_rate(r['cpu_rate'])} | {r['checkpoints']} | {r['commit_ms']:.1f} | "
            f"{r['check']} |{more} {others} |"
        )
    by = {(r["query"], r["guarantee"]): r for r in rows}
    lines.append("")
    for name in queries:
        a, e = by.get((name, "at_least_once")), by.get((name, "exactly_once"))
        if a and e:
            lines.append(
                f"- {name}: exactly-once runs at {e['rate'] / a['rate']:.0%} of at-least-once "
                f"({fmt_rate(e['rate'])} vs {fmt_rate(a['rate'])} {unit})."
            )
    return lines


def report(
    args: argparse.Namespace, rows: list[dict[str, Any]], rec: dict[str, Any] | None, broker: Broker
) -> str:
    info = benchutil.machine_info()
    lines = [
        f"`bench/worker_kafka.py --events {args.events} --checkpoint-interval "
        f"{args.checkpoint_interval}`; {benchutil.machine_line(info)}; {broker.version}.",
        "",
        "The worker's runtime (one checkpointed task per partition, state changelog, output "
        "`to_kafka`) catching up on a pre-loaded one-partition JSON topic. Both guarantees "
        "write the changelog; exactly-once also commits output, changelog and offsets in one "
        "transaction per checkpoint. Each output was read `read_committed` and compared with "
        "the polars reference before its speed is quoted.",
        "",
        "| query | guarantee | events/s | events/CPU-s | checkpoints | last commit ms | check "
        "| other load (cores) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += guarantee_rows(rows, args.queries.split(","), "events/s")
    if rec is not None:
        lines += [
            "",
            f"**Recovery after `kill -9`** (exactly-once, running count and max per (auction, "
            f"bidder): {rec['keys']:,} keys, last snapshot {rec['state_bytes'] / 2**20:.1f} MiB; "
            f"group session timeout {SESSION_TIMEOUT_MS / 1000:g} s):",
            "",
            "| kill → partition owned again | state restore | kill → processing again "
            "| final output check |",
            "|---|---|---|---|",
            f"| {_seconds(rec['owned_s'])} | {rec['restore_ms']:.0f} ms | "
            f"{_seconds(rec['resumed_s'])} | {rec['check']} |",
            "",
            "Most of the time is the group noticing the dead member (its session timeout); "
            "the restore itself reads one snapshot from the changelog.",
        ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--recovery-events", type=int, default=2_000_000)
    parser.add_argument("--queries", default="q5,q7")
    parser.add_argument("--checkpoint-interval", default="1s")
    parser.add_argument("--bootstrap")
    parser.add_argument("--no-recovery", action="store_true")
    parser.add_argument("--out", type=Path, default=benchutil.BENCHMARKS_MD)
    args = parser.parse_args()
    broker = Broker(args.bootstrap)
    broker.start()
    try:
        bids = make_bids(max(args.events, args.recovery_events))
        topic = f"bench-worker-bids-{bids.height}"
        load_topic(broker.bootstrap, topic, 1, encode(bids))
        head = bids.head(args.events)
        if args.events < bids.height:
            topic_t = f"bench-worker-bids-{args.events}"
            load_topic(broker.bootstrap, topic_t, 1, encode(head))
        else:
            topic_t = topic
        with tempfile.TemporaryDirectory() as state:
            rows = throughput(
                args, broker.bootstrap, topic_t, References(epoch_ms(head)), Path(state)
            )
        rec = None
        if not args.no_recovery:
            rec = recovery(args, broker.bootstrap, topic, bids.head(args.recovery_events))
            print(json.dumps(rec), flush=True)
    finally:
        broker.stop()
    text = report(args, rows, rec, broker)
    print(text)
    benchutil.write_section(SECTION, text, args.out)
    return (
        0 if all(r["check"] == "ok" for r in rows) and (rec is None or rec["check"] == "ok") else 1
    )


if __name__ == "__main__":
    sys.exit(main())
