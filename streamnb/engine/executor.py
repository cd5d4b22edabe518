"""Runs a plan: reads sources in adaptive micro-batches and pushes them through operators.

A batch takes whatever a source has ready, up to ``max_batch`` records: an idle stream runs
batches of a few records (low latency), a busy one batches of tens of thousands (throughput).
The executor is synchronous; :class:`streamnb.engine.query.Query` runs it in a thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import polars as pl

from streamnb.engine.core import Context, Delta, Operator
from streamnb.plan import Node, SourceNode, UnionNode, sources
from streamnb.sources.base import Reader

DEFAULT_MAX_BATCH = 50_000


class Pipeline:
    """The operators of one run of a plan, wired from the sources up to ``sink``."""

    def __init__(self, root: Node, ctx: Context, sink: Callable[[Delta], None]) -> None:
        self.sink = sink
        self.ops: dict[int, Operator | None] = {}
        self.parent: dict[int, Node | None] = {id(root): None}
        self.waiting: dict[int, int] = {}  # union node -> inputs not yet finished
        stack = [root]
        while stack:
            node = stack.pop()
            self.ops[id(node)] = node.build(ctx)
            if isinstance(node, UnionNode):
                self.waiting[id(node)] = len(node.inputs)
            for child in node.inputs:
                self.parent[id(child)] = node
                stack.append(child)
        self.sources = sources(root)

    def push(self, source: SourceNode, rows: pl.DataFrame) -> None:
        self._deliver(self.parent[id(source)], Delta(rows))

    def finish(self, source: SourceNode) -> None:
        """``source`` ended: flush every operator whose inputs have all ended."""
        node = self.parent[id(source)]
        while node is not None:
            if id(node) in self.waiting:
                self.waiting[id(node)] -= 1
                if self.waiting[id(node)] > 0:
                    return
            op = self.ops[id(node)]
            parent = self.parent[id(node)]
            if op is not None:
                out = op.finish()
                if out:
                    self._deliver(parent, out)
            node = parent

    def _deliver(self, node: Node | None, delta: Delta) -> None:
        while node is not None:
            op = self.ops[id(node)]
            if op is not None:
                delta = op.process(delta)
                if not delta:
                    return
            node = self.parent[id(node)]
        self.sink(delta)


class Runner:
    """Drives a pipeline until its sources end, it is stopped, or a deadline passes."""

    def __init__(
        self, pipeline: Pipeline, ctx: Context, max_batch: int = DEFAULT_MAX_BATCH
    ) -> None:
        self.pipeline = pipeline
        self.ctx = ctx
        self.max_batch = max_batch
        self.readers: dict[int, tuple[SourceNode, Reader]] = {}
        self.stop_event = threading.Event()
        self.resume_event = threading.Event()
        self.resume_event.set()
        self.records_in = 0
        self.batches = 0
        self.started = time.monotonic()
        self._recent: list[tuple[float, int]] = []  # (time, records_in) for the rate

    def open(self) -> None:
        for node in self.pipeline.sources:
            self.readers[id(node)] = (node, node.source.open(self.ctx))

    def close(self) -> None:
        for _, reader in self.readers.values():
            reader.close()
        self.readers.clear()
        for op in self.pipeline.ops.values():
            if op is not None:
                op.close()

    def run(self, deadline: float | None = None) -> bool:
        """Process until done (True) or stopped / past ``deadline`` (False)."""
        active = list(self.readers.values())
        while active:
            if self.stop_event.is_set():
                return False
            if not self.resume_event.is_set():
                self.resume_event.wait(0.1)
                continue
            if deadline is not None and time.monotonic() > deadline:
                return False
            wait = 0.1 if len(active) == 1 else 0.0
            got = 0
            for node, reader in list(active):
                rows = reader.read(self.max_batch, wait)
                if rows is not None and rows.height:
                    got += rows.height
                    self.records_in += rows.height
                    self.batches += 1
                    self.pipeline.push(node, rows)
                if reader.done:
                    active.remove((node, reader))
                    self.pipeline.finish(node)
            self._note_rate()
            if not got and len(active) > 1:
                time.sleep(0.005)
        return True

    def _note_rate(self) -> None:
        now = time.monotonic()
        self._recent.append((now, self.records_in))
        while len(self._recent) > 2 and now - self._recent[0][0] > 5.0:
            self._recent.pop(0)

    def rate(self) -> float:
        """Records per second over the last few seconds."""
        if len(self._recent) < 2:
            return 0.0
        (t0, n0), (t1, n1) = self._recent[0], self._recent[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0

    def lag(self) -> int | None:
        lags = [reader.lag() for _, reader in self.readers.values()]
        known = [x for x in lags if x is not None]
        return sum(known) if known else None
