"""Nexmark side by side: streamnb against its peers, on the same Kafka data, one engine at a time.

Run from the repository root (``make peers`` does the same after setting up)::

    .venv/bin/python bench/peers.py [--events N] [--engines a,b] [--queries q0,q5]
        [--modes catchup,latency] [--rates 10%,50%,80%] [--bootstrap HOST:PORT] [--out FILE]

1. **Broker**: a throw-away ``scripts/kafka-local`` broker in a temporary directory, unless
   ``--bootstrap`` names a running one.
2. **Data**: ``generate()`` of ``streamnb.io.sources.nexmark`` (``dateTime`` as epoch-ms ints);
   the first N bids go to the ``bids`` topic, the persons and auctions of the same events to
   ``persons`` / ``auctions`` (q8), one JSON object per record, 1 partition, loaded once.
3. **Engines** (the registry ``ENGINES``): each is set up on first use (a dedicated virtual
   environment under ``~/.cache/streamnb/peers/<name>`` for the Python peers, the JVM peers'
   own ``setup``), then run as a subprocess in its own process group with the arguments of
   the peer contract (``bench/peers/README.md``), one query at a time.
4. **Catch-up** (throughput): the harness reads the output topic (read_committed), stops the
   clock when the expected number of rows has arrived, waits a little for extra rows, stops
   the peer (SIGTERM to its group, SIGKILL after 15 s) and checks the rows against the polars
   reference of ``bench/queries.py`` (q8's is here). Events/s, events per CPU-second of the
   peer's process tree (``/proc``, polled) and its peak RSS are quoted only next to "ok".
5. **Latency** (open-loop, the latency curve): bids are produced at fixed rates (default
   10 %, 25 %, 50 %, 80 % of each engine's own catch-up rate, and 10 000 and 50 000/s for
   every engine) with ``dateTime`` = wall-clock ms; latency = arrival − ``dateTime``
   (stateless, q1) or arrival − the stamp of the first record at or after ``window_end`` +
   4 s (windows, w1: when the watermark could pass the window): p50 / p95 / p99, and
   p99 divided by that of the plain consume -> produce loop (``plain``, tuned like streamnb:
   the floor) at the same rate; the plain loop on q0 is the harness's own floor.

Finally a table per query, the ``peers`` section of ``BENCHMARKS.md`` and two PNG plots under
``bench/peers/plots/`` (matplotlib, in its own virtual environment).
"""

# ruff: noqa: PLR0917, SIM105, RUF005, PLW2901
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import benchutil
import polars as pl
from benchutil import fmt_rate
from queries import QUERIES

BENCH = Path(__file__).resolve().parent
PEERS = BENCH / "peers"
PYPEERS = PEERS / "python"
PLOTS = PEERS / "plots"
SECTION = "peers"
CACHE = Path(os.environ.get("STREAMNB_CACHE", Path.home() / ".cache" / "streamnb")) / "peers"
ALL_QUERIES = ["q0", "q1", "q2", "q5", "q7", "q8", "q11", "w1"]
WINDOWED = {"q5", "q7", "q8", "q11", "w1"}
WATERMARK_MS = 4_000
HOP_EVERY_MS = 2_000
GAP_MS = 10_000
TUMBLE_MS = 10_000
W1_MS = 1_000
WINDOW_MS = {"q5": 10_000, "q7": TUMBLE_MS, "q8": TUMBLE_MS, "q11": GAP_MS, "w1": W1_MS}
"""How long a window (or a session's gap) lasts, per windowed query."""
FLOOR = "plain"
"""The latency floor: the plain consume -> produce loop, against whose p99 every engine's is
divided; with q0 (bytes handed on, no decoding) it is the floor of the harness itself."""
LATENCY_RATIO_TARGET = 1.5  # BENCH.md: streamnb's p99 ≤ 1.5× the plain loop's, up to 50 %
EOS_P99_TARGET_MS = 250.0  # BENCH.md: exactly-once p99 ≤ 250 ms
UNSUPPORTED_EXIT = 3
TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

TITLES = {q: QUERIES[q].title for q in QUERIES} | {"q8": "new users, window join 10 s"}

# BENCH.md targets: streamnb's ratio to each peer (what "ahead of every peer" means).
TARGETS: dict[str, str] = {
    "quix": "≥ 10× events/s on windowed queries",
    "bytewax": "≥ 10× events/s on windowed queries",
    "faust": "≥ 20× events/s",
    "kafka-streams": "≥ 1.5× events per CPU-second windowed, ≥ 1× stateless",
    "spark": "≥ 2× events/s, ≥ 10× lower p50 latency",
    "kafka-streams-lowlat": "(Kafka Streams with its latency settings: for the latency curve; "
    "the throughput targets are against `kafka-streams`)",
    "baseline": "(no target: the cost of consume + decode + dicts)",
    "plain": f"latency: streamnb's p99 ≤ {LATENCY_RATIO_TARGET:g}× the plain loop's p99 at every "
    "rate up to 50 % of streamnb's capacity (stateless and window emit)",
    "streamnb-eos": f"latency: p99 ≤ {EOS_P99_TARGET_MS:.0f} ms (exactly-once)",
}


def target_ratio(engine: str, query: str) -> tuple[str, float] | None:
    """(metric, ratio) streamnb must reach against ``engine`` on ``query``; None if no target."""
    windowed = query in WINDOWED
    if engine in ("quix", "bytewax"):
        return ("rate", 10.0) if windowed else None
    if engine == "faust":
        return ("rate", 20.0)
    if engine == "kafka-streams":
        return ("cpu", 1.5 if windowed else 1.0)
    if engine == "spark":
        return ("rate", 2.0)
    return None


# -- engines -----------------------------------------------------------------------------------
def _venv_python(name: str) -> Path:
    return CACHE / name / "bin" / "python"


def _setup_venv(name: str, requirements: Sequence[str]) -> None:
    """A dedicated virtual environment with pinned requirements (peers' dependencies clash)."""
    venv = CACHE / name
    marker = venv / ".installed"
    want = "\n".join(requirements)
    if marker.exists() and marker.read_text() == want:
        return
    print(f"setup {name}: virtual environment {venv} ({', '.join(requirements)})", flush=True)
    shutil.rmtree(venv, ignore_errors=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, *requirements], check=True)
    marker.write_text(want)


@dataclass
class Engine:
    """How to set up, start and describe one engine."""

    name: str
    label: str
    setup: Callable[[], None]
    command: Callable[[], list[str]]
    version: Callable[[], str]
    settings: str
    clock: str
    """Where the clock starts: "first record" (the peer prints SN_FIRST_RECORD) or "process"."""
    lag_ms: dict[str, int] = field(default_factory=dict)
    """Per query: how much later than the suite's rule the engine closes a window (its
    documented semantics), so the expected rows are those with window_end + lag ≤ watermark."""
    lag_note: dict[str, str] = field(default_factory=dict)


def _python_engine(
    name: str,
    label: str,
    script: str,
    requirements: Sequence[str],
    settings: str,
    lag_ms: dict[str, int] | None = None,
    lag_note: dict[str, str] | None = None,
) -> Engine:
    def version() -> str:
        return ", ".join(r.replace("==", " ") for r in requirements)

    return Engine(
        name,
        label,
        lambda: _setup_venv(name, requirements),
        lambda: [str(_venv_python(name)), str(PYPEERS / script)],
        version,
        settings,
        "first record",
        lag_ms or {},
        lag_note or {},
    )


def _repo_version(*modules: str) -> Callable[[], str]:
    def version() -> str:
        out = []
        for m in modules:
            mod = __import__(m)
            v = mod.version()[0] if m == "confluent_kafka" else mod.__version__
            out.append(f"{m.replace('_', '-')} {v}")
        return ", ".join(out)

    return version


def _streamnb_version() -> str:
    info = benchutil.machine_info()
    return f"streamnb {info['streamnb']}, polars {info['polars']}"


def _jvm_engine(
    name: str, label: str, directory: str, settings: str, extra: tuple[str, ...] = ()
) -> Engine:
    d = PEERS / directory

    def setup() -> None:
        if not (d / "run").exists():
            raise RuntimeError(f"{d / 'run'} is missing")
        if (d / "setup").exists():
            subprocess.run([str(d / "setup")], check=True)

    def version() -> str:
        for f in ("VERSION", "version.txt"):
            if (d / f).exists():
                return (d / f).read_text().strip().splitlines()[0]
        return f"see bench/peers/{directory}/"

    return Engine(
        name, label, setup, lambda: [str(d / "run"), *extra], version, settings, "first record"
    )


def _settings_text(which: str) -> str:
    """streamnb's Kafka settings as the plain loop reads them (from this working tree)."""
    import importlib

    module, name = {
        "consumer": ("streamnb.io.sources.kafka.reader", "CONSUMER_SETTINGS"),
        "producer": ("streamnb.io.sinks.kafka", "PRODUCER_SETTINGS"),
        "max_batch": ("streamnb.engine.executor", "DEFAULT_MAX_BATCH"),
    }[which]
    try:
        value = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:  # a tree without the named settings
        return f"not found: {e}"
    if isinstance(value, int):
        return f"{value:,}"
    return ", ".join(f"`{k}={v}`" for k, v in value.items())


QUIX_REQ = ["quixstreams==3.28.1", "orjson==3.13.0"]
BYTEWAX_REQ = ["bytewax[kafka]==0.21.1", "orjson==3.13.0"]
FAUST_REQ = ["faust-streaming==0.15.3", "orjson==3.13.0"]
PLOT_REQ = ["matplotlib==3.11.2"]

ENGINES: dict[str, Engine] = {
    e.name: e
    for e in [
        Engine(
            "streamnb",
            "streamnb",
            lambda: None,
            lambda: [sys.executable, str(PYPEERS / "streamnb_peer.py")],
            _streamnb_version,
            "`sn.from_kafka` defaults (consume batches, one polars decode per batch), adaptive "
            "micro-batches (default max batch), `to_kafka` (idempotent producer), `keep=0`",
            "first record",
        ),
        Engine(
            "streamnb-eos",
            "streamnb worker, exactly-once",
            lambda: None,
            lambda: [
                sys.executable,
                str(PYPEERS / "streamnb_peer.py"),
                "--guarantee",
                "exactly_once",
            ],
            _streamnb_version,
            "the headless worker's runtime (`streamnb.worker.run.start`, what `streamnb run "
            "module:attr --guarantee exactly_once --sink kafka:TOPIC` starts): checkpointed "
            "tasks, output and offsets in one Kafka transaction per checkpoint, the worker's "
            "default checkpoint interval (`DEFAULT_CHECKPOINT_INTERVAL` of "
            "`streamnb/worker/run.py`), memory state; the harness reads `read_committed`, so "
            "a row arrives when its checkpoint commits",
            "first record",
        ),
        Engine(
            FLOOR,
            "plain loop (latency floor)",
            lambda: None,
            lambda: [sys.executable, str(PYPEERS / "plain_loop.py")],
            _repo_version("confluent_kafka", "orjson"),
            "`peers/python/plain_loop.py`: confluent-kafka consumer → per-record work in "
            "Python (`orjson`) → producer, tuned exactly like streamnb: consumer settings = "
            "`CONSUMER_SETTINGS` of `streamnb/io/sources/kafka/reader.py` (read at run time: "
            + _settings_text("consumer")
            + "); fetch = take what has arrived (`consume(n, 0)`; if empty `consume(1, 0.1)` "
            "then `consume(n − 1, 0)`, as `consume_available`) with n = streamnb's max batch ("
            + _settings_text("max_batch")
            + "); producer settings = `PRODUCER_SETTINGS` of `streamnb/io/sinks/kafka.py` ("
            + _settings_text("producer")
            + "), `poll(0)` after each batch. q0 hands the bytes on undecoded; w1 counts in "
            "a dict per window, emitted when the watermark passes its end; no other queries",
            "first record",
        ),
        Engine(
            "baseline",
            "no-framework baseline",
            lambda: None,
            lambda: [sys.executable, str(PYPEERS / "baseline.py")],
            _repo_version("confluent_kafka", "orjson"),
            "`Consumer.consume(10000)`, `fetch.queue.backoff.ms=10`, `queued.min.messages="
            "200000`, `orjson.loads` per record, dicts; producer `linger.ms=5`; watermark "
            "advanced after each fetched batch",
            "first record",
        ),
        _python_engine(
            "quix",
            "Quix Streams",
            "quix_peer.py",
            QUIX_REQ,
            "defaults except `auto_offset_reset=earliest`, `commit_interval=1.0` s (the "
            "latency knob: results are produced as processed, transactions off), "
            "`consumer_poll_timeout=0.1`; windows `.final(closing_strategy='partition')` with "
            "`grace_ms=4000`; keyed windows after `group_by` (a repartition topic: windows "
            "are per message key, and the bids are not keyed)",
            lag_ms={"q5": HOP_EVERY_MS, "q11": GAP_MS + 1},
            lag_note={
                "q5": "the max step (a plain function after the counts: Quix allows one "
                "`group_by` only) hands on a window when the next hop's counts arrive: one "
                "hop (2 s) later",
                "q11": "Quix closes a session once the watermark passes last + 2·gap + grace "
                "(documented), one gap later than the suite's last + gap + 4 s",
            },
        ),
        _python_engine(
            "bytewax",
            "Bytewax",
            "bytewax_peer.py",
            BYTEWAX_REQ,
            "1 worker (`python -m bytewax.run`), `EventClock(wait_for_system_duration=4 s)`, "
            "Kafka source/sink of `bytewax.connectors.kafka` (batch size 10000)",
        ),
        _python_engine(
            "faust",
            "Faust",
            "faust_peer.py",
            FAUST_REQ,
            "faust-streaming defaults (in-memory tables), `stream_buffer_maxsize` raised",
        ),
        _jvm_engine(
            "kafka-streams",
            "Kafka Streams",
            "kafka_streams",
            "see bench/peers/kafka_streams/",
        ),
        _jvm_engine(
            "kafka-streams-lowlat",
            "Kafka Streams (latency settings)",
            "kafka_streams",
            "as `kafka-streams`, with the settings its SETTINGS.md gives for the latency mode: "
            "`--commit-interval-ms 100 --linger-ms 5` (a final window row leaves the cache "
            "and the suppress buffer only at a commit)",
            ("--commit-interval-ms", "100", "--linger-ms", "5"),
        ),
        _jvm_engine(
            "spark",
            "Spark Structured Streaming (default trigger)",
            "spark",
            "see bench/peers/spark/SETTINGS.md",
        ),
        _jvm_engine(
            "spark-1s",
            "Spark Structured Streaming (1 s trigger)",
            "spark",
            "as `spark`, with `--trigger 1s`",
            ("--trigger", "1s"),
        ),
        _jvm_engine(
            "flink",
            "Apache Flink",
            "flink",
            "see bench/peers/flink/SETTINGS.md",
        ),
    ]
}


# -- data -------------------------------------------------------------------------------------
def make_data(n: int, event_rate: int) -> dict[str, pl.DataFrame]:
    """The first ``n`` bids, and the persons and auctions of the same events (epoch-ms ints)."""
    from streamnb.io.sources.nexmark import generate

    events = -(-n * 50 // 46) + 50
    bids = generate("bid", 0, events, event_rate=event_rate).head(n)
    if bids.height != n:
        raise RuntimeError(f"generated {bids.height} bids, wanted {n}")
    last = int(bids.get_column("dateTime").cast(pl.Int64).max())  # type: ignore[arg-type]
    out = {"bids": bids}
    for kind in ("person", "auction"):
        df = generate(kind, 0, events, event_rate=event_rate)
        out[kind + "s"] = df.filter(pl.col("dateTime").cast(pl.Int64) <= last)
    return {k: v.with_columns(pl.col(pl.Datetime).dt.epoch("ms")) for k, v in out.items()}


def _ms(df: pl.DataFrame) -> pl.DataFrame:
    return df.with_columns(pl.col(pl.Datetime).dt.epoch("ms"))


def _dt(df: pl.DataFrame) -> pl.DataFrame:
    return df.with_columns(pl.col("dateTime").cast(pl.Datetime("ms", "UTC")))


def q8_reference(persons: pl.DataFrame, auctions: pl.DataFrame) -> pl.DataFrame:
    """Persons who created an auction (seller = id) in the same tumbling 10 s window."""
    w = pl.col("dateTime") // TUMBLE_MS * TUMBLE_MS
    people = persons.group_by(w.alias("window_start"), "id").agg(pl.col("name").first())
    sellers = auctions.select(w.alias("window_start"), pl.col("seller").alias("id")).unique()
    return people.join(sellers, on=["window_start", "id"]).select(
        "window_start", (pl.col("window_start") + TUMBLE_MS).alias("window_end"), "id", "name"
    )


class References:
    def __init__(self, data: dict[str, pl.DataFrame]) -> None:
        self.data = data
        self._full: dict[str, pl.DataFrame] = {}

    def events(self, query: str) -> int:
        if query == "q8":
            return self.data["persons"].height + self.data["auctions"].height
        return self.data["bids"].height

    def final_watermark(self, query: str) -> int:
        if query == "q8":
            return (
                min(int(self.data[k].get_column("dateTime").max()) for k in ("persons", "auctions"))  # type: ignore[arg-type]
                - WATERMARK_MS
            )
        return int(self.data["bids"].get_column("dateTime").max()) - WATERMARK_MS  # type: ignore[arg-type]

    def full(self, query: str) -> pl.DataFrame:
        """Every row of the batch reference (Int64 epoch-ms window bounds, Int64 counts)."""
        if query not in self._full:
            if query == "q8":
                ref = q8_reference(self.data["persons"], self.data["auctions"])
            else:
                ref = _ms(QUERIES[query].reference(_dt(self.data["bids"])))
            self._full[query] = ref.with_columns(pl.col(pl.UInt32).cast(pl.Int64))
        return self._full[query]

    def expected(self, query: str, lag_ms: int = 0) -> pl.DataFrame:
        """The rows the final watermark closes (all of them for stateless queries)."""
        ref = self.full(query)
        if query not in WINDOWED:
            return ref
        return ref.filter(pl.col("window_end") + lag_ms <= self.final_watermark(query))


def compare_rows(query: str, got: pl.DataFrame, refs: References, lag_ms: int) -> str | None:
    """None if every expected row arrived exactly once and every other row is a reference row.

    Rows beyond the expected ones are allowed only for windows the final watermark had not
    closed (an engine whose clock also moves with processing time closes them later).
    """
    full, want = refs.full(query), refs.expected(query, lag_ms)
    if set(got.columns) != set(full.columns):
        return f"columns {sorted(got.columns)} != {sorted(full.columns)}"
    try:
        got = got.select(full.columns).cast(dict(full.schema))  # type: ignore[arg-type]
    except Exception as e:
        return f"cannot read the rows as {dict(full.schema)}: {e}"
    if query == "q1":  # floats: compare prices to 1e-6 relative after sorting on the rest
        keys = [c for c in full.columns if c != "price"]
        if got.height != full.height:
            return f"{got.height:,} rows, expected {full.height:,}"
        a, b = got.sort(keys), full.sort(keys)
        if not a.select(keys).equals(b.select(keys)):
            return "rows differ (other than price)"
        bad = ((a["price"] - b["price"]).abs() > 1e-6 * b["price"].abs() + 1e-9).sum()
        return f"{bad} prices differ" if bad else None
    cols = full.columns
    counts = [df.group_by(cols).len() for df in (got, want, full)]
    g, w, f = counts
    # expected rows: each must arrive exactly as often as the reference has it
    missing = w.join(g, on=cols, how="left", nulls_equal=True).filter(
        pl.col("len_right").is_null() | (pl.col("len_right") != pl.col("len"))
    )
    # any row: at most as often as in the full reference
    stray = g.join(f, on=cols, how="left", nulls_equal=True).filter(
        pl.col("len_right").is_null() | (pl.col("len") > pl.col("len_right"))
    )
    if missing.height or stray.height:
        return (
            f"{missing.height:,} of {w.height:,} expected distinct rows missing or repeated"
            + (f" (e.g. {missing.head(2).to_dicts()})" if missing.height else "")
            + f", {stray.height:,} distinct rows not in the reference (or too often)"
            + (f" (e.g. {stray.head(2).to_dicts()})" if stray.height else "")
        )
    return None


# -- Kafka ------------------------------------------------------------------------------------
PRODUCER_CONFIG: dict[str, Any] = {
    "linger.ms": 50,
    "batch.size": 1_000_000,
    "batch.num.messages": 100_000,
    "compression.type": "none",
    "queue.buffering.max.messages": 2_000_000,
    "queue.buffering.max.kbytes": 2_097_152,
    "acks": "all",
}


def encode(df: pl.DataFrame, chunk: int = 500_000) -> list[bytes]:
    out: list[bytes] = []
    for offset in range(0, df.height, chunk):
        lines = df.slice(offset, chunk).write_ndjson().encode().split(b"\n")
        if lines and not lines[-1]:
            lines.pop()
        out.extend(lines)
    return out


def end_offset(bootstrap: str, topic: str) -> int:
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"peers-{uuid.uuid4()}"})
    try:
        return int(c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)[1])
    finally:
        c.close()


def create_topic(bootstrap: str, topic: str, partitions: int = 1) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(topic, partitions, 1)]).values():
        future.result()


def delete_topics(bootstrap: str, prefix: str) -> None:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    names = [t for t in admin.list_topics(timeout=10).topics if t.startswith(prefix)]
    if names:
        for future in admin.delete_topics(names).values():
            try:
                future.result()
            except Exception:
                pass


def load_topic(bootstrap: str, topic: str, df: pl.DataFrame) -> tuple[bool, float]:
    """Produce ``df`` in order into a 1-partition topic; (reused, seconds)."""
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    if topic in admin.list_topics(timeout=10).topics:
        if end_offset(bootstrap, topic) == df.height:
            return True, 0.0
        for future in admin.delete_topics([topic]).values():
            future.result()
        time.sleep(2)
    create_topic(bootstrap, topic)
    lines = encode(df)
    t0 = time.perf_counter()
    producer = Producer({"bootstrap.servers": bootstrap, **PRODUCER_CONFIG})
    for value in lines:
        try:
            producer.produce(topic, value, partition=0)
        except BufferError:
            producer.poll(0.05)
            producer.produce(topic, value, partition=0)
    if producer.flush(300):
        raise RuntimeError(f"messages not delivered to {topic}")
    if end_offset(bootstrap, topic) != df.height:
        raise RuntimeError(f"{topic} does not hold {df.height} records")
    return False, time.perf_counter() - t0


class Broker:
    def __init__(self, bootstrap: str | None) -> None:
        self.external = bootstrap is not None
        self.bootstrap = bootstrap or ""
        self.dir: Path | None = None
        self.version = "external broker"

    def start(self) -> None:
        if self.external:
            return
        self.dir = Path(tempfile.mkdtemp(prefix="streamnb-peers-kafka-"))
        out = subprocess.run(
            [str(benchutil.ROOT / "scripts" / "kafka-local"), "start", "--dir", str(self.dir)]
            + ["--watch-pid", str(os.getpid())],
            capture_output=True,
            text=True,
            check=False,
        )
        if out.returncode != 0:
            raise RuntimeError(f"kafka-local start failed:\n{out.stderr}")
        self.bootstrap = [x for x in out.stdout.splitlines() if x.startswith("BOOTSTRAP=")][
            -1
        ].split("=", 1)[1]
        state = dict(
            x.split("=", 1) for x in (self.dir / "state").read_text().splitlines() if "=" in x
        )
        self.version = f"Apache Kafka {state.get('KAFKA_VERSION', '?')} (KRaft, 1 node)"

    def stop(self) -> None:
        if self.external or self.dir is None:
            return
        subprocess.run(
            [str(benchutil.ROOT / "scripts" / "kafka-local"), "stop", "--dir", str(self.dir)],
            capture_output=True,
            check=False,
        )
        shutil.rmtree(self.dir, ignore_errors=True)


class OutputReader(threading.Thread):
    """Reads the output topic (read_committed) into (arrival wall ms, value) pairs."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(daemon=True, name=f"read-{topic}")
        from confluent_kafka import Consumer

        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"peers-reader-{uuid.uuid4()}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
                "fetch.wait.max.ms": 10,
                "enable.partition.eof": False,
                "socket.nagle.disable": True,  # as Kafka's Java clients have it
            }
        )
        self.consumer.subscribe([topic])
        self.values: list[bytes] = []
        self.arrivals: list[tuple[int, float]] = []  # (count so far, wall time s) per fetch
        self.count = 0
        self.last_arrival = 0.0
        self.stop_flag = threading.Event()

    def run(self) -> None:
        """Take what has arrived: ``consume(n, 0)``, and when nothing has, wait for the first
        message only (``consume(n, timeout)`` would wait for n messages or the whole timeout,
        and stamp the early ones late). A fetch's rows are stamped when ``consume`` returns."""
        consume = self.consumer.consume
        try:
            while not self.stop_flag.is_set():
                msgs = consume(10_000, 0)
                if not msgs:
                    msgs = consume(1, 0.05)
                    if not msgs:
                        continue
                now = time.time()
                vals = [m.value() for m in msgs if m.error() is None and m.value() is not None]
                if vals:
                    self.values.extend(vals)
                    self.count += len(vals)
                    self.arrivals.append((self.count, now))
                    self.last_arrival = now
        finally:
            self.consumer.close()

    def arrival_of(self, i: int) -> float:
        """Wall time the ``i``-th row (0-based) arrived."""
        import bisect

        j = bisect.bisect_right([c for c, _ in self.arrivals], i)
        return self.arrivals[min(j, len(self.arrivals) - 1)][1]

    def frame(self) -> pl.DataFrame:
        if not self.values:
            return pl.DataFrame()
        return pl.read_ndjson(b"\n".join(self.values), infer_schema_length=None)


# -- process tree accounting ---------------------------------------------------------------------
def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            ppid = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(d))
    return kids


class TreeMeter:
    """CPU seconds and RSS of a process and all its descendants, polled from ``/proc``.

    The CPU of a process that has exited is kept at its last sample (and, once reaped,
    counted in its parent's ``cutime``/``cstime``, which are added too, so it is not lost).
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.cpu: dict[int, float] = {}
        self.peak_rss = 0
        self.lock = threading.Lock()

    def sample(self) -> float:
        kids = _children()
        todo, tree = [self.pid], []
        while todo:
            p = todo.pop()
            tree.append(p)
            todo.extend(kids.get(p, []))
        rss = 0
        with self.lock:
            for p in tree:
                try:
                    fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                ut, st, cut, cst = (int(x) for x in fields[11:15])
                self.cpu[p] = max(self.cpu.get(p, 0.0), (ut + st + cut + cst) / TICK)
                rss += int(fields[21]) * PAGE
            self.peak_rss = max(self.peak_rss, rss)
            return self.total()

    def total(self) -> float:
        return sum(self.cpu.values())


# -- runs -------------------------------------------------------------------------------------
@dataclass
class Result:
    engine: str
    query: str
    mode: str
    status: str  # ok | mismatch | timeout | crash | unsupported | setup failed | skipped
    detail: str = ""
    events: int = 0
    seconds: float = math.nan
    cpu: float = math.nan
    rss: int = 0
    rows: int = 0
    clock: str = ""
    rate: float = math.nan  # latency mode: target input rate
    achieved: float = math.nan
    p50: float = math.nan
    p95: float = math.nan
    p99: float = math.nan
    samples: int = 0
    # windowed queries: per window, its last row's arrival − its closing stamp
    windows: int = 0
    window_p50: float = math.nan
    window_p99: float = math.nan
    # --repeats: the p99 of every run of this engine, query and rate (this is their median run)
    p99_runs: list[float] = field(default_factory=list)

    @property
    def eps(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else math.nan

    @property
    def eps_cpu(self) -> float:
        return self.events / self.cpu if self.cpu > 0 else math.nan


LIVE: set[Peer] = set()
"""Peers running now (stopped if the harness is interrupted)."""


class Peer:
    """One engine process, started in its own process group, with its stdout watched."""

    def __init__(self, engine: Engine, args: list[str], log: Path, every: float = 0.1) -> None:
        """``every``: seconds between ``/proc`` samples of the tree (a sample reads every
        process's ``stat`` while holding the GIL, which would delay the output reader's
        arrival stamps: the latency mode samples rarely, for the peak RSS only)."""
        self.log = log.open("ab")
        self.started = time.time()
        self.proc = subprocess.Popen(
            [*engine.command(), *args],
            stdout=subprocess.PIPE,
            stderr=self.log,
            start_new_session=True,
            cwd=benchutil.ROOT,
        )
        LIVE.add(self)
        self.meter = TreeMeter(self.proc.pid)
        self.every = every
        self.first_record: float | None = None
        self.cpu_at_first: float | None = None
        self.unsupported: str | None = None
        self.rusage_cpu = 0.0
        self._stop = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._poll, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").strip()
            self.log.write(raw)
            if line.startswith("SN_FIRST_RECORD") and self.first_record is None:
                self.cpu_at_first = self.meter.sample()
                self.first_record = int(line.split()[1]) / 1000
            elif line.startswith("SN_UNSUPPORTED"):
                self.unsupported = line.split(" ", 1)[1] if " " in line else "unsupported"

    def _poll(self) -> None:
        while not self._stop.wait(self.every):
            if self.proc.poll() is not None:
                return
            self.meter.sample()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        """SIGTERM the group, SIGKILL after 15 s; the child's rusage is added via wait4."""
        LIVE.discard(self)
        self.meter.sample()
        self._stop.set()
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        try:  # anything left in the group (a JVM the wrapper did not wait for)
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.log.close()


def peer_args(
    bootstrap: str, query: str, topics: dict[str, str], out: str, group: str
) -> list[str]:
    return [
        "--bootstrap", bootstrap, "--query", query, "--bids", topics["bids"],
        "--persons", topics["persons"], "--auctions", topics["auctions"],
        "--output", out, "--group", group,
    ]  # fmt: skip


def run_catchup(
    engine: Engine,
    query: str,
    bootstrap: str,
    topics: dict[str, str],
    refs: References,
    args: argparse.Namespace,
    logdir: Path,
) -> Result:
    lag = engine.lag_ms.get(query, 0)
    want = refs.expected(query, lag).height
    events = refs.events(query)
    if want == 0:
        return Result(engine.name, query, "catchup", "skipped", "no window closes: too few events")
    tag = f"{engine.name}-{query}-{uuid.uuid4().hex[:8]}"
    out_topic = f"peers-out-{tag}"
    create_topic(bootstrap, out_topic)
    reader = OutputReader(bootstrap, out_topic)
    reader.start()
    peer = Peer(engine, peer_args(bootstrap, query, topics, out_topic, f"peers-{tag}"),
                logdir / f"{engine.name}-{query}.log")  # fmt: skip
    res = Result(engine.name, query, "catchup", "ok", events=events)
    deadline = peer.started + args.timeout
    done_at: float | None = None
    cpu_done = 0.0
    while time.time() < deadline:
        if reader.count >= want > 0:
            done_at = reader.arrival_of(want - 1)
            cpu_done = peer.meter.sample()
            break
        if not peer.alive():
            time.sleep(2)  # rows still on their way
            if reader.count >= want > 0:
                continue
            break
        time.sleep(0.02)
    if done_at is not None:
        time.sleep(args.settle)  # extra rows, if any
    peer.stop()
    reader.stop_flag.set()
    reader.join(10)
    code = peer.proc.returncode
    res.rss = peer.meter.peak_rss
    res.rows = reader.count
    if peer.unsupported is not None or (done_at is None and code == UNSUPPORTED_EXIT):
        res.status, res.detail = "unsupported", peer.unsupported or "exit 3"
        return res
    if done_at is None:
        tail = _log_tail(logdir / f"{engine.name}-{query}.log")
        if (
            peer.alive()
            or code in (None, -signal.SIGTERM, -signal.SIGKILL)
            or time.time() >= deadline
        ):
            res.status = "timeout"
            res.detail = f"{reader.count:,} of {want:,} rows after {args.timeout:.0f} s"
        else:
            res.status = "crash"
            res.detail = f"exit {code} after {reader.count:,} of {want:,} rows; {tail}"
        if reader.count:
            problem = compare_rows(query, reader.frame(), refs, lag)
            res.detail += f"; rows so far: {problem or 'all reference rows'}"
        return res
    start = peer.first_record if peer.first_record is not None else peer.started
    res.clock = "first record" if peer.first_record is not None else "process start"
    cpu0 = peer.cpu_at_first if peer.cpu_at_first is not None else 0.0
    res.seconds = done_at - start
    res.cpu = cpu_done - cpu0
    problem = compare_rows(query, reader.frame(), refs, lag)
    if problem:
        res.status, res.detail = "mismatch", problem
    elif lag:
        res.detail = f"expected rows: window_end + {lag} ms ≤ final watermark"
    return res


def _log_tail(path: Path, n: int = 300) -> str:
    try:
        text = path.read_text(errors="replace").strip()
    except OSError:
        return ""
    return " ".join(text[-n:].split())


# -- latency ------------------------------------------------------------------------------------
def produce_main(argv: list[str]) -> None:
    """``peers.py --_produce BOOTSTRAP TOPIC RATE SECONDS TEMPLATES``: open-loop producer.

    Produces at ``RATE`` records/s for ``SECONDS`` (after a trickle of 20/s until the file
    ``TOPIC.go`` named in the environment appears), ``dateTime`` = wall-clock ms at produce
    time, cycling through the template bids. Prints the achieved rate as JSON.
    """
    import orjson
    from confluent_kafka import Producer

    bootstrap, topic, rate, seconds, templates = argv
    go = Path(os.environ["PEERS_GO_FILE"])
    stamps_file = os.environ.get("PEERS_STAMPS_FILE")
    stamps: list[int] = []  # every dateTime stamped, once each (in order)
    rows = [orjson.loads(x) for x in Path(templates).read_bytes().splitlines()]
    gc.freeze()  # 100 000 template dicts the collector would walk in every full collection
    # Nagle off, as Kafka's Java clients have it: the stamps would otherwise wait for delayed ACKs
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 1, "acks": 1,
                  "queue.buffering.max.messages": 2_000_000,
                  "socket.nagle.disable": True})  # fmt: skip
    dumps, n = orjson.dumps, 0

    def send(k: int) -> None:
        nonlocal n
        ms = time.time_ns() // 1_000_000
        if not stamps or stamps[-1] != ms:
            stamps.append(ms)
        for _ in range(k):
            r = rows[n % len(rows)]
            r["dateTime"] = ms
            try:
                p.produce(topic, dumps(r))
            except BufferError:
                p.poll(0.01)
                p.produce(topic, dumps(r))
            n += 1
        p.poll(0)

    while not go.exists():
        send(1)
        time.sleep(0.05)
    r, total = float(rate), float(seconds)
    t0 = time.perf_counter()
    sent = 0
    while (el := time.perf_counter() - t0) < total:
        due = int(el * r) - sent
        if due > 0:
            send(due)
            sent += due
        else:
            time.sleep(0.0005)
    el = time.perf_counter() - t0
    p.flush(30)
    if stamps_file:
        Path(stamps_file).write_text(json.dumps(stamps))
    print(json.dumps({"sent": sent, "seconds": el, "start": time.time() - el}), flush=True)


def closing_stamps(window_end: pl.Series, stamps_file: Path) -> pl.Series:
    """When each window could close: the ``dateTime`` of the first record stamped at or after
    its end + the watermark delay (the record that moves the watermark past it). That is its
    end + 4 s while the producer keeps pace; when the producer itself stalls there, the
    window cannot close before that record exists, and the stall is not the engine's."""
    import numpy as np

    stamps = np.array(json.loads(stamps_file.read_text()), dtype=np.int64)
    due = window_end.cast(pl.Int64).to_numpy() + WATERMARK_MS
    at = np.searchsorted(stamps, due)
    closes = np.where(at < len(stamps), stamps[np.minimum(at, len(stamps) - 1)], due)
    return pl.Series(closes)


def warm_up_broker(
    bootstrap: str,
    runs: list[tuple[str, str, float, str]],
    refs: References,
    args: argparse.Namespace,
    logdir: Path,
) -> None:
    """One unmeasured run of the plain loop on q0 at the highest rate to come, for
    ``--broker-warmup`` seconds. A broker that has just started (or only loaded the catch-up
    topics) still compiles its fetch and produce paths: the same plain loop, q1 at 50 000/s,
    measured a p99 of 419 ms on such a broker and 30 ms in the run right after it. Without
    this, whichever engine runs first pays for the broker's warm-up."""
    floor = ENGINES[FLOOR]
    floor.setup()
    rate = max(rate for _, _, rate, _ in runs)
    warm = argparse.Namespace(**{**vars(args), "latency_seconds": args.broker_warmup})
    r = run_latency(floor, "q0", rate, bootstrap, refs, warm, logdir)
    print(
        f"broker warm-up: {floor.label} q0 at {fmt_rate(rate)}/s for {args.broker_warmup:.0f} s, "
        f"{r.status}, p99 {r.p99:.0f} ms (not reported)",
        flush=True,
    )


def run_latency(
    engine: Engine,
    query: str,
    rate: float,
    bootstrap: str,
    refs: References,
    args: argparse.Namespace,
    logdir: Path,
) -> Result:
    res = Result(engine.name, query, "latency", "ok", rate=rate)
    if query == "q8":
        res.status, res.detail = "skipped", "latency mode produces bids only"
        return res
    tag = f"{engine.name}-{query}-{int(rate)}-{uuid.uuid4().hex[:8]}"
    in_topic, out_topic = f"peers-lat-in-{tag}", f"peers-lat-out-{tag}"
    create_topic(bootstrap, in_topic)
    create_topic(bootstrap, out_topic)
    templates = logdir / "templates.ndjson"
    if not templates.exists():
        templates.write_bytes(b"\n".join(encode(refs.data["bids"].head(100_000))))
    go = logdir / f"go-{tag}"
    stamps_file = logdir / f"stamps-{tag}.json"
    # the harness's own cycle collector must not stamp arrivals late: a window's rows come
    # as one burst of Message objects, which set off a full collection of the harness's heap
    # (the reference data: 15-72 ms, measured with gc.callbacks) while the reader held the
    # rows; frozen, the heap is not walked, and the reader's objects make no cycles
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        reader = OutputReader(bootstrap, out_topic)
        reader.start()
        measure = args.latency_seconds
        # after the measured phase, keep producing so that its last windows close
        tail = WINDOW_MS[query] / 1000 + 6 if query in WINDOWED else 0.0
        producer = subprocess.Popen(
            [sys.executable, __file__, "--_produce", bootstrap, in_topic, str(rate),
             str(measure + tail), str(templates)],
            stdout=subprocess.PIPE,
            env={**os.environ, "PEERS_GO_FILE": str(go), "PEERS_STAMPS_FILE": str(stamps_file)},
        )  # fmt: skip
        topics = {"bids": in_topic, "persons": in_topic, "auctions": in_topic}
        peer = Peer(engine, peer_args(bootstrap, query, topics, out_topic, f"peers-{tag}"),
                    logdir / f"lat-{engine.name}-{query}.log", every=2.0)  # fmt: skip
        ready = time.time() + args.timeout
        while (
            time.time() < ready
            and peer.alive()
            and peer.first_record is None
            and not (query not in WINDOWED and reader.count > 0)
        ):
            time.sleep(0.05)
        ok = peer.alive() and time.time() < ready
        if ok:
            time.sleep(args.warmup)
        go.touch()
        out, _ = producer.communicate(timeout=measure + tail + 120)
        time.sleep(args.settle + 2)
        peer.stop()
        reader.stop_flag.set()
        reader.join(10)
        go.unlink(missing_ok=True)
    finally:
        gc.enable()
        gc.unfreeze()
    res.rss = peer.meter.peak_rss
    res.rows = reader.count
    if peer.unsupported:
        res.status, res.detail = "unsupported", peer.unsupported
        return res
    if not ok:
        res.status = "crash" if not peer.alive() else "timeout"
        res.detail = "did not start"
        return res
    stats = json.loads(out.decode().strip().splitlines()[-1])
    res.achieved = stats["sent"] / stats["seconds"]
    if res.achieved < 0.95 * rate:
        res.detail = f"the producer reached only {res.achieved / rate:.0%} of the target rate"
    t0_ms, t1_ms = stats["start"] * 1000, (stats["start"] + measure) * 1000
    df = reader.frame()
    if df.height == 0:
        res.status, res.detail = "crash", "no output"
        return res
    counts = [c for c, _ in reader.arrivals]
    times = [t for _, t in reader.arrivals]
    import bisect

    arrival = pl.Series(
        [
            times[min(bisect.bisect_right(counts, i), len(times) - 1)] * 1000
            for i in range(df.height)
        ]
    )
    df = df.with_columns(arrival=arrival)
    if query in WINDOWED:
        # the windows of the measured phase's data; they close during the tail (the producer
        # keeps the rate for a window + 6 s after it), so each is closed by full-rate input
        df = df.filter((pl.col("window_start") >= t0_ms) & (pl.col("window_end") <= t1_ms))
        lat = df["arrival"] - closing_stamps(df["window_end"], stamps_file)
        # a window's rows leave together, so p99 over rows is about its two or three slowest
        # windows; over windows (when the last row of each arrived) it says how often
        last = df.with_columns(lat=lat).group_by("window_end").agg(pl.col("lat").max())["lat"]
        res.windows = last.len()
        if res.windows:
            res.window_p50, res.window_p99 = (
                float(last.quantile(q, "nearest"))  # type: ignore[arg-type]
                for q in (0.5, 0.99)
            )
    else:
        df = df.filter((pl.col("dateTime") >= t0_ms) & (pl.col("dateTime") < t1_ms))
        lat = df["arrival"] - df["dateTime"]
    if lat.len() == 0:
        res.status, res.detail = "mismatch", "no output row from the measured phase"
        return res
    res.samples = lat.len()
    res.p50, res.p95, res.p99 = (float(lat.quantile(q, "nearest")) for q in (0.5, 0.95, 0.99))  # type: ignore[arg-type]
    return res


# -- report --------------------------------------------------------------------------------------
def _cell(r: Result | None, what: str) -> str:
    if r is None:
        return "–"
    if r.status != "ok":
        return r.status
    v = {"rate": r.eps, "cpu": r.eps_cpu}[what]
    return fmt_rate(v) if math.isfinite(v) else "–"


def _ratio(sn_r: Result | None, r: Result | None, what: str) -> str:
    if sn_r is None or r is None or sn_r.status != "ok" or r.status != "ok":
        return "–"
    a = {"rate": sn_r.eps, "cpu": sn_r.eps_cpu}[what]
    b = {"rate": r.eps, "cpu": r.eps_cpu}[what]
    return f"{a / b:.1f}×" if b > 0 and math.isfinite(a / b) else "–"


def catchup_tables(results: list[Result], engines: list[str], queries: list[str]) -> list[str]:
    by = {(r.engine, r.query): r for r in results if r.mode == "catchup"}
    lines: list[str] = []
    for q in queries:
        if not any((e, q) in by for e in engines):
            continue
        s = by.get(("streamnb", q))
        lines += [
            f"#### {q} — {TITLES.get(q, q)}",
            "",
            "| engine | events/s | events / CPU-s | peak RSS MiB | streamnb ÷ peer (events/s, "
            "per CPU-s) | target | status |",
            "|---|---:|---:|---:|---|---|---|",
        ]
        for e in engines:
            r = by.get((e, q))
            if r is None:
                continue
            tgt = target_ratio(e, q)
            met = ""
            if tgt is not None and r.status == "ok" and s is not None and s.status == "ok":
                a = s.eps if tgt[0] == "rate" else s.eps_cpu
                b = r.eps if tgt[0] == "rate" else r.eps_cpu
                met = " ✔" if a / b >= tgt[1] else " ✘"
            tgt_text = (
                f"≥ {tgt[1]:g}× {'events/s' if tgt[0] == 'rate' else 'per CPU-s'}{met}"
                if tgt
                else ""
            )
            ratio = "" if e == "streamnb" else f"{_ratio(s, r, 'rate')}, {_ratio(s, r, 'cpu')}"
            status = r.status if not r.detail else f"{r.status}: {r.detail}"
            lines.append(
                f"| {ENGINES[e].label} | {_cell(r, 'rate')} | {_cell(r, 'cpu')} | "
                f"{benchutil.fmt_mib(r.rss) if r.rss else '–'} | {ratio} | {tgt_text} | "
                f"{status.replace('|', '/')} |"
            )
        lines.append("")
    return lines


def median_runs(results: list[Result]) -> list[Result]:
    """``--repeats``: one latency result per engine, query and rate, its median run by p99
    (of the runs that ran, ``ok``), carrying every run's p99 in ``p99_runs``; the other
    results as they are. A run that did not end ``ok`` is named in the detail."""
    out: list[Result] = []
    groups: dict[tuple[str, str, float, str], list[Result]] = {}
    for r in results:
        if r.mode == "latency":
            key = (r.engine, r.query, r.rate, _rate_label(r))
            if key not in groups:
                groups[key] = []
                out.append(r)  # holds the group's place
            groups[key].append(r)
        else:
            out.append(r)
    for i, r in enumerate(out):
        if r.mode != "latency":
            continue
        runs = groups[(r.engine, r.query, r.rate, _rate_label(r))]
        if len(runs) == 1:
            continue
        ok = sorted((x for x in runs if x.status == "ok"), key=lambda x: x.p99)
        failed = [x.status for x in runs if x.status != "ok"]
        median = ok[(len(ok) - 1) // 2] if ok else runs[0]
        note = f"{len(failed)} of {len(runs)} runs {', '.join(sorted(set(failed)))}"
        out[i] = replace(
            median,
            p99_runs=[x.p99 for x in runs if x.status == "ok"],
            detail=median.detail + (f"; {note}" if failed and ok else ""),
        )
    return out


def _rate_label(r: Result) -> str:
    return r.detail.split(";", 1)[0].strip()


def _floor_for(r: Result, floors: list[Result]) -> Result | None:
    """The plain loop's run on the same query to divide ``r`` by: at the same rate label for
    an absolute rate, else (a percentage: each engine's own) the nearest target rate."""
    same = [f for f in floors if f.query == r.query]
    if not same:
        return None
    label = _rate_label(r)
    if not label.endswith("%"):
        exact = [f for f in same if _rate_label(f) == label]
        if exact:
            return exact[0]
    return min(same, key=lambda f: abs(math.log(f.rate / r.rate)))


def latency_tables(
    results: list[Result], engines: list[str], catch: dict[tuple[str, str], Result]
) -> list[str]:
    """One table per query: the latency curve of each engine, divided by the plain loop's."""
    lat = [r for r in results if r.mode == "latency"]
    floors = [r for r in lat if r.engine == FLOOR and r.status == "ok"]
    order = {e: i for i, e in enumerate(engines)}
    lines: list[str] = []
    for q in sorted({r.query for r in lat}, key=ALL_QUERIES.index):
        cap = catch.get(("streamnb", q))
        capacity = cap.eps if cap is not None and cap.status == "ok" else math.nan
        lines += [
            f"#### {q} — {TITLES.get(q, q)}"
            + (" (harness floor: the plain loop hands the bytes on)" if q == "q0" else ""),
            "",
            "| engine | rate | target events/s | achieved | p50 ms | p95 ms | p99 ms | rows | "
            "per window: p50 / p99 ms (windows) | p99 ÷ plain loop's p99 (at) | target | status |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|---|",
        ]
        rows = [r for r in lat if r.query == q]
        for r in sorted(rows, key=lambda r: (order.get(r.engine, 99), r.rate)):
            ok = r.status == "ok"
            f = _floor_for(r, floors) if ok and r.engine != FLOOR else None
            ratio = (
                f"{r.p99 / f.p99:.2f}× (plain at {fmt_rate(f.rate)}/s)"
                if f is not None and f.p99 > 0
                else "–"
            )
            target = ""
            if ok and r.engine == "streamnb" and f is not None:
                if math.isfinite(capacity) and r.rate <= 0.5 * capacity * 1.0001:
                    met = r.p99 <= LATENCY_RATIO_TARGET * f.p99
                    target = f"≤ {LATENCY_RATIO_TARGET:g}× {'✔' if met else '✘'}"
                elif math.isfinite(capacity):
                    target = "(above 50 % of capacity)"
                else:
                    target = "(capacity not measured: no catch-up run)"
            elif ok and r.engine == "streamnb-eos":
                target = (
                    f"≤ {EOS_P99_TARGET_MS:.0f} ms {'✔' if r.p99 <= EOS_P99_TARGET_MS else '✘'}"
                )
            note = r.detail.split(";", 1)[1].strip() if ";" in r.detail else ""
            status = r.status + (f": {note}" if note else "")
            runs = (
                f" (runs: {', '.join(f'{x:.0f}' for x in r.p99_runs)})"
                if len(r.p99_runs) > 1
                else ""
            )
            nums = (
                f"{fmt_rate(r.achieved)} | {r.p50:.0f} | {r.p95:.0f} | {r.p99:.0f}{runs} | "
                f"{r.samples:,} | "
                + (f"{r.window_p50:.0f} / {r.window_p99:.0f} ({r.windows})" if r.windows else "–")
                if ok
                else "– | – | – | – | – | –"
            )
            lines.append(
                f"| {ENGINES[r.engine].label} | {_rate_label(r)} | {fmt_rate(r.rate)} | {nums} | "
                f"{ratio} | {target} | {status.replace('|', '/')} |"
            )
        lines.append("")
    return lines


def markdown(
    results: list[Result],
    engines: list[str],
    queries: list[str],
    args: argparse.Namespace,
    broker: Broker,
    versions: dict[str, str],
    loads: list[str],
) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    info = benchutil.machine_info()
    title = "Peers — Nexmark side by side (catch-up from Kafka, open-loop latency)"
    if args.section != SECTION:
        title = f"Peers, a run of {', '.join(ENGINES[e].label for e in engines)} (`{args.section}`)"
    lines = [
        f"## {title}",
        "",
        f"_Written by `bench/peers.py` on {stamp}; "
        f"`{' '.join(['bench/peers.py', *sys.argv[1:]])}`._",
        "",
        f"- **Machine:** {benchutil.machine_line(info)}",
        f"- **Kafka:** {broker.version}; topics of 1 partition, JSON values, no keys. "
        + " ".join(loads),
        f"- **Data:** the first {args.events:,} Nexmark bids (`generate(..., event_rate="
        f"{args.event_rate:,})`: {args.events / args.event_rate * 50 / 46:,.0f} s of event "
        "time), and the persons and auctions of the same events for q8; every engine reads "
        "the same topics from earliest, one engine at a time.",
        "- **Semantics:** event time `dateTime`, watermark = max event time − 4 s (or grace "
        "4 s), windowed queries emit final rows only. q7 is the window-max part of Nexmark q7 "
        "(as in the other sections), not the join back to the bids; q5 keeps the auctions "
        "whose count is their window's maximum.",
        "- **Correctness first:** each run's output topic (read_committed) is compared with "
        "the polars batch reference (`bench/queries.py`; q8 in `bench/peers.py`): every row "
        "of the windows the final watermark closes must arrive exactly once, and any other "
        "row must be a reference row; q1's prices to 1e-6 relative. Speeds are quoted only "
        "for *ok* runs.",
        "- **Clock:** from the peer's `SN_FIRST_RECORD` line (its first input record) to the "
        "arrival of the last expected output row; CPU = the peer's process tree (all "
        "threads and children, `/proc`) over the same span; peak RSS = the tree's largest "
        "summed RSS (sampled every 100 ms).",
        "",
        "### Engines",
        "",
        "| engine | version | settings | clock starts at |",
        "|---|---|---|---|",
    ]
    for e in engines:
        eng = ENGINES[e]
        lines.append(f"| {eng.label} | {versions.get(e, '?')} | {eng.settings} | {eng.clock} |")
    lines += ["", "Targets (BENCH.md), streamnb's ratio to each peer:", ""]
    for e in engines:
        if e != "streamnb":
            lines.append(f"- {ENGINES[e].label}: {TARGETS.get(e, '–')}")
    notes = [
        f"- {ENGINES[e].label} {q}: {n}"
        for e in engines
        for q, n in ENGINES[e].lag_note.items()
        if q in queries
    ]
    if notes:
        lines += ["", "Where a peer's documented semantics close windows later:", "", *notes]
    lines += ["", "### Catch-up (throughput)", ""]
    lines += catchup_tables(results, engines, queries)
    catch = {(r.engine, r.query): r for r in results if r.mode == "catchup"}
    lat = latency_tables(results, engines, catch)
    if lat:
        lines += [
            "### Open-loop latency (the latency curve)",
            "",
            "- **Input:** one Python producer process (`peers.py --_produce`, confluent-kafka, "
            "`linger.ms=1`, `acks=1`, `socket.nagle.disable=true`) writes bids at a fixed "
            "rate, each stamped `dateTime` = "
            "the wall clock (ms) when it is produced; a trickle of 20/s until the engine has "
            f"read its first record, then {args.warmup:.0f} s of warm-up at the rate, then "
            f"{args.latency_seconds:.0f} s measured (then, for windows, enough to close the "
            "last measured window). *achieved* is what the producer managed; a run short of "
            "95 % of the target says so.",
            "- **Arrival:** a reader thread in the harness (read_committed, "
            "`socket.nagle.disable=true`: with Nagle's algorithm on, which librdkafka leaves "
            "on and Kafka's Java clients turn off, requests wait for delayed ACKs, some 40 ms) "
            "takes what has arrived (`consume(n, 0)`, and only when nothing has, "
            "`consume(1, 50 ms)`) and stamps each fetch with the wall clock when `consume` "
            "returns.",
            "- **Latency:** stateless: arrival − `dateTime`; windows: arrival − the `dateTime` "
            "of the first record stamped at or after `window_end` + 4 s, i.e. from the moment "
            "the watermark (max event time − 4 s) could pass the window's end (that is "
            "`window_end` + 4 s itself unless the producer stalled just then; the producer "
            "writes the stamps it used to a file). w1 (bids per auction, tumbling 1 s, "
            "final) emits a window every second with a row per auction, so its percentiles "
            "over rows rest on many rows, but rows of one window leave together: its p99 over "
            "rows is in effect one of its two or three slowest windows. *Per window* takes "
            "each window's last row (when the whole window had arrived): p50 and p99 over "
            "windows, with how many.",
            "- **Order:** "
            + (
                f"before the first run, {args.broker_warmup:.0f} s of the plain loop on q0 at "
                "the highest rate, not reported (a freshly started broker is still compiling "
                "its hot paths, and the first engine measured would pay for it); "
                if args.broker_warmup > 0
                else "no broker warm-up (`--broker-warmup 0`); "
            )
            + (
                f"{args.repeats} runs of each engine, query and rate, taken in turn (every run "
                "once, then again); a row is the median run by p99, followed by every run's "
                "p99. The ratio divides medians."
                if args.repeats > 1
                else "one run of each engine, query and rate (`--repeats 1`)."
            ),
            f"- **Rates:** `{args.rates}` (a percentage is of that engine's own catch-up "
            "events/s on the query in this run; an absolute rate is the same for every "
            f"engine; all capped at {fmt_rate(args.max_rate)}/s).",
            f"- **Floor:** the {ENGINES[FLOOR].label} — a confluent-kafka consume → produce loop "
            "tuned exactly like streamnb (see Engines) — on the same broker, rates and "
            "queries. Its q0 run (bytes handed on, nothing decoded) is the floor of the "
            "harness itself: producer → broker → loop → broker → reader; a broker cannot "
            "copy one topic into another by itself, so no engine-free measurement is possible "
            "(the loop's own share is a `consume`, a `produce` and `poll(0)` per batch). "
            f"*p99 ÷ plain loop's p99* divides by the loop's run on the same query at the "
            "same absolute rate, or for a percentage at the loop's nearest rate (named). "
            f"streamnb's target (BENCH.md): ≤ {LATENCY_RATIO_TARGET:g}× at every rate up to "
            "50 % of its catch-up events/s on the query; exactly-once p99 ≤ "
            f"{EOS_P99_TARGET_MS:.0f} ms.",
            "",
            *lat,
        ]
    plots = [p for p in ("throughput.png", "latency.png") if (PLOTS / p).exists()]
    if plots:
        lines += ["Plots: " + ", ".join(f"[{p}](bench/peers/plots/{p})" for p in plots), ""]
    return "\n".join(lines)


def plot(results: list[Result], engines: list[str], queries: list[str]) -> None:
    """Two PNGs, drawn by matplotlib in its own virtual environment."""
    try:
        _setup_venv("plot", PLOT_REQ)
    except subprocess.CalledProcessError as e:
        print(f"plots skipped: matplotlib setup failed ({e})")
        return
    PLOTS.mkdir(parents=True, exist_ok=True)
    data = {
        "engines": [[e, ENGINES[e].label] for e in engines],
        "queries": queries,
        "results": [asdict(r) | {"eps": r.eps} for r in results],
        "out": str(PLOTS),
    }
    subprocess.run(
        [str(_venv_python("plot")), str(PEERS / "plot.py")],
        input=json.dumps(data).encode(),
        check=False,
    )


# -- main ----------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--events", type=int, default=2_000_000, help="bids (default 2 000 000)")
    p.add_argument("--event-rate", type=int, default=10_000,
                   help="events/s of event time in the data (default 10 000)")  # fmt: skip
    p.add_argument("--engines", default=",".join(ENGINES))
    p.add_argument("--queries", default=",".join(ALL_QUERIES))
    p.add_argument("--modes", default="catchup,latency")
    p.add_argument("--latency-engines", default=None,
                   help="engines of the latency mode (default: --engines)")  # fmt: skip
    p.add_argument("--latency-queries", default="q1,w1",
                   help="queries of the latency mode (default q1,w1)")  # fmt: skip
    rates = DEFAULT_RATES.replace("%", "%%")  # argparse formats a help text with %
    p.add_argument("--rates", default=DEFAULT_RATES,
                   help="latency input rates: events/s, or %% of the engine's catch-up "
                   f"events/s on the query (default {rates})")  # fmt: skip
    p.add_argument("--no-floor", action="store_true",
                   help="skip the harness floor (the plain loop on q0 at the absolute rates; "
                   "run when the plain loop is a latency engine)")  # fmt: skip
    p.add_argument("--latency-seconds", type=float, default=30.0)
    p.add_argument("--keep-topics", action="store_true",
                   help="with --bootstrap: leave the run's input and output topics on the "
                   "broker (to look into a run's records and their timestamps)")  # fmt: skip
    p.add_argument("--warmup", type=float, default=5.0,
                   help="seconds at the rate before measuring")  # fmt: skip
    p.add_argument("--broker-warmup", type=float, default=30.0,
                   help="seconds of an unmeasured plain-loop run (q0, at the highest absolute "
                   "rate) before the first latency run: a freshly started broker is still "
                   "compiling its hot paths, and the first engine measured would pay for it "
                   "(0: none)")  # fmt: skip
    p.add_argument("--repeats", type=int, default=1,
                   help="latency runs per engine, query and rate, taken in turn (all the "
                   "runs, then all again); the tables show each one's median run by p99 and "
                   "every run's p99")  # fmt: skip
    p.add_argument("--max-rate", type=float, default=300_000,
                   help="cap on a latency input rate (one Python producer)")  # fmt: skip
    p.add_argument("--timeout", type=float, default=1200.0, help="seconds per run")
    p.add_argument("--settle", type=float, default=2.0,
                   help="seconds to wait for extra rows after the last expected one")  # fmt: skip
    p.add_argument("--bootstrap", default=None)
    p.add_argument("--out", type=Path, default=benchutil.BENCHMARKS_MD)
    p.add_argument("--section", default=SECTION,
                   help="the section of --out to write: a run of a few engines (say streamnb "
                        "and the plain loop, many repeats) into a section of its own leaves the "
                        f"whole peer table in '{SECTION}' as it is")  # fmt: skip
    p.add_argument("--no-plots", action="store_true",
                   help="leave the plots as they are (a --section run never draws them: they "
                        "show the whole peer table)")  # fmt: skip
    p.add_argument("--results-json", type=Path, default=None,
                   help="every run's figures (default: bench/peers/results.json, or "
                        "results-SECTION.json for another --section)")  # fmt: skip
    a = p.parse_args(argv)
    if a.results_json is None:
        name = "results.json" if a.section == SECTION else f"results-{a.section}.json"
        a.results_json = PEERS / name
    a.no_plots = a.no_plots or a.section != SECTION
    if a.repeats < 1:
        p.error(f"--repeats must be at least 1, not {a.repeats}")
    if a.broker_warmup < 0:
        p.error(f"--broker-warmup must be 0 or more seconds, not {a.broker_warmup}")
    for e in a.engines.split(",") + (a.latency_engines or "").split(",")[: bool(a.latency_engines)]:
        if e not in ENGINES:
            p.error(f"unknown engine {e!r}; engines: {', '.join(ENGINES)}")
    for q in a.queries.split(",") + a.latency_queries.split(","):
        if q not in ALL_QUERIES:
            p.error(f"unknown query {q!r}; queries: {', '.join(ALL_QUERIES)}")
    return a


DEFAULT_RATES = "10%,25%,50%,80%,10000,50000"


def _rates(spec: str, catch: Result | None, cap: float) -> list[tuple[float, str]]:
    out = []
    for part in spec.split(","):
        part = part.strip()
        if part.endswith("%"):
            if catch is None or catch.status != "ok":
                continue
            out.append((min(cap, catch.eps * float(part[:-1]) / 100), part))
        else:
            out.append((min(cap, float(part)), part))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--_produce":
        produce_main(sys.argv[2:])
        return 0
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally clauses
    engines = args.engines.split(",")
    queries = args.queries.split(",")
    modes = set(args.modes.split(","))
    logdir = Path(tempfile.mkdtemp(prefix="streamnb-peers-logs-"))
    print(f"logs: {logdir}", flush=True)

    t0 = time.perf_counter()
    data = make_data(args.events, args.event_rate)
    refs = References(data)
    print(
        f"data: {data['bids'].height:,} bids, {data['persons'].height:,} persons, "
        f"{data['auctions'].height:,} auctions ({time.perf_counter() - t0:.1f} s)",
        flush=True,
    )
    broker = Broker(args.bootstrap)
    broker.start()
    results: list[Result] = []
    versions: dict[str, str] = {}
    loads: list[str] = []
    try:
        topics = {}
        for kind in ("bids", "persons", "auctions"):
            name = f"peers-{kind}-{args.events}-{args.event_rate}"
            reused, secs = load_topic(broker.bootstrap, name, data[kind])
            topics[kind] = name
            msg = f"{name}: {data[kind].height:,} records " + (
                "(reused)" if reused else f"loaded in {secs:.1f} s"
            )
            print(msg, flush=True)
            loads.append(f"`{name}` {data[kind].height:,} records.")
        ready: list[str] = []
        for e in engines:
            try:
                ENGINES[e].setup()
                versions[e] = ENGINES[e].version()
                ready.append(e)
            except Exception as exc:
                print(f"{e}: setup failed: {exc}", flush=True)
                versions[e] = "setup failed"
                for q in queries:
                    results.append(Result(e, q, "catchup", "setup failed", str(exc)[:200]))
        catch: dict[tuple[str, str], Result] = {}
        if "catchup" in modes:
            for q in queries:
                for e in ready:
                    r = run_catchup(ENGINES[e], q, broker.bootstrap, topics, refs, args, logdir)
                    results.append(r)
                    catch[(e, q)] = r
                    print(
                        f"catchup {q:4} {e:14} {r.status:11} "
                        + (
                            f"{fmt_rate(r.eps)} events/s, {fmt_rate(r.eps_cpu)} per CPU-s, "
                            f"{r.rss / 2**20:,.0f} MiB, {r.seconds:.1f} s ({r.clock}) "
                            if r.status == "ok"
                            else ""
                        )
                        + r.detail[:300],
                        flush=True,
                    )
        if "latency" in modes:
            latency_engines = (args.latency_engines or args.engines).split(",")
            runs = [
                (q, e, rate, label)
                for q in args.latency_queries.split(",")
                for e in ready
                if e in latency_engines
                for rate, label in _rates(args.rates, catch.get((e, q)), args.max_rate)
            ]
            if "%" in args.rates and "catchup" not in modes:
                print("latency: percentage rates need --modes catchup; skipped", flush=True)
            if FLOOR in ready and FLOOR in latency_engines and not args.no_floor:
                absolute = [x for x in args.rates.split(",") if not x.strip().endswith("%")]
                if "q0" not in args.latency_queries.split(",") and absolute:
                    runs += [
                        ("q0", FLOOR, rate, label)
                        for rate, label in _rates(",".join(absolute), None, args.max_rate)
                    ]
            if runs and args.broker_warmup > 0:
                warm_up_broker(broker.bootstrap, runs, refs, args, logdir)
            for q, e, rate, label in runs * args.repeats:
                r = run_latency(ENGINES[e], q, rate, broker.bootstrap, refs, args, logdir)
                r.detail = f"{label}; {r.detail}".strip("; ")
                results.append(r)
                print(
                    f"latency {q:4} {e:14} {fmt_rate(rate):>8}/s {r.status:9} "
                    f"p50 {r.p50:.0f} p95 {r.p95:.0f} p99 {r.p99:.0f} ms "
                    f"(achieved {fmt_rate(r.achieved) if r.achieved > 0 else '–'}/s, "
                    f"{r.samples} rows"
                    + (
                        f"; over {r.windows} windows p50 {r.window_p50:.0f} "
                        f"p99 {r.window_p99:.0f} ms"
                        if r.windows
                        else ""
                    )
                    + f") {r.detail}",
                    flush=True,
                )
    finally:
        for peer in list(LIVE):
            peer.stop()
        if args.bootstrap and not args.keep_topics:
            delete_topics(broker.bootstrap, "peers-out-")
            delete_topics(broker.bootstrap, "peers-lat-")
        broker.stop()
    args.results_json.write_text(json.dumps([asdict(r) for r in results], indent=1))
    shown = median_runs(results)
    if not args.no_plots:
        plot(shown, engines, queries)
    text = markdown(shown, engines, queries, args, broker, versions, loads)
    print()
    print(text)
    benchutil.write_section(args.section, text, args.out)
    bad = [r for r in results if r.status in ("mismatch", "crash")]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
