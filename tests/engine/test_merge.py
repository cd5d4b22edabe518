"""Several inputs, one answer (docs/semantics.md §3.9): a query's inputs are merged by event
time, whatever the fetch timing.

The inputs here are replays whose reads return random slices, with random empty reads, so
each run sees another fetch timing and other batch boundaries. Every result is compared with
a record-at-a-time reference over the inputs merged as Kafka Streams merges them
(:func:`tests.oracle.merged`: the head with the smallest event time next, table updates first
at a tie, then input order).
"""

from __future__ import annotations

import random
import time
from typing import Any

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

import streamnb as sn
from streamnb.columns import DELETE
from streamnb.definitions.eventtime import EventTime
from streamnb.engine import joins
from streamnb.engine.core import Context
from streamnb.engine.source import PartOwner, Reader, Source, refuse_owner
from streamnb.plan import MapNode, Plan, SourceNode, TableNode
from streamnb.stream import Stream
from tests.oracle import interval_reference, merged, reference
from tests.threads import wait_until

pytestmark = pytest.mark.usefixtures("state_modes")  # both state representations

KEYS = ["a", "b", "c", None]


class Jittery(Source):
    """A replay of ``rows`` whose reads return random slices, with random empty reads.

    ``bounded=False`` makes it a source like a Kafka topic: a table over it is not read to
    its end first (nothing was there at the start), and it is known to have unread records
    until its end (a Kafka position below the end offset).
    """

    def __init__(
        self, rows: pl.DataFrame, *, name: str, time: str | None, seed: int, bounded: bool = True
    ) -> None:
        self.rows, self.seed, self.name, self.bounded = rows, seed, name, bounded
        self.schema = rows.schema
        self.event_time = EventTime(time, 0, rows.schema[time]) if time else None

    def open(self, ctx: Context, *, owner: PartOwner | None = None) -> Reader:
        refuse_owner(self, owner)
        return _JitteryReader(self.rows, random.Random(self.seed))


class _JitteryReader(Reader):
    def __init__(self, rows: pl.DataFrame, rng: random.Random) -> None:
        self.rows, self.rng, self.at = rows, rng, 0
        self.done = rows.height == 0

    def read(self, max_records: int, timeout: float) -> pl.DataFrame | None:
        if self.done or self.rng.random() < 0.4:
            return None
        n = min(max_records, self.rng.randint(1, 12))
        out = self.rows.slice(self.at, n)
        self.at += out.height
        self.done = self.at >= self.rows.height
        return out

    def has_unread(self) -> bool:
        return not self.done


class Silent(Source):
    """An unbounded input that never sends and knows of nothing unread."""

    name, schema, bounded = "silent", pl.Schema({"k": pl.String, "t": pl.Int64}), False
    event_time = EventTime("t", 0, pl.Int64())

    def open(self, ctx: Context, *, owner: PartOwner | None = None) -> Reader:
        return _SilentReader()


class _SilentReader(Reader):
    def read(self, max_records: int, timeout: float) -> pl.DataFrame | None:
        time.sleep(min(timeout, 0.01))
        return None


def stream_of(source: Source) -> Stream:
    return Stream(Plan(SourceNode((), source), source.schema, source.event_time, source.bounded))


def table_of(source: Source, key: str, deleted: str) -> Stream:
    """A table over ``source``'s changelog: a row where ``deleted`` is true is a tombstone."""
    assert source.schema is not None
    renamed = MapNode((SourceNode((), source),), "deleted", lambda f: f.rename({deleted: DELETE}))
    schema = pl.Schema({c: t for c, t in source.schema.items() if c != deleted})
    return Stream(Plan(TableNode((renamed,), (key,)), schema, None, False, (key,)))


@st.composite
def timed(draw: st.DrawFn, value: str, time_column: str = "t", n_max: int = 40) -> pl.DataFrame:
    """Records whose times drift forward, some out of order, some tied with other inputs."""
    n = draw(st.integers(0, n_max))
    rows, now = [], 1_000
    for _ in range(n):
        now = max(0, now + draw(st.integers(-15, 12)))
        rows.append(
            {"k": draw(st.sampled_from(KEYS)), time_column: now, value: draw(st.integers(0, 9))}
        )
    return pl.DataFrame(rows, schema={"k": pl.String, time_column: pl.Int64, value: pl.Int64})


def run(stream: Stream, **options: Any) -> tuple[pl.DataFrame, pl.DataFrame]:
    query = stream.start(**options)
    assert query.wait(60)
    assert query.status()["state"] == "finished"
    return query.result(), query.late()


# -- union ----------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(
    inputs=st.lists(timed("v"), min_size=2, max_size=3),
    size=st.integers(1, 30),
    grace=st.integers(0, 10),
    seed=st.integers(0, 2**32),
)
def test_a_union_windowed_equals_the_merged_inputs_record_at_a_time(
    inputs: list[pl.DataFrame], size: int, grace: int, seed: int
) -> None:
    aggs = [pl.len().alias("n"), pl.col("v").sum().alias("sum"), pl.col("v").last().alias("last")]
    order = merged([f.to_dicts() for f in inputs], lambda r: r["t"])
    in_order = pl.DataFrame([r for _, r in order], schema=inputs[0].schema)
    want = reference(
        in_order, time="t", kind="tumbling", size=size, every=size, grace=grace, by=["k"], aggs=aggs
    )
    streams = [
        stream_of(Jittery(f, name=f"in{i}", time="t", seed=seed + i)) for i, f in enumerate(inputs)
    ]
    union = streams[0].union(*streams[1:])
    got, late = run(union.window(sn.Tumbling(f"{size}ms"), by="k", grace=f"{grace}ms").agg(aggs))
    assert_frame_equal(got, want.emitted)  # in closing order too
    assert_frame_equal(late, in_order[want.late], check_dtypes=False)


# -- stream–table joins ---------------------------------------------------------------------


def enrich(
    order: list[tuple[int, dict[str, Any]]], how: str, apply: Any, columns: tuple[str, ...]
) -> list[dict[str, Any]]:
    """Record at a time: input 1 changes the table (``apply``), input 0 records join it;
    ``columns``: the table's value columns."""
    table: dict[Any, dict[str, Any]] = {}
    out = []
    for side, row in order:
        if side == 1:
            apply(table, row)
        elif row["k"] is not None and row["k"] in table:
            out.append({**row, **table[row["k"]]})
        elif how == "left":
            out.append({**row, **dict.fromkeys(columns, None)})
    return out


@settings(max_examples=150, deadline=None)
@given(
    stream=timed("v"),
    changes=timed("w", "tt"),
    deleted=st.lists(st.booleans(), min_size=40, max_size=40),
    how=st.sampled_from(["inner", "left"]),
    seed=st.integers(0, 2**32),
)
def test_a_stream_joins_the_table_version_of_its_moment_in_event_time(
    stream: pl.DataFrame, changes: pl.DataFrame, deleted: list[bool], how: str, seed: int
) -> None:
    changes = changes.with_columns(gone=pl.Series(deleted[: changes.height], dtype=pl.Boolean))

    def apply(table: dict[Any, dict[str, Any]], row: dict[str, Any]) -> None:
        if row["gone"]:
            table.pop(row["k"], None)
        else:
            table[row["k"]] = {"w": row["w"], "tt": row["tt"]}

    # table updates rank first at equal times
    order = merged(
        [stream.to_dicts(), changes.to_dicts()], lambda r: r.get("t", r.get("tt")), [1, 0]
    )
    want = enrich(order, how, apply, ("w", "tt"))
    left = stream_of(Jittery(stream, name="orders", time="t", seed=seed))
    table = table_of(
        Jittery(changes, name="customers", time="tt", seed=seed + 1, bounded=False), "k", "gone"
    )
    got, _ = run(left.join(table, on="k", how=how))  # type: ignore[arg-type]
    schema = {"k": pl.String, "t": pl.Int64, "v": pl.Int64, "w": pl.Int64, "tt": pl.Int64}
    assert_frame_equal(got, pl.DataFrame(want, schema=schema).select(got.columns))


@settings(max_examples=150, deadline=None)
@given(
    auctions=timed("v"),
    persons=timed("w"),
    how=st.sampled_from(["inner", "left"]),
    seed=st.integers(0, 2**32),
)
def test_a_stream_joins_a_running_aggregate_as_of_each_record(
    auctions: pl.DataFrame, persons: pl.DataFrame, how: str, seed: int
) -> None:
    """Nexmark q3's shape: the table is a running aggregate of another timed stream."""

    def apply(table: dict[Any, dict[str, Any]], row: dict[str, Any]) -> None:
        before = table.get(row["k"], {"w": None, "n": 0})
        table[row["k"]] = {"w": row["w"], "n": before["n"] + 1}

    order = merged([auctions.to_dicts(), persons.to_dicts()], lambda r: r["t"], [1, 0])
    want = enrich(order, how, apply, ("w", "n"))
    people = stream_of(Jittery(persons, name="persons", time="t", seed=seed + 1, bounded=False))
    table = people.group_by("k").agg(pl.col("w").last(), pl.len().alias("n"))
    left = stream_of(Jittery(auctions, name="auctions", time="t", seed=seed))
    got, _ = run(left.join(table, on="k", how=how))  # type: ignore[arg-type]
    schema = {"k": pl.String, "t": pl.Int64, "v": pl.Int64, "w": pl.Int64, "n": pl.UInt32}
    assert_frame_equal(got, pl.DataFrame(want, schema=schema), check_dtypes=False)


@settings(max_examples=60, deadline=None)
@given(
    auctions=timed("v"),
    persons=timed("w"),
    seed=st.integers(0, 2**32),
)
def test_a_table_without_running_versions_is_joined_run_by_run(
    auctions: pl.DataFrame, persons: pl.DataFrame, seed: int
) -> None:
    """A distinct count has no cumulative form: the pipeline takes the merged batch as runs
    of one input each (``merge.runs``), exact all the same."""

    def apply(table: dict[Any, dict[str, Any]], row: dict[str, Any]) -> None:
        seen = table.get(row["k"], {"seen": set()})["seen"] | {row["w"]}
        table[row["k"]] = {"seen": seen, "n": len(seen)}

    order = merged([auctions.to_dicts(), persons.to_dicts()], lambda r: r["t"], [1, 0])
    want = [
        {k: v for k, v in r.items() if k != "seen"} for r in enrich(order, "left", apply, ("n",))
    ]
    people = stream_of(Jittery(persons, name="persons", time="t", seed=seed + 1, bounded=False))
    table = people.group_by("k").agg(pl.col("w").n_unique().alias("n"))
    left = stream_of(Jittery(auctions, name="auctions", time="t", seed=seed))
    joined = left.join(table, on="k", how="left")
    got, _ = run(joined)
    schema = {"k": pl.String, "t": pl.Int64, "v": pl.Int64, "n": pl.UInt32}
    assert_frame_equal(got, pl.DataFrame(want, schema=schema), check_dtypes=False)


def test_which_pipelines_take_merged_batches() -> None:
    from streamnb.engine.core import Context
    from streamnb.engine.executor import Pipeline

    def merged_mode(stream: Stream) -> bool:
        return Pipeline(stream.plan.root, Context(), lambda d: None).merged

    a = sn.from_records([{"k": "a", "t": 1, "w": 1}], timestamp="t")
    b = sn.from_records([{"k": "a", "t": 1, "w": 1}], timestamp="t")
    assert merged_mode(a.union(b))
    assert merged_mode(a.join(b.group_by("k").agg(pl.col("w").last()), on="k"))
    assert not merged_mode(a.join(b.group_by("k").agg(pl.col("w").n_unique()), on="k"))
    assert not merged_mode(a.map_batches(lambda f: f.head(0)).union(b))


# -- interval joins ---------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(left=timed("v"), right=timed("x"), within=st.integers(0, 15), seed=st.integers(0, 2**32))
def test_an_interval_join_sees_its_inputs_merged_by_event_time(
    left: pl.DataFrame, right: pl.DataFrame, within: int, seed: int
) -> None:
    order = merged([left.to_dicts(), right.to_dicts()], lambda r: r["t"])
    want, late = interval_reference(order, within=within, grace=0, delay=0, how="left")
    a = stream_of(Jittery(left, name="left", time="t", seed=seed))
    b = stream_of(Jittery(right, name="right", time="t", seed=seed + 1))
    got, got_late = run(a.join(b, on="k", how="left", within=f"{within}ms"))
    schema = {"k": pl.String, "t": pl.Int64, "v": pl.Int64, "t_right": pl.Int64, "x": pl.Int64}
    canonical = lambda df: df.sort(df.columns, nulls_last=True)  # noqa: E731
    assert_frame_equal(canonical(got), canonical(pl.DataFrame(want, schema=schema)))
    assert got_late.height == len(late)


def test_an_interval_join_keeping_a_frame_per_batch_sees_its_inputs_merged(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As above, each batch kept a frame of its own (by default, small batches share one)."""
    monkeypatch.setattr(joins, "_CHUNK_ROWS", 1)
    test_an_interval_join_sees_its_inputs_merged_by_event_time()


# -- waiting ----------------------------------------------------------------------------------


def test_an_input_with_nothing_to_read_holds_the_others_for_max_idle_and_says_so() -> None:
    rows = pl.DataFrame({"k": ["a"], "t": [5_000]})
    quiet = stream_of(Silent())
    busy = stream_of(Jittery(rows, name="busy", time="t", seed=0, bounded=False))
    query = busy.union(quiet).start(max_idle="1500ms")
    try:
        wait_until(lambda: (query.status()["held_by"] or {}).get("ms", 0) > 300)
        held = query.status()["held_by"]
        assert held is not None
        assert (held["input"], held["reason"]) == ("silent", "max_idle")
        assert query.result().height == 0  # the record waits for the silent input
        wait_until(lambda: query.result().height == 1, timeout=5)
        assert query.status()["held_by"] is None
    finally:
        query.stop()


def test_a_source_max_idle_is_checked() -> None:
    with pytest.raises(sn.ConfigError, match="max_idle"):
        sn.nexmark(10, max_idle="soon")
    with pytest.raises(sn.ConfigError, match="max_idle"):
        sn.from_records([{"t": 1}], timestamp="t").start(max_idle="-1s")


def test_bounded_inputs_are_merged_whatever_their_batch_sizes() -> None:
    """Two replays of interleaved times: the union's output is in event-time order."""
    evens = sn.from_records([{"t": t} for t in range(0, 200, 2)], timestamp="t", batch_size=70)
    odds = sn.from_records([{"t": t} for t in range(1, 200, 2)], timestamp="t", batch_size=3)
    got = evens.union(odds).collect()
    assert got.get_column("t").to_list() == list(range(200))


def _merge_of_a_table_and_a_stream() -> Any:
    from streamnb.engine.merge import Input, Merge

    time = EventTime("t", 0, pl.Int64)
    return Merge(
        [Input("table", time, rank=0, max_idle=0.1), Input("s", time, rank=2, max_idle=0.1)]
    )


def test_forgetting_queued_records_keeps_a_table_s_changes() -> None:
    """A task resumed from its commit reads its streams again, never a global table's."""
    merge = _merge_of_a_table_and_a_stream()
    merge.offer(1, pl.DataFrame({"k": ["a"], "t": [10]}))
    merge.offer(0, pl.DataFrame({"k": ["a"], "t": [50]}))
    released = merge.release([False, True])  # the stream at 10 may still send before 50
    assert [(i, rows["t"].to_list()) for i, rows in released] == [(1, [10])]
    merge.forget_queued([1])
    assert merge.inputs[0].buffered == 1  # the table's change is still there
    merge.offer(1, pl.DataFrame({"k": ["b"], "t": [60]}))  # the stream, read again
    released = merge.release([False, True])
    assert [(i, rows["t"].to_list()) for i, rows in released] == [(0, [50])]


def test_a_merge_snapshot_restores_what_it_held() -> None:
    held = _merge_of_a_table_and_a_stream()
    held.offer(0, pl.DataFrame({"k": ["a"], "t": [50]}))
    held.offer(1, pl.DataFrame({"k": ["a", "b", "c"], "t": [10, 70, 60]}))
    held.release([True, True])  # 50 and 10 go; 70 and 60 wait for the table
    restored = _merge_of_a_table_and_a_stream()
    restored.restore(held.snapshot())
    outs = []
    for merge in (held, restored):
        merge.offer(1, pl.DataFrame({"k": ["d"], "t": [65]}))  # keyed by the running max: 70
        merge.offer(0, pl.DataFrame({"k": ["x"], "t": [80]}))
        outs.append([(i, rows.to_dicts()) for i, rows in merge.release([True, True])])
    assert outs[0] == outs[1]
    assert [[r["k"] for r in rows] for _, rows in outs[1]] == [["b", "c", "d"]]
    assert outs[1][0][1][0]["__sn_order"] == 2  # numbered on from the snapshot
