"""The names of streamnb's modes and the shape of a query's status, for type checkers.

Every option that takes one of a few words has a ``Literal`` type here, so an editor completes
it and mypy catches a misspelling before the query runs (a wrong word still raises
:class:`~streamnb.exceptions.ConfigError` at run time, naming the choices).
"""

from __future__ import annotations

import os
from datetime import datetime
from typing import Literal, TypedDict, Union

__all__ = [
    "Emit",
    "ErrorPolicy",
    "FileFormat",
    "Guarantee",
    "How",
    "JoinKind",
    "KafkaFormat",
    "Kind",
    "QueryState",
    "StateStore",
    "Status",
]

Emit = Literal["final", "update"]
"""``window(emit=...)``: one row per window when it closes, or an upsert after each batch."""

How = Literal["inner", "left"]
"""``join(how=...)``."""

Kind = Literal["bid", "auction", "person", "all"]
"""``sn.nexmark(kind=...)``: which Nexmark events the generator yields."""

FileFormat = Literal["json", "csv", "parquet"]
"""``from_files(format=...)``: JSON lines, CSV or Parquet."""

StateStore = Union[Literal["memory", "disk"], "os.PathLike[str]"]
"""``start(state=...)``: keyed state in memory, or in files (under the system's temporary
directory, or under the directory given) so that it may grow past memory."""

KafkaFormat = Literal["json", "raw", "avro", "protobuf", "jsonschema"]
"""How Kafka record values are encoded (``from_kafka``, ``table_from_kafka``, ``to_kafka``):
``protobuf`` and ``jsonschema`` (and ``avro`` with a registry) are framed with a Schema
Registry id."""

JoinKind = Literal["stream_table", "table_table", "interval", "window"]
"""Which join a ``join()`` is, from what is joined (plan nodes carry it)."""

Guarantee = Literal["at_least_once", "exactly_once"]
"""``streamnb run --guarantee``: what a headless worker promises after a crash."""

ErrorPolicy = Literal["keep", "fail"]
"""``start(errors=...)``: bad records go to ``errors()`` (keep), or stop the query (fail)."""

QueryState = Literal["running", "paused", "finished", "stopped", "failed"]
"""``Query.status()["state"]``."""


class HeldBack(TypedDict):
    """The input that holds a query's other inputs back in the event-time merge."""

    input: str
    reason: str
    """``"unread records"``: it is known to have records not read yet; ``"max_idle"``: it has
    none, and the others wait for at most ``max_idle``."""
    ms: float
    """How long it has held them, in milliseconds."""


class Status(TypedDict):
    """What ``Query.status()`` returns (workers add their own keys: tasks, checkpoints, ...)."""

    name: str
    state: QueryState
    records_in: int
    records_out: int
    late: int
    errors: int
    watermark: datetime | int | None
    lag: int | None
    rate: float
    loading: dict[str, float | None]
    """Table sources still being bootstrapped (read to where they stood at the start), with
    how far each is (0 to 1, when the source can tell); empty once every table is loaded."""
    held_by: HeldBack | None
    """Several inputs: the one whose records the event-time merge waits for, if any."""
