"""Checkpoints: the state of a pipeline's operators as bytes, and back.

A snapshot holds, in pipeline order, the state of every operator that has some (their
``state_fields``: polars frames of partial aggregates, join buffers, watermark trackers), plus a
fingerprint of the plan, so that a checkpoint is never restored into a different query. The
bytes are a pickle: they are written to and read from the query's own changelog topic only.

Snapshots are incremental: a *base* holds every operator's whole state; a *delta* holds, for
operators with keyed state (running aggregates, tables: :meth:`Operator.changes`), only the
keys changed since the snapshot before it, and the whole state of the others. A restore reads
the base and then each delta in order.
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Sequence
from typing import Any

from streamnb.engine.executor import Pipeline
from streamnb.exceptions import ConfigError

FORMAT = 2
FORMATS = (1, 2)  # what restore reads (1: whole states only)
CHUNK_BYTES = 900_000
"""Largest changelog record: below Kafka's default ``max.message.bytes`` of 1 MiB."""


def fingerprint(pipeline: Pipeline) -> str:
    """A short hash of the plan's shape (operators and what they read)."""
    text = "|".join(step.node.describe() for step in pipeline.steps)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def stateful(pipeline: Pipeline) -> bool:
    """Whether any operator of ``pipeline`` keeps state between batches."""
    return any(step.op is not None and step.op.state_fields for step in pipeline.steps)


def snapshot(pipeline: Pipeline, extra: Any = None, *, base: bool = True) -> bytes:
    """The state of every operator of ``pipeline`` (and ``extra``, the runner's own: records
    it holds back, say): whole (``base``), or as the changes since the snapshot before."""
    ops: list[Any] = []
    for step in pipeline.steps:
        op = step.op
        if op is None or not op.state_fields:
            ops.append(None)
            continue
        changes = None if base else op.changes()
        ops.append(("full", op.snapshot()) if changes is None else ("changes", changes))
    data = pickle.dumps(
        {"format": FORMAT, "plan": fingerprint(pipeline), "ops": ops, "extra": extra, "base": base},
        protocol=pickle.HIGHEST_PROTOCOL,
    )
    _settle(pipeline)
    return data


def _settle(pipeline: Pipeline) -> None:
    for step in pipeline.steps:
        if step.op is not None:
            step.op.settle()


def restore(pipeline: Pipeline, data: bytes | Sequence[bytes]) -> Any:
    """Put the state saved by :func:`snapshot` back into a freshly built ``pipeline``: a base,
    then the deltas after it, in order; the ``extra`` saved with the last."""
    snapshots = [data] if isinstance(data, bytes) else list(data)
    plan = fingerprint(pipeline)
    extra = None
    for i, one in enumerate(snapshots):
        saved = pickle.loads(one)  # the query's own changelog, written by snapshot()
        if saved.get("format") not in FORMATS or saved.get("plan") != plan:
            raise ConfigError(
                f"the checkpoint in the changelog belongs to another query (plan "
                f"{saved.get('plan')}, this one is {plan}): run a changed query under a new "
                "--group-id"
            )
        if i == 0 and not saved.get("base", True):
            raise ConfigError("a restore starts from a whole snapshot, not from changes")
        for step, entry in zip(pipeline.steps, saved["ops"], strict=True):
            if entry is None:
                continue
            assert step.op is not None
            kind, state = entry if saved["format"] >= 2 else ("full", entry)
            if kind == "full":
                step.op.restore(state)
            else:
                step.op.apply_changes(state)
        extra = saved.get("extra")
    _settle(pipeline)
    return extra


def chunks(data: bytes, size: int = CHUNK_BYTES) -> list[bytes]:
    """``data`` cut into records of at most ``size`` bytes (at least one, maybe empty)."""
    return [data[i : i + size] for i in range(0, len(data), size)] or [b""]
