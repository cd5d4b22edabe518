"""``Query``: the life cycle of a stream running in the background (docs/semantics.md §4, §7).

Every wait is bounded, so a broken query fails the test instead of hanging it.
"""

from __future__ import annotations

import gc
import json
import time
import weakref
from collections.abc import Iterator
from datetime import datetime

import polars as pl
import pytest
from polars.testing import assert_frame_equal

import streamnb as sn
from tests.threads import stop_all_and_check_no_thread_left, streamnb_threads, wait_until

pytestmark = pytest.mark.usefixtures("state_modes")  # both state representations

STATES = {"running", "paused", "finished", "stopped", "failed"}
TIMEOUT = 20.0


@pytest.fixture(autouse=True)
def no_query_left_behind() -> Iterator[None]:
    yield
    stop_all_and_check_no_thread_left()


def paced() -> sn.Stream:
    return sn.nexmark(rate=2000)


# -- start / status ---------------------------------------------------------------------------


def test_start_returns_at_once_for_an_unbounded_paced_source() -> None:
    began = time.monotonic()
    q = paced().start("paced")
    elapsed = time.monotonic() - began
    try:
        assert elapsed < 1.0
        assert isinstance(q, sn.Query)
        assert q.name == "paced"
        assert q.status()["state"] == "running"
        assert q.wait(timeout=0.2) is False  # it does not end by itself
    finally:
        q.stop()


def test_status_keys_and_types_and_they_move() -> None:
    q = paced().window(sn.Tumbling("5ms"), by="channel").agg(pl.len().alias("n")).start()
    try:
        wait_until(lambda: q.status()["records_out"] > 0)
        first = q.status()
        assert {"state", "records_in", "records_out", "late", "errors", "watermark", "lag",
                "rate"} <= set(first)  # fmt: skip
        assert first["state"] == "running"
        for key in ("records_in", "records_out", "late", "errors"):
            assert type(first[key]) is int, key
        assert first["late"] == 0 and first["errors"] == 0
        assert first["lag"] is None or type(first["lag"]) is int
        assert isinstance(first["rate"], (int, float))
        assert isinstance(first["watermark"], datetime)
        wait_until(lambda: q.status()["records_in"] > first["records_in"] + 200)
        wait_until(lambda: q.status()["watermark"] > first["watermark"])
        wait_until(lambda: q.status()["records_out"] > first["records_out"])
        later = q.status()
        assert later["rate"] > 0
        # paced at 2000 events/s: 92 % of them are bids
        assert 200 < later["rate"] < 20_000
    finally:
        q.stop()


def test_plain_event_time_stream_reports_its_watermark() -> None:
    """A Nexmark stream has event time ``dateTime`` with delay 0: W = latest event time seen."""
    q = paced().start()
    try:
        wait_until(lambda: q.status()["records_in"] > 0)
        wait_until(lambda: q.status()["watermark"] is not None, timeout=2)
        first = q.status()["watermark"]
        assert isinstance(first, datetime)
        wait_until(lambda: q.status()["watermark"] > first, timeout=2)
        q.pause()  # the batch under way ends; then status and result hold the same batches
        before = -1
        while (now := q.status()["records_in"]) != before:
            before = now
            time.sleep(0.2)
        latest = q.result()["dateTime"].max()
        assert first < q.status()["watermark"] <= latest
    finally:
        q.stop()


def test_records_out_counts_rows_of_an_append_stream() -> None:
    df = pl.DataFrame({"v": list(range(50))})
    q = sn.from_records(df, batch_size=7).filter(pl.col("v") % 5 == 0).start()
    assert q.wait(timeout=TIMEOUT)
    status = q.status()
    assert (status["state"], status["records_in"], status["records_out"]) == ("finished", 50, 10)
    assert (status["late"], status["errors"]) == (0, 0)


# -- pause / resume / stop --------------------------------------------------------------------


def test_pause_stops_input_and_resume_restarts_it() -> None:
    q = paced().start("pausable")
    try:
        wait_until(lambda: q.status()["records_in"] > 0)
        q.pause()
        assert q.status()["state"] == "paused"
        time.sleep(0.3)  # let a batch in flight finish
        held = q.status()["records_in"]
        time.sleep(0.5)
        assert q.status()["records_in"] == held
        assert q.status()["state"] == "paused"
        assert q in sn.queries()  # paused queries are still listed
        q.resume()
        assert q.status()["state"] == "running"
        wait_until(lambda: q.status()["records_in"] > held, timeout=5)
    finally:
        q.stop()


def test_stop_ends_the_thread() -> None:
    q = paced().start("stoppable")
    wait_until(lambda: q.status()["records_in"] > 0)
    assert [t.name for t in streamnb_threads()] == ["streamnb:stoppable"]
    q.stop()
    assert q.status()["state"] == "stopped"
    assert streamnb_threads() == []
    assert q.wait(timeout=1) is True
    assert q not in sn.queries()
    stopped_at = q.status()["records_in"]
    time.sleep(0.2)
    assert q.status()["records_in"] == stopped_at


def test_stop_while_paused() -> None:
    q = paced().start()
    wait_until(lambda: q.status()["records_in"] > 0)
    q.pause()
    q.stop()
    assert q.status()["state"] == "stopped"
    assert streamnb_threads() == []


# -- bounded sources ------------------------------------------------------------------------------


def test_wait_on_a_bounded_source_finishes_and_result_equals_collect() -> None:
    stream = (
        sn.nexmark(events=20_000)
        .window(sn.Tumbling("10ms"), by="channel")
        .agg(pl.len().alias("bids"), pl.col("price").max().alias("top"))
    )
    q = stream.start()
    assert q.wait(timeout=TIMEOUT) is True
    assert q.status()["state"] == "finished"
    assert q.status()["records_in"] == 18_400
    assert q.exception is None
    result = q.result()
    assert result["bids"].sum() + q.status()["late"] == 18_400  # every bid counted or late
    assert result.height == result.select("window_start", "channel").n_unique()
    assert_frame_equal(result, stream.collect(timeout=TIMEOUT))
    assert q not in sn.queries()


def test_running_group_by_equals_polars_group_by() -> None:
    bids = sn.nexmark(events=10_000)
    aggs = [
        pl.len().alias("n"),
        pl.col("price").sum().alias("total"),
        pl.col("price").mean().alias("avg"),
        pl.col("bidder").n_unique().alias("bidders"),
    ]
    q = bids.group_by("channel").agg(aggs).start()
    assert q.wait(timeout=TIMEOUT)
    want = bids.collect(timeout=TIMEOUT).group_by("channel").agg(aggs).sort("channel")
    assert_frame_equal(q.result().sort("channel"), want, check_exact=False, rel_tol=1e-9)


def test_running_group_by_on_records_with_null_keys() -> None:
    df = pl.DataFrame({"k": ["a", None, "b", "a", None, "c", "a"], "v": [1, 2, 3, 4, 5, 6, 7]})
    aggs = [pl.col("v").sum().alias("s"), pl.col("v").last().alias("last"), pl.len().alias("n")]
    q = sn.from_records(df, batch_size=2).group_by("k").agg(aggs).start()
    assert q.wait(timeout=TIMEOUT)
    want = df.group_by("k").agg(aggs).sort("k", nulls_last=False)
    assert_frame_equal(q.result().sort("k", nulls_last=False), want)


# -- the registry -------------------------------------------------------------------------------


def test_queries_lists_running_queries_only() -> None:
    a = paced().start("list-a")
    b = paced().start("list-b")
    try:
        names = [q.name for q in sn.queries()]
        assert "list-a" in names and "list-b" in names
        a.stop()
        assert [q.name for q in sn.queries() if q.name.startswith("list-")] == ["list-b"]
        finished = sn.from_records([{"v": 1}]).start("list-finished")
        assert finished.wait(timeout=TIMEOUT)
        assert "list-finished" not in [q.name for q in sn.queries()]
    finally:
        b.stop()
    assert not [q for q in sn.queries() if q.name.startswith("list-")]


def test_starting_a_query_with_a_running_name_replaces_it() -> None:
    old = paced().start("same-name")
    wait_until(lambda: old.status()["records_in"] > 0)
    new = paced().start("same-name")
    try:
        assert old.status()["state"] == "stopped"
        assert not any(q is old for q in sn.queries())
        assert [q for q in sn.queries() if q.name == "same-name"] == [new]
        assert [t.name for t in streamnb_threads()] == ["streamnb:same-name"]
        wait_until(lambda: new.status()["records_in"] > 0)
        assert new.status()["state"] == "running"
    finally:
        new.stop()


def test_the_registry_lets_go_of_queries_that_ended() -> None:
    held = paced().start()
    wait_until(lambda: held.status()["records_in"] > 0)
    held.stop()
    dropped = [weakref.ref(paced().start()) for _ in range(3)]
    for ref in dropped:
        query = ref()
        assert query is not None
        query.stop()
    bounded = sn.from_records([{"v": 1}]).start()
    assert bounded.wait(TIMEOUT)
    ended = weakref.ref(bounded)
    del query, bounded
    gc.collect()
    assert [ref() for ref in [*dropped, ended]] == [None] * 4  # nothing else holds them
    # one that is held still answers, after it stopped
    assert held.status()["state"] == "stopped" and held.status()["records_in"] > 0
    assert held.errors().height == 0 and held.result().height > 0


def test_unnamed_queries_get_distinct_names() -> None:
    s = sn.from_records([{"v": 1}])
    a, b = s.start(), s.start()
    assert a.wait(timeout=TIMEOUT) and b.wait(timeout=TIMEOUT)
    assert a.name != b.name
    assert_frame_equal(a.result(), b.result())


# -- failures and bad records ---------------------------------------------------------------------


def test_a_failing_map_batches_function_fails_the_query() -> None:
    class Boom(RuntimeError):
        pass

    def explode_on_data(frame: pl.DataFrame) -> pl.DataFrame:
        if frame.height:
            raise Boom("user code broke")
        return frame

    q = sn.from_records([{"v": 1}, {"v": 2}]).map_batches(explode_on_data).start("boom")
    with pytest.raises(sn.QueryFailed, match="user code broke") as info:
        q.wait(timeout=TIMEOUT)
    assert isinstance(info.value.__cause__, Boom)
    assert isinstance(q.exception, Boom)
    assert q.status()["state"] == "failed"
    assert q not in sn.queries()


def test_failing_query_on_an_unbounded_source() -> None:
    def fail_late(frame: pl.DataFrame) -> pl.DataFrame:
        if frame.height and frame["auction"].max() is not None:
            raise ValueError("no auctions please")
        return frame

    q = paced().map_batches(fail_late).start()
    with pytest.raises(sn.QueryFailed):
        q.wait(timeout=TIMEOUT)
    assert q.status()["state"] == "failed"
    assert isinstance(q.exception, ValueError)


RECORDS = [
    {"k": "a", "v": 1, "t": 100},
    {"k": "b", "v": 2},  # no event time
    {"k": "c", "v": 3, "t": 300},
    {"k": "d", "v": 4, "t": None},  # null event time
    {"k": "e", "v": 5, "t": 500},
]


def test_errors_fail_stops_the_query_with_the_reason() -> None:
    q = sn.from_records(RECORDS, timestamp="t", batch_size=1).start(errors="fail")
    with pytest.raises(sn.QueryFailed) as info:
        q.wait(timeout=TIMEOUT)
    message = str(info.value)
    assert "event time" in message and "'t'" in message
    assert "position 1" in message
    assert q.status()["state"] == "failed"
    assert q.exception is not None
    # nothing after the bad record was processed
    assert q.result()["k"].to_list() == ["a"]


def test_errors_keep_routes_bad_records_to_errors_and_goes_on() -> None:
    q = sn.from_records(RECORDS, timestamp="t", batch_size=2).start()
    assert q.wait(timeout=TIMEOUT)
    assert q.status()["state"] == "finished"
    assert q.result()["k"].to_list() == ["a", "c", "e"]
    errors = q.errors().sort("position")
    assert q.status()["errors"] == 2
    assert errors["position"].to_list() == [1, 3]
    assert all("event time" in r and "'t'" in r for r in errors["reason"])
    for position, record in zip(errors["position"], errors["record"], strict=True):
        original = RECORDS[position]
        decoded = json.loads(record)
        assert {k: decoded.get(k) for k in original} == original
        assert all(decoded[k] is None for k in set(decoded) - set(original))
    assert set(errors.columns) >= {"reason", "position", "record"}


def test_bad_error_policy_is_refused_at_start() -> None:
    with pytest.raises(sn.ConfigError, match="errors="):
        sn.from_records([{"v": 1}]).start(errors="ignore")  # type: ignore[arg-type]


def test_late_records_are_held_in_late() -> None:
    records = [
        {"k": "a", "v": 1, "t": 100},
        {"k": "a", "v": 2, "t": 2500},
        {"k": "b", "v": 3, "t": 50},  # window [0, 1000) closed: late
        {"k": "a", "v": 4, "t": 2600},
        {"k": "c", "v": 5, "t": 1999},  # window [1000, 2000) closed: late
    ]
    stream = (
        sn.from_records(records, timestamp="t", batch_size=1)
        .window(sn.Tumbling("1s"), by="k")
        .agg(pl.len().alias("n"), pl.col("v").sum().alias("s"))
    )
    q = stream.start()
    assert q.wait(timeout=TIMEOUT)
    assert q.status()["late"] == 2
    assert q.late().select("k", "v", "t").to_dicts() == [records[2], records[4]]
    assert q.result().rows() == [(0, 1000, "a", 1, 1), (2000, 3000, "a", 2, 6)]


def test_emit_update_result_holds_the_last_row_per_window() -> None:
    records = [
        {"k": "a", "v": 1, "t": 100},
        {"k": "a", "v": 2, "t": 200},
        {"k": "b", "v": 3, "t": 300},
        {"k": "a", "v": 4, "t": 1100},
        {"k": "a", "v": 5, "t": 900},  # within the delay: still counts
        {"k": "b", "v": 6, "t": 1400},
        {"k": "b", "v": 7, "t": 50},  # W = 1400 - 300 ≥ 1000: late
    ]
    aggs = [pl.len().alias("n"), pl.col("v").sum().alias("s"), pl.col("v").last().alias("last")]

    def windowed(emit: str, batch_size: int) -> sn.Stream:
        return (
            sn.from_records(records, timestamp="t", batch_size=batch_size)
            .with_watermark("t", "300ms")
            .window(sn.Tumbling("1s"), by="k", emit=emit)  # type: ignore[arg-type]
            .agg(aggs)
        )

    want = [
        (0, 1000, "a", 3, 8, 5),
        (0, 1000, "b", 1, 3, 3),
        (1000, 2000, "a", 1, 4, 4),
        (1000, 2000, "b", 1, 6, 6),
    ]
    for batch_size in (1, 2, 100):
        q = windowed("update", batch_size).start()
        assert q.wait(timeout=TIMEOUT)
        assert sorted(q.result().rows()) == want
        assert q.status()["late"] == 1
        update = windowed("update", batch_size).collect(timeout=TIMEOUT)
        final = windowed("final", batch_size).collect(timeout=TIMEOUT)
        assert sorted(update.rows()) == sorted(final.rows()) == want


def test_emit_update_on_an_unbounded_source_shows_windows_while_open() -> None:
    q = (
        paced()
        .window(sn.Tumbling("1h"), emit="update")
        .agg(pl.len().alias("n"), pl.col("price").max().alias("top"))
        .start()
    )
    try:
        wait_until(lambda: q.result().height > 0 and q.result()["n"].sum() > 100)
        first = q.result()
        assert first.height in (1, 2)  # one window (two if the hour turns)
        wait_until(lambda: q.result()["n"].sum() > first["n"].sum())
        # an upsert table: still one row per window
        assert q.result()["window_start"].is_unique().all()
    finally:
        q.stop()
