"""Fetching and decoding ahead of the query: :class:`Prefetcher`, a reader's own threads.

A Kafka read has three costs per batch: ``Consumer.consume`` (librdkafka hands over one
Python ``Message`` per record, under the GIL), decoding (``pl.read_ndjson``, which releases
the GIL) and the query's own operators. Done one after the other on the query's thread they
add up; here one thread fetches and another decodes while the query processes the batch
before, so on two cores the slowest stage sets the pace, not the sum of them. What piled up
while the decoder was busy is decoded as one batch, so batches grow with a backlog.

What is fetched is only *fetched*: the reader takes a :class:`Fetch` on the query's thread
and only then reports its rejected records, moves its positions (what is committed) and
marks partitions idle, so stopping never commits or counts a record that the query did not
process. The queue is bounded: the fetching thread fetches only while less than two batches
wait (one being decoded, one decoded), and librdkafka's own queue holds the rest.

The threads pay off only while there is more to read than the query can take at once. Under
a light load every batch is a handful of records, and three threads handing each one on to
the next, under one GIL, cost more than they save: each stage's fixed cost grows two- to
threefold while the others hold the GIL, and that is latency (q1 at 10 000 records/s, broker
append to sink: p99 24 ms through the threads, 11 ms on the query's thread alone). So when
:data:`LIGHT_TAKES` takes in a row found well under a batch to take (:data:`LIGHT_SHARE`),
the threads park and the query's thread fetches and decodes for itself; :data:`FULL_TAKES`
fetches in a row that fill a batch (a backlog) wake them again. One full fetch is no backlog:
a query near its capacity (q1 at 50 000 records/s, whose batch budget is a few thousand
records) fills one after any stall of a few tens of ms, and the threads it woke ran until 20
light takes parked them again (in a traced run, 10 s of threads, batches of 1 000-2 000
records taking 20-40 ms to process). In two runs with the threads kept parked its p99 was 96
and 79 ms against 129 and 855 ms; a later A/B of three settings on one broker spread from 110
to 1 225 ms within each setting, so the machine's noise hides the size of the gain.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from streamnb.engine import heap

JOIN_SECONDS = 5.0
"""How long stopping waits for the thread (it waits at most ``WAIT_SECONDS`` in a fetch, then
finishes decoding that batch)."""

WAIT_SECONDS = 0.1
"""How long one fetch waits for a first record before it looks again whether to stop."""

LIGHT_TAKES = 20
"""Light takes in a row (see :data:`LIGHT_SHARE`) before the threads park and the query's
thread reads for itself."""

FULL_TAKES = 3
"""Fetches in a row on the query's thread that fill the batch asked for before the parked
threads wake (a catch-up fills every one; a burst, one or two)."""

LIGHT_SHARE = 0.25
"""A take is light when what it took and all that waits behind it (fetched or decoded) come
to less than this share of the batch asked for: the pipeline is not what keeps the query up.
(Whether anything waits at all is no measure: through the threads each batch costs more, so
they always run a little behind and would never park.)"""


@dataclass
class Fetch:
    """One fetch of a reader, decoded: what the query's thread takes and applies."""

    at: float
    """When it was fetched (``time.monotonic()``)."""
    pids: np.ndarray
    """Each message's hidden partition id (for idle partitions)."""
    parts: list[int] = field(default_factory=list)
    """The distinct values of ``pids`` (usually one): what the bookkeeping of a fetch loops
    over, found once per fetch (see :func:`distinct`)."""
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
    messages: list[Any] = field(default_factory=list)
    """The fetched messages, until they are decoded."""
    member_frames: list[pl.DataFrame | None] = field(default_factory=list)
    extra_messages: list[Any] = field(default_factory=list)
    holds: list[heap.Hold] = field(default_factory=list)
    """Collections held off while ``messages`` are alive (:func:`streamnb.engine.heap.hold`)."""

    def release(self) -> None:
        """The messages were decoded and freed: collections may run again."""
        holds, self.holds = self.holds, []
        for hold in holds:
            hold.release()

    @property
    def rows(self) -> int:
        return 0 if self.frame is None else self.frame.height

    @staticmethod
    def merged(fetches: list[Fetch]) -> Fetch:
        """Several fetches not decoded yet as one (in order): what piled up while the
        decoder was busy is decoded at once, so batches grow with the backlog."""
        if len(fetches) == 1:
            return fetches[0]
        last = fetches[-1]
        with_records = [f for f in fetches if f.messages]
        out = Fetch(
            last.at,
            np.concatenate([f.pids for f in fetches]),
            list(dict.fromkeys(p for f in fetches for p in f.parts)),
            reports=[r for f in fetches for r in f.reports],
            positions=next((f.positions for f in reversed(fetches) if f.positions), None),
            messages=[m for f in with_records for m in f.messages],
            extra_messages=[m for f in fetches for m in f.extra_messages],
            holds=[h for f in fetches for h in f.holds],
        )
        if with_records:
            out.numbers = np.concatenate([f.numbers for f in with_records])
            out.offsets = np.concatenate([f.offsets for f in with_records])
            if with_records[0].topics is not None:
                out.topics = [t for f in with_records for t in f.topics or ()]
        for f in fetches:  # moved to ``out``: freed, and released, with it
            f.messages, f.holds = [], []
        return out


def distinct(values: np.ndarray) -> list[int]:
    """The distinct values of ``values`` (a fetch's partitions: usually one, never many)."""
    if not len(values):
        return []
    first = values[0]
    if (values == first).all():
        return [int(first)]
    return [int(v) for v in np.unique(values)]


class Prefetcher:
    """Runs ``fetch(max_records, wait)`` and ``decode(fetch)`` on two threads of their own,
    ahead of the query: while the query processes a batch, the next is decoded and the one
    after it fetched.

    ``fetch`` returns a :class:`Fetch` holding the raw ``messages``; ``decode`` turns it into
    rows. Either may raise: the error reaches the query's thread at its next :meth:`take`. A
    fetch whose decoding has a ``failure`` is the last one taken (``errors="fail"``: nothing
    after the first bad record is processed).

    Under a light load the threads park and :meth:`take` fetches and decodes on the calling
    thread (:attr:`inline`); a fetch that fills the batch wakes them (see the module's
    docstring). ``fetch`` is never called on two threads at once: the query's thread calls it
    only once the fetching thread is parked, and it leaves its park only when woken.
    """

    def __init__(
        self,
        fetch: Callable[[int, float], Fetch],
        decode: Callable[[Fetch], Fetch],
        name: str,
        max_records: int,
    ) -> None:
        self._fetch, self._decode = fetch, decode
        self.want = max_records
        """The batch size the query asks for: the largest fetch."""
        self._raw: deque[Fetch] = deque()  # fetched, to decode
        self._items: deque[Fetch] = deque()  # decoded, to take
        self._queued = 0  # records fetched and not taken
        self._done = False  # no more fetches: stopped, failed, or after a failure
        self._error: BaseException | None = None
        self._park = False  # the threads are to park: the query's thread will read itself
        self._parked = False  # the fetching thread waits, outside any fetch
        self._light = 0  # light takes in a row (LIGHT_SHARE)
        self._full = 0  # fetches in a row on the query's thread that filled the batch
        self._cond = threading.Condition()
        self._threads = [
            threading.Thread(target=self._guarded, args=(run,), name=f"{part}:{name}", daemon=True)
            for run, part in (
                (self._fetching, "streamnb-fetch"),
                (self._decoding, "streamnb-decode"),
            )
        ]
        for thread in self._threads:
            thread.start()

    def _guarded(self, run: Callable[[], None]) -> None:
        try:
            run()
        except BaseException as exc:  # raised on the query's thread by take()
            with self._cond:
                if self._error is None:
                    self._error = exc
                self._done = True
                self._cond.notify_all()

    def _fetching(self) -> None:
        while True:
            with self._cond:
                self._parked = True
                self._cond.notify_all()
                # one batch being decoded and one decoded, waiting for the query, at most
                self._cond.wait_for(
                    lambda: self._done or (not self._park and self._queued < 2 * self.want)
                )
                self._parked = False
                if self._done:
                    return
            fetch = self._fetch(self.want, WAIT_SECONDS)
            if fetch.messages or fetch.reports or fetch.positions is not None:
                with self._cond:
                    self._raw.append(fetch)
                    self._queued += len(fetch.messages)
                    self._cond.notify_all()

    def _decoding(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._done or bool(self._raw))
                if self._done:
                    return
                raws: list[Fetch] = []
                size = 0  # what waits, decoded as one batch (up to one batch)
                for raw in self._raw:
                    if raws and size + len(raw.messages) > self.want:
                        break
                    raws.append(raw)
                    size += len(raw.messages)
            raw = Fetch.merged(raws)
            fetched = len(raw.messages)
            fetch = self._decode(raw)
            with self._cond:
                for _ in raws:
                    self._raw.popleft()
                self._items.append(fetch)
                self._queued += fetch.rows - fetched
                if fetch.failure is not None:
                    self._done = True
                self._cond.notify_all()

    @property
    def queued(self) -> int:
        """Records fetched and not taken yet (being decoded or waiting for the query)."""
        with self._cond:
            return self._queued

    @property
    def ready(self) -> int:
        """Records decoded and waiting for the query."""
        with self._cond:
            return sum(item.rows for item in self._items)

    @property
    def inline(self) -> bool:
        """Whether the threads are parked and :meth:`take` reads on the calling thread."""
        with self._cond:
            return self._inline()

    def _inline(self) -> bool:
        return (
            self._park
            and self._parked
            and not self._raw
            and not self._items
            and not self._done
            and self._error is None
        )

    def take(self, max_records: int, timeout: float) -> list[Fetch]:
        """What has been fetched and decoded, up to ``max_records`` records (whole fetches, at
        least one), waiting at most ``timeout`` seconds for the first; ``[]`` if none came."""
        self.want = max(max_records, 1)
        with self._cond:
            inline = self._inline()
        if inline:
            return self._read(timeout)
        with self._cond:
            if not self._items and timeout > 0:
                self._cond.wait_for(lambda: bool(self._items) or self._done, timeout)
            out: list[Fetch] = []
            taken = 0
            while self._items and (not out or taken + self._items[0].rows <= max_records):
                item = self._items.popleft()
                out.append(item)
                taken += item.rows
            self._queued -= taken
            light = taken + self._queued < LIGHT_SHARE * max_records
            self._light = self._light + 1 if light else 0
            if self._light >= LIGHT_TAKES:
                self._park = True
            self._cond.notify_all()
            if not out and self._error is not None:
                error, self._error = self._error, None
                raise error
            return out

    def _read(self, timeout: float) -> list[Fetch]:
        """Fetch and decode on the calling thread (the threads are parked);
        :data:`FULL_TAKES` fetches in a row that fill the batch wake them."""
        try:
            fetch = self._fetch(self.want, timeout)
            fetched = len(fetch.messages)
            taken = bool(fetch.messages or fetch.reports or fetch.positions is not None)
            fetch = self._decode(fetch)
        except BaseException:
            with self._cond:
                self._done = True  # as when a thread fails: no more fetches
                self._cond.notify_all()
            raise
        self._full = self._full + 1 if fetched >= self.want else 0
        if fetch.failure is not None or self._full >= FULL_TAKES:
            # the parked threads are woken only for this (each wake-up takes the GIL)
            with self._cond:
                if fetch.failure is not None:
                    self._done = True
                else:  # a backlog: the threads fetch ahead again
                    self._park, self._light, self._full = False, 0, 0
                self._cond.notify_all()
        return [fetch] if taken else []

    def stop(self) -> None:
        """Stop fetching and wait for the threads (what was fetched and not taken is dropped:
        its positions never moved, so it is read again by whoever resumes)."""
        with self._cond:
            self._done = True
            self._cond.notify_all()
        for thread in self._threads:
            if threading.current_thread() is not thread:
                thread.join(JOIN_SECONDS)
        with self._cond:
            for fetch in (*self._raw, *self._items):
                fetch.release()
