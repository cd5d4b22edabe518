"""The live chart's Python side: spec, rows, messages, throttle, headless runs, the JS bundle.

The browser half (the same chart in JupyterLab and chromium) is tests/ui/browser/.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
import threading
import time
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import altair as alt
import polars as pl
import pytest

import streamnb as sn
from streamnb.ui.notebook import chart as live
from streamnb.ui.notebook.chart import Feed, Updater, chart_spec, json_rows
from streamnb.ui.notebook.chart.bundle import _bundle_digest

ROOT = Path(__file__).resolve().parents[3]
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
T0_MS = 1_714_564_800_000


def _walk(node: Any) -> list[tuple[str, Any]]:
    """Every (key, value) pair in a nested JSON document."""
    out: list[tuple[str, Any]] = []
    if isinstance(node, dict):
        for k, v in node.items():
            out.append((k, v))
            out.extend(_walk(v))
    elif isinstance(node, list):
        for v in node:
            out.extend(_walk(v))
    return out


# -- the spec ----------------------------------------------------------------------------------
def test_spec_has_a_named_dataset_and_no_inline_data() -> None:
    schema = pl.Schema({"dateTime": pl.Datetime("ms", "UTC"), "price": pl.Int64, "ch": pl.String})
    base = alt.Chart().mark_point().encode(x="dateTime", y="price", color="ch")
    spec = chart_spec(base, schema)
    assert spec["data"] == {"name": "data"}
    assert "datasets" not in spec
    assert not [k for k, _ in _walk(spec) if k in ("values", "url")]
    enc = spec["encoding"]
    # the types Altair would infer from the columns' dtypes
    assert enc["x"] == {"field": "dateTime", "type": "temporal"}
    assert enc["y"] == {"field": "price", "type": "quantitative"}
    assert enc["color"] == {"field": "ch", "type": "nominal"}
    assert spec["autosize"] == {"type": "pad", "resize": True}
    json.dumps(spec, allow_nan=False)


def test_spec_replaces_the_charts_own_data_and_keeps_layers() -> None:
    old = pl.DataFrame({"x": [1, 2], "y": [3, 4]})
    layered = alt.layer(
        alt.Chart(old).mark_line().encode(x="x:Q", y="y:Q"),
        alt.Chart(old).mark_point().encode(x="x:Q", y="y:Q"),
    )
    spec = chart_spec(layered, pl.Schema({"x": pl.Int64, "y": pl.Int64}), dataset="live")
    assert spec["data"] == {"name": "live"}
    assert len(spec["layer"]) == 2
    assert all("data" not in layer for layer in spec["layer"])
    assert not [k for k, _ in _walk(spec) if k == "values"]
    assert [1, 2] not in [v for _, v in _walk(spec)]


def test_spec_from_a_vega_lite_dict() -> None:
    given = {"mark": "bar", "data": {"values": [{"a": 1}]}, "encoding": {"x": {"field": "a"}}}
    spec = chart_spec(given)
    assert spec["data"] == {"name": "data"}
    assert given["data"] == {"values": [{"a": 1}]}  # the caller's dict is not touched


def test_a_bad_chart_fails_before_the_query_starts() -> None:
    before = {q.name for q in sn.queries()}
    with pytest.raises(sn.ConfigError, match="Altair chart"):
        sn.nexmark(rate=10).chart(object(), name="never-started")
    assert {q.name for q in sn.queries()} == before


# -- rows --------------------------------------------------------------------------------------
def test_rows_are_json_safe_with_epoch_ms_temporals() -> None:
    frame = pl.DataFrame(
        {
            "utc": [T0, None],
            "naive_us": pl.Series([T0.replace(tzinfo=None), None], dtype=pl.Datetime("us")),
            "ns_tz": pl.Series([T0, None], dtype=pl.Datetime("ns", "Europe/Paris")),
            "day": [date(2024, 5, 1), None],
            "took": [timedelta(seconds=1.5), None],
            "x": [float("nan"), float("inf")],
            "nested": [[T0, None], None],
            "rec": [{"at": T0, "v": float("nan")}, None],
            "cat": pl.Series(["a", "b"], dtype=pl.Categorical),
            "raw": [b"\x01\x02", None],
            "n": [1, 2],
        }
    )
    rows = json_rows(frame)
    text = json.dumps(rows, allow_nan=False)  # raises on NaN / inf / datetimes
    assert json.loads(text) == rows
    first = rows[0]
    assert first["utc"] == first["naive_us"] == first["ns_tz"] == T0_MS
    assert first["day"] == T0_MS - 12 * 3_600_000
    assert first["took"] == 1500
    assert rows[0]["x"] is None and rows[1]["x"] is None
    assert first["nested"] == [T0_MS, None]
    assert first["rec"] == {"at": T0_MS, "v": None}
    assert first["cat"] == "a" and first["raw"] == "0102" and first["n"] == 1
    assert rows[1]["utc"] is None and rows[1]["day"] is None


def test_nexmark_rows_carry_epoch_ms() -> None:
    frame = sn.nexmark(events=50).collect()
    rows = json_rows(frame)
    assert len(rows) == frame.height
    ms = frame["dateTime"].dt.epoch("ms").to_list()
    assert [r["dateTime"] for r in rows] == ms
    assert all(isinstance(r["dateTime"], int) for r in rows)
    json.dumps(rows, allow_nan=False)


# -- messages ----------------------------------------------------------------------------------
class FakeView:
    """What chart_widget.js does with the messages, in Python."""

    def __init__(self, max_rows: int) -> None:
        self.max_rows = max_rows
        self.seq: int | None = None
        self.live: list[dict[str, Any]] = []
        self.by_key: dict[str, dict[str, Any]] = {}

    def apply(self, msg: dict[str, Any]) -> None:
        if msg["type"] == "reset":
            if "keys" in msg:
                self.by_key = dict(zip(msg["keys"], msg["rows"], strict=True))
            else:
                self.live = list(msg["rows"])
        else:
            assert self.seq is not None and msg["seq"] == self.seq + 1, "out of step"
            if msg["type"] == "append":
                self.live = (self.live + msg["rows"])[-self.max_rows :]
            else:
                for k in msg["deletes"]:
                    del self.by_key[k]
                self.by_key.update(zip(msg["keys"], msg["rows"], strict=True))
        self.seq = msg["seq"]

    @property
    def rows(self) -> list[dict[str, Any]]:
        return list(self.by_key.values()) if self.by_key else self.live


def _canon(rows: list[dict[str, Any]]) -> list[str]:
    return sorted(json.dumps(r, sort_keys=True) for r in rows)


def test_feed_appends_only_new_rows_and_keeps_the_newest() -> None:
    feed, view = Feed(None, max_rows=5), FakeView(5)
    frame = pl.DataFrame({"i": [0, 1, 2]})
    first = feed.reset(frame, 3)
    view.apply(first)
    assert first["type"] == "reset" and first["rows"] == [{"i": 0}, {"i": 1}, {"i": 2}]
    frame = pl.DataFrame({"i": [0, 1, 2, 3, 4, 5]})
    msg = feed.update(frame, 6)
    assert msg == {"type": "append", "seq": 2, "rows": [{"i": 3}, {"i": 4}, {"i": 5}]}
    view.apply(msg)
    assert view.rows == [{"i": k} for k in range(1, 6)]
    assert feed.update(frame, 6) is None  # nothing new
    big = pl.DataFrame({"i": list(range(100))})
    msg = feed.update(big, 100)  # more new rows than max_rows: a snapshot instead
    assert msg is not None and msg["type"] == "reset"
    view.apply(msg)
    assert view.rows == [{"i": k} for k in range(95, 100)]


def test_feed_upserts_and_deletes_by_key() -> None:
    feed, view = Feed(("k",), max_rows=100), FakeView(100)
    view.apply(feed.reset(pl.DataFrame({"k": ["a", "b", "c"], "n": [1, 1, 1]}), 3))
    frame = pl.DataFrame({"k": ["a", "c", "d"], "n": [1, 2, 1]})
    msg = feed.update(frame, 6)
    assert msg is not None and msg["type"] == "upsert"
    assert sorted(msg["deletes"]) == ['["b"]']
    assert sorted(msg["keys"]) == ['["c"]', '["d"]']
    view.apply(msg)
    assert _canon(view.rows) == _canon(json_rows(frame))
    assert feed.update(frame, 6) is None


def _collect(query: Any, rate: float, max_rows: int, hello: bool = True) -> tuple[Any, list]:
    sent: list[tuple[float, dict[str, Any]]] = []
    lock = threading.Lock()

    def send(msg: dict[str, Any]) -> None:
        with lock:
            sent.append((time.monotonic(), msg))

    updater = Updater(query, send, rate=rate, max_rows=max_rows)
    if hello:
        updater.hello()
    return updater.start(), sent


def test_throttle_at_most_n_per_second() -> None:
    query = sn.nexmark(rate=5000).start(name="chart-throttle")
    try:
        updater, sent = _collect(query, rate=5, max_rows=1000)
        time.sleep(2.2)
    finally:
        query.stop()
    assert updater.join(5)
    times = [t for t, _ in sent]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert len(times) >= 5, "the query changes all the time: updates are due"
    assert min(gaps) >= 0.2 - 0.01, gaps
    assert len([t for t in times if t - times[0] < 2.0]) <= 5 * 2 + 1
    assert [m["seq"] for _, m in sent] == list(range(1, len(sent) + 1))


def test_trailing_flush_delivers_the_final_table() -> None:
    records = [{"i": i, "t": T0 + timedelta(milliseconds=i)} for i in range(20_000)]
    query = sn.from_records(records, timestamp="t", batch_size=500).start(name="chart-flush")
    updater, sent = _collect(query, rate=2, max_rows=3000)
    assert query.wait(30)
    assert updater.join(10), "the updater ends with the query"
    view = FakeView(3000)
    for _, msg in sent:
        view.apply(msg)
    assert _canon(view.rows) == _canon(json_rows(query.result().tail(3000)))
    assert view.rows[-1]["i"] == 19_999
    assert all(isinstance(r["t"], int) for r in view.rows)


def test_keyed_table_through_the_updater() -> None:
    stream = (
        sn.from_records([{"k": i % 7, "v": i} for i in range(5000)], batch_size=250)
        .group_by("k")
        .agg(pl.len().alias("n"), pl.col("v").max().alias("top"))
    )
    query = stream.start(name="chart-keyed")
    updater, sent = _collect(query, rate=20, max_rows=100)
    assert query.wait(30) and updater.join(10)
    view = FakeView(100)
    for _, msg in sent:
        view.apply(msg)
    assert _canon(view.rows) == _canon(json_rows(query.result()))
    assert sorted(r["n"] for r in view.rows) == [714] * 5 + [715] * 2


def test_nothing_is_sent_before_a_view_says_hello() -> None:
    query = sn.nexmark(rate=2000).start(name="chart-no-view")
    try:
        updater, sent = _collect(query, rate=20, max_rows=100, hello=False)
        time.sleep(0.5)
        assert sent == []
        updater.hello()
        deadline = time.monotonic() + 5
        while not sent and time.monotonic() < deadline:
            time.sleep(0.02)
        assert sent and sent[0][1]["type"] == "reset"
    finally:
        query.stop()
        updater.stop()


# -- headless ----------------------------------------------------------------------------------
def test_headless_python_returns_at_once_and_keeps_running() -> None:
    base = alt.Chart().mark_point().encode(x="dateTime", y="price")
    started = time.monotonic()
    query = sn.nexmark(rate=1000).chart(base, name="chart-headless")
    try:
        assert time.monotonic() - started < 5
        widget = query.chart_widget
        assert widget is not None and widget.updater is None  # no kernel: no thread
        assert widget.spec["data"] == {"name": "data"}
        deadline = time.monotonic() + 5
        while query.version == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert query.status()["state"] == "running" and query.version > 0
    finally:
        query.stop()


def test_static_rendering_carries_the_data() -> None:
    spec = chart_spec(alt.Chart().mark_point().encode(x="a:Q", y="b:Q"))
    rows = [{"a": i, "b": i * i} for i in range(10)]
    bundle = live.static_mimebundle(spec, rows, "data", png=True)
    vl = bundle["application/vnd.vegalite.v6+json"]
    assert vl["datasets"]["data"] == rows and vl["data"] == {"name": "data"}
    assert bundle["image/png"].startswith("iVBOR")  # base64 of a PNG header


def test_headless_notebook_leaves_a_static_rendering(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    # the "python3" kernel runs "python": this interpreter, which has streamnb
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        # the imports in a cell of their own: a loaded machine takes seconds over them, and
        # the chart cell's time below is the chart's alone (CI on 3 Dec: 5.06 s with them)
        nbformat.v4.new_code_cell(
            "import time, altair as alt, streamnb as sn\n"
            "import streamnb.ui.notebook.chart.widget as live\n"
            "live.GRACE_SECONDS = 0.5"
        ),
        nbformat.v4.new_code_cell(
            "q = sn.nexmark(rate=500).select('price', 'dateTime').chart(\n"
            "    alt.Chart().mark_point().encode(x='dateTime', y='price'))"
        ),
        nbformat.v4.new_code_cell("time.sleep(4)"),
        nbformat.v4.new_code_cell("q.stop()\nq.chart_widget.updater.join(10)"),
    ]
    nbclient.NotebookClient(
        nb, timeout=60, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    outputs = nb.cells[1].outputs
    assert len(outputs) == 1 and outputs[0].output_type == "display_data", outputs
    data = outputs[0].data
    assert "application/vnd.jupyter.widget-view+json" in data
    assert data["image/png"]
    vl = data["application/vnd.vegalite.v6+json"]
    assert len(vl["datasets"]["data"]) > 0
    timing = nb.cells[1].metadata.get("execution", {})
    if timing:
        ran = datetime.fromisoformat(timing["shell.execute_reply"].replace("Z", "+00:00"))
        began = datetime.fromisoformat(timing["iopub.execute_input"].replace("Z", "+00:00"))
        assert ran - began < timedelta(seconds=5), "the chart cell returns at once"


def test_importing_streamnb_imports_no_widget_or_chart_library() -> None:
    code = (
        "import sys, streamnb\n"
        "heavy = ('anywidget', 'altair', 'vl_convert', 'ipywidgets')\n"
        "bad = [m for m in heavy if m in sys.modules]\n"
        "print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# -- the JavaScript bundle ---------------------------------------------------------------------
def test_committed_bundle_is_built_from_the_current_source() -> None:
    text = live.BUNDLE.read_text(encoding="utf-8")
    assert _bundle_digest(text) == live.source_digest(), (
        "static/chart_widget.bundle.js is stale: "
        "python -m streamnb.ui.notebook.chart --build-bundle"
    )
    assert live.bundle_text() == text
    assert live.BUNDLE.stat().st_size < 2_000_000


def test_bundle_loads_nothing_from_the_network() -> None:
    text = live.BUNDLE.read_text(encoding="utf-8")
    code = "\n".join(line for line in text.splitlines() if not line.startswith("//"))
    # no static or dynamic imports at all: vega, vega-lite and vega-embed are inside
    assert not re.search(r"(^|[;}\s])import\s*[\w{*\"'(]", code)
    assert not re.search(r"\bimport\s*\(", code)
    assert not re.search(r"\bimportScripts\s*\(", code)
    # no URL that is imported, fetched or put in a src attribute at load time
    assert not re.search(r"""from\s*["']https?:""", code)
    assert not re.search(r"""(src|href)\s*=\s*["']https?://""", code)
    assert "esm.sh" not in code and "jsdelivr" not in code and "unpkg" not in code
    assert re.search(r"export\s*\{\s*\w+ as default\s*\}", code)
    assert "data-streamnb-chart" in code and "runAsync" in code
