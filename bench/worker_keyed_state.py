"""Keyed state at scale in the headless worker (issue 13): a running aggregate over millions of
keys from Kafka, its checkpoints and its restore after ``kill -9``.

Run from the repository root::

    .venv/bin/python bench/worker_keyed_state.py [--records 10000000] [--keys 5000000]
        [--partitions 1] [--guarantee exactly_once] [--long-interval 1h]
        [--long-guarantee auto] [--bootstrap HOST:PORT] [--quick] [--write] [--out BENCHMARKS.md]

1. **Broker and data**: a local broker (``scripts/kafka-local``, as in ``nexmark_kafka.py``)
   unless ``--bootstrap`` names one. N records ``{"k": int, "v": int}`` (``k`` uniform over
   ``0..K-1``, ``v`` over ``0..999``, seeded) are produced as JSON into an input topic of
   ``--partitions`` partitions before any worker starts; the produce is timed on its own.
2. **The job**, run by ``streamnb run`` (a separate process, ``--sink kafka:OUT``)::

       sn.from_kafka(topic, start="earliest", schema=...).group_by("k")
         .agg(pl.len().alias("n"), pl.col("v").sum().alias("total"))

3. **Throughput**, each run in a new consumer group: ``--checkpoint-interval 1s`` under
   ``--guarantee``, and ``--long-interval`` (1 h: no checkpoint while reading; the one
   checkpoint comes with the SIGTERM that stops the worker, timed apart). Exactly-once cannot
   hold a transaction open longer than the worker's ``transaction.timeout.ms`` (10 s: the
   broker aborts it and the worker fails, fenced), so with ``--long-guarantee auto`` the long
   run is at-least-once, and a third run, 1 s at-least-once, separates the cost of the
   checkpoints from that of the transactions. The clock runs from the worker owning its
   task(s) (``streamnb_tasks`` > 0 on its ``/metrics``, polled every 50 ms) until
   ``records_in`` reaches N. Each checkpoint is sampled from the metrics (``snapshot_bytes``,
   ``checkpoint_ms``, ``commit_ms``).
4. **Restore**: once the 1 s run (``--guarantee``) has committed everything (the group's
   committed input offsets at the end of the topic, and no checkpoint for 3 s), the worker is
   killed with SIGKILL and a new one started in the same group on the same ``--state-dir``
   (same instance id, so it fences the dead one's transaction). Timed: kill → its task(s)
   restored; the restore itself (the worker's ``restore_ms``: reading the snapshot from the
   changelog and rebuilding the keyed state); keys/s = keys held / restore seconds. Then a
   tail of 1 % more records (at most 100 000) is produced and the restored worker processes
   it, so the restored state is checked too.
5. **Correctness before figures**: each output topic is read ``read_committed``; the last row
   per key must equal polars' ``group_by`` of the input (the 1 s run: up to the kill; after the
   restore: of input + tail).
6. **Snapshot anatomy** (in this process, after the runs): the same state built by the engine's
   ``GroupByOperator`` (``KeyedState``), then timed: materialising the state frame, pickling it
   (``checkpoint.snapshot``), cutting it into changelog records, and restoring it.

Prints a markdown table and notes; ``--write`` puts them into the ``worker-keyed-state``
section of ``BENCHMARKS.md``.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import benchutil
import numpy as np
import polars as pl
from benchutil import fmt_rate
from nexmark_kafka import PRODUCER_CONFIG, Broker, encode, end_offsets, load_topic
from worker_kafka import _free_port, _metrics, create_topic

from streamnb.definitions.durations import to_ms
from streamnb.worker.changelog import TRANSACTION_TIMEOUT_MS

SECTION = "worker-keyed-state"
SEED = 13
SESSION_TIMEOUT_MS = 6_000
POLL_S = 0.05
STALL_S = 180.0
"""A run fails when ``records_in`` has not moved for this long."""
SETTLE_S = 3.0
"""After the last record: committed at the end, and no checkpoint for this long."""
OUT_SCHEMA = {"k": pl.Int64, "n": pl.Int64, "total": pl.Int64}

JOB = f"""
import os
import polars as pl
import streamnb as sn

stream = (
    sn.from_kafka(
        os.environ["BENCH_TOPIC"],
        bootstrap_servers=os.environ["BENCH_BOOTSTRAP"],
        start="earliest",
        schema={{"k": pl.Int64, "v": pl.Int64}},
        config={{"session.timeout.ms": {SESSION_TIMEOUT_MS}}},
    )
    .group_by("k")
    .agg(pl.len().alias("n"), pl.col("v").sum().alias("total"))
)
"""

RESTORED = re.compile(r"task (\S+)/(\d+) restored at offsets .* from (\S*) in (\d+) ms")


# -- data ------------------------------------------------------------------------------------
def make_records(n: int, keys: int, seed: int = SEED) -> pl.DataFrame:
    rng = np.random.default_rng([seed, keys, n])
    return pl.DataFrame(
        {
            "k": rng.integers(0, keys, n, dtype=np.int64),
            "v": rng.integers(0, 1000, n, dtype=np.int64),
        }
    )


def reference(df: pl.DataFrame) -> pl.DataFrame:
    """What the job's final row per key must be."""
    return (
        df.group_by("k")
        .agg(pl.len().alias("n"), pl.col("v").sum().alias("total"))
        .cast(pl.Int64)
        .sort("k")
    )


def produce_tail(bootstrap: str, topic: str, partitions: int, lines: list[bytes]) -> None:
    """Append ``lines`` to ``topic`` (round-robin over its partitions)."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, **PRODUCER_CONFIG})
    for i, value in enumerate(lines):
        producer.produce(topic, value, partition=i % partitions)
        if i % 10_000 == 0:
            producer.poll(0)
    if producer.flush(120):
        raise RuntimeError(f"tail not delivered to {topic}")


def read_output(bootstrap: str, topic: str) -> pl.DataFrame:
    """Every committed record of ``topic`` (k, n, total, and its partition and offset)."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-check-{uuid.uuid4()}",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    parts = len(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(parts)])
    values: list[bytes] = []
    partitions: list[int] = []
    offsets: list[int] = []
    at_end: set[int] = set()
    quiet_since = time.monotonic()
    try:
        while time.monotonic() - quiet_since < (1.0 if len(at_end) == parts else 10.0):
            batch = consumer.consume(100_000, timeout=0.5)
            for m in batch:
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        at_end.add(int(m.partition() or 0))
                        continue
                    raise RuntimeError(f"reading {topic}: {err.str()}")
                value = m.value()
                if value is None:  # a tombstone: a group_by never deletes
                    raise RuntimeError(f"{topic}: a tombstone at offset {m.offset()}")
                values.append(value)
                partitions.append(int(m.partition() or 0))
                offsets.append(int(m.offset() or 0))
                at_end.discard(int(m.partition() or 0))
            if batch:
                quiet_since = time.monotonic()
    finally:
        consumer.close()
    if not values:
        return pl.DataFrame(schema={**OUT_SCHEMA, "partition": pl.Int32, "offset": pl.Int64})
    rows = pl.read_ndjson(b"\n".join(values), schema=OUT_SCHEMA)
    return rows.with_columns(
        partition=pl.Series(partitions, dtype=pl.Int32), offset=pl.Series(offsets, dtype=pl.Int64)
    )


def check(out: pl.DataFrame, want: pl.DataFrame) -> str:
    """ "ok" when the last output row of every key equals ``want`` (and no key is extra)."""
    if out.is_empty():
        return "no output"
    got = out.unique("k", keep="last", maintain_order=True).select(want.columns).sort("k")
    if got.equals(want):
        return "ok"
    both = got.join(want, on="k", how="full", suffix="_want", coalesce=True)
    bad = both.filter(
        pl.col("n").ne_missing(pl.col("n_want")) | pl.col("total").ne_missing(pl.col("total_want"))
    )
    return (
        f"MISMATCH: {got.height:,} keys in the output, {want.height:,} expected, "
        f"{bad.height:,} differ, e.g. {bad.head(3).to_dicts()}"
    )


# -- a worker process ---------------------------------------------------------------------------
def proc_cpu(pid: int) -> float | None:
    """CPU seconds (user + system) of process ``pid`` so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _busy() -> float | None:
    return benchutil._machine_busy_seconds()


@dataclass
class Checkpoint:
    """One checkpoint as sampled from the metrics."""

    at: float  # seconds since the worker owned its tasks
    count: int
    snapshot_bytes: float
    checkpoint_ms: float
    commit_ms: float
    records_in: float


@dataclass
class Worker:
    """``streamnb run`` of the job, in its own process, with ``/metrics`` on a free port."""

    work: Path
    name: str
    args: list[str]
    env: dict[str, str]
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    launched: float = 0.0
    last: dict[str, float] = field(default_factory=dict)

    def launch(self) -> Worker:
        self.port = _free_port()
        command = [sys.executable, "-m", "streamnb", "run", f"{self.work / 'job.py'}:stream",
                   *self.args, "--metrics-port", str(self.port)]  # fmt: skip
        self.launched = time.monotonic()
        with open(self.log, "wb") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                command, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        return self

    @property
    def log(self) -> Path:
        return self.work / f"{self.name}.log"

    def metrics(self) -> dict[str, float]:
        found = _metrics(self.port)
        if found:
            self.last = found
        return found

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def cpu(self) -> float | None:
        return proc_cpu(self.proc.pid) if self.proc is not None else None

    def fail(self, what: str) -> RuntimeError:
        tail = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
        return RuntimeError(f"{self.name}: {what}\n--- log tail ---\n{tail}")

    def restores(self) -> list[tuple[str, int, str, float]]:
        """(topic, partition, snapshot pointer, ms) of each "restored" line of its log."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return [(t, int(p), ptr, float(ms)) for t, p, ptr, ms in RESTORED.findall(text)]

    def stopped_status(self) -> dict[str, Any]:
        """The status line the worker printed as it ended (JSON)."""
        for line in reversed(self.log.read_text(errors="replace").splitlines()):
            if line.startswith("{"):
                try:
                    return dict(json.loads(line))
                except ValueError:
                    return {}
        return {}

    def kill(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def terminate(self, timeout: float = 600) -> float:
        """SIGTERM (the worker checkpoints and stops); seconds until it exited."""
        assert self.proc is not None
        t0 = time.monotonic()
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise self.fail(f"did not stop within {timeout:g} s of SIGTERM") from None
        return time.monotonic() - t0


@dataclass
class Run:
    """One throughput run."""

    label: str
    interval: str
    guarantee: str
    records: int
    owned_s: float = float("nan")  # launch -> tasks owned
    wall: float = float("nan")  # tasks owned -> records_in == N
    cpu: float | None = None  # the worker's CPU seconds over ``wall``
    broker_cpu: float | None = None
    others: float | None = None  # cores used by other processes meanwhile
    checkpoints: list[Checkpoint] = field(default_factory=list)
    checkpoints_in_run: int = 0  # the worker's count at records_in == N
    settle_s: float = float("nan")  # records_in == N -> committed at the end
    stop_s: float = float("nan")  # SIGTERM -> exit (a final checkpoint)
    stopped: dict[str, Any] = field(default_factory=dict)  # the status it printed at its end
    final: dict[str, float] = field(default_factory=dict)  # metrics after the last checkpoint
    output_rows: int = 0
    check: str = "not checked"
    failure: str = ""

    @property
    def ok(self) -> bool:
        return self.check == "ok"

    @property
    def rate(self) -> float:
        return self.records / self.wall

    @property
    def cpu_rate(self) -> float | None:
        return self.records / self.cpu if self.cpu else None

    def in_run(self) -> list[Checkpoint]:
        """The checkpoints taken while records were still being read."""
        return [c for c in self.checkpoints if c.at <= self.wall]


def run_to_end(worker: Worker, run: Run, broker: Broker) -> None:
    """Poll ``worker`` until it has read every record; fill ``run``'s timings."""
    owned_at = None
    cpu0 = bcpu0 = busy0 = None
    seen, last_move = 0.0, time.monotonic()
    last_count = 0
    while True:
        if not worker.alive():
            raise worker.fail("exited before reading every record")
        m = worker.metrics()
        now = time.monotonic()
        if owned_at is None and m.get("streamnb_tasks", 0) > 0:
            owned_at = now
            cpu0, bcpu0, busy0 = worker.cpu(), broker.cpu_seconds(), _busy()
            run.owned_s = now - worker.launched
        records = m.get("streamnb_records_in_total", seen)
        if records != seen:
            seen, last_move = records, now
        elif now - last_move > STALL_S:
            raise worker.fail(f"no progress for {STALL_S:g} s at {seen:,.0f} records")
        count = int(m.get("streamnb_checkpoints_total", last_count))
        if owned_at is not None and count > last_count:
            run.checkpoints.append(
                Checkpoint(
                    now - owned_at,
                    count,
                    m.get("streamnb_snapshot_bytes", 0.0),
                    m.get("streamnb_checkpoint_duration_seconds", 0.0) * 1000,
                    m.get("streamnb_commit_duration_seconds", 0.0) * 1000,
                    records,
                )
            )
        last_count = max(last_count, count)
        if owned_at is not None and records >= run.records:
            run.wall = now - owned_at
            cpu1, bcpu1, busy1 = worker.cpu(), broker.cpu_seconds(), _busy()
            if cpu0 is not None and cpu1 is not None:
                run.cpu = cpu1 - cpu0
            if bcpu0 is not None and bcpu1 is not None:
                run.broker_cpu = bcpu1 - bcpu0
            if busy0 is not None and busy1 is not None and run.cpu is not None:
                others = busy1 - busy0 - run.cpu - (run.broker_cpu or 0.0)
                run.others = max(0.0, others / run.wall)
            run.checkpoints_in_run = count
            return
        time.sleep(POLL_S)


def committed(bootstrap: str, group: str, topic: str, partitions: int) -> list[int]:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False}
    )
    try:
        found = consumer.committed(
            [TopicPartition(topic, p) for p in range(partitions)], timeout=30
        )
        return [tp.offset for tp in found]
    finally:
        consumer.close()


def settle(
    worker: Worker, run: Run, *, bootstrap: str, group: str, topic: str, parts: int
) -> float:
    """Wait (untimed) until the group's committed input offsets are at the end of ``topic`` and
    no checkpoint has come for :data:`SETTLE_S`; the seconds it took. Later checkpoints are
    sampled into ``run``."""
    t0 = time.monotonic()
    ends = end_offsets(bootstrap, topic, parts)
    count = worker.last.get("streamnb_checkpoints_total", 0)
    changed = time.monotonic()
    at_end = False
    while time.monotonic() - t0 < 900:
        if not worker.alive():
            raise worker.fail("exited before committing every record")
        time.sleep(0.2)
        m = worker.metrics()
        now = m.get("streamnb_checkpoints_total", count)
        if now != count:
            count, changed = now, time.monotonic()
            run.checkpoints.append(
                Checkpoint(
                    changed - worker.launched - run.owned_s,
                    int(now),
                    m.get("streamnb_snapshot_bytes", 0.0),
                    m.get("streamnb_checkpoint_duration_seconds", 0.0) * 1000,
                    m.get("streamnb_commit_duration_seconds", 0.0) * 1000,
                    m.get("streamnb_records_in_total", 0.0),
                )
            )
            at_end = False
        if not at_end:
            at_end = committed(bootstrap, group, topic, parts) == ends
        if at_end and time.monotonic() - changed >= SETTLE_S:
            return changed - t0
    raise worker.fail("the input was not committed to its end within 900 s")


# -- the runs -----------------------------------------------------------------------------------
@dataclass
class Restore:
    keys: int
    snapshot_bytes: float
    pointer: str = ""
    restore_ms: float = float("nan")  # the worker's own figure (sum over its restored tasks)
    kill_to_restored_s: float = float("nan")
    tail: int = 0
    tail_s: float = float("nan")  # tail produced -> committed by the restored worker
    check: str = "not checked"

    @property
    def keys_per_s(self) -> float:
        return self.keys / (self.restore_ms / 1000)


class Bench:
    def __init__(self, args: argparse.Namespace, broker: Broker, topic: str) -> None:
        self.args, self.broker, self.topic = args, broker, topic
        self.bootstrap = broker.bootstrap
        self.work = Path(tempfile.mkdtemp(prefix="streamnb-wks-"))
        (self.work / "job.py").write_text(JOB)
        self.env = {**os.environ, "BENCH_TOPIC": topic, "BENCH_BOOTSTRAP": self.bootstrap}
        self.env["PYTHONPATH"] = os.pathsep.join(
            [str(benchutil.ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
        )

    def worker(
        self, name: str, *, out: str, group: str, interval: str, state: Path, guarantee: str
    ) -> Worker:
        args = ["--sink", f"kafka:{out}", "--guarantee", guarantee,
                "--group-id", group, "--state-dir", str(state),
                "--checkpoint-interval", interval]  # fmt: skip
        return Worker(self.work, name, args, self.env)

    def run(
        self,
        label: str,
        interval: str,
        guarantee: str,
        want: pl.DataFrame,
        df: pl.DataFrame,
        *,
        restore: bool = False,
    ) -> tuple[Run, Restore | None]:
        """One throughput run in a new group; with ``restore``, the kill -9 and restore after
        it (else a SIGTERM, whose final checkpoint is timed). A failed run is reported, not
        raised."""
        a = self.args
        run = Run(label, interval, guarantee, a.records)
        tag = uuid.uuid4().hex[:8]
        out = create_topic(self.bootstrap, f"bench-wks-out-{label}-{tag}")
        group = f"bench-wks-{label}-{tag}"
        state = self.work / f"state-{label}"
        first = self.worker(label, out=out, group=group, interval=interval, state=state,
                            guarantee=guarantee).launch()  # fmt: skip
        second: Worker | None = None
        rest: Restore | None = None
        cut: int | None = None
        tail: pl.DataFrame | None = None
        try:
            run_to_end(first, run, self.broker)
            print(f"  {label}: {fmt_rate(run.rate)} records/s, {run.checkpoints_in_run} "
                  "checkpoints while reading", flush=True)  # fmt: skip
            if not restore:
                time.sleep(1.0)  # the last batch processed
                run.stop_s = first.terminate()
                run.stopped = first.stopped_status()
            else:
                run.settle_s = settle(
                    first,
                    run,
                    bootstrap=self.bootstrap,
                    group=group,
                    topic=self.topic,
                    parts=a.partitions,
                )
                run.final = dict(first.last)
                cut = end_offsets(self.bootstrap, out, 1)[0]  # output written before the kill
                rest = Restore(want.height, run.final.get("streamnb_snapshot_bytes", 0.0))
                first.kill()
                killed = time.monotonic()
                second = self.worker(f"{label}-restored", out=out, group=group, interval=interval,
                                     state=state, guarantee=guarantee).launch()  # fmt: skip
                while not second.restores():
                    if not second.alive():
                        raise second.fail("exited before restoring")
                    if time.monotonic() - killed > 600:
                        raise second.fail("no restore within 600 s")
                    time.sleep(0.02)
                rest.kill_to_restored_s = time.monotonic() - killed
                time.sleep(1.0)  # any other task of the worker restored meanwhile
                restored = second.restores()
                rest.restore_ms = sum(ms for *_, ms in restored)
                rest.pointer = ", ".join(ptr for _, _, ptr, _ in restored)
                print(f"  restore: {rest.restore_ms:,.0f} ms ({fmt_rate(rest.keys_per_s)} "
                      f"keys/s), kill → restored {rest.kill_to_restored_s:.1f} s",
                      flush=True)  # fmt: skip
                # the restored state, checked: a tail of records on top of it
                rest.tail = min(100_000, max(1_000, a.records // 100))
                tail = make_records(rest.tail, a.keys, seed=SEED + 1)
                produce_tail(self.bootstrap, self.topic, a.partitions, encode(tail))
                rest.tail_s = settle(
                    second,
                    Run("tail", interval, guarantee, 0),
                    bootstrap=self.bootstrap,
                    group=group,
                    topic=self.topic,
                    parts=a.partitions,
                )
                second.terminate()
        except RuntimeError as exc:
            run.check = "FAILED: " + str(exc).split("\n", 1)[0]
            run.failure = str(exc)
            print(f"  {label}: {exc}", flush=True)
            if rest is not None:
                rest.check = run.check
            return run, rest
        finally:
            first.kill()
            if second is not None:
                second.kill()
        got = read_output(self.bootstrap, out)
        before = got.filter(pl.col("offset") < cut) if cut is not None else got
        run.output_rows = before.height
        run.check = check(before, want)
        print(f"  {label}: {before.height:,} output rows; check: {run.check}", flush=True)
        if rest is not None and tail is not None:
            rest.check = check(got, reference(pl.concat([df, tail])))
            print(f"  after the restore and a tail of {rest.tail:,} records: {rest.check}")
        return run, rest

    def close(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)

    def changelog_on_disk(self) -> dict[str, int]:
        """Bytes of each changelog topic in the broker's data dir (a local broker only)."""
        if self.broker.dir is None:
            return {}
        sizes: dict[str, int] = {}
        for part in (self.broker.dir / "data").glob("bench-wks-*-changelog*-*"):
            topic = part.name.rsplit("-", 1)[0]
            size = sum(f.stat().st_size for f in part.glob("*.log"))
            sizes[topic] = sizes.get(topic, 0) + size
        return sizes


# -- snapshot anatomy (in process) ---------------------------------------------------------------
def anatomy(df: pl.DataFrame) -> dict[str, Any]:
    """The checkpoint's and the restore's CPU work on the same state, in this process."""
    import streamnb as sn
    from streamnb.engine import checkpoint
    from streamnb.engine.core import Context
    from streamnb.engine.executor import Pipeline
    from streamnb.engine.operators import GroupByOperator

    def pipeline() -> tuple[Pipeline, GroupByOperator]:
        stream = (
            sn.from_records(df.clear())
            .group_by("k")
            .agg(pl.len().alias("n"), pl.col("v").sum().alias("total"))
        )
        p = Pipeline(stream.plan.root, Context(), lambda _delta: None)
        (op,) = [s.op for s in p.steps if isinstance(s.op, GroupByOperator)]
        return p, op

    p, op = pipeline()
    (source,) = p.sources
    p.push(source, df)
    op.state = op.state  # into a KeyedState, as the worker holds it after many batches
    kinds = "KeyedState" if op.store is not None else "frame"
    t = time.perf_counter()
    frame = op.state
    frame_s = time.perf_counter() - t
    assert frame is not None
    t = time.perf_counter()
    records = list(checkpoint.records(p))
    snapshot_s = time.perf_counter() - t
    p2, op2 = pipeline()
    t = time.perf_counter()
    checkpoint.restore(p2, [records])
    restore_s = time.perf_counter() - t
    assert op2.state is not None and op2.state.height == frame.height
    result: dict[str, Any] = {
        "keys": frame.height,
        "held_as": kinds,
        "frame_bytes": frame.estimated_size(),
        "frame_s": frame_s,
        "snapshot_bytes": sum(map(len, records)),
        "snapshot_s": snapshot_s,
        "chunks": len(records),
        "restore_s": restore_s,
    }
    try:  # librdkafka compresses the changelog records with lz4 in its own threads
        import lz4.frame

        t = time.perf_counter()
        packed = sum(len(lz4.frame.compress(r)) for r in records)
        result["lz4_s"] = time.perf_counter() - t
        result["lz4_bytes"] = packed
    except ImportError:
        pass
    return result


# -- report -------------------------------------------------------------------------------------
def _ms(x: float | None) -> str:
    return "–" if x is None or math.isnan(x) else f"{x:,.0f}"


def _mib(x: float | None) -> str:
    return "–" if x is None or math.isnan(x) else f"{x / 2**20:,.1f}"


def _mean(xs: list[float]) -> float:
    return float(np.mean(xs)) if xs else float("nan")


def run_row(r: Run) -> str:
    if math.isnan(r.wall):  # failed before reading everything
        dashes = " – |" * 8
        return f"| {r.interval} | {r.guarantee} |{dashes} {r.check} | – | – |"
    cps = r.in_run()
    cp_ms = [c.checkpoint_ms for c in cps]
    in_cp = sum(cp_ms) / 1000
    per_cp = (
        f"{_mib(_mean([c.snapshot_bytes for c in cps]))}; "
        f"{_mib(max(c.snapshot_bytes for c in cps))}"
        if cps
        else "–"
    )
    cp = f"{_ms(_mean(cp_ms))}; {_ms(max(cp_ms))}" if cp_ms else "–"
    commit = _ms(_mean([c.commit_ms for c in cps])) if cps else "–"
    if r.stopped:
        stop = (
            f"{_mib(r.stopped.get('snapshot_bytes'))} MiB, {_ms(r.stopped.get('checkpoint_ms'))}"
            f" ms (exit {r.stop_s:.1f} s)"
        )
    else:
        stop = "– (killed)"
    cpu = "?" if r.cpu_rate is None else fmt_rate(r.cpu_rate)
    broker = "?" if r.broker_cpu is None else f"{r.broker_cpu:.1f}"
    others = "?" if r.others is None else f"{r.others:.2f}"
    return (
        f"| {r.interval} | {r.guarantee} | {fmt_rate(r.rate)} | {cpu} | {r.checkpoints_in_run} "
        f"| {in_cp:.1f} s ({in_cp / r.wall:.0%}) | {per_cp} | {cp} | {commit} | {stop} "
        f"| {r.check} | {broker} | {others} |"
    )


def _ratio(a: Run, b: Run) -> str:
    if math.isnan(a.wall) or math.isnan(b.wall):
        return "– (a run failed)"
    return (
        f"**{a.rate / b.rate:.0%}** ({fmt_rate(a.rate)} vs {fmt_rate(b.rate)} records/s, "
        f"{a.wall:.1f} s vs {b.wall:.1f} s of reading)"
    )


def report(
    *,
    args: argparse.Namespace,
    broker: Broker,
    load: Any,
    runs: dict[str, Run],
    rest: Restore | None,
    disk: dict[str, int],
    anat: dict[str, Any],
    keys_held: int,
) -> str:
    info = benchutil.machine_info()
    main_run, long = runs["1s"], runs["long"]
    command = " ".join(["bench/worker_keyed_state.py", *sys.argv[1:]])
    lines = [
        f"`{command}`; {benchutil.machine_line(info)}; {broker.version}.",
        "",
        "`streamnb run` (its own process, `--sink kafka:OUT`) of "
        '`from_kafka(...).group_by("k").agg(pl.len(), pl.col("v").sum())` over '
        f"{args.records:,} JSON records `{{k, v}}`, `k` uniform over {args.keys:,} "
        f"({keys_held:,} distinct keys held at the end), pre-loaded into a "
        f"{args.partitions}-partition topic ({load.seconds:.1f} s to produce, "
        f"{fmt_rate(load.rate)} records/s; untimed for the worker). Each run in a new consumer "
        "group. Clock: the worker owns its task → `records_in` = N. Each output was read "
        "`read_committed` and its last row per key compared with polars' `group_by` before "
        "any figure is quoted.",
        "",
        "| checkpoint interval | guarantee | records/s | records/worker-CPU-s "
        "| checkpoints while reading | time in checkpoints | changelog MiB / checkpoint "
        "(mean; last) | checkpoint ms (mean; max) | of which commit ms (mean) "
        "| checkpoint at the stop | check | broker CPU-s | other load (cores) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        *(run_row(r) for r in runs.values()),
        "",
        f"- 1 s ({main_run.guarantee}) ÷ {long.interval} ({long.guarantee}): "
        f"{_ratio(main_run, long)}.",
    ]
    alo = runs.get("1s-alo")
    if alo is not None:
        lines += [
            f"- 1 s ÷ {long.interval}, both at_least_once (the checkpoints alone): "
            f"{_ratio(alo, long)}; exactly_once ÷ at_least_once at 1 s (the transactions): "
            f"{_ratio(main_run, alo)}.",
        ]
    if long.guarantee != main_run.guarantee:
        lines.append(
            f"- The {long.interval} run is at_least_once: exactly-once keeps one transaction open "
            "per checkpoint interval, and the worker's producer has `transaction.timeout.ms` = "
            f"{TRANSACTION_TIMEOUT_MS / 1000:g} s, so the broker aborts a longer one and the "
            "worker fails, fenced (`--long-guarantee exactly_once` shows it on any run longer "
            "than that)."
        )
    lines += [
        "- *time in checkpoints*: the sum of the sampled checkpoints' `checkpoint_ms` while "
        "reading (the read loop stops for them). A checkpoint writes a base (the whole state) "
        "or a delta (the keys changed since the one before): *last* is the last one's. "
        "*commit*: the end of the "
        "checkpoint (exactly-once: offsets into the transaction and its commit, which waits for "
        "every output and changelog record to reach the broker; at-least-once: a flush, then "
        "the offsets); the rest of `checkpoint_ms` is the snapshot (state frame, pickle, "
        "produce calls). *checkpoint at the stop*: the final checkpoint of a SIGTERM (the only "
        "one of the long run) and the seconds from SIGTERM to the process's exit.",
    ]
    missed = [
        f"{r.label}: {r.checkpoints_in_run - len(r.in_run())}"
        for r in runs.values()
        if r.in_run() and r.checkpoints_in_run > len(r.in_run())
    ]
    if missed:
        lines.append(f"- Checkpoints not seen by the 50 ms metrics poll: {', '.join(missed)}.")
    if disk:
        sizes = ", ".join(f"{_mib(b)} MiB" for b in sorted(disk.values()))
        lines.append(
            "- Changelog topics on the broker's disk at the end (lz4-compressed; compaction may "
            f"have run): {sizes}."
        )
    if rest is not None:
        lines += [
            "",
            f"**Restore after `kill -9`** ({main_run.guarantee}, 1 s run, once it had committed "
            "everything; a new worker in the same group on the same `--state-dir`; session "
            f"timeout {SESSION_TIMEOUT_MS / 1000:g} s):",
            "",
            "| keys held | snapshot | restore (worker's `restore_ms`) | keys/s | kill → restored "
            "| restored state check |",
            "|---|---|---|---|---|---|",
            f"| {rest.keys:,} | {_mib(rest.snapshot_bytes)} MiB (`{rest.pointer}`) "
            f"| {_ms(rest.restore_ms)} ms | "
            f"{'–' if math.isnan(rest.restore_ms) else fmt_rate(rest.keys_per_s)} "
            f"| {rest.kill_to_restored_s:.1f} s | {rest.check} |",
            "",
            "- *restore*: reading the snapshot's records back from the changelog, unpickling "
            "them and rebuilding the keyed state; *kill → restored* adds the new process's start "
            "(Python, polars, imports) and the group's rebalance. *restored state check*: "
            f"{rest.tail:,} more records produced after the restore and processed by the new "
            f"worker ({rest.tail_s:.1f} s to commit them); its final output per key equals "
            "polars on input + tail.",
        ]
    if anat:
        lz4 = (
            f", lz4 of the records {anat['lz4_s']:.2f} s (→ {_mib(anat['lz4_bytes'])} MiB)"
            if "lz4_s" in anat
            else ""
        )
        lines += [
            "",
            f"**Snapshot anatomy** (in the benchmark's process after the runs, the same "
            f"{anat['keys']:,}-key state held as a {anat['held_as']}, one pass each): the state "
            f"frame materialised in {anat['frame_s']:.2f} s ({_mib(anat['frame_bytes'])} MiB); "
            f"`checkpoint.records` (the state in slices, pickled and cut into "
            f"{anat['chunks']} changelog records) {anat['snapshot_s']:.2f} s → "
            f"{_mib(anat['snapshot_bytes'])} MiB{lz4}; `checkpoint.restore` (unpickle + rebuild "
            f"the keyed state) {anat['restore_s']:.2f} s.",
        ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--records", type=int, default=10_000_000)
    parser.add_argument("--keys", type=int, default=5_000_000)
    parser.add_argument("--partitions", type=int, default=1)
    parser.add_argument(
        "--guarantee", default="exactly_once", choices=["exactly_once", "at_least_once"]
    )
    parser.add_argument(
        "--long-interval", default="1h", help="the checkpoint interval of the no-checkpoint run"
    )
    parser.add_argument(
        "--long-guarantee",
        default="auto",
        choices=["auto", "exactly_once", "at_least_once"],
        help="of the long-interval run (auto: at_least_once when exactly_once cannot hold a "
        "transaction open that long)",
    )
    parser.add_argument("--bootstrap", help="a running broker (default: start a local one)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 300k records, 100k keys")
    parser.add_argument("--no-anatomy", action="store_true", help="skip the snapshot anatomy")
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    parser.add_argument("--out", type=Path, default=benchutil.BENCHMARKS_MD)
    args = parser.parse_args()
    if args.quick:
        args.records, args.keys = 300_000, 100_000
    long_guarantee = args.long_guarantee
    if long_guarantee == "auto":
        too_long = to_ms(args.long_interval, name="--long-interval") >= TRANSACTION_TIMEOUT_MS
        long_guarantee = "at_least_once" if too_long else args.guarantee
    # stopped by a signal, end as on Ctrl-C: the workers killed, the broker stopped (an
    # asynchronous job of a non-interactive shell starts with SIGINT ignored)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    print(benchutil.machine_line(benchutil.machine_info()), flush=True)

    df = make_records(args.records, args.keys)
    want = reference(df)
    print(f"data: {args.records:,} records over {args.keys:,} keys ({want.height:,} distinct)")
    broker = Broker(args.bootstrap)
    broker.start()
    try:
        print(f"broker: {broker.bootstrap} ({broker.version})", flush=True)
        topic = f"bench-wks-in-{args.records}-{args.keys}-{args.partitions}"
        lines = encode(df)
        load = load_topic(broker.bootstrap, topic, args.partitions, lines)
        del lines
        gc.collect()
        print(f"produced {load.records:,} records ({load.bytes / 2**20:,.0f} MiB) in "
              f"{load.seconds:.1f} s ({fmt_rate(load.rate)}/s)", flush=True)  # fmt: skip
        bench = Bench(args, broker, topic)
        try:
            runs: dict[str, Run] = {}
            runs["long"], _ = bench.run("long", args.long_interval, long_guarantee, want, df)
            if long_guarantee != args.guarantee:  # the same guarantee at 1 s, for the ratio
                runs["1s-alo"], _ = bench.run("1s-alo", "1s", long_guarantee, want, df)
            runs["1s"], rest = bench.run("1s", "1s", args.guarantee, want, df, restore=True)
            disk = bench.changelog_on_disk()
        finally:
            bench.close()
    finally:
        broker.stop()
    anat = {} if args.no_anatomy else anatomy(df)
    if anat:
        print(f"anatomy: {json.dumps(anat)}", flush=True)
    text = report(
        args=args,
        broker=broker,
        load=load,
        runs=runs,
        rest=rest,
        disk=disk,
        anat=anat,
        keys_held=want.height,
    )
    print()
    print(text)
    ok = all(r.ok for r in runs.values()) and rest is not None and rest.check == "ok"
    if args.write:
        if not ok:
            print("not writing BENCHMARKS.md: a run failed or a check did not pass")
        else:
            benchutil.write_section(SECTION, text, args.out)
            print(f"wrote the '{SECTION}' section of {args.out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
