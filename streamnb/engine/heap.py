"""Keeping Python's cycle collector off the objects that were there before a query started.

A Kafka fetch hands over one Python object per record (confluent-kafka's ``Message``, which
the collector tracks), so a busy query allocates hundreds of thousands of tracked objects a
second: each allocation burst triggers collections, and every full one walks the whole heap
(polars', numpy's and the notebook's objects included). Measured on a 2 M-record fetch loop
(``BENCHMARKS.md``): 1.5x the records per second once the heap is frozen. So while queries
run, the heap as it stood when the first started is frozen (``gc.freeze``: moved to a
generation the collector never walks), and thawed when the last one ends, so that nothing
the user made before stays uncollectable for longer than the queries run.
"""

from __future__ import annotations

import gc
import threading


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
