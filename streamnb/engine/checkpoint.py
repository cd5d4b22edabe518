"""Checkpoints: the state of a pipeline's operators as bytes, and back.

A snapshot holds, in pipeline order, the state of every operator that has some (their
``state_fields``: polars frames of partial aggregates, join buffers, watermark trackers), plus a
fingerprint of the plan, so that a checkpoint is never restored into a different query. The
bytes are a pickle: they are written to and read from the query's own changelog topic only.
"""

from __future__ import annotations

import hashlib
import pickle
from typing import Any

from streamnb.engine.executor import Pipeline
from streamnb.exceptions import ConfigError

FORMAT = 1
CHUNK_BYTES = 900_000
"""Largest changelog record: below Kafka's default ``max.message.bytes`` of 1 MiB."""


def fingerprint(pipeline: Pipeline) -> str:
    """A short hash of the plan's shape (operators and what they read)."""
    text = "|".join(step.node.describe() for step in pipeline.steps)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def stateful(pipeline: Pipeline) -> bool:
    """Whether any operator of ``pipeline`` keeps state between batches."""
    return any(step.op is not None and step.op.state_fields for step in pipeline.steps)


def snapshot(pipeline: Pipeline, extra: Any = None) -> bytes:
    """The state of every operator of ``pipeline`` (and ``extra``, the runner's own: records
    it holds back, say)."""
    ops: list[Any] = [
        step.op.snapshot() if step.op is not None and step.op.state_fields else None
        for step in pipeline.steps
    ]
    return pickle.dumps(
        {"format": FORMAT, "plan": fingerprint(pipeline), "ops": ops, "extra": extra},
        protocol=pickle.HIGHEST_PROTOCOL,
    )


def restore(pipeline: Pipeline, data: bytes) -> Any:
    """Put the state saved by :func:`snapshot` back into a freshly built ``pipeline``; the
    ``extra`` saved with it."""
    saved = pickle.loads(data)  # the query's own changelog, written by snapshot()
    plan = fingerprint(pipeline)
    if saved.get("format") != FORMAT or saved.get("plan") != plan:
        raise ConfigError(
            f"the checkpoint in the changelog belongs to another query (plan {saved.get('plan')},"
            f" this one is {plan}): run a changed query under a new --group-id"
        )
    for step, state in zip(pipeline.steps, saved["ops"], strict=True):
        if state is not None:
            assert step.op is not None
            step.op.restore(state)
    return saved.get("extra")


def chunks(data: bytes, size: int = CHUNK_BYTES) -> list[bytes]:
    """``data`` cut into records of at most ``size`` bytes (at least one, maybe empty)."""
    return [data[i : i + size] for i in range(0, len(data), size)] or [b""]
