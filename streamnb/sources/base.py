"""The source interface: a definition that can be opened into a reader of batches."""

from __future__ import annotations

from abc import ABC, abstractmethod

import polars as pl

from streamnb.engine.core import Context
from streamnb.engine.eventtime import EventTime


class Source(ABC):
    """A source definition (immutable, reusable); :meth:`open` starts one read of it.

    Attributes
    ----------
    name
        Shown in status lines and in the ``source`` column of ``errors()``.
    schema
        Columns of the records it yields, when known when the query is defined.
    bounded
        True when it ends by itself (then ``collect()`` is allowed).
    event_time
        The event-time column the source sets, if any (``timestamp=`` or Nexmark).
    """

    name: str
    schema: pl.Schema | None
    bounded: bool
    event_time: EventTime | None = None

    def partition_scopes(self) -> frozenset[tuple[object, ...]]:
        """The ``Partitions`` scopes of the partitions this source's records carry."""
        return frozenset()

    @abstractmethod
    def open(self, ctx: Context) -> Reader:
        """Start reading; errors in records are reported to ``ctx``."""


class Reader(ABC):
    """One pass over a source."""

    done: bool = False
    """True once the source is exhausted (bounded sources only)."""

    @abstractmethod
    def read(self, max_records: int, timeout: float) -> pl.DataFrame | None:
        """Return up to ``max_records`` records that are available now (waiting at most
        ``timeout`` seconds for the first one), or ``None`` when there are none."""

    def lag(self) -> int | None:
        """Records available but not yet read, when the source can tell."""
        return None

    def close(self) -> None:
        """Release resources (files, consumers)."""
