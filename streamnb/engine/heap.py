"""Keeping Python's cycle collector off what a query does not need it for.

Two measures, both for the objects a Kafka fetch makes: :func:`freeze` and :func:`hold`.

A Kafka fetch hands over one Python object per record (confluent-kafka's ``Message``, which
the collector tracks), so a busy query allocates hundreds of thousands of tracked objects a
second: each allocation burst triggers collections, and every full one walks the whole heap
(polars', numpy's and the notebook's objects included). Measured on a 2 M-record fetch loop
(``BENCHMARKS.md``): 1.5x the records per second once the heap is frozen. So while queries
run, the heap as it stood when the first started is frozen (``gc.freeze``: moved to a
generation the collector never walks), and thawed when the last one ends, so that nothing
the user made before stays uncollectable for longer than the queries run.

Freezing leaves the messages themselves: every 700 of them start a young collection, and the
ones still waiting in the pipeline to be decoded are walked again by the older generations'
collections, which these allocations keep starting. A catch-up of q0 (5 M records, one
partition) spent 3.7 of its 13 s there, holding the GIL that the fetching, decoding and
query threads share. They make no cycles (a message holds its topic, key, value and headers,
and is freed by its reference count once decoded), so while the messages of a backlog (a
fetch whose first chunk came full) are alive, the collector's automatic collections are off
(:func:`hold`); a catch-up, which always has a fetch in flight, still collects the rest of
the process once a second (:data:`COLLECT_SECONDS`). A live stream's fetches are small, and
leave the collector as it is: there its collections are cheap, and holding them off
lengthened the window-emit tail at 50 K events/s (``bench/peers.py``, w1: p95 39-108 ms
over five runs, against 37-60 ms without holds and 50-73 ms with holds for a backlog only;
measured before the harness kept its own collector off while measuring, whose pauses of
15-72 ms then made most of those tails).
"""

from __future__ import annotations

import gc
import threading
import time


class _Frozen:
    """Counts the running queries; the heap is frozen while there is one."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running = 0

    def enter(self) -> None:
        with self._lock:
            if self._running == 0:
                gc.freeze()
            self._running += 1

    def leave(self) -> None:
        with self._lock:
            self._running -= 1
            if self._running == 0:
                gc.unfreeze()


_frozen = _Frozen()
freeze = _frozen.enter
"""A query starts: the first freezes the heap."""
thaw = _frozen.leave
"""A query that called :func:`freeze` ended: the last one thaws the heap."""


COLLECT_SECONDS = 1.0
"""While collections have been held off this long (a catch-up keeps a fetch in the pipeline
at all times), releasing a hold runs what the collector would have: a collection of the young
generations, and of the whole heap every :data:`FULL_EVERY`-th time, so that cycles made
meanwhile by anything else in the process are still collected."""

FULL_EVERY = 10


class _Holds:
    """Counts the holds; collections are off (``gc.disable``) while there is one.

    Only collections this module turned off are turned on again: a process that disabled the
    collector itself keeps it disabled."""

    def __init__(self) -> None:
        self._lock = threading.RLock()  # a hold's __del__ may run inside a collection here
        self._holds = 0
        self._ours = False  # whether this module disabled the collector
        self._since = 0.0  # when collections last ran (or were turned off)
        self._young = 0  # young collections run since the last full one

    def hold(self) -> Hold:
        with self._lock:
            if self._holds == 0 and gc.isenabled():
                gc.disable()
                self._ours, self._since = True, time.monotonic()
            self._holds += 1
        return Hold(self)

    def release(self) -> None:
        with self._lock:
            self._holds -= 1
            if not self._ours:
                return
            if self._holds == 0:
                self._ours = False
                gc.enable()
            elif time.monotonic() - self._since >= COLLECT_SECONDS:
                self._young = (self._young + 1) % FULL_EVERY
                gc.collect(1 if self._young else 2)
                self._since = time.monotonic()

    @property
    def holds(self) -> int:
        with self._lock:
            return self._holds


class Hold:
    """One hold (see :func:`hold`): released once, by :meth:`release` or when dropped."""

    def __init__(self, holds: _Holds) -> None:
        self._holds: _Holds | None = holds

    def release(self) -> None:
        holds, self._holds = self._holds, None
        if holds is not None:
            holds.release()

    def __del__(self) -> None:  # a fetch dropped undecoded (a query stopped) releases its hold
        self.release()


_holds = _Holds()
hold = _holds.hold
"""Messages were fetched: collections are held off until the returned :class:`Hold` is
released, once they are freed."""
