"""Live tables: the rate cap and trailing redraw, the buttons, side outputs, headless views."""

from __future__ import annotations

import itertools
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import polars as pl
import pytest

import streamnb as sn
from streamnb.ui.notebook import _render, widgets
from streamnb.ui.notebook._throttle import Throttle
from streamnb.ui.notebook.widgets import LiveTable, StaticView, show
from tests.threads import wait_until

# -- the throttle ----------------------------------------------------------------------------


def test_throttle_caps_the_rate_and_flushes_the_last_state() -> None:
    state = {"value": 0, "ended": False}
    shown: list[int] = []

    def produce() -> None:  # changes every millisecond for a second, then ends
        for _ in range(1000):
            state["value"] += 1
            time.sleep(0.001)
        state["ended"] = True

    throttle = Throttle(
        "synthetic",
        lambda: state["value"],
        lambda: shown.append(state["value"]),
        lambda: bool(state["ended"]),
        max_per_second=20,
    )
    producer = threading.Thread(target=produce)
    producer.start()
    throttle.start()
    producer.join()
    assert throttle.join(timeout=5)
    gaps = [b - a for a, b in itertools.pairwise(throttle.push_times)]
    assert min(gaps) >= 0.05 * 0.98  # never more than 20 a second
    times = list(throttle.push_times)
    assert 5 <= len(times) <= (times[-1] - times[0]) * 20 + 1
    assert len(shown) < 1000 / 10  # coalesced: far fewer redraws than changes
    assert shown[-1] == 1000  # the trailing redraw shows the final state


def test_throttle_close_ends_without_a_redraw() -> None:
    pushes: list[int] = []
    throttle = Throttle("idle", lambda: 0, lambda: pushes.append(1), lambda: False,
                        max_per_second=10)  # fmt: skip
    throttle.start()
    wait_until(lambda: pushes == [1])
    throttle.close()
    assert not throttle.alive and pushes == [1]


# -- the live table --------------------------------------------------------------------------


def test_live_table_respects_the_cap_with_a_fast_query() -> None:
    q = sn.nexmark(events=2_000_000, rate=1_000_000).start("fast", max_batch=2_000)
    view = LiveTable(q, max_updates_per_second=5)
    view.start()
    assert q.wait(timeout=60)
    assert view.join(timeout=10)
    times = view.update_times
    gaps = [b - a for a, b in itertools.pairwise(times)]
    elapsed = times[-1] - times[0]
    assert min(gaps) >= 0.2 * 0.98
    assert len(times) <= elapsed * 5 + 1
    assert len(times) >= 3  # it did update while the query ran
    assert q.version > len(times)  # far more result changes than redraws: coalesced
    rows, total = view._rows()  # the trailing redraw shows the final table and status
    assert view.table.value == _render.html_table(rows, caption=f"newest 20 of {total:,} rows")
    assert "finished" in view.status.value
    assert view.first_result_at is not None


def test_trailing_redraw_shows_the_final_result() -> None:
    stream = (
        sn.nexmark(events=300_000, rate=150_000)
        .window(sn.Tumbling("1s"))
        .agg(pl.len().alias("bids"))
    )
    q = stream.start("final")
    view = LiveTable(q, max_rows=50)
    view.start()
    assert q.wait(timeout=60) and view.join(timeout=10)
    final = q.result().sort("window_end", descending=True)
    assert view.table.value == _render.html_table(final)
    assert f"<b>{q.status()['records_in']:,}</b>" in view.status.value
    assert view.pause_button.disabled and view.resume_button.disabled
    assert view.stop_button.disabled


def test_buttons_pause_resume_and_stop_the_query() -> None:
    q = sn.nexmark(rate=2000).start("buttons")
    view = LiveTable(q)
    view.start()
    view.pause_button.click()
    assert q.status()["state"] == "paused"
    wait_until(lambda: "paused" in view.status.value and not view.resume_button.disabled)
    assert view.pause_button.disabled
    view.resume_button.click()
    assert q.status()["state"] == "running"
    wait_until(lambda: "running" in view.status.value and view.resume_button.disabled)
    view.stop_button.click()
    wait_until(lambda: q.status()["state"] == "stopped")
    assert view.join(timeout=10)
    assert "stopped" in view.status.value and view.stop_button.disabled


def test_late_and_error_toggles_reveal_the_side_outputs() -> None:
    records = [
        {"k": "a", "t": 10_000},
        {"k": "b", "t": 20_000},
        {"k": "late-one", "t": 1_000},  # its window closed at W = 20 s: late
        {"k": "c", "t": None},  # null event time: an error
    ]
    stream = sn.from_records(records, timestamp="t", batch_size=1)
    q = stream.window(sn.Tumbling("5s")).agg(pl.len().alias("n")).start("sides")
    view = LiveTable(q)
    view.start()
    assert q.wait(timeout=30) and view.join(timeout=10)
    assert view.late_toggle.description == "late (1)"
    assert view.errors_toggle.description == "errors (1)"
    assert view.late_panel.layout.display == "none"
    view.late_toggle.value = True
    assert view.late_panel.layout.display == "block"
    assert "late-one" in view.late_panel.value
    view.errors_toggle.value = True
    assert "errors: newest 1 of 1" in view.errors_panel.value
    view.late_toggle.value = False
    assert view.late_panel.layout.display == "none"


def test_live_table_bundle_has_a_static_html_fallback() -> None:
    q = sn.nexmark(events=20_000).start("bundle")
    q.wait(timeout=30)
    bundle = LiveTable(q)._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert '<table class="streamnb-table">' in bundle["text/html"]
    assert bundle["text/plain"].startswith("<Query 'bundle' finished")


# -- show() ----------------------------------------------------------------------------------


def test_show_without_a_frontend_returns_at_once_and_prints_snapshots() -> None:
    stream = (
        sn.nexmark(events=60_000, rate=60_000).window(sn.Tumbling("1s")).agg(pl.len().alias("bids"))
    )
    began = time.monotonic()
    q = show(stream, "headless", max_rows=2)
    assert time.monotonic() - began < 1.0
    view = q.widget
    assert isinstance(view, StaticView)
    assert q.wait(timeout=30) and view.join(timeout=10)
    assert 1 <= len(view.snapshots) <= 2  # after the first results, and the final one
    assert view.snapshots[-1].startswith("headless: finished")
    assert "<table" in view._repr_html_()


def test_show_in_a_kernel_displays_a_live_table(monkeypatch: pytest.MonkeyPatch) -> None:
    shown: list[Any] = []
    monkeypatch.setattr(widgets, "frontend", lambda: "kernel")
    monkeypatch.setattr("IPython.display.display", lambda obj, **kw: shown.append((obj, kw)))
    q = sn.nexmark(events=20_000).filter(pl.col("price") > 0).show("kernel", max_rows=3)
    assert isinstance(q.widget, LiveTable)
    assert shown == [(q.widget, {"display_id": True})]
    assert q.wait(timeout=30) and q.widget.join(timeout=10)
    assert q.widget.table.value.count("<tr>") == 1 + 3  # header and the 3 newest rows


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_rows": 0}, "max_rows=0"),
        ({"max_rows": 2.5}, "max_rows=2.5"),
        ({"max_updates_per_second": 0}, "max_updates_per_second=0"),
        ({"sort": "nope"}, "no column 'nope'"),
    ],
)
def test_show_rejects_bad_options_before_starting(options: dict[str, Any], message: str) -> None:
    with pytest.raises(sn.ConfigError, match=message):
        show(sn.nexmark(rate=10), "bad", **options)
    assert sn.queries() == []


# -- rendering -------------------------------------------------------------------------------


def test_newest_rows_first() -> None:
    windows = pl.DataFrame(
        {"window_start": [0, 10, 20], "window_end": [10, 20, 30], "n": [1, 2, 3]}
    )
    assert _render.newest(windows, max_rows=2, keyed=False)["n"].to_list() == [3, 2]
    appended = pl.DataFrame({"x": [1, 2, 3, 4]})
    assert _render.newest(appended, max_rows=3, keyed=False)["x"].to_list() == [4, 3, 2]
    table = pl.DataFrame({"key": ["a", "b", "c"], "n": [5, 9, 1]})
    assert _render.newest(table, max_rows=2, keyed=True)["key"].to_list() == ["a", "b"]
    assert _render.newest(table, max_rows=2, keyed=True, sort=["n"])["n"].to_list() == [9, 5]


def test_html_table_escapes_and_formats() -> None:
    frame = pl.DataFrame({"s": ["<script>x</script>", None], "f": [1.23456789, 2.0]})
    html = _render.html_table(frame, caption="a & b")
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert '<td class="null">null</td>' in html and "1.23457" in html and "a &amp; b" in html
    assert "no rows yet" in _render.html_table(frame.head(0))


def test_importing_streamnb_imports_no_widgets_or_ipython() -> None:
    code = "import sys, streamnb; print([m for m in ('ipywidgets', 'IPython') if m in sys.modules])"
    root = Path(__file__).resolve().parents[3]
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root
    )
    assert out.stdout.strip() == "[]"
