"""``query.watermarks()``, ``lifecycle()`` and ``explain()`` over a real Kafka topic: every
partition has its row, and a partition that sends nothing is named as holding the window
back until it is idle."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import polars as pl

import streamnb as sn
from tests.threads import wait_until as wait_for

Produce = Callable[..., list[tuple[int, int]]]


def test_a_partition_without_records_holds_the_watermark_until_it_is_idle(
    make_topic: Callable[..., str], produce: Produce, bootstrap: str
) -> None:
    topic = make_topic(partitions=3)
    produce(topic, [{"id": i, "ts": 10_000 * i} for i in range(10)], partition=0)  # to 90 s
    produce(topic, [{"id": 100 + i, "ts": 10_000 * i} for i in range(5)], partition=1)  # to 40 s
    # partition 2 gets nothing
    stream = sn.from_kafka(
        topic, bootstrap_servers=bootstrap, start="earliest", timestamp="ts", idle_timeout="6s"
    )
    query = stream.window(sn.Tumbling("10s"), grace="1s").agg(pl.len().alias("n")).start()
    try:
        wait_for(lambda: query.watermarks()["watermark"].to_list() == [90_000, 40_000, None])
        opened = time.monotonic()
        marks = query.watermarks()
        info = query.lifecycle()
        text = str(query.explain())
        assert marks.get_column("source").to_list() == [topic] * 3
        assert marks.get_column("partition").to_list() == [0, 1, 2]
        assert marks.get_column("watermark").to_list() == [90_000, 40_000, None]
        if time.monotonic() - opened < 3:  # (before the idle timeout, with room to spare)
            assert marks.get_column("idle").to_list() == [False, False, False]
            assert info["watermark"] is None  # held at −∞ by partition 2
            assert info["next_window"] == {
                "window_start": 0,
                "window_end": 10_000,
                "closes_at": 11_000,
            }
            assert [(h["partition"], h["reason"]) for h in info["holding"]] == [
                (2, "no records yet")
            ]
            assert f"partition 2 of {topic} has sent no records yet" in text
            assert "or until it is idle (6 s without records)" in text
        # partitions 0 and 1 keep sending (at the times they reached), partition 2 does not:
        # after 6 s it is idle, and partition 1 holds the watermark
        alive = threading.Event()

        def keep_alive() -> None:
            while not alive.wait(0.5):
                produce(topic, [{"id": -1, "ts": 90_000}], partition=0)
                produce(topic, [{"id": -2, "ts": 40_000}], partition=1)

        sender = threading.Thread(target=keep_alive)
        sender.start()
        try:
            wait_for(
                lambda: query.watermarks().get_column("idle").to_list() == [False, False, True]
            )
            wait_for(lambda: query.lifecycle()["watermark"] == 40_000)
            info = query.lifecycle()
            text = str(query.explain())
        finally:
            alive.set()
            sender.join()
        assert info["next_window"]["window_start"] == 30_000  # [0, 30 s) closed at 40 s
        assert info["next_window"]["closes_at"] == 41_000
        assert [
            (h["source"], h["partition"], h["watermark"], h["reason"]) for h in info["holding"]
        ] == [(topic, 1, 40_000, "behind")]
        assert info["holding"][0]["behind_ms"] == 50_000.0
        assert info["idle"] == [{"source": topic, "partition": 2}]
        assert f"partition 1 of {topic} is at 40000, 50 s behind the others" in text
        assert f"partition 2 of {topic} is idle" in text
        wait_for(lambda: query.watermarks().get_column("lag").to_list() == [0, 0, 0])
        windows = query.windows()
        assert windows.get_column("window_start").to_list() == [
            30_000,
            40_000,
            50_000,
            60_000,
            70_000,
            80_000,
            90_000,
        ]
        assert windows.get_column("rows").to_list()[0] == 2  # 30 s (two partitions), no more
        assert windows.get_column("rows").to_list()[2:6] == [1, 1, 1, 1]
    finally:
        query.stop()
