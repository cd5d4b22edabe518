"""Fetching and decoding ahead of the query: :class:`Prefetcher`, a reader's own thread.

A Kafka read has three costs per batch: ``Consumer.consume`` (librdkafka hands over one
Python ``Message`` per record, under the GIL), decoding (``pl.read_ndjson``, which releases
the GIL) and the query's own operators. Done one after the other on the query's thread they
add up; here the fetch and the decode of the next batch run on a thread of their own while
the query processes the current one, so on two cores the slowest stage sets the pace, not
the sum of them.

What is fetched is only *fetched*: the reader takes a :class:`Fetch` on the query's thread
and only then reports its rejected records, moves its positions (what is committed) and
marks partitions idle, so stopping never commits or counts a record that the query did not
process. The queue is bounded: the thread fetches only while less than one batch is waiting,
and librdkafka's own queue holds the rest.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

JOIN_SECONDS = 5.0
"""How long stopping waits for the thread (it waits at most ``WAIT_SECONDS`` in a fetch, then
finishes decoding that batch)."""

WAIT_SECONDS = 0.1
"""How long one fetch waits for a first record before it looks again whether to stop."""


@dataclass
class Fetch:
    """One fetch of a reader, decoded: what the query's thread takes and applies."""

    at: float
    """When it was fetched (``time.monotonic()``)."""
    pids: np.ndarray
    """Each message's hidden partition id (for idle partitions)."""
    frame: pl.DataFrame | None = None
    """The decoded rows (``None``: no records)."""
    topics: list[str] | None = None
    numbers: np.ndarray | None = None
    offsets: np.ndarray | None = None
    """Topic (``None``: the source's one), partition and offset of every processed message: the
    positions move past them once the fetch is applied."""
    reports: list[Callable[[], None]] = field(default_factory=list)
    """Error rows to report on the query's thread (rejected records, consumer errors)."""
    failure: pl.DataFrame | None = None
    """``errors="fail"``: the first bad record's error row; the frame stops before it."""
    positions: dict[tuple[str, int], int] | None = None
    """While a table bootstraps: the consumer's position per partition after this fetch."""
    member_frames: list[pl.DataFrame | None] = field(default_factory=list)
    extra_messages: list[Any] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return 0 if self.frame is None else self.frame.height


class Prefetcher:
    """Runs ``fetch(max_records, wait)`` on a thread of its own, one batch ahead.

    ``fetch`` returns a :class:`Fetch` (or raises: the error is raised to the query's thread at
    its next :meth:`take`); a fetch with a ``failure`` is the last one (``errors="fail"``:
    nothing after the first bad record is read).
    """

    def __init__(self, fetch: Callable[[int, float], Fetch], name: str, max_records: int) -> None:
        self._fetch = fetch
        self.want = max_records
        """The batch size the query asks for: the largest fetch."""
        self._items: deque[Fetch] = deque()
        self._queued = 0  # records in _items
        self._busy = False  # a fetch is under way
        self._done = False  # no more fetches: stopped, failed, or after a failure
        self._error: BaseException | None = None
        self._cond = threading.Condition()
        self._thread = threading.Thread(
            target=self._run, name=f"streamnb-fetch:{name}", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    self._cond.wait_for(lambda: self._done or self._queued < self.want)
                    if self._done:
                        return
                    self._busy = True
                fetch = self._fetch(self.want, WAIT_SECONDS)
                with self._cond:
                    self._busy = False
                    if (
                        fetch.rows
                        or fetch.reports
                        or fetch.failure is not None
                        or (fetch.positions is not None)
                    ):
                        self._items.append(fetch)
                        self._queued += fetch.rows
                    if fetch.failure is not None:
                        self._done = True
                    self._cond.notify_all()
        except BaseException as exc:  # raised on the query's thread by take()
            with self._cond:
                self._error, self._busy, self._done = exc, False, True
                self._cond.notify_all()

    def take(self, max_records: int, timeout: float) -> list[Fetch]:
        """What has been fetched, up to ``max_records`` records (whole fetches, at least one),
        waiting at most ``timeout`` seconds for the first; ``[]`` if nothing came."""
        self.want = max(max_records, 1)
        with self._cond:
            if not self._items and timeout > 0:
                self._cond.wait_for(lambda: self._items or self._done, timeout)
            out: list[Fetch] = []
            taken = 0
            while self._items and (not out or taken + self._items[0].rows <= max_records):
                item = self._items.popleft()
                out.append(item)
                taken += item.rows
            self._queued -= taken
            self._cond.notify_all()
            if not out and self._error is not None:
                error, self._error = self._error, None
                raise error
            return out

    def stop(self) -> None:
        """Stop fetching and wait for the thread (what was fetched and not taken is dropped:
        its positions never moved, so it is read again by whoever resumes)."""
        with self._cond:
            self._done = True
            self._cond.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join(JOIN_SECONDS)
