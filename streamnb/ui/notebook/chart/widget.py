"""The chart widget and the thread that feeds it.

This module owns the anywidget class (``LiveChart``, built on first use by ``_widget_class``
so that anywidget and traitlets load only when a chart is made) and :class:`Updater`, which
polls ``query.version`` from one daemon :class:`~streamnb.ui.notebook._throttle.Throttle`
thread and sends :class:`~streamnb.ui.notebook.chart.feed.Feed` messages to the views, or
re-renders the static part when no view listens. The updater's timings (``POLL_SECONDS``,
``GRACE_SECONDS``, ``STATIC_EVERY_SECONDS``) are module constants.
"""

from __future__ import annotations

import math
import threading
import time
import warnings
from collections.abc import Callable
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import polars as pl

from streamnb.ui.notebook._throttle import Throttle
from streamnb.ui.notebook.chart.bundle import CSS, bundle_text
from streamnb.ui.notebook.chart.feed import Feed

if TYPE_CHECKING:
    from streamnb.engine.query import Observed

__all__ = ["GRACE_SECONDS", "POLL_SECONDS", "STATIC_EVERY_SECONDS", "Updater"]

POLL_SECONDS = 0.05  # how often the updater looks at query.version (at most)
GRACE_SECONDS = 3.0  # no view has said hello by then: assume no frontend, render statically
STATIC_EVERY_SECONDS = 10.0  # headless static re-renders, at most this often


@lru_cache(maxsize=1)
def _widget_class() -> type:
    import anywidget
    import traitlets

    class LiveChart(anywidget.AnyWidget):
        """A live Vega-Lite chart over a query's result (see :func:`streamnb.ui.notebook.chart`)."""

        _esm = bundle_text()
        _css = CSS.read_text(encoding="utf-8")
        spec = traitlets.Dict().tag(sync=True)
        dataset = traitlets.Unicode("data").tag(sync=True)
        max_rows = traitlets.Int(5000).tag(sync=True)
        renderer = traitlets.Unicode("svg").tag(sync=True)
        embed_options = traitlets.Dict().tag(sync=True)

        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.updater: Updater | None = None
            self.query: Observed | None = None
            self._static: dict[str, Any] = {}
            self.on_msg(self._on_view_msg)

        def _on_view_msg(self, _widget: Any, content: Any, _buffers: Any) -> None:
            hello = isinstance(content, dict) and content.get("type") == "hello"
            if hello and self.updater is not None:
                self.updater.hello()

        def _repr_mimebundle_(self, **kwargs: Any) -> Any:
            out = super()._repr_mimebundle_(**kwargs)
            if out is None:
                return None
            data, metadata = out
            return {**self._static, **data}, metadata

        def __repr__(self) -> str:
            name = self.query.name if self.query is not None else None
            return f"<streamnb live chart of query {name!r}>"

        def close(self) -> None:
            if self.updater is not None:
                self.updater.stop()
            super().close()

    return LiveChart


class Updater:
    """Feeds a chart's views from ``query``, from one daemon :class:`Throttle` thread.

    It polls ``query.version``; the latest result wins, at most ``rate`` messages a second,
    with a trailing flush when the query ends. ``send`` broadcasts a message to the views.
    Nothing is sent before a view has said hello (there is nobody to draw it); until then,
    ``on_static`` re-renders the static part once ``grace`` seconds have passed, at most every
    ``static_every`` seconds and once more at the end.
    """

    def __init__(
        self,
        query: Observed,
        send: Callable[[dict[str, Any]], None],
        *,
        rate: float,
        max_rows: int,
        on_static: Callable[[], None] | None = None,
        grace: float | None = None,
        static_every: float | None = None,
    ) -> None:
        self.query = query
        self.send = send
        self.feed = Feed(query.plan.keys, max_rows)
        self.on_static = on_static
        self.grace = GRACE_SECONDS if grace is None else grace
        self.static_every = STATIC_EVERY_SECONDS if static_every is None else static_every
        self.views = False  # a view has said hello
        self.sent = 0  # how many messages went out
        self._resets = 0  # snapshots asked for: a new one makes the throttle push
        self._want_reset = False
        self._static_version = -1
        self._last_static = -math.inf
        self._lock = threading.Lock()
        self._throttle = Throttle(
            f"chart:{query.name}",
            self._probe,
            self._loop_push,
            lambda: _ended(query),
            max_per_second=rate,
            poll=POLL_SECONDS,
            ready=lambda: self.views,
            idle=self._loop_static,
        )
        self.interval = self._throttle.interval

    # -- control ----------------------------------------------------------------------------
    def start(self) -> Updater:
        self._throttle.start()
        return self

    def stop(self) -> None:
        self._throttle.close(timeout=0)

    def join(self, timeout: float | None = None) -> bool:
        return self._throttle.join(timeout)

    @property
    def alive(self) -> bool:
        return self._throttle.alive

    def hello(self) -> None:
        """A view opened (or lost its place): send everyone a snapshot."""
        self.views = True
        self._want_reset = True
        self._resets += 1
        if self._throttle.finished:  # the query is over: answer from here
            self._push()

    # -- the loop ---------------------------------------------------------------------------
    def _probe(self) -> tuple[int, int]:
        return self.query.version, self._resets

    def _read(self) -> tuple[pl.DataFrame, int, bool]:
        """The result and the rows it has taken in, and whether the two are consistent."""
        q = self.query
        frame, rows_out = pl.DataFrame(), 0
        for _ in range(10):
            before = q.version
            frame = q.result()
            rows_out = int(q.status()["records_out"])
            if q.version == before:
                return frame, rows_out, True
        return frame, rows_out, False

    def _push(self) -> None:
        with self._lock:
            frame, rows_out, consistent = self._read()
            if self._want_reset:
                self._want_reset = False
                msg: dict[str, Any] | None = self.feed.reset(frame, rows_out)
            else:
                msg = self.feed.update(frame, rows_out)
            if not consistent:  # a torn read: set things straight next time
                self._want_reset = True
                self._resets += 1
            if msg is not None:
                self.send(msg)
                self.sent += 1

    def _static(self, ended: bool) -> bool:
        """Re-render the static part if no view has said hello and it is due; True if done."""
        version = self.query.version
        now = time.monotonic()
        started = self._throttle.started_at
        if (
            self.on_static is None
            or self.views
            or started is None
            or now - started < self.grace
            or version == self._static_version
            or version <= 0
            or not (ended or now - self._last_static >= self.static_every)
        ):
            return False
        self._static_version = version
        self.on_static()
        self._last_static = time.monotonic()
        return True

    def _loop_push(self) -> None:
        try:
            self._push()
        except Exception as exc:
            self._give_up(exc)

    def _loop_static(self, ended: bool) -> bool:
        try:
            return self._static(ended)
        except Exception as exc:
            self._give_up(exc)
            return False

    def _give_up(self, exc: Exception) -> None:
        # a chart must never take the kernel down
        warnings.warn(f"streamnb chart: updates stopped: {exc!r}", RuntimeWarning, stacklevel=1)
        self._throttle.close(timeout=0)


def _ended(query: Observed) -> bool:
    """Whether ``query`` has ended (finished, stopped or failed), without blocking."""
    try:
        return query.wait(0)
    except Exception:  # failed: the failure is the query's to report, not the chart's
        return True
