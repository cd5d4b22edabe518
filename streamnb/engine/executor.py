"""Runs a plan: reads sources in adaptive micro-batches and pushes them through operators.

A batch takes whatever a source has ready, up to ``max_batch`` records: an idle stream runs
batches of a few records (low latency), a busy one batches of tens of thousands (throughput).
The executor is synchronous; :class:`streamnb.engine.query.Query` runs it in a thread.

Tables are bootstrapped (docs/semantics.md §3.10): the sources of a stream–table join's table
side are read up to where they stood when the query started (a bounded one to its end) before
any other source is read, as Kafka Streams reads a GlobalKTable before its tasks start.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import polars as pl

from streamnb.columns import ORDER
from streamnb.definitions.eventtime import EventTime
from streamnb.engine import heap
from streamnb.engine.compile import build, runnable_source
from streamnb.engine.core import Context, Delta, Operator, Versioned
from streamnb.engine.merge import DEFAULT_MAX_IDLE_MS, Input, Merge, runs
from streamnb.engine.source import Reader, Source
from streamnb.plan import EventTimeNode, JoinNode, MapNode, Node, SourceNode
from streamnb.types import HeldBack

DEFAULT_MAX_BATCH = 50_000
DEFAULT_LATENCY_MS = 20
"""The time budget of a batch: a batch holds at most the records the query processes in this
long (as measured on it), up to ``max_batch``. What arrives while a batch runs waits for it, so
the budget bounds what load adds to latency; a larger one buys throughput with latency."""
MIN_BATCH = 1_000
"""A batch may always hold this many records, whatever it costs (below it, the fixed cost of a
batch would dominate)."""
TICK_SECONDS = 0.1
"""How often operators get their :meth:`~streamnb.engine.core.Operator.tick` (at most: a
batch that takes longer delays it)."""


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
    index: int = 0  # its place in Pipeline.steps
    depth: int = 0  # steps between it and the root
    # what went through it (query.explain()): counted per batch, never per record
    records_in: int = 0
    records_out: int = 0
    late: int = 0
    errors: int = 0

    def ran(
        self, ctx: Context, records: int, run: Callable[..., Delta | None], *args: Any
    ) -> Delta | None:
        """``run(*args)``, its operator's work on ``records`` rows, counting what it did."""
        late, errors = ctx.late.count, ctx.errors.count
        out = run(*args)
        self.records_in += records
        self.records_out += out.rows.height if out is not None else 0
        self.late += ctx.late.count - late
        self.errors += ctx.errors.count - errors
        return out


class Pipeline:
    """The operators of one run of a plan, wired from the sources up to ``sink``.

    With several inputs, the runner merges their records in event-time order
    (:mod:`streamnb.engine.merge`) and delivers each merged batch in one of two ways:
    :meth:`push_merged` (every input's part of the batch at once; operators that take
    several inputs interleave them by the ``ORDER`` column) when every such operator can,
    else one run of one input at a time (:meth:`push`), which is exact for any operator.

    ``lock`` is held while a batch goes through (:meth:`push`, :meth:`push_merged`,
    :meth:`deliver`, :meth:`finish`): whoever holds it sees the operators' state between
    batches (``query.state()``), never half-way through one.
    """

    def __init__(self, root: Node, ctx: Context, sink: Callable[[Delta], None]) -> None:
        self.sink = sink
        self.ctx = ctx
        self.lock = threading.RLock()
        self.steps: list[Step] = []
        self.sources: list[Step] = []
        stack: list[tuple[Node, Step | None, int]] = [(root, None, 0)]
        while stack:
            node, parent, side = stack.pop()
            step = Step(node, build(node, ctx), parent, side, len(node.inputs))
            step.index = len(self.steps)
            step.depth = 0 if parent is None else parent.depth + 1
            self.steps.append(step)
            if isinstance(node, SourceNode):
                self.sources.append(step)
            stack.extend((child, step, i) for i, child in reversed(list(enumerate(node.inputs))))
        self.merged = len(self.sources) > 1 and all(self._merges(step) for step in self.steps)
        if self.merged:
            for step in self.steps:
                if self.feeds_table(step) and isinstance(step.op, Versioned):
                    step.op.versions = True

    def _merges(self, step: Step) -> bool:
        """Whether ``step`` can take a merged batch of several inputs at once."""
        node = step.node
        if isinstance(node, MapNode) and node.opaque:  # may drop records: their ORDER too
            return not any(len(s.node.inputs) > 1 for s in self._above(step))
        if not isinstance(node, JoinNode):
            return True
        if node.kind == "stream_table":  # the table side must deliver every version
            return all(_versions(s) for s in self.steps if self._below(s, step, 1))
        # interval joins interleave their inputs by ORDER; window and table–table joins do not
        # depend on the interleaving
        return True

    def _above(self, step: Step) -> list[Step]:
        out, parent = [], step.parent
        while parent is not None:
            out.append(parent)
            parent = parent.parent
        return out

    def _below(self, step: Step, junction: Step, side: int) -> bool:
        """Whether ``step`` is on ``junction``'s input ``side``."""
        while step.parent is not None:
            if step.parent is junction:
                return step.side == side
            step = step.parent
        return False

    def merge_time(self, source: Step, runnable: Source) -> EventTime | None:
        """The event time ``source``'s records merge by: the source's own, else the column of
        a ``with_watermark`` on its way to the first operator with several inputs, when the
        source has that column. ``None``: its records are not synchronised."""
        if runnable.event_time is not None:
            return runnable.event_time
        schema = runnable.schema
        step = source.parent
        while step is not None and len(step.node.inputs) == 1:
            node = step.node
            if isinstance(node, EventTimeNode):
                if schema is not None and node.column in schema:
                    return EventTime(node.column, 0, schema[node.column])
                return None
            step = step.parent
        return None

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
        with self.lock:
            source.records_in += rows.height
            source.records_out += rows.height
            self._deliver(source.parent, Delta(rows), source.side)

    def push_merged(self, parts: list[tuple[Step, pl.DataFrame]]) -> None:
        """One merged batch: each source's part, its records numbered in merged order."""
        with self.lock:
            inbox: dict[int, tuple[Step, list[tuple[int, Delta]]]] = {}
            for source, rows in parts:
                source.records_in += rows.height
                source.records_out += rows.height
                self._deliver(source.parent, Delta(rows), source.side, inbox)
            while inbox:
                # an operator with several inputs runs once all of its inputs below have run
                at = max(inbox, key=lambda i: self.steps[i].depth)
                step, received = inbox.pop(at)
                records = sum(d.rows.height for _, d in received)
                delta = step.ran(self.ctx, records, _combine, step, received)
                if delta:
                    self._deliver(step.parent, delta, step.side, inbox)

    def deliver(self, released: list[tuple[Step, pl.DataFrame]]) -> None:
        """What an event-time merge released: at once when every operator can take a merged
        batch, else run by run of one input."""
        with self.lock:
            if self.merged:
                self.push_merged(released)
            else:
                for source, rows in runs(released):
                    self.push(source, rows)

    def merge(self, max_idle_ms: int) -> Merge | None:
        """The event-time merge of this pipeline's inputs (``None`` for one input): ranks put
        table inputs first, then the plan's input order."""
        if len(self.sources) < 2:
            return None
        inputs = []
        for index, step in enumerate(self.sources):
            assert isinstance(step.node, SourceNode)  # Pipeline collects only those
            source = runnable_source(step.node)
            idle = source.max_idle_ms if source.max_idle_ms is not None else max_idle_ms
            table = self.feeds_table(step)
            inputs.append(
                Input(
                    source.name,
                    self.merge_time(step, source),
                    rank=index if table else len(self.sources) + index,
                    max_idle=idle / 1000,
                )
            )
        return Merge(inputs)

    def tick(self) -> None:
        """Give every operator its clock tick."""
        for step in self.steps:
            if step.op is not None:
                step.op.tick()

    def finish(self, source: Step) -> None:
        """``source`` ended: flush every operator whose inputs have all ended."""
        with self.lock:
            step = source.parent
            while step is not None:
                step.waiting -= 1
                if step.waiting > 0:
                    return
                if step.op is not None:
                    out = step.ran(self.ctx, 0, step.op.finish)
                    if out:
                        self._deliver(step.parent, out, step.side)
                step = step.parent

    def _deliver(
        self,
        step: Step | None,
        delta: Delta,
        side: int,
        inbox: dict[int, tuple[Step, list[tuple[int, Delta]]]] | None = None,
    ) -> None:
        while step is not None:
            if inbox is not None and len(step.node.inputs) > 1:
                inbox.setdefault(step.index, (step, []))[1].append((side, delta))
                return
            if step.op is not None:
                done = step.ran(self.ctx, delta.rows.height, step.op.process_input, side, delta)
                assert done is not None
                delta = done
                if not delta:
                    return
            side = step.side
            step = step.parent
        self.sink(delta)


def _versions(step: Step) -> bool:
    """Whether ``step``, on a table's way to a stream–table join, passes on (or makes) every
    version of the table, numbered in merged order."""
    if isinstance(step.op, Versioned):
        return step.op.can_version()
    return step.op is None or isinstance(step.node, (MapNode, EventTimeNode))


def _combine(step: Step, received: list[tuple[int, Delta]]) -> Delta:
    """Run an operator with several inputs on its inputs' parts of one merged batch."""
    received.sort(key=lambda part: part[0])
    if step.op is not None:
        return step.op.process_merged(received)
    # a union: its inputs' records interleaved in merged order
    rows = [d.rows for _, d in received if d.rows.height]
    deletes = [d.deletes for _, d in received if d.deletes is not None and d.deletes.height]
    merged = (
        pl.concat(rows, how="diagonal_relaxed") if len(rows) > 1 else (rows or [pl.DataFrame()])[0]
    )
    if len(rows) > 1 and ORDER in merged.columns:
        merged = merged.sort(ORDER, maintain_order=True)  # window rows closed at one record
    return Delta(merged, pl.concat(deletes, how="diagonal_relaxed") if deletes else None)


class BatchBudget:
    """How many records the next batch may hold: as many as the query processes in
    ``seconds`` (its time budget), between :data:`MIN_BATCH` and ``max_batch``.

    A batch's time is a fixed cost plus a cost per record. Both are measured on the running
    query: a least-squares line through the last :data:`SAMPLES` batches' (records, seconds),
    so the budget follows what the query does, whatever its operators and the machine. The
    limit is the budget over the cost per record, never over the *average* cost (fixed cost
    included): that one grows as batches shrink, and would shrink them further.
    """

    SAMPLES = 32

    def __init__(self, seconds: float, max_batch: int) -> None:
        self.seconds = seconds
        self.max_batch = max_batch
        self.records = max_batch
        """The next batch's size limit."""
        self.per_record: float | None = None
        """Seconds per record, as measured (``None``: not yet)."""
        self.fixed = 0.0
        """Seconds per batch whatever its size, as measured."""
        self._samples: deque[tuple[int, float]] = deque(maxlen=self.SAMPLES)
        # the samples' running sums (a batch's fit costs the same whatever SAMPLES): records
        # and their squares exact (ints); the float sums are summed afresh every SAMPLES
        # batches, so their rounding never drifts
        self._r = self._rr = 0
        self._t = self._rt = 0.0
        self._since_exact = 0

    def took(self, records: int, seconds: float) -> None:
        """A batch of ``records`` took ``seconds`` to process."""
        if records <= 0:
            return
        samples = self._samples
        if len(samples) == samples.maxlen:
            r0, t0 = samples[0]
            self._r -= r0
            self._rr -= r0 * r0
            self._t -= t0
            self._rt -= r0 * t0
        samples.append((records, seconds))
        self._r += records
        self._rr += records * records
        self._since_exact += 1
        if self._since_exact >= self.SAMPLES:
            self._since_exact = 0
            self._t = math.fsum(t for _, t in samples)
            self._rt = math.fsum(r * t for r, t in samples)
        else:
            self._t += seconds
            self._rt += records * seconds
        n = len(samples)
        mean_n = self._r / n
        mean_t = self._t / n
        var = (self._rr * n - self._r * self._r) / (n * n)  # exact: ints
        cov = self._rt / n - mean_n * mean_t
        if var > (0.05 * mean_n) ** 2 and cov > 0:
            self.per_record = cov / var
            self.fixed = max(mean_t - self.per_record * mean_n, 0.0)
        elif self.per_record is None and mean_n >= MIN_BATCH:
            self.per_record = mean_t / mean_n  # one size so far: fixed cost counted in
        if self.per_record:
            fits = int(self.seconds / self.per_record)
            self.records = max(MIN_BATCH, min(self.max_batch, fits))


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
    """Drives a pipeline until its sources end, it is stopped, or a deadline passes.

    One input is pushed through as it is read. Several are merged in event-time order
    (:mod:`streamnb.engine.merge`): each read goes into its input's queue, and what the merge
    releases goes through the pipeline as one batch.
    """

    def __init__(
        self,
        pipeline: Pipeline,
        ctx: Context,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_idle_ms: int = DEFAULT_MAX_IDLE_MS,
        latency_ms: int = DEFAULT_LATENCY_MS,
    ) -> None:
        self.pipeline = pipeline
        self.ctx = ctx
        self.max_batch = max_batch
        self.budget = BatchBudget(latency_ms / 1000, max_batch)
        self._frozen = False  # it froze the heap (see engine.heap)
        self.max_idle_ms = max_idle_ms
        self.readers: list[tuple[Step, Reader]] = []
        self.bounded: list[bool] = []
        self.loading: list[_Table] = []  # table sources still bootstrapping
        self.merge: Merge | None = None
        self.stop_event = threading.Event()
        self.resume_event = threading.Event()
        self.resume_event.set()
        self.rows_in = 0  # rows the readers returned (what they rejected: ctx.rejected)
        self.batches = 0
        self.started = time.monotonic()
        self.ticked = self.started
        self.rates = RateMeter()

    def open(self) -> None:
        heap.freeze()
        self._frozen = True
        for step in self.pipeline.sources:
            assert isinstance(step.node, SourceNode)  # Pipeline collects only those
            source = runnable_source(step.node)
            reader = source.open(self.ctx)
            self.readers.append((step, reader))
            self.bounded.append(source.bounded)
            if self.pipeline.feeds_table(step):
                self.loading.append(_Table(source, reader))
        self.merge = self.pipeline.merge(self.max_idle_ms)

    def close(self) -> None:
        """Close every operator, then every reader, even when one of them fails: the first
        failure is raised once all are closed (a sink that cannot flush must not leave a
        consumer open)."""
        failure: BaseException | None = None
        # sinks flush first, so that sources commit only offsets whose output is out
        closing = [step.op.close for step in self.pipeline.steps if step.op is not None]
        closing += [reader.close for _, reader in self.readers]
        for close in closing:
            try:
                close()
            except BaseException as exc:  # closing the rest comes first
                failure = failure or exc
        self.readers.clear()
        if self._frozen:
            self._frozen = False
            heap.thaw()
        if failure is not None:
            raise failure

    def run(self, deadline: float | None = None) -> bool:
        """Process until done (True) or stopped / past ``deadline`` (False)."""
        active = list(range(len(self.readers)))  # inputs the pipeline has not seen end
        while active:
            if self.stop_event.is_set():
                return False
            self._tick()
            if not self.resume_event.is_set():
                self.resume_event.wait(0.1)
                continue
            if deadline is not None and time.monotonic() > deadline:
                return False
            self.loading = [table for table in self.loading if not table.loaded()]
            if self.merge is None or self.loading:
                got = self._read_through(active)
            else:
                got = self._read_merged(active)
            self.rates.note(self.records_in)
            if not got and len(active) > 1:
                time.sleep(0.005)
        return True

    def _tick(self) -> None:
        """Every ``TICK_SECONDS``: the operators' work that is due by the clock."""
        now = time.monotonic()
        if now - self.ticked < TICK_SECONDS:
            return
        self.ticked = now
        self.pipeline.tick()

    def _read(self, i: int, wait: float) -> pl.DataFrame | None:
        rows = self.readers[i][1].read(self.budget.records, wait)
        if rows is None or rows.height == 0:
            return None
        self.rows_in += rows.height
        self.batches += 1
        return rows

    def _read_through(self, active: list[int]) -> int:
        """One input, or tables bootstrapping: push what is read as it is read."""
        loading = {id(table.reader) for table in self.loading}
        reading = [i for i in active if id(self.readers[i][1]) in loading] or active
        wait = 0.1 if len(reading) == 1 else 0.0
        got = 0
        for i in reading:
            step, reader = self.readers[i]
            rows = self._read(i, wait)
            if rows is not None:
                got += rows.height
                if self.merge is not None:
                    self.merge.note(i, rows)
                started = time.perf_counter()
                self.pipeline.push(step, rows)
                self.budget.took(rows.height, time.perf_counter() - started)
            if reader.done:
                if self.merge is not None:
                    self.merge.finish(i)
                active.remove(i)
                self.pipeline.finish(step)
        return got

    def _read_merged(self, active: list[int]) -> int:
        """Several inputs: queue what is read, push what the merge releases."""
        merge = self.merge
        assert merge is not None
        got = 0
        for i in active:
            reader, queue = self.readers[i][1], merge.inputs[i]
            if not queue.finished and queue.buffered < self.budget.records:
                rows = self._read(i, 0.0)
                if rows is not None:
                    got += rows.height
                    merge.offer(i, rows)
                if reader.done:
                    merge.finish(i)
        released = merge.release([self._unread(i) for i in range(len(self.readers))])
        started = time.perf_counter()
        self.pipeline.deliver([(self.readers[i][0], rows) for i, rows in released])
        self.budget.took(sum(rows.height for _, rows in released), time.perf_counter() - started)
        for i in list(active):
            if merge.inputs[i].finished and not merge.inputs[i].buffered:
                active.remove(i)
                self.pipeline.finish(self.readers[i][0])
        return got + sum(rows.height for _, rows in released)

    def _unread(self, i: int) -> bool:
        """Whether input ``i`` is known to have records it has not read yet."""
        reader = self.readers[i][1]
        return not reader.done if self.bounded[i] else reader.has_unread()

    @property
    def records_in(self) -> int:
        """Records read: rows, and the records the sources rejected (errors), so that
        ``records_in`` = good records + error records."""
        return self.rows_in + self.ctx.rejected

    def held_by(self) -> HeldBack | None:
        """The input that holds the others back in the event-time merge, and for how long."""
        return self.merge.held_by() if self.merge is not None else None

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
