"""Live tables for running queries: ``stream.show()`` and the views behind it.

In a Jupyter kernel, :func:`show` displays a :class:`LiveTable`: an ipywidgets ``VBox`` with
a status bar, Pause / Resume / Stop buttons, the newest rows of the result table,
"late (N)" / "errors (N)" toggles that reveal the side outputs, and a collapsed "lifecycle"
section (an ``Accordion``): every input partition's watermark, idleness and lag, and the next
window to close and what holds it back, in words (:mod:`._lifecycle`). One daemon updater
thread per view polls ``query.version`` and ``query.status()`` and redraws at most
``max_updates_per_second`` times a second (coalesced, trailing redraw when the query ends);
the engine thread never touches a widget. The lifecycle section is drawn by the same redraws,
only while it is open, and at least once a second then (idleness changes without records).

Without a kernel (a plain script, a terminal IPython, the worker) nothing can render a
widget: :class:`StaticView` prints a text snapshot after the first results and a final one
when the query ends, and never blocks. ipywidgets is imported only when a widget is built.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Hashable, Sequence
from typing import Any

import polars as pl

from streamnb.engine import introspect
from streamnb.engine.query import Observed, Query
from streamnb.exceptions import ConfigError
from streamnb.stream import Stream
from streamnb.types import Status
from streamnb.ui.notebook import _lifecycle, _render
from streamnb.ui.notebook._frontend import frontend
from streamnb.ui.notebook._throttle import Throttle

__all__ = ["LiveTable", "StaticView", "display_query", "show"]

_ENDED = ("finished", "stopped", "failed")


def _check_options(max_rows: Any, max_updates_per_second: Any) -> None:
    if isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1:
        raise ConfigError(f"max_rows={max_rows!r} must be an integer ≥ 1")
    rate = max_updates_per_second
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not rate > 0:
        raise ConfigError(f"max_updates_per_second={rate!r} must be a number > 0")


class _View:
    """What the live and the static view share: the query, the options, the updater.

    Subclasses build their own parts in :meth:`_setup`, which the constructor calls last.
    """

    def __init__(
        self,
        query: Observed,
        *,
        max_rows: int = 20,
        max_updates_per_second: float = 10,
        sort: str | Sequence[str] | None = None,
        descending: bool = True,
    ) -> None:
        _check_options(max_rows, max_updates_per_second)
        self.query = query
        self.max_rows = max_rows
        self.max_updates_per_second = float(max_updates_per_second)
        self.sort = [sort] if isinstance(sort, str) else list(sort) if sort else None
        self.descending = descending
        self.created_at = time.monotonic()
        self.first_result_at: float | None = None
        """``time.monotonic()`` of the first redraw that showed results."""
        self._throttle = Throttle(
            query.name,
            self._probe,
            self._push,
            self._ended,
            max_per_second=self.max_updates_per_second,
        )
        self._setup()

    def _setup(self) -> None:
        """Build what the kind of view needs (its widgets, its state); the updater is idle."""

    @property
    def updates(self) -> int:
        """Redraws so far."""
        return self._throttle.pushes

    @property
    def update_times(self) -> list[float]:
        """``time.monotonic()`` of the most recent redraws."""
        return list(self._throttle.push_times)

    def start(self) -> None:
        self._throttle.start()

    def close(self, timeout: float | None = 5.0) -> None:
        """Stop redrawing (the query keeps running) and end the updater thread."""
        self._throttle.close(timeout)

    def join(self, timeout: float | None = None) -> bool:
        """Wait until the final redraw after the query ended; True if it happened."""
        return self._throttle.join(timeout)

    def _ended(self) -> bool:
        return self.query.status()["state"] in _ENDED

    def _probe(self) -> Hashable:
        raise NotImplementedError

    def _push(self) -> None:
        raise NotImplementedError

    def _rows(self) -> tuple[pl.DataFrame, int]:
        """The rows to show and the table's total height."""
        frame = self.query.result()
        rows = _render.newest(
            frame,
            max_rows=self.max_rows,
            keyed=self.query.plan.keys is not None,
            sort=self.sort,
            descending=self.descending,
        )
        return rows, frame.height

    def _note_result(self) -> None:
        if self.first_result_at is None and self.query.version > 0:
            self.first_result_at = time.monotonic()

    def lifecycle_html(self) -> str | None:
        """The lifecycle panel's HTML (None for a query that cannot tell: a stand-in)."""
        query = self.query
        if not isinstance(query, Query):
            return None
        return _lifecycle.lifecycle_html(
            query.lifecycle(),
            query.watermarks(),
            late=query.status()["late"],
            idle_ms=introspect.idle_timeouts(query.plan.sources()),
        )

    def snapshot_html(self) -> str:
        """Status, table and lifecycle (in a ``<details>``) as static HTML: what a notebook
        without widgets shows."""
        rows, total = self._rows()
        html = _render.snapshot_html(self.query.status(), rows, total)
        lifecycle = self.lifecycle_html()
        if lifecycle is None:
            return html
        return f"{html}{_lifecycle.STYLE}<details><summary>lifecycle</summary>{lifecycle}</details>"


class LiveTable(_View):
    """A live table widget over a running query; display it, then :meth:`start` it.

    ``widget`` is the ipywidgets ``VBox``; ``status``, ``table``, the buttons, the side
    output panels and ``lifecycle`` (an ``Accordion``, collapsed; ``lifecycle_panel`` is its
    HTML) are its parts. Displaying it shows the widget, with a static HTML
    snapshot as ``text/html`` for frontends that cannot render widgets.
    """

    def _setup(self) -> None:
        import ipywidgets as w

        query = self.query
        self._lock = threading.RLock()  # one writer at a time: the updater or a click
        self.status = w.HTML(_render.status_html(query.status()))
        self.pause_button = w.Button(description="Pause", icon="pause", tooltip="pause input")
        self.resume_button = w.Button(description="Resume", icon="play", disabled=True)
        self.stop_button = w.Button(description="Stop", icon="stop", button_style="danger")
        self.late_toggle = w.ToggleButton(description="late (0)", tooltip="late records")
        self.errors_toggle = w.ToggleButton(description="errors (0)", tooltip="error records")
        self.table = w.HTML(_render.html_table(query.result().head(0)))
        self.late_panel = w.HTML(layout=w.Layout(display="none"))
        self.errors_panel = w.HTML(layout=w.Layout(display="none"))
        self.lifecycle_panel = w.HTML()
        self.lifecycle = w.Accordion(
            children=[self.lifecycle_panel],
            titles=("lifecycle: watermarks, the next window and what it waits for",),
            selected_index=None,
        )
        self.lifecycle.add_class("streamnb-lifecycle-section")
        parts = [self.lifecycle] if isinstance(query, Query) else []
        controls = w.HBox(
            [
                self.pause_button,
                self.resume_button,
                self.stop_button,
                self.late_toggle,
                self.errors_toggle,
            ]
        )
        self.widget = w.VBox(
            [
                w.HTML(_render.STYLE + _lifecycle.STYLE),
                self.status,
                controls,
                self.table,
                self.late_panel,
                self.errors_panel,
                *parts,
            ]
        )
        self.pause_button.on_click(lambda _: self._control(query.pause))
        self.resume_button.on_click(lambda _: self._control(query.resume))
        self.stop_button.on_click(lambda _: self._control(lambda: query.stop(timeout=0)))
        self.late_toggle.observe(lambda _: self._refresh_panels(force=True), names="value")
        self.errors_toggle.observe(lambda _: self._refresh_panels(force=True), names="value")
        self.lifecycle.observe(lambda _: self._control(lambda: None), names="selected_index")
        self._shown_version = -1
        self._shown_side: dict[str, int] = {}
        self._handle: Any = None

    def _control(self, action: Any) -> None:
        """Do ``action`` (a click), then redraw: by the updater if it runs, else here."""
        action()
        if self._throttle.alive:
            self._throttle.wake()  # the updater redraws the status at once
        else:
            self._push()

    @property
    def lifecycle_open(self) -> bool:
        return self.lifecycle.selected_index is not None

    def _probe(self) -> Hashable:
        s = self.query.status()
        # an open lifecycle section changes without records too (a partition goes idle)
        tick = int(time.monotonic()) if self.lifecycle_open else None
        return (self.query.version, s["state"], s["records_in"], s["late"], s["errors"], tick)

    def _push(self) -> None:
        query = self.query
        with self._lock:
            status = query.status()
            self.status.value = _render.status_html(status, query.exception)
            state = status["state"]
            self.pause_button.disabled = state != "running"
            self.resume_button.disabled = state != "paused"
            self.stop_button.disabled = state in _ENDED
            self.late_toggle.description = f"late ({status['late']:,})"
            self.errors_toggle.description = f"errors ({status['errors']:,})"
            version = query.version
            if version != self._shown_version:
                rows, total = self._rows()
                caption = f"newest {rows.height} of {total:,} rows" if total > rows.height else ""
                self.table.value = _render.html_table(rows, caption=caption)
                self._shown_version = version
                self._note_result()
            self._refresh_panels(status)
            if self.lifecycle_open:
                self._refresh_lifecycle()
        if state in _ENDED and self._handle is not None:
            self._handle.update(self)  # refresh the static fallback with the final table

    def _refresh_panels(self, status: Status | None = None, *, force: bool = False) -> None:
        status = status or self.query.status()
        with self._lock:
            for kind, count, toggle, panel in (
                ("late", status["late"], self.late_toggle, self.late_panel),
                ("errors", status["errors"], self.errors_toggle, self.errors_panel),
            ):
                panel.layout.display = "block" if toggle.value else "none"
                if toggle.value and (force or self._shown_side.get(kind) != count):
                    side = self.query.late() if kind == "late" else self.query.errors()
                    rows = side.tail(self.max_rows).reverse()
                    panel.value = _render.html_table(
                        rows, caption=f"{kind}: newest {rows.height} of {count:,}"
                    )
                    self._shown_side[kind] = count

    def _refresh_lifecycle(self) -> None:
        """Redraw the lifecycle section if it is open (it costs nothing while closed)."""
        with self._lock:
            if self.lifecycle_open and (text := self.lifecycle_html()) is not None:
                self.lifecycle_panel.value = text

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        bundle = dict(self.widget._repr_mimebundle_(**kwargs) or {})
        bundle["text/html"] = self.snapshot_html()
        bundle["text/plain"] = repr(self.query)
        return bundle

    def display(self) -> None:
        """Display the widget (updated in place later; the fallback at the end)."""
        from IPython.display import display

        self._handle = display(self, display_id=True)


class StaticView(_View):
    """Text snapshots of a query where no widget can render: after the first results, at the end.

    It prints from its own daemon thread, so it never blocks the caller.
    """

    def _setup(self) -> None:
        self.snapshots: list[str] = []

    def _probe(self) -> Hashable:
        return (self.query.version > 0, self._ended())

    def _push(self) -> None:
        if self.query.version == 0 and not self._ended():
            return  # the first probe: nothing to show yet
        rows, _ = self._rows()
        self._note_result()
        text = _render.snapshot_text(self.query, rows)
        self.snapshots.append(text)
        print(text, flush=True)

    def _repr_html_(self) -> str:
        return self.snapshot_html()


def display_query(
    query: Observed,
    *,
    max_rows: int = 20,
    max_updates_per_second: float = 10,
    sort: str | Sequence[str] | None = None,
    descending: bool = True,
) -> Observed:
    """Show a live table of an already running ``query``; return it (view as ``query.widget``)."""
    options: dict[str, Any] = {
        "max_rows": max_rows,
        "max_updates_per_second": max_updates_per_second,
        "sort": sort,
        "descending": descending,
    }
    view: _View
    if frontend() == "kernel":
        live = LiveTable(query, **options)
        live.display()
        view = live
    else:
        view = StaticView(query, **options)
    view.start()
    query.views["table"] = view
    return query


def show(
    stream: Stream,
    name: str | None = None,
    *,
    max_rows: int = 20,
    max_updates_per_second: float = 10,
    sort: str | Sequence[str] | None = None,
    descending: bool = True,
) -> Query:
    """Start ``stream`` as query ``name`` and display a live table of its result.

    Parameters
    ----------
    stream
        The stream to start (``stream.show()`` calls this).
    name
        The query's name; a running query of that name is replaced.
    max_rows
        The most rows shown: window results newest window first, append streams newest
        record first, tables in key order.
    max_updates_per_second
        The cap on redraws; changes in between are coalesced (the latest wins).
    sort
        Column(s) to order the shown rows by instead (e.g. ``"bids"`` for a top-N view).
    descending
        Order of ``sort`` (largest first by default).

    Returns
    -------
    Query
        The running query; its view is ``query.widget``. Without a notebook frontend the
        view prints text snapshots instead (after the first results and at the end).
    """
    if not isinstance(stream, Stream):
        raise ConfigError(f"show() takes a Stream, got {type(stream).__name__}")
    sort_columns = [sort] if isinstance(sort, str) else list(sort or [])
    schema = stream.schema
    for column in sort_columns:
        if schema is not None and column not in schema:
            raise ConfigError(f"show(sort=...): no column {column!r}; columns are {stream.columns}")
    _check_options(max_rows, max_updates_per_second)  # before anything starts
    query = stream.start(name)
    display_query(
        query,
        max_rows=max_rows,
        max_updates_per_second=max_updates_per_second,
        sort=sort,
        descending=descending,
    )
    return query
