"""The live table's lifecycle panel: its words (pure, from a lifecycle dict and a watermarks
frame) and the section of the widget (drawn only while open, by the updater, at its cap)."""

from __future__ import annotations

import itertools
import re
from datetime import datetime, timezone

import polars as pl

import streamnb as sn
from streamnb.engine.introspect import why
from streamnb.ui.notebook._lifecycle import lifecycle_html
from streamnb.ui.notebook.widgets import LiveTable
from tests.threads import wait_until

UTC = timezone.utc


def at(second: int) -> datetime:
    return datetime(2026, 1, 1, 12, 0, second, tzinfo=UTC)


def held_back_by_partition_3() -> tuple[dict[str, object], pl.DataFrame]:
    """Bids on four partitions: 0–2 at 12:00:45, 3 at 12:00:05, 1 idle."""
    marks = pl.DataFrame(
        {
            "source": ["bids"] * 4,
            "partition": [0, 1, 2, 3],
            "watermark": [at(45), at(30), at(45), at(5)],
            "idle": [False, True, False, False],
            "lag": [0, 0, 12, 3_400],
        },
        schema_overrides={"partition": pl.Int32, "watermark": pl.Datetime("ms", "UTC")},
    )
    info = {
        "query": "hot",
        "state": "running",
        "operator": "window[Tumbling(size=10000ms)]",
        "watermark": at(5),
        "grace_ms": 2_000,
        "open_windows": 5,
        "next_window": {"window_start": at(0), "window_end": at(10), "closes_at": at(12)},
        "waiting": "watermark",
        "needs": at(12),
        "pending": None,
        "holding": [
            {
                "source": "bids",
                "partition": 3,
                "watermark": at(5),
                "behind_ms": 40_000.0,
                "lag": 3_400,
                "reason": "behind",
            }
        ],
        "idle": [{"source": "bids", "partition": 1}],
        "merge": None,
        "late_windows": [
            {"window_start": at(10), "window_end": at(20), "late": 2},
            {"window_start": at(0), "window_end": at(10), "late": 5},
        ],
    }
    return info, marks


def rows(html: str) -> dict[str, str]:
    """Each partition row's opening tag, by its data-partition."""
    tags = re.findall(r"<tr [^>]*>", html)
    return {re.findall(r'data-partition="(\d+)"', tag)[0]: tag for tag in tags}


def test_the_panel_says_which_window_closes_when_and_which_partition_holds_it() -> None:
    info, marks = held_back_by_partition_3()
    html = lifecycle_html(info, marks, late=7, idle_ms={"bids": 10_000})
    sentences = re.findall(r"<li>(.*?)</li>", html)
    assert sentences == [
        "window 12:00:00–12:00:10 closes at watermark 12:00:12 (grace 2 s); "
        "the watermark is 12:00:05",
        "partition 3 of bids is at 12:00:05, 40 s behind the others",
        "partition 1 of bids is idle (it does not hold the watermark)",
    ]
    assert sentences == why(info, {"bids": 10_000})  # the words of explain(), no others
    assert 'class="streamnb-lifecycle" data-state="running" data-holding="bids:3"' in html
    tags = rows(html)
    assert sorted(tags) == ["0", "1", "2", "3"]
    assert 'data-holding="true"' in tags["3"] and 'class="holding"' in tags["3"]
    assert 'data-idle="true"' in tags["1"] and 'data-holding="false"' in tags["1"]
    assert all('data-holding="false"' in tags[p] for p in "012")
    # behind: the newest watermark of the partitions that count (idle 1 does not) minus its own
    cells = dict(re.findall(r'data-partition="(\d+)".*?</td><td class="">[^<]*</td><td class="">'
                            r"[^<]*</td><td class=\"\">([^<]*)</td>", html))  # fmt: skip
    assert cells == {"0": "0 s", "1": "–", "2": "0 s", "3": "40 s"}
    assert "3,400" in html
    late = re.findall(r'<div class="streamnb-late">(.*?)</div>', html)
    assert late == [
        "late records: 7 (dropped: their window had closed); per window, newest first: "
        "12:00:10–12:00:20: 2, 12:00:00–12:00:10: 5"
    ]


def test_a_partition_without_records_is_named_with_its_idle_timeout() -> None:
    info, marks = held_back_by_partition_3()
    marks = marks.with_columns(
        pl.when(pl.col("partition") == 3)
        .then(None)
        .otherwise(pl.col("watermark"))
        .alias("watermark")
    )
    info["watermark"] = None
    info["late_windows"] = []
    info["holding"] = [{**info["holding"][0], "watermark": None, "behind_ms": None,  # type: ignore[index]
                        "reason": "no records yet"}]  # fmt: skip
    html = lifecycle_html(info, marks, late=0, idle_ms={"bids": 10_000})
    assert (
        "partition 3 of bids has sent no records yet: it holds the watermark or until it is "
        "idle (10 s without records)"
    ) in html
    assert "holds the watermark: no records yet" in html
    assert "late records: 0<" in html


def test_the_section_is_drawn_only_while_open_and_names_the_slow_input() -> None:
    # bids in twice real time; auctions at a tenth of it, 60 a second of wall clock (never
    # quiet for max_idle, 100 ms, so they keep holding the bids back)
    bids = sn.nexmark(rate=2_000, event_rate=1_000).select("auction", "dateTime")
    auctions = sn.nexmark(kind="auction", rate=1_000, event_rate=10_000).select(
        pl.col("id").alias("auction"), "dateTime"
    )
    stream = bids.union(auctions).window(sn.Tumbling("10s")).agg(pl.len().alias("events"))
    q = stream.start("panel")
    try:
        view = LiveTable(q, max_updates_per_second=5)
        view.start()
        wait_until(lambda: view.updates >= 3, timeout=10)
        assert not view.lifecycle_open and view.lifecycle_panel.value == ""  # nothing drawn
        opened_at = view.updates
        view.lifecycle.selected_index = 0  # a click on the section's title
        wait_until(lambda: "streamnb-lifecycle" in view.lifecycle_panel.value, timeout=5)
        assert view.updates > opened_at  # drawn by the updater, not by the click
        first = view.lifecycle_panel.value
        wait_until(lambda: view.lifecycle_panel.value != first, timeout=5)  # it follows the query
        wait_until(lambda: " behind the others" in view.lifecycle_panel.value, timeout=5)
        html = view.lifecycle_panel.value
        assert "input nexmark[auction] is at " in html
        assert 'data-holding="nexmark[auction]:"' in html
        assert re.search(r'<tr class="holding" data-source="nexmark\[auction\]"', html)
        assert re.search(r'<tr class="" data-source="nexmark\[bid\]" data-holding="false"', html)
        gaps = [b - a for a, b in itertools.pairwise(view.update_times)]
        assert min(gaps) >= 0.2 * 0.98  # the section does not lift the cap
        view.lifecycle.selected_index = None
        wait_until(lambda: not view.lifecycle_open)
        closed, updates = view.lifecycle_panel.value, view.updates
        wait_until(lambda: view.updates >= updates + 3, timeout=10)  # the table goes on
        assert view.lifecycle_panel.value == closed  # closed: no longer drawn
        q.stop()
        assert view.join(timeout=10)
        bundle = view._repr_mimebundle_()
        assert "<summary>lifecycle</summary>" in bundle["text/html"]  # the static fallback
        assert 'data-state="stopped"' in bundle["text/html"]
    finally:
        q.stop()
