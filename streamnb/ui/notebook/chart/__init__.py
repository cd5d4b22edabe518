"""Live Altair charts over a query's result: ``stream.chart(alt_chart)``.

The chart is an anywidget whose JavaScript embeds the user's chart with vega-embed ONCE and
then applies each update in place with ``view.change(dataset, changeset)``, one change after
the other. The chart's data is a named dataset (``{"name": "data"}``) fed from the query's
result table; the zoom, hover and selections of the view survive updates, and so does its
``<svg>`` element.

Updates come from one daemon thread per chart that polls ``query.version`` (never the engine
thread): the latest result wins, at most ``max_updates_per_second`` messages a second, and a
trailing flush when the query ends. Append streams send only their new rows (the view keeps
the newest ``max_rows``); tables (running aggregates, ``emit="update"`` windows) send upserts
and deletes by key. A view that opens later, or that missed a message, asks for a snapshot.
Temporal columns travel as epoch milliseconds.

The JavaScript is bundled offline by ``vl_convert.javascript_bundle`` into
``static/chart_widget.bundle.js`` (vega, vega-lite and vega-embed included; nothing loads from
a CDN). After editing ``static/chart_widget.js`` run ``python -m streamnb.ui.notebook.chart
--build-bundle``; a stale committed bundle is rebuilt into ``~/.cache/streamnb`` on first use.

Without a notebook frontend (plain Python, nbclient, the worker) nothing blocks or fails: the
query runs, and inside a kernel the chart's output also carries a static rendering (the
Vega-Lite spec with the current data, then a PNG once it is clear no view is listening).

The package holds :func:`chart` (start a query and display its chart) and its parts:
``bundle`` (the JavaScript bundle, its paths and the ``--build-bundle`` command line),
``rows`` (result rows as JSON), ``spec`` (the chart's spec and its static renderings),
``feed`` (the messages the views apply) and ``widget`` (the anywidget class and the updater
thread). Where the output goes is :mod:`streamnb.ui.notebook._frontend`'s to say.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from streamnb.exceptions import ConfigError
from streamnb.ui.notebook._frontend import kernel_shell
from streamnb.ui.notebook.chart.bundle import BUNDLE, build_bundle, bundle_text, source_digest
from streamnb.ui.notebook.chart.feed import Feed
from streamnb.ui.notebook.chart.rows import json_rows
from streamnb.ui.notebook.chart.spec import chart_spec, static_mimebundle
from streamnb.ui.notebook.chart.widget import Updater, _ended, _widget_class

if TYPE_CHECKING:
    from streamnb.engine.query import Observed, Query
    from streamnb.stream import Stream

__all__ = [
    "BUNDLE",
    "Feed",
    "Updater",
    "build_bundle",
    "bundle_text",
    "chart",
    "chart_spec",
    "json_rows",
    "source_digest",
    "static_mimebundle",
]


def _display(query: Observed, widget: Any, spec: dict[str, Any], wait: float, rate: float) -> None:
    """Display ``widget`` with a static rendering (of the data that came within ``wait`` s).

    Then start its updater, which also re-renders the static part (a PNG) when no view opens.
    """
    deadline = time.monotonic() + max(0.0, wait)
    while query.version == 0 and not _ended(query) and time.monotonic() < deadline:
        time.sleep(0.01)

    def rows_now() -> list[dict[str, Any]]:
        return json_rows(query.result().tail(widget.max_rows))

    # readers without the widget get the spec with the data so far (maybe none yet)
    widget._static = static_mimebundle(spec, rows_now(), widget.dataset, png=False)

    from IPython.display import display

    handle = display(widget, display_id=True)

    def on_static() -> None:
        widget._static = static_mimebundle(spec, rows_now(), widget.dataset, png=True)
        if handle is not None:
            handle.update(widget)

    widget.updater = Updater(
        query, widget.send, rate=rate, max_rows=widget.max_rows, on_static=on_static
    ).start()


def chart(
    stream: Stream,
    chart: Any,
    name: str | None = None,
    *,
    max_updates_per_second: float = 10,
    max_rows: int = 5000,
    dataset: str = "data",
    renderer: str = "svg",
    embed_options: Mapping[str, Any] | None = None,
    wait_for_data: float = 0.3,
    **start_options: Any,
) -> Query:
    """Start ``stream`` and display ``chart`` (an Altair chart) live over its result.

    The chart's data is the query's result table, as the named dataset ``dataset``; the newest
    ``max_rows`` rows are drawn. Views update in place at most ``max_updates_per_second`` times
    a second. ``renderer`` is vega-embed's (``"svg"`` or ``"canvas"``); ``embed_options`` go to
    vega-embed. ``wait_for_data`` bounds how long the call waits for a first result so that
    the output also carries a static rendering of it (for readers without the widget).
    Other keyword arguments go to ``stream.start``.

    Returns the :class:`Query`; the widget is ``query.chart_widget`` (None if it could not be
    made). Outside a notebook kernel the query runs and nothing is displayed.
    """
    if not max_updates_per_second > 0:
        raise ConfigError(f"max_updates_per_second={max_updates_per_second!r} must be > 0")
    if not isinstance(max_rows, int) or max_rows < 1:
        raise ConfigError(f"max_rows={max_rows!r} must be a positive int")
    if renderer not in ("svg", "canvas"):
        raise ConfigError(f"renderer={renderer!r} must be 'svg' or 'canvas'")
    spec = chart_spec(chart, stream.schema, dataset)  # bad charts fail before the query starts
    options = {"actions": {"export": True, "source": False, "compiled": False, "editor": False}}
    options.update(embed_options or {})

    query = stream.start(name=name, **start_options)
    widget: Any = None
    try:
        widget = _widget_class()(
            spec=spec,
            dataset=dataset,
            max_rows=max_rows,
            renderer=renderer,
            embed_options=json.loads(json.dumps(options)),
        )
    except Exception as exc:  # no frontend pieces: the query still runs
        warnings.warn(f"streamnb chart: no live chart ({exc})", RuntimeWarning, stacklevel=2)
    query.views["chart"] = widget
    if widget is not None:
        widget.query = query
    shell = kernel_shell()
    if widget is None or shell is None:
        return query

    try:
        _display(query, widget, spec, wait_for_data, max_updates_per_second)
    except Exception as exc:  # the query runs on; only the chart is lost
        warnings.warn(f"streamnb chart: not displayed ({exc!r})", RuntimeWarning, stacklevel=2)
    return query
