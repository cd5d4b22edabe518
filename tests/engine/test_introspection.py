"""``query.state()``, ``windows()``, ``watermarks()``, ``lifecycle()`` and ``explain()``
(API.md §9) on running queries, against polars oracles over the records fed so far.

The input is a :class:`Feed`: an unbounded source whose batches the test hands over one by
one, so that the query stands at a known point between batches.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import polars as pl
import pytest
from polars.testing import assert_frame_equal

import streamnb as sn
from streamnb.definitions.eventtime import EventTime
from streamnb.engine.core import Context
from streamnb.engine.source import PartOwner, Reader, Source, refuse_owner
from streamnb.exceptions import ConfigError
from streamnb.plan import Plan, SourceNode
from streamnb.stream import Stream
from tests.threads import stop_all_and_check_no_thread_left, wait_until

pytestmark = pytest.mark.usefixtures("state_stores")  # small, keyed and on-disk state

T0 = datetime(2024, 1, 1, 12, 0, 0)
SCHEMA = pl.Schema({"k": pl.Int64, "c": pl.String, "v": pl.Int64, "t": pl.Datetime("us")})


@pytest.fixture(autouse=True)
def no_query_left_behind() -> Iterator[None]:
    yield
    stop_all_and_check_no_thread_left()


class Feed(Source):
    """An unbounded input whose batches come from the test (:meth:`send`); each one is one
    batch of the query. :meth:`end` ends it."""

    bounded = False

    def __init__(self, name: str = "feed", schema: pl.Schema = SCHEMA) -> None:
        self.name, self.schema = name, schema
        self.event_time = EventTime("t", 0, schema["t"])
        self.batches: queue.Queue[pl.DataFrame | None] = queue.Queue()
        self.sent: list[pl.DataFrame] = []

    def send(self, frame: pl.DataFrame) -> None:
        self.sent.append(frame)
        self.batches.put(frame)

    def end(self) -> None:
        self.batches.put(None)

    def seen(self) -> pl.DataFrame:
        return pl.concat(self.sent) if self.sent else self.schema.to_frame()

    def stream(self) -> Stream:
        return Stream(Plan(SourceNode((), self), self.schema, self.event_time, False))

    def open(self, ctx: Context, *, owner: PartOwner | None = None) -> Reader:
        refuse_owner(self, owner)
        return _FeedReader(self.batches)


class _FeedReader(Reader):
    def __init__(self, batches: queue.Queue[pl.DataFrame | None]) -> None:
        self.batches = batches

    def read(self, max_records: int, timeout: float) -> pl.DataFrame | None:
        try:
            frame = self.batches.get(timeout=max(timeout, 0.001))
        except queue.Empty:
            return None
        if frame is None:
            self.done = True
        return frame


def records(seconds: range, keys: int = 3, shift: int = 0) -> pl.DataFrame:
    """One record per second of ``seconds``, keys and values cycling."""
    return pl.DataFrame(
        {
            "k": [(s + shift) % keys for s in seconds],
            "c": [f"c{(s + shift) % 2}" for s in seconds],
            "v": [s * 10 for s in seconds],
            "t": [T0 + timedelta(seconds=s) for s in seconds],
        },
        schema=SCHEMA,
    )


def settled(query: sn.Query, expected: pl.DataFrame, of: Any) -> None:
    """Wait until ``of(query)`` equals ``expected`` (the query stands between two batches
    once it has taken the last one), then check it once more."""
    wait_until(lambda: of(query).equals(expected), timeout=10)
    assert_frame_equal(of(query), expected)


# -- state() ---------------------------------------------------------------------------------
def test_state_of_a_running_aggregate_equals_the_aggregate_of_the_records_seen() -> None:
    feed = Feed()
    query = (
        feed.stream()
        .group_by("k")
        .agg(pl.len().alias("n"), pl.col("v").sum().alias("total"), pl.col("v").max().alias("top"))
        .start()
    )
    try:
        for part in (range(0, 7), range(7, 20)):
            feed.send(records(part, keys=5))
            oracle = (
                feed.seen()
                .group_by("k")
                .agg(
                    pl.len().alias("n"),
                    pl.col("v").sum().alias("total"),
                    pl.col("v").max().alias("top"),
                )
                .sort("k")
            )
            settled(query, oracle, lambda q: q.state())
            for k in range(5):
                assert_frame_equal(query.state(key=k), oracle.filter(pl.col("k") == k))
        assert query.state(key=99).height == 0  # a key it never saw
    finally:
        query.stop()


def test_state_key_takes_a_tuple_or_a_dict_for_several_key_columns() -> None:
    feed = Feed()
    query = feed.stream().group_by("k", "c").agg(pl.col("v").sum().alias("total")).start()
    try:
        feed.send(records(range(12), keys=3))
        oracle = feed.seen().group_by("k", "c").agg(pl.col("v").sum().alias("total")).sort("k", "c")
        settled(query, oracle, lambda q: q.state())
        one = oracle.filter((pl.col("k") == 1) & (pl.col("c") == "c1"))
        assert one.height == 1
        assert_frame_equal(query.state(key=(1, "c1")), one)
        assert_frame_equal(query.state(key={"c": "c1", "k": 1}), one)
        assert_frame_equal(query.state(key={"c": "c0"}), oracle.filter(pl.col("c") == "c0"))
        with pytest.raises(ConfigError, match="'colour'"):
            query.state(key={"colour": "c1"})
        with pytest.raises(ConfigError, match="several key columns"):
            query.state(key=1)
        with pytest.raises(ConfigError, match=r"1 value.* for the 2 key columns"):
            query.state(key=(1,))
        with pytest.raises(ConfigError, match="does not fit"):
            query.state(key=("one", "c1"))
    finally:
        query.stop()


def test_state_of_a_stateless_query_is_a_clear_error() -> None:
    feed = Feed()
    query = feed.stream().filter(pl.col("v") > 0).start()
    try:
        with pytest.raises(ConfigError, match="keeps no keyed state"):
            query.state()
        with pytest.raises(ConfigError, match="keeps no keyed state"):
            query.windows()
    finally:
        query.stop()


# -- windows() -------------------------------------------------------------------------------
def _window_oracle(seen: pl.DataFrame, size: int, every: int, grace: int) -> pl.DataFrame:
    """Open (window, key) groups of in-order records: a record at t is in every
    [j·every, j·every + size) containing it; a window is open while end + grace > W."""
    watermark = seen.get_column("t").max()
    assert isinstance(watermark, datetime)
    rows = []
    for k, t in seen.select("k", "t").iter_rows():
        second = int((t - T0).total_seconds())
        start = (second // every) * every
        while start > second - size:
            rows.append({"k": k, "start": start})
            start -= every
    frame = pl.DataFrame(rows, schema={"k": pl.Int64, "start": pl.Int64})
    return (
        frame.group_by("start", "k")
        .agg(pl.len().cast(pl.Int64).alias("rows"))
        .select(
            (pl.lit(T0) + pl.duration(seconds=pl.col("start"))).alias("window_start"),
            (pl.lit(T0) + pl.duration(seconds=pl.col("start") + size)).alias("window_end"),
            (pl.lit(T0) + pl.duration(seconds=pl.col("start") + size + grace)).alias("closes_at"),
            "rows",
            "k",
        )
        .filter(pl.col("closes_at") > watermark)
        .sort("closes_at", "window_start", "k")
    )


@pytest.mark.parametrize(
    ("spec", "size", "every"), [(sn.Tumbling("10s"), 10, 10), (sn.Hopping("10s", "5s"), 10, 5)]
)
def test_windows_lists_exactly_the_windows_the_watermark_has_not_closed(
    spec: Any, size: int, every: int
) -> None:
    feed = Feed()
    query = (
        feed.stream()
        .window(spec, by="k", grace="2s")
        .agg(pl.len().alias("n"), pl.col("v").sum().alias("total"))
        .start()
    )
    try:
        for part in (range(0, 9), range(9, 23), range(23, 41)):
            feed.send(records(part))
            oracle = _window_oracle(feed.seen(), size, every, grace=2)
            assert oracle.height
            settled(query, oracle, lambda q: q.windows())
            # the partial results of those windows, as they would be emitted now
            state = query.state()
            assert_frame_equal(
                state.select("window_start", "window_end", "k", pl.col("n").cast(pl.Int64)),
                oracle.select("window_start", "window_end", "k", pl.col("rows").alias("n")),
                check_row_order=False,
            )
            assert_frame_equal(query.windows(key=1), oracle.filter(pl.col("k") == 1))
            first = oracle.row(0, named=True)
            window = query.lifecycle()["next_window"]
            assert window["window_start"].replace(tzinfo=None) == first["window_start"]
            assert window["closes_at"].replace(tzinfo=None) == first["closes_at"]
    finally:
        query.stop()


def test_windows_of_sessions_are_the_open_sessions() -> None:
    feed = Feed()
    query = (
        feed.stream().window(sn.Session("3s"), by="k", grace="1s").agg(pl.len().alias("n")).start()
    )
    try:
        # key 0 every 2 s (one session), key 1 at 0, 1 and then 10, 11 (two sessions)
        seconds = [(0, 0), (0, 2), (1, 0), (1, 1), (0, 4), (0, 6), (1, 10), (1, 11), (0, 8)]
        frame = pl.DataFrame(
            {
                "k": [k for k, _ in seconds],
                "c": ["c"] * len(seconds),
                "v": [s for _, s in seconds],
                "t": [T0 + timedelta(seconds=s) for _, s in seconds],
            },
            schema=SCHEMA,
        )
        frame = frame.sort("t", maintain_order=True)
        feed.send(frame)
        # W = 11 s: key 1's first session [0, 1 + 3) closes at 5 s; the others are open
        expected = pl.DataFrame(
            {
                "window_start": [T0, T0 + timedelta(seconds=10)],
                "window_end": [T0 + timedelta(seconds=11), T0 + timedelta(seconds=14)],
                "closes_at": [T0 + timedelta(seconds=12), T0 + timedelta(seconds=15)],
                "rows": [5, 2],
                "k": [0, 1],
            },
            schema_overrides={"rows": pl.Int64},
        )
        settled(query, expected, lambda q: q.windows())
        assert query.lifecycle()["next_window"]["window_end"].replace(tzinfo=None) == (
            T0 + timedelta(seconds=11)
        )
    finally:
        query.stop()


def test_rows_is_null_without_a_len_aggregate() -> None:
    feed = Feed()
    query = (
        feed.stream().window(sn.Tumbling("10s"), by="k").agg(pl.col("v").sum().alias("s")).start()
    )
    try:
        feed.send(records(range(5)))
        wait_until(lambda: query.windows().height == 3, timeout=10)
        assert query.windows().get_column("rows").null_count() == 3
    finally:
        query.stop()


# -- watermarks(), lifecycle(), explain() ---------------------------------------------------------
def test_explain_counts_records_per_operator_and_says_what_the_window_waits_for() -> None:
    feed = Feed()
    query = (
        feed.stream()
        .filter(pl.col("v") >= 0)
        .window(sn.Tumbling("10s"), by="k", grace="2s")
        .agg(pl.len().alias("n"))
        .start()
    )
    try:
        feed.send(records(range(0, 25)))
        late = records(range(3, 5))  # their window closed at 12 s: late
        feed.send(late)
        wait_until(lambda: query.status()["late"] == 2, timeout=10)
        text = str(query.explain())
        lines = text.splitlines()
        assert "filter" in lines[2] or "filter" in lines[3]
        window_line = next(line for line in lines if line.strip().startswith("window["))
        # 27 in; out: 3 keys × the closed windows [0, 10 s) and [10 s, 20 s); 2 late
        assert "in 27, out 6, late 2" in window_line
        assert "source[feed]  [in 27, out 27]" in text
        assert (
            "window 12:00:20–12:00:30 closes at watermark 12:00:32 (grace 2 s); "
            "the watermark is 12:00:24"
        ) in text
        assert "input feed is at 12:00:24" in text
        info = query.lifecycle()
        assert info["waiting"] == "watermark"
        assert info["needs"].replace(tzinfo=None) == T0 + timedelta(seconds=32)
        assert info["holding"] == [
            {
                "source": "feed",
                "partition": None,
                "watermark": info["watermark"],
                "behind_ms": 0.0,
                "lag": None,
                "reason": "behind",
            }
        ]
        assert repr(query.explain()) == text  # shown as text in a notebook
    finally:
        query.stop()


def test_lifecycle_counts_late_records_per_window() -> None:
    feed = Feed()
    query = feed.stream().window(sn.Tumbling("10s"), by="k").agg(pl.len().alias("n")).start()
    try:
        feed.send(records(range(0, 35)))  # the watermark is at 34 s: [0, 30 s) closed
        feed.send(records(range(3, 6)))  # late for [0, 10 s)
        feed.send(records(range(12, 13)))  # late for [10 s, 20 s)
        feed.send(records(range(31, 33)))  # on time
        feed.send(records(range(8, 10)))  # late for [0, 10 s)
        wait_until(lambda: query.status()["records_in"] == 43, timeout=10)
        wait_until(lambda: query.status()["late"] == 6, timeout=10)
        t0 = T0.replace(tzinfo=timezone.utc)  # lifecycle() gives times in UTC
        assert query.lifecycle()["late_windows"] == [
            {"window_start": t0 + timedelta(seconds=10), "window_end": t0 + timedelta(seconds=20),
             "late": 1},
            {"window_start": t0, "window_end": t0 + timedelta(seconds=10), "late": 5},
        ]  # fmt: skip
    finally:
        query.stop()


def test_watermarks_cover_every_input_of_a_union_and_name_the_one_holding_back() -> None:
    busy, quiet = Feed("busy"), Feed("quiet")
    query = (
        busy.stream()
        .union(quiet.stream())
        .window(sn.Tumbling("10s"), by="k")
        .agg(pl.len().alias("n"))
        .start()
    )
    try:
        busy.send(records(range(0, 15)))
        quiet.send(records(range(0, 3)))
        wait_until(lambda: query.watermarks()["watermark"].null_count() == 0, timeout=10)
        marks = query.watermarks()
        assert marks.columns == ["source", "partition", "watermark", "idle", "lag"]
        assert marks.get_column("source").to_list() == ["busy", "quiet"]
        assert marks.get_column("partition").to_list() == [None, None]
        assert marks.get_column("watermark").to_list() == [
            T0 + timedelta(seconds=14),
            T0 + timedelta(seconds=2),
        ]
        # quiet has nothing buffered: after max_idle (100 ms) it no longer holds busy back
        wait_until(lambda: query.watermarks().get_column("idle").to_list() == [False, True])
    finally:
        query.stop()


# -- consistency ------------------------------------------------------------------------------
def test_state_read_while_batches_run_is_always_a_state_between_batches() -> None:
    batch, batches, keys = 2_000, 60, 7_919
    feed = Feed()
    query = (
        feed.stream().group_by("k").agg(pl.len().alias("n"), pl.col("v").sum().alias("s")).start()
    )
    totals: list[int] = []
    sums: list[int] = []
    failures: list[BaseException] = []
    stop = threading.Event()

    def read() -> None:
        try:
            while not stop.is_set():
                state = query.state()
                totals.append(int(state.get_column("n").sum()) if state.height else 0)
                sums.append(int(state.get_column("s").sum()) if state.height else 0)
                single = query.state(key=5)
                assert single.height <= 1
        except BaseException as exc:  # reported below
            failures.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(batches):
            ids = pl.int_range(i * batch, (i + 1) * batch, eager=True)
            feed.send(
                pl.DataFrame(
                    {
                        "k": ids % keys,
                        "c": pl.repeat("c", batch, eager=True),
                        "v": pl.repeat(1, batch, eager=True, dtype=pl.Int64),
                        "t": pl.repeat(T0, batch, eager=True),
                    },
                    schema=SCHEMA,
                )
            )
            time.sleep(0.002)
        wait_until(lambda: int(query.state().get_column("n").sum()) == batch * batches)
    finally:
        stop.set()
        reader.join(30)
        query.stop()
    assert not failures, failures
    assert len(totals) > 10
    # every snapshot: whole batches only, never fewer than an earlier one
    assert all(n % batch == 0 for n in totals), sorted({n % batch for n in totals})
    assert sums == totals  # every v is 1: sum and count agree, row by row of one snapshot
    assert totals == sorted(totals)


def test_why_says_when_the_next_record_moves_the_watermark() -> None:
    from streamnb.engine.introspect import why

    info = {
        "operator": "window[...]",
        "grace_ms": 0,
        "watermark": None,
        "next_window": {"window_start": 0, "window_end": 10_000, "closes_at": 10_000},
        "needs": 10_000,
        "pending": 40_000,
        "holding": [],
        "idle": [{"source": "bids", "partition": 2}],
        "merge": {"input": "persons", "reason": "max_idle", "ms": 80.0},
    }
    assert why(info, {}) == [
        "window 0–10000 closes at watermark 10000 (grace 0 s); the watermark is −∞ (no event yet)",
        "the next record moves the watermark to 40000 (a partition went idle since the last "
        "one; a watermark moves only with records)",
        "partition 2 of bids is idle (it does not hold the watermark)",
        "input persons holds the others back in the event-time merge (max_idle, 80 ms)",
    ]
