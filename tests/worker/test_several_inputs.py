"""Queries over several topics as workers against the real broker: `kill -9` three times under
exactly_once, and workers joining and leaving. The output, read `read_committed`, must equal
a reference computed from the inputs exactly (no duplicate, no loss).

The topics have 3 partitions each and are keyed alike, so task p of a worker reads partition
p of every topic and merges them by event time; a table is read whole by every worker. The
four shapes of issue 12:

* an enrichment (orders joined with a table of customers) windowed by a column of the table,
  so the windows are repartitioned by it;
* a union of two topics, windowed by key (repartitioned);
* Nexmark q8's shape: a window join of persons and auctions from two topics;
* an interval join of two topics.

The union, q8 and interval shapes run again over topics that are *not* co-partitioned (3 and
2 partitions, each keyed by its own count): the worker repartitions them (the union above
where it meets; q8 below each side's window, the interval join at the join, by its keys), and
the stage's tasks merge both sides.
"""

from __future__ import annotations

import json
import signal
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from confluent_kafka import Producer

from tests.oracle import interval_reference, merged
from tests.worker.test_exactly_once import (
    MessageFeeder,
    Workers,
    assert_exact,
    committed_output,
    join_and_leave,
    kill_9_three_times,
)

pytestmark = pytest.mark.slow  # worker processes, fed at a fixed rate for tens of seconds

PARTITIONS = 3
APART = 2  # topic B's partitions in the tests of topics that are not co-partitioned
KEYS = 24
WINDOW_MS = 10_000
T0 = 1_700_000_000_000

CONFIG = """
config = {"session.timeout.ms": 6000, "heartbeat.interval.ms": 500}
common = dict(bootstrap_servers=os.environ["EOS_BOOTSTRAP"], timestamp="t", start="earliest",
              config=config, max_idle="2s")
"""

JOBS = {
    "enrich": """
import os
import polars as pl
import streamnb as sn
"""
    + CONFIG
    + """
orders = sn.from_kafka(os.environ["EOS_A"], schema={"cid": pl.String, "t": pl.Int64, "v": pl.Int64},
                       **common)
customers = sn.table_from_kafka(os.environ["EOS_TABLE"], key="cid", schema={"region": pl.String},
                                bootstrap_servers=os.environ["EOS_BOOTSTRAP"], config=config)
stream = (
    orders.join(customers, on="cid")
    .window(sn.Tumbling("10s"), by="region")
    .agg(pl.len().alias("n"), pl.col("v").sum().alias("total"))
)
""",
    "union": """
import os
import polars as pl
import streamnb as sn
"""
    + CONFIG
    + """
schema = {"k": pl.String, "t": pl.Int64, "v": pl.Int64}
a = sn.from_kafka(os.environ["EOS_A"], schema=schema, **common)
b = sn.from_kafka(os.environ["EOS_B"], schema=schema, **common)
stream = (
    a.union(b).window(sn.Tumbling("10s"), by="k")
    .agg(pl.len().alias("n"), pl.col("v").sum().alias("total"))
)
""",
    "q8": """
import os
import polars as pl
import streamnb as sn
"""
    + CONFIG
    + """
persons = sn.from_kafka(os.environ["EOS_A"], schema={"k": pl.String, "t": pl.Int64, "v": pl.Int64},
                        **common)
auctions = sn.from_kafka(os.environ["EOS_B"], schema={"k": pl.String, "t": pl.Int64, "x": pl.Int64},
                         **common)
people = persons.window(sn.Tumbling("10s"), by="k").agg(pl.col("v").first().alias("first"))
sellers = auctions.window(sn.Tumbling("10s"), by="k").agg(pl.len().alias("auctions"))
stream = people.join(sellers, on="k")
""",
    "interval": """
import os
import polars as pl
import streamnb as sn
"""
    + CONFIG
    + """
a = sn.from_kafka(os.environ["EOS_A"], schema={"k": pl.String, "t": pl.Int64, "v": pl.Int64},
                  **common)
b = sn.from_kafka(os.environ["EOS_B"], schema={"k": pl.String, "t": pl.Int64, "x": pl.Int64},
                  **common)
stream = a.join(b, on="k", within="1s")
""",
}

FIELDS = {
    "enrich": ("window_start", "window_end", "region", "n", "total"),
    "union": ("window_start", "window_end", "k", "n", "total"),
    "q8": ("window_start", "window_end", "k", "first", "auctions"),
    "interval": ("k", "t", "v", "t_right", "x"),
}


def keyed(i: pl.Series, spread: int) -> pl.Series:
    return pl.Series([f"key-{x}" for x in (i * spread % KEYS).to_list()])


def partition_of(keys: pl.Series, partitions: int = PARTITIONS) -> pl.Series:
    return keys.str.extract(r"(\d+)").cast(pl.Int64) % partitions


def inputs(shape: str, n: int, b_partitions: int = PARTITIONS) -> dict[str, pl.DataFrame]:
    """The records of each input topic (``k``/``cid``, ``t``, a value, ``partition``), in
    event-time order; topic ``A`` and ``B`` (of ``b_partitions``) interleave in time."""
    i = pl.int_range(0, n, eager=True)
    if shape == "enrich":
        cid = pl.Series([f"c-{x}" for x in (i * 7 % KEYS).to_list()])
        return {
            "A": pl.DataFrame({"cid": cid, "t": T0 + i * 37, "v": i}).with_columns(
                partition=partition_of(cid)
            )
        }
    k = keyed(i, 7)
    a = pl.DataFrame({"k": k, "t": T0 + i * 37, "v": i})
    j = pl.int_range(0, n // 2, eager=True)
    kb = keyed(j, 5)
    b = pl.DataFrame({"k": kb, "t": T0 + j * 74 + 11, ("v" if shape == "union" else "x"): j})
    return {
        "A": a.with_columns(partition=partition_of(k)),
        "B": b.with_columns(partition=partition_of(kb, b_partitions)),
    }


def customers() -> pl.DataFrame:
    return pl.DataFrame(
        {"cid": [f"c-{i}" for i in range(KEYS)], "region": [f"r-{i % 5}" for i in range(KEYS)]}
    )


def reference(shape: str, data: dict[str, pl.DataFrame]) -> Counter[tuple[Any, ...]]:
    """What the query emits once every input record is processed, by the rules of its tasks:
    task p merges partition p of every topic by event time (one watermark: the largest time
    it has seen); repartitioned windows close at the minimum of the tasks' watermarks."""
    everything = pl.concat([f.select("partition", "t") for f in data.values()])
    task_marks = everything.group_by("partition").agg(pl.col("t").max())
    if shape in ("enrich", "union"):
        rows = data["A"]
        key = "k"
        if shape == "enrich":
            rows, key = rows.join(customers(), on="cid"), "region"
        else:
            rows = pl.concat([rows, data["B"]])
        closed = task_marks["t"].min()
        windows = (
            rows.with_columns(window_start=pl.col("t") // WINDOW_MS * WINDOW_MS)
            .group_by("window_start", key)
            .agg(pl.len().alias("n"), pl.col("v").sum().alias("total"))
            .with_columns(window_end=pl.col("window_start") + WINDOW_MS)
            .filter(pl.col("window_end") <= closed)
        )
        return Counter(windows.select(FIELDS[shape]).iter_rows())
    if shape == "q8":
        # each branch's window closes at the largest time its own input has shown in the task
        def closed(frame: pl.DataFrame, agg: pl.Expr) -> pl.DataFrame:
            marks = frame.group_by("partition").agg(pl.col("t").max().alias("mark"))
            return (
                frame.with_columns(window_start=pl.col("t") // WINDOW_MS * WINDOW_MS)
                .group_by("partition", "window_start", "k")
                .agg(agg)
                .with_columns(window_end=pl.col("window_start") + WINDOW_MS)
                .join(marks, on="partition")
                .filter(pl.col("window_end") <= pl.col("mark"))
                .drop("mark", "partition")
            )

        people = closed(data["A"], pl.col("v").first().alias("first"))
        sellers = closed(data["B"], pl.len().alias("auctions"))
        return Counter(
            people.join(sellers, on=["window_start", "window_end", "k"])
            .select(FIELDS[shape])
            .iter_rows()
        )
    out: Counter[tuple[Any, ...]] = Counter()
    for p in range(PARTITIONS):
        a = data["A"].filter(pl.col("partition") == p).drop("partition").to_dicts()
        b = data["B"].filter(pl.col("partition") == p).drop("partition").to_dicts()
        joined, _ = interval_reference(
            merged([a, b], lambda r: r["t"]), within=1000, grace=0, delay=0, how="inner"
        )
        out.update(tuple(r[f] for f in FIELDS[shape]) for r in joined)
    return out


def feed(
    bootstrap: str, topics: dict[str, str], data: dict[str, pl.DataFrame], rate: float
) -> MessageFeeder:
    """Every input's records, interleaved in event-time order, keyed, to the partition of
    their key, at about ``rate`` records per second."""
    messages = []
    for name, frame in data.items():
        key = "cid" if "cid" in frame.columns else "k"
        for record in frame.iter_rows(named=True):
            p = record.pop("partition")
            value = json.dumps(record).encode()
            messages.append((record["t"], (topics[name], record[key].encode(), p, value)))
    messages.sort(key=lambda m: m[0])
    return MessageFeeder(bootstrap, [m for _, m in messages], rate)


@pytest.fixture
def several(
    tmp_path: Path, bootstrap: str, make_topic: Callable[..., str]
) -> Iterator[Callable[..., tuple[Workers, dict[str, str]]]]:
    made: list[Workers] = []

    def make(
        shape: str, guarantee: str, b_partitions: int = PARTITIONS
    ) -> tuple[Workers, dict[str, str]]:
        topics = {"A": make_topic(PARTITIONS), "B": make_topic(b_partitions)}
        env = {"EOS_A": topics["A"], "EOS_B": topics["B"]}
        if shape == "enrich":
            table = make_topic(1)
            env["EOS_TABLE"] = table
            producer = Producer({"bootstrap.servers": bootstrap})
            for cid, region in customers().iter_rows():
                producer.produce(table, json.dumps({"region": region}).encode(), key=cid.encode())
            producer.flush(30)
        w = Workers(tmp_path, bootstrap, topics["A"], make_topic(1), guarantee, JOBS[shape], env)
        made.append(w)
        return w, topics

    yield make
    for w in made:
        w.stop_all()


def reference_apart(shape: str, data: dict[str, pl.DataFrame]) -> Counter[tuple[Any, ...]]:
    """What the query emits over topics read apart: a stage's watermark is the minimum over
    every partition of the topics that feed it (each one's largest time), per side for a
    side's window; every record is on time (each partition is in event-time order), so the
    interval join is the whole join."""

    def marks(frame: pl.DataFrame) -> int:
        return int(frame.group_by("partition").agg(pl.col("t").max())["t"].min())  # type: ignore[arg-type]

    def closed(frame: pl.DataFrame, mark: int, *agg: pl.Expr) -> pl.DataFrame:
        return (
            frame.with_columns(window_start=pl.col("t") // WINDOW_MS * WINDOW_MS)
            .group_by("window_start", "k")
            .agg(*agg)
            .with_columns(window_end=pl.col("window_start") + WINDOW_MS)
            .filter(pl.col("window_end") <= mark)
        )

    a, b = data["A"], data["B"]
    if shape == "union":
        rows = pl.concat([a, b])
        windows = closed(
            rows, min(marks(a), marks(b)), pl.len().alias("n"), pl.col("v").sum().alias("total")
        )
    elif shape == "q8":
        people = closed(a, marks(a), pl.col("v").first().alias("first"))
        sellers = closed(b, marks(b), pl.len().alias("auctions"))
        windows = people.join(sellers, on=["window_start", "window_end", "k"])
    else:
        windows = (
            a.drop("partition")
            .join(b.drop("partition"), on="k", suffix="_right")
            .filter((pl.col("t") - pl.col("t_right")).abs() <= 1000)
        )
    return Counter(windows.select(FIELDS[shape]).iter_rows())


@pytest.mark.parametrize(
    ("shape", "b_partitions"),
    [*((shape, PARTITIONS) for shape in JOBS), *((s, APART) for s in ("union", "q8", "interval"))],
)
def test_kill_9_three_times_exactly_once(
    several: Any, bootstrap: str, shape: str, b_partitions: int
) -> None:
    """Co-partitioned, and (topic B of 2 partitions) read apart and repartitioned."""
    w, topics = several(shape, "exactly_once", b_partitions)
    data = inputs(shape, 24_000, b_partitions)
    feeder = feed(bootstrap, topics, data, rate=3_000).start()
    kill_9_three_times(w)
    feeder.wait()
    want = (reference if b_partitions == PARTITIONS else reference_apart)(shape, data)
    assert sum(want.values()) > 50
    got = committed_output(bootstrap, w.out, sum(want.values()), 120, FIELDS[shape])
    w.stop_all()
    assert_exact(got, want, w.logs())
    assert [p.returncode for p in w.procs] == [-signal.SIGKILL] * 3 + [0], w.logs()


@pytest.mark.parametrize("shape", ["enrich", "interval"])
def test_workers_join_and_leave_exactly_once(several: Any, bootstrap: str, shape: str) -> None:
    w, topics = several(shape, "exactly_once")
    data = inputs(shape, 24_000)
    feeder = feed(bootstrap, topics, data, rate=2_500).start()
    first = join_and_leave(w)
    feeder.wait()
    want = reference(shape, data)
    got = committed_output(bootstrap, w.out, sum(want.values()), 120, FIELDS[shape])
    assert first.poll() is None, w.logs()
    w.stop_all()
    assert_exact(got, want, w.logs())


def test_topics_that_cannot_be_repartitioned_are_named(
    tmp_path: Path, bootstrap: str, make_topic: Callable[..., str]
) -> None:
    import streamnb as sn
    from streamnb.exceptions import ConfigError
    from streamnb.worker.run import start

    schema = {"k": pl.String, "t": pl.Int64}
    three, two, one = make_topic(3), make_topic(2), make_topic(2)
    common = dict(bootstrap_servers=bootstrap, schema=schema, timestamp="t")
    a = sn.from_kafka(three, **common)  # type: ignore[arg-type]
    b = sn.from_kafka(two, **common)  # type: ignore[arg-type]
    counts = sn.from_kafka(one, **common).group_by("k").agg(pl.len().alias("n"))  # type: ignore[arg-type]
    # the right side of the interval join meets a table of its own first: state on a side
    query = a.join(b.join(counts, on="k"), on="k", within="1s")
    query = query.to_kafka(make_topic(1), bootstrap_servers=bootstrap)
    with pytest.raises(
        ConfigError, match=rf"{three} \(3\), {two} \(2\), {one} \(2\) partitions.*join\["
    ):
        start(query, name="apart", guarantee="exactly_once", state_dir=tmp_path)


def test_a_worker_says_which_input_its_tasks_wait_for(
    tmp_path: Path, bootstrap: str, make_topic: Callable[..., str]
) -> None:
    import uuid

    import streamnb as sn
    from streamnb.worker.run import start
    from tests.threads import wait_until

    schema = {"k": pl.String, "t": pl.Int64}
    busy, quiet = make_topic(1), make_topic(1)
    producer = Producer({"bootstrap.servers": bootstrap})
    for t in range(10):
        producer.produce(busy, json.dumps({"k": "a", "t": T0 + t}).encode())
    producer.flush(30)
    common = dict(bootstrap_servers=bootstrap, schema=schema, timestamp="t", start="earliest")
    a = sn.from_kafka(busy, **common)  # type: ignore[arg-type]
    b = sn.from_kafka(quiet, max_idle="60s", **common)  # type: ignore[arg-type]
    worker = start(a.union(b), name="held", group_id=f"held-{uuid.uuid4()}", state_dir=tmp_path)
    try:
        wait_until(lambda: (worker.status()["held_by"] or {}).get("ms", 0) > 300)
        held = worker.status()["held_by"]
        assert held is not None
        assert (held["input"], held["reason"]) == (f"kafka[{quiet}]", "max_idle")
        assert worker.status()["records_in"] == 10
        assert worker.status()["records_out"] == 0  # the merge waits for the quiet input
    finally:
        worker.stop()
