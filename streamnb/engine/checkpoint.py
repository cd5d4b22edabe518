"""Checkpoints: the state of a pipeline's operators as bytes, and back.

A snapshot holds, in pipeline order, the state of every operator that has some (their
``state_fields``: polars frames of partial aggregates, join buffers, watermark trackers), plus a
fingerprint of the plan, so that a checkpoint is never restored into a different query. The
bytes are pickles: they are written to and read from the query's own changelog topic only.

Snapshots are incremental: a *base* holds every operator's whole state; a *delta* holds, for
operators with keyed state (running aggregates, tables: :meth:`Operator.changes`), only the
keys changed since the snapshot before it, and the whole state of the others. A restore reads
the base and then each delta in order.

A snapshot is a stream of pickles, cut into changelog records as they are made
(:func:`records`): a head (format, plan, the runner's ``extra``), then one item per piece of an
operator's state, then ``None``. In a base, keyed state comes in pieces of
:data:`SLICE_ROWS` rows (:meth:`Operator.parts`, replayed as changes over an empty state), so
that a state in files (``state="disk"``) larger than memory is never whole in memory, neither
when written nor when read back.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import pickle
from collections.abc import Iterable, Iterator, Sequence
from typing import IO, Any

from streamnb.engine.executor import Pipeline
from streamnb.exceptions import ConfigError

FORMAT = 3
FORMATS = (1, 2, 3)  # what restore reads (1: whole states only; 1, 2: one pickle)
CHUNK_BYTES = 900_000
"""Largest changelog record: below Kafka's default ``max.message.bytes`` of 1 MiB."""
SLICE_ROWS = 65_536
"""Rows of keyed state per piece of a base."""


def fingerprint(pipeline: Pipeline) -> str:
    """A short hash of the plan's shape (operators and what they read)."""
    text = "|".join(step.node.describe() for step in pipeline.steps)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def stateful(pipeline: Pipeline) -> bool:
    """Whether any operator of ``pipeline`` keeps state between batches."""
    return any(step.op is not None and step.op.state_fields for step in pipeline.steps)


def records(
    pipeline: Pipeline, extra: Any = None, *, base: bool = True, size: int = CHUNK_BYTES
) -> Iterator[bytes]:
    """The state of every operator of ``pipeline`` (and ``extra``, the runner's own: records
    it holds back, say), whole (``base``) or as the changes since the snapshot before, as
    records of at most ``size`` bytes, each made when the one before has been taken."""
    head = {"format": FORMAT, "plan": fingerprint(pipeline), "extra": extra, "base": base}
    pending = bytearray()
    made = 0
    for item in itertools.chain([head], _items(pipeline, base), [None]):
        pending += pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL)
        while len(pending) >= size:
            yield bytes(pending[:size])
            del pending[:size]
            made += 1
    if pending or not made:
        yield bytes(pending)
    _settle(pipeline)


def _items(pipeline: Pipeline, base: bool) -> Iterator[tuple[int, str, Any]]:
    """``(step, kind, state)`` per piece of an operator's state: ``full`` (restored) or
    ``changes`` (applied over it)."""
    for index, step in enumerate(pipeline.steps):
        op = step.op
        if op is None or not op.state_fields:
            continue
        changes = None if base else op.changes()
        if changes is not None:
            yield index, "changes", changes
            continue
        for kind, state in op.parts(SLICE_ROWS):
            yield index, kind, state


def snapshot(pipeline: Pipeline, extra: Any = None, *, base: bool = True) -> bytes:
    """:func:`records` as one string of bytes."""
    return b"".join(records(pipeline, extra, base=base))


def _settle(pipeline: Pipeline) -> None:
    for step in pipeline.steps:
        if step.op is not None:
            step.op.settle()


def restore(pipeline: Pipeline, data: bytes | Sequence[bytes | Iterable[bytes]]) -> Any:
    """Put the state saved by :func:`snapshot` back into a freshly built ``pipeline``: a base,
    then the deltas after it, in order (each as bytes, or as its records); the ``extra``
    saved with the last."""
    snapshots = [data] if isinstance(data, bytes) else list(data)
    plan = fingerprint(pipeline)
    extra = None
    for i, one in enumerate(snapshots):
        stream = io.BufferedReader(_Records([one] if isinstance(one, bytes) else one))
        saved = pickle.load(stream)  # the query's own changelog, written by snapshot()
        if saved.get("format") not in FORMATS or saved.get("plan") != plan:
            raise ConfigError(
                f"the checkpoint in the changelog belongs to another query (plan "
                f"{saved.get('plan')}, this one is {plan}): run a changed query under a new "
                "--group-id"
            )
        if i == 0 and not saved.get("base", True):
            raise ConfigError("a restore starts from a whole snapshot, not from changes")
        for index, kind, state in _read_items(saved, stream):
            op = pipeline.steps[index].op
            assert op is not None
            if kind == "full":
                op.restore(state)
            else:
                op.apply_changes(state)
        extra = saved.get("extra")
    _settle(pipeline)
    return extra


def _read_items(saved: dict[str, Any], stream: IO[bytes]) -> Iterator[tuple[int, str, Any]]:
    """The items of a snapshot whose head is ``saved``, read one at a time from ``stream``
    (formats 1 and 2: all in the head)."""
    if saved["format"] < 3:
        for index, entry in enumerate(saved["ops"]):
            if entry is not None:
                yield (index, *entry) if saved["format"] >= 2 else (index, "full", entry)
        return
    while (item := pickle.load(stream)) is not None:
        yield item


class _Records(io.RawIOBase):
    """A readable stream over a snapshot's records, taken one at a time."""

    def __init__(self, records: Iterable[bytes]) -> None:
        self.records = iter(records)
        self.current = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self.current:
            record = next(self.records, None)
            if record is None:
                return 0
            self.current = memoryview(record)
        n = min(len(buffer), len(self.current))
        buffer[:n] = self.current[:n]
        self.current = self.current[n:]
        return n
