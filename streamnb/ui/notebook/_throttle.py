"""A coalescing, rate-capped updater thread for the live views of a query.

A view polls something cheap (``query.version`` and a few status counters) and redraws
when it changed. Redraws are coalesced: the newest state wins, changes that arrive between
two redraws cost nothing, and at most ``max_per_second`` redraws happen in any second. When
the query has ended, one trailing redraw shows the final state and the thread ends. The
engine thread never draws: it only bumps counters that this thread reads.

Two optional hooks serve views that are not always drawn (the live chart): ``ready`` holds
redraws back until someone can see them (a view has connected), and ``idle`` does the view's
own periodic work while there is nothing to redraw (a static re-rendering).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable

from streamnb.exceptions import ConfigError

log = logging.getLogger("streamnb.ui.notebook")

THREAD_PREFIX = "streamnb-ui:"
"""Names of updater threads start with this (query threads start with ``streamnb:``)."""


class Throttle:
    """Call ``push()`` from one daemon thread whenever ``probe()`` changes, rate-capped.

    Parameters
    ----------
    name
        Thread name suffix (the query's name).
    probe
        Returns a hashable snapshot of what is shown; a different value means "redraw".
    push
        Redraws the view from the current state (it reads the state itself, so a redraw
        after a coalescing wait shows the newest state, not the one that triggered it).
    ended
        True once nothing will change any more: after the trailing redraw the thread ends.
    max_per_second
        The cap on redraws per second.
    poll
        Seconds between two probes while nothing changes.
    ready
        Redraws wait until this is true (e.g. until a view has connected); until then
        changes are not redrawn, and the thread still ends once ``ended``.
    idle
        Called from the thread, with ``ended``, whenever there is nothing to redraw: other
        periodic work of the view. It returns True if it did something; the thread then
        looks again at once instead of waiting (or ending).
    """

    def __init__(
        self,
        name: str,
        probe: Callable[[], Hashable],
        push: Callable[[], None],
        ended: Callable[[], bool],
        *,
        max_per_second: float,
        poll: float = 0.02,
        ready: Callable[[], bool] | None = None,
        idle: Callable[[bool], bool] | None = None,
    ) -> None:
        if not max_per_second > 0:
            raise ConfigError(f"max_updates_per_second={max_per_second!r} must be > 0")
        self.interval = 1.0 / max_per_second
        self.poll = min(poll, self.interval)
        self._probe, self._push, self._ended = probe, push, ended
        self._ready = ready
        self._idle = idle
        self._closed = threading.Event()
        self._wake = threading.Event()
        self._finished = threading.Event()
        self.push_times: deque[float] = deque(maxlen=10_000)
        """``time.monotonic()`` of the most recent redraws."""
        self.pushes = 0
        self.started_at: float | None = None
        self._thread = threading.Thread(target=self._run, name=THREAD_PREFIX + name, daemon=True)

    def start(self) -> None:
        self.started_at = time.monotonic()
        self._thread.start()

    def wake(self) -> None:
        """Probe now instead of at the next poll (e.g. after a button click)."""
        self._wake.set()

    def close(self, timeout: float | None = 5.0) -> None:
        """End the thread without a trailing redraw and wait for it."""
        self._closed.set()
        self._wake.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the thread to end (after the trailing redraw); True if it did."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def finished(self) -> bool:
        """The loop is over (ended or closed): whoever changes the state now redraws itself.

        A change made just before this turned true is still redrawn by the thread, unless
        it was closed.
        """
        return self._finished.is_set()

    def _is_ready(self) -> bool:
        return self._ready is None or self._ready()

    def _run(self) -> None:
        try:
            shown = self._loop()
        finally:
            self._finished.set()
        # a change that came while the loop was ending (e.g. a view that just connected)
        if not self._closed.is_set() and self._is_ready() and self._probe() != shown:
            self._redraw()

    def _loop(self) -> object:
        """Redraw until ended (or closed); return the snapshot shown last."""
        shown: object = object()  # nothing shown yet: the first probe always differs
        next_allowed = 0.0
        while not self._closed.is_set():
            ended = self._ended()  # read before probing: a final probe sees the final state
            snapshot = self._probe() if self._is_ready() else shown
            if snapshot != shown:
                delay = next_allowed - time.monotonic()
                if delay > 0:  # coalesce: wait out the interval, then probe again
                    self._closed.wait(delay)
                    continue
                self._redraw()
                shown = snapshot
                next_allowed = time.monotonic() + self.interval
            elif self._idle is not None and self._idle(ended):
                continue
            elif ended:
                break
            self._wake.wait(self.poll)
            self._wake.clear()
        return shown

    def _redraw(self) -> None:
        try:
            self._push()
        except Exception:  # a broken view must not take the updater down silently
            log.exception("streamnb: updating a live view failed")
        now = time.monotonic()
        self.pushes += 1
        self.push_times.append(now)
