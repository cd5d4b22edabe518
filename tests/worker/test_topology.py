"""Repartitioning without a broker: a plan cut at its first stateful operator, upstream halves
per input partition writing to a stand-in producer, downstream halves per repartition
partition reading what it got, gives the windows a single pipeline over every partition gives.
"""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Any

import polars as pl
import pytest

import streamnb as sn
from streamnb.columns import PARTITION, visible
from streamnb.engine.core import Context, Delta, Partitions
from streamnb.engine.executor import Pipeline
from streamnb.plan import GroupByNode, SinkNode, SourceNode, WindowNode
from streamnb.worker import topology

INPUTS, TARGETS = 3, 4


class Message:
    def __init__(self, topic: str, value: bytes, partition: int) -> None:
        self._topic, self._value, self._partition = topic, value, partition

    def topic(self) -> str:
        return self._topic

    def value(self) -> bytes:
        return self._value

    def partition(self) -> int:
        return self._partition


class Producer:
    """Keeps what is produced, per topic and partition, in order."""

    def __init__(self) -> None:
        self.sent: dict[tuple[str, int], list[Message]] = defaultdict(list)

    def produce(self, topic: str, value: bytes, partition: int) -> None:
        self.sent[(topic, partition)].append(Message(topic, value, partition))

    def poll(self, timeout: float) -> int:
        return 0


def records(seed: int, n: int = 1500) -> pl.DataFrame:
    rng = random.Random(seed)
    rows = [
        {"k": rng.choice("abcdefg"), "t": 1_000_000 + i * 10 + rng.randint(0, 30), "v": i}
        for i in range(n)
    ]
    df = pl.DataFrame(rows)
    return df.with_columns((pl.int_range(0, n) % INPUTS).alias(PARTITION))  # any key anywhere


def query(source: sn.Stream) -> sn.Stream:
    return (
        source.with_watermark("t", "50ms")
        .window(sn.Hopping("1s", "250ms"), by="k")
        .agg(pl.len().alias("n"), pl.col("v").sum())
    )


def batches(df: pl.DataFrame, size: int) -> list[pl.DataFrame]:
    """Per input partition in its order, dealt round-robin in batches of ``size``."""
    parts = [df.filter(pl.col(PARTITION) == p) for p in range(INPUTS)]
    out = []
    for offset in range(0, max(p.height for p in parts), size):
        out.extend(p.slice(offset, size) for p in parts if p.slice(offset, size).height)
    return out


def run_single(stream: sn.Stream, feed: list[pl.DataFrame]) -> pl.DataFrame:
    out: list[pl.DataFrame] = []
    ctx = Context(partitions=Partitions(assigned=set(range(INPUTS))))
    pipeline = Pipeline(stream.plan.root, ctx, lambda d: out.append(visible(d.rows)))
    for batch in feed:
        pipeline.push(pipeline.sources[0], batch)
    return pl.concat(out)


def run_split(stream: sn.Stream, feed: list[pl.DataFrame]) -> pl.DataFrame:
    """Upstream pipelines per input partition, then each stage's per repartition partition
    (as the worker's tasks), each reading what has arrived on its topic after every batch."""
    cut = topology.split(stream.plan.root, "rep", TARGETS)
    assert cut is not None
    producer = Producer()
    shared = Partitions(ids={("input", p): p for p in range(INPUTS)})  # the rows' own ids
    upstream = {
        p: Pipeline(cut.upstream, Context(producer=producer), lambda d: None) for p in range(INPUTS)
    }
    out: list[pl.DataFrame] = []

    def emit(delta: Delta) -> None:
        out.append(visible(delta.rows))

    stages: list[dict[int, Pipeline]] = []
    for k, stage in enumerate(cut.stages):
        feeding = (
            set(range(INPUTS))
            if k == 0
            else {shared.id_for("kafka", cut.topics[k - 1], q) for q in range(TARGETS)}
        )
        pipelines = {}
        for q in range(TARGETS):
            ctx = Context(
                producer=producer,
                partitions=Partitions(ids=shared.ids, assigned=feeding, scopes=shared.scopes),
            )
            last = k == len(cut.stages) - 1
            pipelines[q] = Pipeline(stage.root, ctx, emit if last else lambda d: None)
            for step in pipelines[q].steps:
                if isinstance(step.op, topology.RepartitionWriter):
                    step.op.pid = shared.id_for("kafka", stage.topic, q)
        stages.append(pipelines)
    read: dict[tuple[str, int], int] = defaultdict(int)
    for batch in feed:
        p = batch[PARTITION][0]
        upstream[p].push(upstream[p].sources[0], batch)
        for stage, pipelines in zip(cut.stages, stages, strict=True):
            for q, pipeline in pipelines.items():  # each reads what has arrived
                messages = producer.sent[(stage.topic, q)]
                frames = topology.decode(messages[read[(stage.topic, q)] :])
                read[(stage.topic, q)] = len(messages)
                if stage.topic in frames:
                    rows = frames[stage.topic].drop(topology.TASK)
                    pipeline.push(pipeline.sources[0], rows)
    return pl.concat(out)


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("size", [5, 40, 400])
def test_repartitioned_windows_equal_a_single_pipeline(seed: int, size: int) -> None:
    data = records(seed)
    stream = query(sn.from_records(data.drop(PARTITION), timestamp="t"))
    feed = batches(data, size)
    single, split = run_single(stream, feed), run_split(stream, feed)
    assert single.height > 100
    order = ["window_start", "k"]
    assert split.sort(order).equals(single.sort(order))


def test_marker_rows_carry_the_latest_time_of_their_partition() -> None:
    data = records(5, n=40)
    stream = query(sn.from_records(data.drop(PARTITION), timestamp="t"))
    cut = topology.split(stream.plan.root, "rep", TARGETS)
    assert cut is not None
    producer = Producer()
    pipeline = Pipeline(cut.upstream, Context(producer=producer), lambda d: None)
    batch = data.filter(pl.col(PARTITION) == 1)
    pipeline.push(pipeline.sources[0], batch)
    assert sorted(producer.sent) == [("rep", q) for q in range(TARGETS)]  # all hear the time
    for messages in producer.sent.values():
        frame = topology.decode(messages)["rep"]
        marker = frame.filter(pl.col("__sn_marker").fill_null(False))
        assert marker.select("t", PARTITION).rows() == [(batch["t"].max(), 1)]


def test_split_cuts_before_the_first_stateful_operator() -> None:
    bids = sn.from_records([{"k": "a", "t": 1, "v": 1}], timestamp="t")
    assert topology.split(bids.filter(pl.col("v") > 0).plan.root, "rep", 2) is None
    cut = topology.split(query(bids.filter(pl.col("v") > 0)).plan.root, "rep", 2)
    assert cut is not None and cut.topics == ["rep"]
    assert isinstance(cut.upstream, SinkNode)
    assert isinstance(cut.upstream.sink, topology.RepartitionSink)
    assert cut.upstream.sink.topic == "rep" and cut.upstream.sink.keys == ("k",)
    window: Any = cut.stages[0].root
    assert isinstance(window, WindowNode) and isinstance(window.inputs[0], SourceNode)
    # a chain: each stateful operator behind a repartition by its own keys
    twice = query(bids).group_by("n").agg(pl.len().alias("windows"))
    chain = topology.split(twice.plan.root, "rep", 2)
    assert chain is not None and chain.topics == ["rep", "rep-2"]
    first: Any = chain.stages[0].root
    assert isinstance(first, SinkNode) and first.sink.keys == ("n",) and first.sink.topic == "rep-2"
    second: Any = chain.stages[1].root
    assert isinstance(second, GroupByNode) and isinstance(second.inputs[0], SourceNode)


@pytest.mark.parametrize("size", [7, 300])
def test_a_chain_of_repartitions_equals_a_single_pipeline(size: int) -> None:
    """Windows by ``k``, then a running count of windows per size: two repartitions."""
    data = records(4)
    stream = (
        query(sn.from_records(data.drop(PARTITION), timestamp="t"))
        .group_by("n")
        .agg(pl.len().alias("windows"), pl.col("v").sum().alias("v"))
    )
    feed = batches(data, size)
    single, split = run_split(stream, feed), run_single(stream, feed)
    last = [
        f.unique(subset="n", keep="last", maintain_order=True).sort("n") for f in (split, single)
    ]
    assert last[0].height > 3
    assert last[0].equals(last[1])


def test_inputs_read_apart_meet_in_a_stage_of_both_sides() -> None:
    """Not co-partitioned, an interval join's sides go to topics of their own, by the join
    keys taken by position; a window join's sides are cut below their windows."""
    schema = {"k": pl.String, "t": pl.Int64}
    a = sn.from_records([{"k": "a", "t": 1}], schema=schema, timestamp="t")
    b = sn.from_records([{"k": "a", "t": 1}], schema=schema, timestamp="t")
    joined = a.join(b, on="k", within="1s")
    assert topology.split(joined.plan.root, "rep", 3) is None  # co-partitioned: not cut
    cut = topology.split(joined.plan.root, "rep", 3, apart=True)
    assert cut is not None and cut.topics == ["rep", "rep-right"]
    (stage,) = cut.stages
    assert stage.topics == ("rep", "rep-right") and stage.topic == "rep"
    assert [t.column if t else None for t in stage.event_times] == ["t", "t"]
    sinks: Any = [node for node in (cut.upstream,)]
    assert sinks[0].sink.topic == "rep" and sinks[0].sink.positional
    windows = (
        a.window(sn.Tumbling("10s"), by="k")
        .agg(pl.len().alias("n"))
        .join(b.window(sn.Tumbling("10s"), by="k").agg(pl.len().alias("m")), on="k")
    )
    cut = topology.split(windows.plan.root, "rep", 3, apart=True)
    assert cut is not None
    join: Any = cut.stages[0].root
    assert all(isinstance(side, WindowNode) for side in join.inputs)
    assert all(isinstance(side.inputs[0], SourceNode) for side in join.inputs)


def test_positional_keys_send_equal_keys_of_both_sides_to_one_partition() -> None:
    left = pl.DataFrame({"id": [f"p-{i}" for i in range(50)], "t": list(range(50))})
    right = left.rename({"id": "seller"})
    producer = Producer()
    for frame, key, topic in ((left, "id", "l"), (right, "seller", "r")):
        sink = topology.RepartitionSink(topic, 4, (key,), None, positional=True)
        sink.open(Context(producer=producer)).process(
            Delta(frame.with_columns(pl.lit(0).alias(PARTITION)))
        )
    where = {
        (topic, row[0]): q
        for (topic, q), messages in producer.sent.items()
        for row in topology.decode(messages)[topic].iter_rows()
    }
    assert len(set(where.values())) > 1
    assert all(where[("l", f"p-{i}")] == where[("r", f"p-{i}")] for i in range(50))
