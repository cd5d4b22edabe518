"""What the engine reads and writes through: the source and sink interfaces.

The io layer (:mod:`streamnb.io`) implements them; the engine runs them without knowing which
is which. A source is split into *parts* (Kafka: topic partitions; a file or a replay: one
part), and a runtime decides who reads which: the notebook's query reads every part, a worker
task reads the parts the consumer group gives it (bytewax's ``FixedPartitionedSource`` has
the same shape: ``list_parts`` / ``build_part``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Hashable, Sequence
from typing import NamedTuple, Protocol

import polars as pl

from streamnb.definitions.eventtime import EventTime
from streamnb.engine.core import Context, Operator
from streamnb.exceptions import ConfigError

Part = Hashable
"""A part of a source: ``(topic, partition)`` for Kafka, the source's name when it has one."""


class PartOwner(Protocol):
    """A runtime that is told when parts are given to or taken from a reader (a consumer
    group's rebalance), and that commits the reader's positions itself (with its state)."""

    def assigned(self, parts: Sequence[Part]) -> None: ...

    def revoked(self, parts: Sequence[Part]) -> None: ...


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
    max_idle_ms
        Merging several inputs by event time: how long this one, with nothing read and
        nothing known to be unread, holds the others back (``None``: the query's default).
    """

    name: str
    schema: pl.Schema | None
    bounded: bool
    event_time: EventTime | None = None
    max_idle_ms: int | None = None

    def partition_scopes(self) -> frozenset[tuple[object, ...]]:
        """The ``Partitions`` scopes of the partitions this source's records carry."""
        return frozenset()

    def list_parts(self) -> list[Part]:
        """The parts this source is made of, each readable on its own; one by default."""
        return [self.name]

    @abstractmethod
    def open(self, ctx: Context, *, owner: PartOwner | None = None) -> Reader:
        """Start reading; errors in records are reported to ``ctx``.

        Without ``owner`` the reader reads every part and keeps its own positions (commits
        them, where the source has commits). With ``owner``, parts come and go as the source's
        group decides, the owner is told, and the owner commits positions.
        """


class PartView(NamedTuple):
    """One partition a reader reads, as ``query.watermarks()`` shows it."""

    topic: str
    partition: int
    pid: int
    """Its hidden partition id (the ``PARTITION`` column of its records)."""
    lag: int | None
    """Records not read yet, as last measured (``None``: not known)."""


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

    def parts(self) -> list[PartView] | None:
        """The partitions it reads, each with its own watermark (Kafka); ``None`` for a
        source read as one part. Called from other threads: reads only what it replaces
        whole."""
        return None

    def has_unread(self) -> bool:
        """Whether the reader knows of records it has not read yet (Kafka: a position below
        its partition's end offset). Such an input holds the others back in the
        event-time merge however long it takes; one that is not, for at most ``max_idle``."""
        return False

    def caught_up(self) -> bool:
        """Whether the reader has read everything that was there when it opened (a table
        source is bootstrapped once it has). Sources without such an end are caught up at
        once; bounded ones when they are ``done``."""
        return True

    def bootstrap_progress(self) -> float | None:
        """How much of what was there when the reader opened it has read (0 to 1), if known."""
        return None

    def close(self) -> None:
        """Release resources (files, consumers)."""


class Sink(ABC):
    """A sink definition (immutable, reusable): :meth:`open` makes the operator that writes
    one run's output. Rows pass through a sink unchanged."""

    @abstractmethod
    def describe(self) -> str:
        """How the plan outline names it (``to_kafka[topic]``)."""

    @abstractmethod
    def open(self, ctx: Context) -> Operator:
        """The operator that writes; it flushes in ``close()``."""


def refuse_owner(source: Source, owner: PartOwner | None) -> None:
    """For sources whose parts no group shares: reading them under an owner is a mistake."""
    if owner is not None:
        raise ConfigError(
            f"{source.name} is read whole by one reader; only Kafka sources share their "
            "partitions with a group"
        )
