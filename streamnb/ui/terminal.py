"""A live result table in the terminal: the console counterpart of the notebook widget.

It only *observes* a running :class:`~streamnb.Query` (status and result table), redrawing
at a bounded rate, in place on a terminal and as periodic snapshots when output is a pipe.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, TextIO

import polars as pl

from streamnb.engine.query import Observed

_HOME_AND_CLEAR = "\x1b[H\x1b[2J"


def format_watermark(watermark: datetime | int | None) -> str:
    """A watermark as people read it: a UTC time to the second, or epoch ms with separators."""
    if watermark is None:
        return "–"
    if isinstance(watermark, datetime):
        return watermark.strftime("%Y-%m-%d %H:%M:%S")
    return f"{watermark:,}" if isinstance(watermark, int) else str(watermark)


HELD_SHOWN_MS = 250
"""An input that holds the others back for longer than this shows in the status line."""


def notes_text(status: Mapping[str, Any]) -> str:
    """What a query waits for: the tables it is still bootstrapping (``loading table
    kafka[customers]: 61 %``) and the input the event-time merge waits for (``waiting for
    kafka[persons] (unread records) 1.2 s``)."""
    notes = [
        f"loading table {name}" + ("" if done is None else f": {done:.0%}".replace("%", " %"))
        for name, done in (status.get("loading") or {}).items()
    ]
    held = status.get("held_by")
    if held and held["ms"] >= HELD_SHOWN_MS:
        notes.append(f"waiting for {held['input']} ({held['reason']}) {held['ms'] / 1000:.1f} s")
    return ", ".join(notes)


def status_line(status: Mapping[str, Any]) -> str:
    """One line of a query's ``status()``: the console view, the worker's progress line and
    the notebook's text snapshots all print this."""
    lag = status.get("lag")
    return (
        f"{status['name']}: {status['state']}  {status['rate']:>11,.0f} rec/s  "
        f"in {status['records_in']:,}  out {status['records_out']:,}  "
        f"lag {'–' if lag is None else f'{lag:,}'}  "
        f"watermark {format_watermark(status['watermark'])}  "
        f"late {status['late']:,}  errors {status['errors']:,}"
    ) + (f"  ({notes})" if (notes := notes_text(status)) else "")


def render(query: Observed, view: Callable[[pl.DataFrame], pl.DataFrame] | None, rows: int) -> str:
    table = query.result()
    if view is not None:
        table = view(table)
    with pl.Config(tbl_rows=rows, tbl_cols=12, tbl_width_chars=120, tbl_hide_dataframe_shape=True):
        return f"{status_line(query.status())}\n{table.head(rows)}\n"


def watch(
    query: Observed,
    *,
    view: Callable[[pl.DataFrame], pl.DataFrame] | None = None,
    rows: int = 15,
    refresh: float = 0.5,
    duration: float | None = None,
    out: TextIO | None = None,
) -> None:
    """Redraw ``query``'s result until it ends, ``duration`` passes, or Ctrl-C.

    ``view`` shapes the table before display (sort, top-N); ``refresh`` is the minimum
    time between redraws (a pipe gets a snapshot every 10 refreshes instead).
    """
    out = out or sys.stdout
    live = out.isatty()
    deadline = None if duration is None else time.monotonic() + duration
    version, tick = -1, 0
    try:
        while query.status()["state"] in ("running", "paused"):
            if deadline is not None and time.monotonic() >= deadline:
                break
            if query.version != version and (live or tick % 10 == 0):
                version = query.version
                out.write((_HOME_AND_CLEAR if live else "") + render(query, view, rows))
                out.flush()
            tick += 1
            time.sleep(refresh)
    except KeyboardInterrupt:
        pass
    finally:
        query.stop()
    out.write(render(query, view, rows))
    out.flush()
