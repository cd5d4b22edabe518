"""HTML and text renderings of a query: the status bar and the newest rows of its tables.

Shared by the live widget and the static (headless) view. Everything here is a pure
function of a status dict or a ``pl.DataFrame``, so it runs in the updater thread and
never touches the engine.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from datetime import date, datetime, timedelta
from typing import Any

import polars as pl

from streamnb.engine.query import Observed
from streamnb.ui.terminal import format_watermark, notes_text, status_line

_CELL_CHARS = 80
_STATE_COLORS = {
    "running": "#1a7f37",
    "paused": "#9a6700",
    "finished": "#0969da",
    "stopped": "#57606a",
    "failed": "#cf222e",
}

STYLE = """<style>
.streamnb-table {border-collapse: collapse; font: 12px/1.4 var(--jp-code-font-family, monospace);}
.streamnb-table th, .streamnb-table td {padding: 2px 8px; border-bottom: 1px solid #d0d7de;
  text-align: right; white-space: nowrap;}
.streamnb-table th {background: var(--jp-layout-color2, #f6f8fa); position: sticky; top: 0;}
.streamnb-table td.str {text-align: left;}
.streamnb-table td.null {color: #8c959f;}
.streamnb-caption {color: #57606a; font-size: 11px; margin: 2px 0;}
.streamnb-status {font: 12px/1.6 var(--jp-ui-font-family, sans-serif);}
.streamnb-status b {margin-right: 4px;}
.streamnb-status span {margin-right: 14px;}
</style>"""


def newest(
    frame: pl.DataFrame,
    *,
    max_rows: int,
    keyed: bool,
    sort: Sequence[str] | None = None,
    descending: bool = True,
) -> pl.DataFrame:
    """The rows worth showing, newest (or largest, with ``sort``) first, at most ``max_rows``.

    Window results are sorted by ``window_end``, newest first; an append stream shows its
    last rows in reverse; a table (running aggregate) keeps its key order.
    """
    if frame.height == 0:
        return frame
    # top_k / bottom_k select the shown rows in linear time, then only those are sorted:
    # a live view redraws often, and must not sort the whole result each time
    if sort:
        pick = frame.top_k if descending else frame.bottom_k
        return pick(max_rows, by=list(sort)).sort(
            list(sort), descending=descending, nulls_last=True
        )
    if "window_end" in frame.columns:
        order = [c for c in ("window_end", "window_start") if c in frame.columns]
        newest = frame.top_k(max_rows, by=order)
        return newest.sort(order, descending=True, nulls_last=True)
    if keyed:
        return frame.head(max_rows)
    return frame.tail(max_rows).reverse()


def _cell(value: Any) -> tuple[str, str]:
    """(css class, escaped text) of one value."""
    if value is None:
        return "null", "null"
    if isinstance(value, datetime):
        return "", value.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    if isinstance(value, (date, timedelta)):
        return "", html.escape(str(value))
    if isinstance(value, float):
        return "", f"{value:,.6g}"
    if isinstance(value, (int, bool)):
        return "", str(value)
    text = str(value)
    if len(text) > _CELL_CHARS:
        text = text[: _CELL_CHARS - 1] + "…"
    return "str", html.escape(text)


def html_table(frame: pl.DataFrame, *, caption: str = "") -> str:
    """A styled HTML table of ``frame`` (already cut to the rows to show)."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in frame.columns)
    rows = []
    for row in frame.iter_rows():
        cells = [_cell(v) for v in row]
        tds = "".join(f'<td class="{cls}">{text}</td>' for cls, text in cells)
        rows.append(f"<tr>{tds}</tr>")
    body = "".join(rows) or f'<tr><td colspan="{max(len(frame.columns), 1)}">no rows yet</td></tr>'
    cap = f'<div class="streamnb-caption">{html.escape(caption)}</div>' if caption else ""
    table = f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody>"
    return f'{cap}<table class="streamnb-table">{table}</table>'


def status_html(status: Mapping[str, Any], exception: BaseException | None = None) -> str:
    """The status bar: state, rate, records in/out, watermark, lag, late, errors."""
    state = str(status.get("state", "?"))
    color = _STATE_COLORS.get(state, "#57606a")
    lag = status.get("lag")
    items = [
        ("rec/s", f"{status.get('rate', 0):,.0f}"),
        ("in", f"{status.get('records_in', 0):,}"),
        ("out", f"{status.get('records_out', 0):,}"),
        ("watermark", format_watermark(status.get("watermark"))),
        ("lag", "–" if lag is None else f"{lag:,}"),
        ("late", f"{status.get('late', 0):,}"),
        ("errors", f"{status.get('errors', 0):,}"),
    ]
    parts = [
        f'<span><b style="color:{color}">●</b>{html.escape(str(status.get("name", "")))} '
        f'<b style="color:{color}">{html.escape(state)}</b></span>'
    ]
    parts += [f"<span>{label} <b>{html.escape(value)}</b></span>" for label, value in items]
    if notes := notes_text(status):
        parts.append(f"<span><b>{html.escape(notes)}</b></span>")
    if exception is not None:
        parts.append(
            f'<div style="color:#cf222e">{html.escape(type(exception).__name__)}: '
            f"{html.escape(str(exception))}</div>"
        )
    return f'<div class="streamnb-status">{"".join(parts)}</div>'


def snapshot_html(status: Mapping[str, Any], rows: pl.DataFrame, total: int) -> str:
    """Status bar and table in one static HTML block (the fallback for no frontend)."""
    caption = f"{rows.height} of {total:,} rows" if total > rows.height else ""
    return STYLE + status_html(status) + html_table(rows, caption=caption)


def snapshot_text(query: Observed, rows: pl.DataFrame) -> str:
    """A plain-text status line and table, for a terminal or a log."""
    with pl.Config(tbl_rows=max(rows.height, 1), tbl_cols=12, tbl_width_chars=120,
                   tbl_hide_dataframe_shape=True):  # fmt: skip
        return f"{status_line(query.status())}\n{rows}"
