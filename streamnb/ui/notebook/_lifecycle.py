"""The lifecycle panel of a live table: every input partition's watermark, idleness and lag,
the next window to close and what it waits for, in words.

A pure function of ``query.lifecycle()``, ``query.watermarks()`` and the late count, so it
runs in the updater thread (and in tests without a kernel). The sentences are those of
``query.explain()`` (:func:`streamnb.engine.introspect.why`): the panel and ``explain()``
never word the same state differently.

Stable hooks for a browser (or a test): the root ``div.streamnb-lifecycle`` carries
``data-state`` and ``data-holding`` (``source:partition`` of the inputs holding the
watermark back, space-separated); each sentence is an ``li`` of ``ul.streamnb-why``; each
partition a ``tr`` of ``table.streamnb-partitions`` with ``data-source``, ``data-partition``
(Kafka partitions only), ``data-holding`` and ``data-idle``.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import polars as pl

from streamnb.engine.introspect import duration_text, time_text, why

STYLE = """<style>
.streamnb-lifecycle {font: 12px/1.5 var(--jp-ui-font-family, sans-serif);}
.streamnb-lifecycle ul.streamnb-why {margin: 2px 0 6px; padding-left: 18px;}
.streamnb-lifecycle .streamnb-partitions th:first-child,
.streamnb-lifecycle .streamnb-partitions th:last-child {text-align: left;}
.streamnb-lifecycle tr.holding td {background: #fff8c5;}
.streamnb-lifecycle tr.idle td {color: #8c959f;}
.streamnb-lifecycle .streamnb-late {color: #57606a; margin: 2px 0 6px;}
</style>"""


def _key(source: Any, partition: Any) -> str:
    return f"{source}:{'' if partition is None else partition}"


def _behind_ms(watermark: Any, newest: Any) -> float | None:
    if watermark is None or newest is None:
        return None
    if isinstance(watermark, datetime) and isinstance(newest, datetime):
        return (newest - watermark).total_seconds() * 1000
    if isinstance(watermark, (int, float)) and isinstance(newest, (int, float)):
        return float(newest - watermark)  # epoch ms (an integer event time)
    return None


def lifecycle_html(
    info: Mapping[str, Any],
    marks: pl.DataFrame,
    *,
    late: int,
    idle_ms: Mapping[str, int],
) -> str:
    """The panel's HTML.

    Parameters
    ----------
    info
        ``query.lifecycle()``.
    marks
        ``query.watermarks()``: ``source, partition, watermark, idle, lag``.
    late
        Late records so far (``status()["late"]``): dropped, their window had closed.
    idle_ms
        Per Kafka topic, how long a quiet partition holds the watermark (the words for a
        partition without records say until when).
    """
    holding = {_key(h["source"], h["partition"]) for h in info.get("holding", ())}
    sentences = "".join(f"<li>{html.escape(line)}</li>" for line in why(info, idle_ms))
    rows = marks.to_dicts()
    counted = [r["watermark"] for r in rows if not r["idle"] and r["watermark"] is not None]
    newest = max(counted) if counted else None
    body = []
    for row in rows:
        key = _key(row["source"], row["partition"])
        is_holding, idle = key in holding, bool(row["idle"])
        behind = None if idle else _behind_ms(row["watermark"], newest)
        if idle:
            note = "idle (does not hold the watermark)"
        elif row["watermark"] is None:
            note = "no records yet"
        else:
            note = ""
        if is_holding:
            note = "holds the watermark" + (f": {note}" if note else "")
        attrs = f' data-source="{html.escape(str(row["source"]))}"'
        if row["partition"] is not None:
            attrs += f' data-partition="{row["partition"]}"'
        attrs += f' data-holding="{str(is_holding).lower()}" data-idle="{str(idle).lower()}"'
        css = "holding" if is_holding else "idle" if idle else ""
        cells = [
            html.escape(str(row["source"])),
            "–" if row["partition"] is None else str(row["partition"]),
            html.escape(time_text(row["watermark"])),
            "–" if behind is None else html.escape(duration_text(round(behind / 100) * 100)),
            "–" if row["lag"] is None else f"{row['lag']:,}",
            html.escape(note),
        ]
        texts = ("str", "", "", "", "", "str")  # left-aligned: the input's name, the state
        tds = "".join(f'<td class="{c}">{t}</td>' for c, t in zip(texts, cells, strict=True))
        body.append(f'<tr class="{css}"{attrs}>{tds}</tr>')
    head = "".join(
        f"<th>{name}</th>" for name in ("input", "partition", "watermark", "behind", "lag", "state")
    )
    table = (
        f'<table class="streamnb-table streamnb-partitions"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table>"
    )
    late_text = f"late records: {late:,}" + (" (dropped: their window had closed)" if late else "")
    per_window = [
        f"{time_text(w['window_start'])}–{time_text(w['window_end'])}: {w['late']:,}"
        for w in info.get("late_windows", ())
    ]
    if per_window:
        late_text += "; per window, newest first: " + ", ".join(per_window)
    root = (
        f'<div class="streamnb-lifecycle" data-state="{html.escape(str(info.get("state")))}" '
        f'data-holding="{html.escape(" ".join(sorted(holding)))}">'
    )
    return (
        f'{root}<ul class="streamnb-why">{sentences}</ul>'
        f'<div class="streamnb-late">{html.escape(late_text)}</div>{table}</div>'
    )
