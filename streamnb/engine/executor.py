"""Runs a plan: reads sources in adaptive micro-batches and pushes them through operators.

A batch takes whatever a source has ready, up to ``max_batch`` records: an idle stream runs
batches of a few records (low latency), a busy one batches of tens of thousands (throughput).
The executor is synchronous; :class:`streamnb.engine.query.Query` runs it in a thread.

Tables are bootstrapped (docs/semantics.md §3.10): the sources of a stream–table join's table
side are read up to where they stood when the query started (a bounded one to its end) before
any other source is read, as Kafka Streams reads a GlobalKTable before its tasks start.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import polars as pl

from streamnb.engine.compile import build, runnable_source
from streamnb.engine.core import Context, Delta, Operator
from streamnb.engine.source import Reader, Source
from streamnb.plan import JoinNode, Node, SourceNode

DEFAULT_MAX_BATCH = 50_000


@dataclass(eq=False)
class Step:
    """One node of the plan as it runs: its operator and where its output goes.

    A plan node reached along two paths (``s.union(s)``) runs as two steps.
    """

    node: Node
    op: Operator | None
    parent: Step | None
    side: int  # which input of the parent this step feeds (0 for unary parents)
    waiting: int  # inputs not yet finished


class Pipeline:
    """The operators of one run of a plan, wired from the sources up to ``sink``."""

    def __init__(self, root: Node, ctx: Context, sink: Callable[[Delta], None]) -> None:
        self.sink = sink
        self.steps: list[Step] = []
        self.sources: list[Step] = []
        stack: list[tuple[Node, Step | None, int]] = [(root, None, 0)]
        while stack:
            node, parent, side = stack.pop()
            step = Step(node, build(node, ctx), parent, side, len(node.inputs))
            self.steps.append(step)
            if isinstance(node, SourceNode):
                self.sources.append(step)
            stack.extend((child, step, i) for i, child in reversed(list(enumerate(node.inputs))))

    def feeds_table(self, source: Step) -> bool:
        """Whether ``source``'s records reach the table side of a stream–table join."""
        step = source
        while step.parent is not None:
            node = step.parent.node
            if isinstance(node, JoinNode) and node.kind == "stream_table" and step.side == 1:
                return True
            step = step.parent
        return False

    def push(self, source: Step, rows: pl.DataFrame) -> None:
        self._deliver(source.parent, Delta(rows), source.side)

    def finish(self, source: Step) -> None:
        """``source`` ended: flush every operator whose inputs have all ended."""
        step = source.parent
        while step is not None:
            step.waiting -= 1
            if step.waiting > 0:
                return
            if step.op is not None:
                out = step.op.finish()
                if out:
                    self._deliver(step.parent, out, step.side)
            step = step.parent

    def _deliver(self, step: Step | None, delta: Delta, side: int) -> None:
        while step is not None:
            if step.op is not None:
                delta = step.op.process_input(side, delta)
                if not delta:
                    return
            side = step.side
            step = step.parent
        self.sink(delta)


class RateMeter:
    """Records per second over the last few seconds, from a running count."""

    def __init__(self, window: float = 5.0) -> None:
        self.window = window
        self.recent: list[tuple[float, int]] = []  # (time, count)

    def note(self, count: int) -> None:
        now = time.monotonic()
        self.recent.append((now, count))
        while len(self.recent) > 2 and now - self.recent[0][0] > self.window:
            self.recent.pop(0)

    def rate(self) -> float:
        if len(self.recent) < 2:
            return 0.0
        (t0, n0), (t1, n1) = self.recent[0], self.recent[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0


class Runner:
    """Drives a pipeline until its sources end, it is stopped, or a deadline passes."""

    def __init__(
        self, pipeline: Pipeline, ctx: Context, max_batch: int = DEFAULT_MAX_BATCH
    ) -> None:
        self.pipeline = pipeline
        self.ctx = ctx
        self.max_batch = max_batch
        self.readers: list[tuple[Step, Reader]] = []
        self.loading: list[_Table] = []  # table sources still bootstrapping
        self.stop_event = threading.Event()
        self.resume_event = threading.Event()
        self.resume_event.set()
        self.records_in = 0
        self.batches = 0
        self.started = time.monotonic()
        self.rates = RateMeter()

    def open(self) -> None:
        for step in self.pipeline.sources:
            assert isinstance(step.node, SourceNode)  # Pipeline collects only those
            source = runnable_source(step.node)
            reader = source.open(self.ctx)
            self.readers.append((step, reader))
            if self.pipeline.feeds_table(step):
                self.loading.append(_Table(source, reader))

    def close(self) -> None:
        # sinks flush first, so that sources commit only offsets whose output is out
        for step in self.pipeline.steps:
            if step.op is not None:
                step.op.close()
        for _, reader in self.readers:
            reader.close()
        self.readers.clear()

    def run(self, deadline: float | None = None) -> bool:
        """Process until done (True) or stopped / past ``deadline`` (False)."""
        active = list(self.readers)
        while active:
            if self.stop_event.is_set():
                return False
            if not self.resume_event.is_set():
                self.resume_event.wait(0.1)
                continue
            if deadline is not None and time.monotonic() > deadline:
                return False
            self.loading = [table for table in self.loading if not table.loaded()]
            loading = {id(table.reader) for table in self.loading}
            reading = [pair for pair in active if id(pair[1]) in loading] or active
            wait = 0.1 if len(reading) == 1 else 0.0
            got = 0
            for source, reader in reading:
                rows = reader.read(self.max_batch, wait)
                if rows is not None and rows.height:
                    got += rows.height
                    self.records_in += rows.height
                    self.batches += 1
                    self.pipeline.push(source, rows)
                if reader.done:
                    active.remove((source, reader))
                    self.pipeline.finish(source)
            self.rates.note(self.records_in)
            if not got and len(reading) > 1:
                time.sleep(0.005)
        return True

    def bootstrapping(self) -> dict[str, float | None]:
        """The table sources still being read to where they stood at the start: how far each
        is (a fraction, when the source can tell)."""
        return {t.source.name: t.reader.bootstrap_progress() for t in self.loading}

    def rate(self) -> float:
        """Records per second over the last few seconds."""
        return self.rates.rate()

    def lag(self) -> int | None:
        lags = [reader.lag() for _, reader in self.readers]
        known = [x for x in lags if x is not None]
        return sum(known) if known else None


@dataclass(frozen=True, eq=False)
class _Table:
    """A source of a stream–table join's table side, and its reader, while it bootstraps."""

    source: Source
    reader: Reader

    def loaded(self) -> bool:
        """A bounded source is loaded at its end, another once it has caught up."""
        return self.reader.done or (not self.source.bounded and self.reader.caught_up())
