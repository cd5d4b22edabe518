"""The Kafka source's pipelined read against a real broker: it takes what has arrived without
waiting for a full batch, fetches ahead without moving positions or commits until the query
takes a batch, grows its batches with a backlog, parks its threads under a light load (the
query's thread reads itself) and wakes them for a backlog (not for a burst), and leaves no
thread behind."""

from __future__ import annotations

import gc
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from confluent_kafka import Consumer, TopicPartition

import streamnb as sn
from streamnb.engine import heap
from streamnb.engine.core import Context
from streamnb.io.kafka.client import CHUNK, consume_available
from streamnb.io.sources.kafka import KafkaReader
from streamnb.io.sources.kafka.prefetch import FULL_TAKES, LIGHT_TAKES, Fetch
from tests.io.kafka.test_source import run_until

Produce = Callable[..., list[tuple[int, int]]]


def open_reader(topic: str, bootstrap: str) -> KafkaReader:
    """A reader of ``topic`` from its beginning, as a query opens it (prefetching)."""
    source = sn.from_kafka(topic, bootstrap_servers=bootstrap, start="earliest").plan.sources()[0]
    return source.open(Context())  # type: ignore[attr-defined,no-any-return]


def records(n: int, start: int = 0) -> list[dict[str, Any]]:
    return [{"id": i, "ts": 1_000 * i} for i in range(start, start + n)]


def test_consume_available_takes_what_has_arrived_without_waiting_for_a_full_batch(
    topic: str, produce: Produce, bootstrap: str
) -> None:
    produce(topic, records(3))
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"g-{uuid.uuid4()}",
            "auto.offset.reset": "earliest",
        }
    )
    try:
        consumer.assign([TopicPartition(topic, 0, 0)])
        got: list[Any] = []
        deadline = time.monotonic() + 30
        while len(got) < 3 and time.monotonic() < deadline:
            started = time.monotonic()
            # consume(50_000, 20) would wait the whole 20 s for a batch that never fills
            got += consume_available(consumer, 50_000, 20.0)
            assert time.monotonic() - started < 10
        assert [m.offset() for m in got] == [0, 1, 2]
        started = time.monotonic()
        assert consume_available(consumer, 50_000, 0.2) == []  # nothing more: one short wait
        assert time.monotonic() - started < 5
    finally:
        consumer.close()


def test_fetched_records_move_positions_only_once_the_query_takes_them(
    topic: str, produce: Produce, bootstrap: str
) -> None:
    produce(topic, records(500))
    reader = open_reader(topic, bootstrap)
    try:
        # let the threads fetch and decode ahead; the query has taken nothing yet
        deadline = time.monotonic() + 30
        while reader._prefetch.queued < 500 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert reader._prefetch.queued == 500
        assert dict(reader.positions) == {}  # started at the beginning: none known yet
        rows = reader.read(200, 10.0)
        assert rows is not None and rows["id"].to_list() == list(range(rows.height))
        assert dict(reader.positions) == {(topic, 0): rows.height}
        taken = rows.height
        while taken < 500:
            more = reader.read(10_000, 10.0)
            assert more is not None
            assert more["id"].to_list() == list(range(taken, taken + more.height))
            taken += more.height
        assert dict(reader.positions) == {(topic, 0): 500}
    finally:
        reader.close()


def test_a_group_commits_only_what_the_query_processed(
    topic: str, produce: Produce, bootstrap: str
) -> None:
    produce(topic, records(100))
    group = f"g-{uuid.uuid4()}"
    gate = threading.Event()  # holds the first batch in the pipeline

    def held(batch: Any) -> Any:
        gate.wait(30)
        return batch

    query = (
        sn.from_kafka(topic, bootstrap_servers=bootstrap, start="earliest", group_id=group)
        .map_batches(held)
        .start(max_batch=40)
    )
    try:
        time.sleep(2)  # the fetching threads run ahead and fetch everything
        assert committed(bootstrap, group, topic) is None  # nothing processed, nothing sent
        gate.set()
        run_until(query, 100)
    finally:
        gate.set()
        query.stop()
    assert committed(bootstrap, group, topic) == 100
    assert query.result().height == 100


def committed(bootstrap: str, group: str, topic: str) -> int | None:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        [tp] = consumer.committed([TopicPartition(topic, 0)], timeout=10)
        return tp.offset if tp.offset >= 0 else None
    finally:
        consumer.close()


def test_a_backlog_is_decoded_in_larger_batches(
    topic: str, produce: Produce, bootstrap: str
) -> None:
    produce(topic, records(20_000))
    reader = open_reader(topic, bootstrap)
    try:
        # a backlog: everything fetched and decoded while nothing is taken (waited for, not
        # slept on: a loaded machine takes longer than any fixed pause)
        assert reader._prefetch is not None
        deadline = time.monotonic() + 60
        while reader._prefetch.ready < 20_000 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert reader._prefetch.ready == 20_000
        sizes = []
        while sum(sizes) < 20_000:
            rows = reader.read(50_000, 10.0)
            assert rows is not None
            sizes.append(rows.height)
        # fetched in consume chunks, decoded and handed over as a few large batches
        assert len(sizes) <= 4, sizes
    finally:
        reader.close()


def read_light(reader: KafkaReader, topic: str, produce: Produce, start: int = 0) -> list[int]:
    """A light load: three records at a time, each read as soon as it is there, until the
    threads have parked and a read was made on the query's thread; the ids read."""
    got: list[int] = []
    for step in range(10 * LIGHT_TAKES):
        produce(topic, records(3, start + 3 * step))
        deadline = time.monotonic() + 30
        while len(got) < 3 * (step + 1) and time.monotonic() < deadline:
            rows = reader.read(1_000, 1.0)
            if rows is not None:
                got += rows["id"].to_list()
        assert reader._prefetch is not None
        if step >= LIGHT_TAKES and reader._prefetch.inline:
            return got
    raise AssertionError(f"the threads never parked in {10 * LIGHT_TAKES} light reads")


def test_a_light_load_parks_the_threads_and_the_query_reads_itself(
    topic: str, produce: Produce, bootstrap: str
) -> None:
    before = {t for t in threading.enumerate() if t.name.startswith("streamnb")}
    reader = open_reader(topic, bootstrap)
    try:
        got = read_light(reader, topic, produce)
        assert got == list(range(len(got)))
        assert dict(reader.positions) == {(topic, 0): len(got)}
        # parked: nothing is fetched ahead of the query any more, and a read brings what came
        produce(topic, records(2, len(got)))
        time.sleep(1)
        assert reader._prefetch is not None and reader._prefetch.queued == 0
        rows = reader.read(1_000, 10.0)
        assert rows is not None and rows["id"].to_list() == [len(got), len(got) + 1]
        assert reader._prefetch.inline
        assert dict(reader.positions) == {(topic, 0): len(got) + 2}
    finally:
        reader.close()
    after = {t for t in threading.enumerate() if t.name.startswith("streamnb")}
    assert after - before == set()


def test_a_backlog_wakes_the_parked_threads(topic: str, produce: Produce, bootstrap: str) -> None:
    reader = open_reader(topic, bootstrap)
    try:
        got = read_light(reader, topic, produce)
        light = len(got)
        produce(topic, records(20_000, light))
        assert reader._prefetch is not None
        woken = False
        deadline = time.monotonic() + 60
        while len(got) < light + 20_000 and time.monotonic() < deadline:
            rows = reader.read(5_000, 10.0)
            if rows is not None:
                got += rows["id"].to_list()
            woken = woken or not reader._prefetch.inline
        # a read that filled its batch woke the threads; nothing lost, repeated or reordered
        assert woken
        assert got == list(range(light + 20_000))
        assert dict(reader.positions) == {(topic, 0): light + 20_000}
    finally:
        reader.close()


def test_a_burst_leaves_the_threads_parked(topic: str, produce: Produce, bootstrap: str) -> None:
    """One read that fills its batch is a burst, not a backlog: the query's thread goes on
    reading for itself (waking the threads would slow every stage until they park again)."""
    reader = open_reader(topic, bootstrap)
    try:
        got = read_light(reader, topic, produce)
        light = len(got)
        assert FULL_TAKES > 1
        for burst in range(FULL_TAKES - 1):  # bursts apart, each a full read
            start = light + burst * 1_002
            produce(topic, records(1_000, start))
            time.sleep(1)  # all of it arrived: the read fills its batch of 1 000
            rows = reader.read(1_000, 10.0)
            assert rows is not None and rows["id"].to_list() == list(range(start, start + 1_000))
            produce(topic, records(2, start + 1_000))  # then the load is light again
            rows = reader.read(1_000, 10.0)
            assert rows is not None and rows["id"].to_list() == [start + 1_000, start + 1_001]
            assert reader._prefetch is not None and reader._prefetch.inline
        end = light + (FULL_TAKES - 1) * 1_002
        assert dict(reader.positions) == {(topic, 0): end}
    finally:
        reader.close()


def test_merged_fetches_keep_their_order() -> None:
    def fetch(offsets: list[int], pid: int = 7) -> Fetch:
        f = Fetch(float(offsets[-1]) if offsets else 0.0, np.array([pid] * len(offsets)))
        if offsets:
            f.numbers = np.zeros(len(offsets), dtype=np.int64)
            f.offsets = np.array(offsets, dtype=np.int64)
            f.messages = [f"m{o}" for o in offsets]
        return f

    merged = Fetch.merged([fetch([0, 1]), fetch([]), fetch([2, 3, 4])])
    assert merged.messages == ["m0", "m1", "m2", "m3", "m4"]
    assert merged.offsets is not None and merged.offsets.tolist() == [0, 1, 2, 3, 4]
    assert merged.numbers is not None and merged.numbers.tolist() == [0] * 5
    assert merged.pids.tolist() == [7] * 5
    assert merged.at == 4.0


@pytest.mark.parametrize("decoded", [True, False])
def test_stopping_leaves_no_thread(
    topic: str, produce: Produce, bootstrap: str, decoded: bool
) -> None:
    produce(topic, records(1_000))
    before = {t for t in threading.enumerate() if t.name.startswith("streamnb")}
    reader = open_reader(topic, bootstrap)
    if decoded:
        reader.read(100, 5.0)
    reader.close()
    after = {t for t in threading.enumerate() if t.name.startswith("streamnb")}
    assert after - before == set()
    # what was fetched and not decoded holds collections off no longer
    assert heap._holds.holds == 0 and gc.isenabled()


def test_a_backlog_holds_collections_off_until_its_messages_are_decoded(
    topic: str, produce: Produce, bootstrap: str
) -> None:
    """Fetched on the calling thread (no prefetching): a fetch whose first chunk is full (a
    backlog) holds collections off until it is decoded; a fetch of what trickles in does not."""
    produce(topic, records(20_000))
    source = sn.from_kafka(topic, bootstrap_servers=bootstrap, start="earliest").plan.sources()[0]
    reader = KafkaReader(source, Context(), prefetch=False)  # type: ignore[arg-type]
    try:
        got: list[int] = []
        backlogs = 0
        deadline = time.monotonic() + 60
        while len(got) < 20_000 and time.monotonic() < deadline:
            fetch = reader._consume(10_000, 10.0)
            if heap._holds.holds:  # its first chunk came full: a backlog
                assert heap._holds.holds == 1 and len(fetch.messages) >= CHUNK
                assert not gc.isenabled()
                backlogs += 1
            else:
                assert gc.isenabled()
            reader._decode_fetch(fetch)
            assert heap._holds.holds == 0 and gc.isenabled()
            if fetch.frame is not None:
                got += fetch.frame["id"].to_list()
        assert got == list(range(20_000)) and backlogs > 0
        produce(topic, records(3, 20_000))
        fetch = reader._consume(10_000, 10.0)
        assert len(fetch.messages) == 3 and heap._holds.holds == 0 and gc.isenabled()
    finally:
        reader.close()


def test_collections_are_held_off_only_while_fetched_messages_wait(
    topic: str, produce: Produce, bootstrap: str
) -> None:
    produce(topic, records(20_000))
    reader = open_reader(topic, bootstrap)
    try:
        got: list[int] = []
        deadline = time.monotonic() + 60
        while len(got) < 20_000 and time.monotonic() < deadline:
            rows = reader.read(5_000, 10.0)
            if rows is not None:
                got += rows["id"].to_list()
        assert got == list(range(20_000))
        deadline = time.monotonic() + 30  # nothing more to fetch: the threads idle or park
        while heap._holds.holds and time.monotonic() < deadline:
            time.sleep(0.05)
        assert heap._holds.holds == 0 and gc.isenabled()
    finally:
        reader.close()
    assert heap._holds.holds == 0 and gc.isenabled()
