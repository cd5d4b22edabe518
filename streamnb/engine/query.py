"""``Query``: a stream running in a background thread, and the registry behind ``sn.queries()``."""

from __future__ import annotations

import itertools
import os
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import polars as pl

from streamnb.columns import visible
from streamnb.engine import introspect, lookup
from streamnb.engine.core import NEG_INF, Context, Delta
from streamnb.engine.executor import DEFAULT_LATENCY_MS, DEFAULT_MAX_BATCH, Pipeline, Runner
from streamnb.engine.merge import DEFAULT_MAX_IDLE_MS
from streamnb.engine.result import ResultTable
from streamnb.exceptions import ConfigError, QueryFailed
from streamnb.plan import Plan
from streamnb.types import ErrorPolicy, QueryState, StateStore, Status

_registry: dict[str, Query] = {}
_registry_lock = threading.Lock()
_names = itertools.count(1)


STOP_CLOSE_SHARE = 0.9
"""The share of ``stop(timeout)`` by whose end operators must have closed (``ctx.deadline``);
the rest is for the readers' clients and the thread's end."""


def queries() -> list[Query]:
    """The queries that are running or paused, oldest first.

    The registry holds a query only while it runs: one that ended is dropped (whoever holds
    it can still read its ``errors()`` and ``result()``), so stopped queries do not pile up.
    """
    with _registry_lock:
        return [q for q in _registry.values() if q.status()["state"] in ("running", "paused")]


def _unregister(query: Query) -> None:
    with _registry_lock:
        if _registry.get(query.name) is query:
            del _registry[query.name]


class Observed(Protocol):
    """What views (live tables, charts, status lines, metrics) see of a running query, and the
    controls they offer: a :class:`Query`, a worker's tasks and a captured stand-in all have it.
    """

    name: str
    plan: Plan
    exception: BaseException | None
    views: dict[str, Any]
    """Where the ui keeps what it shows of the query (``"table"``, ``"chart"``)."""

    @property
    def version(self) -> int:
        """Increases whenever the result table changes (for cheap polling)."""

    def status(self) -> Status: ...

    def result(self) -> pl.DataFrame: ...

    def late(self) -> pl.DataFrame: ...

    def errors(self) -> pl.DataFrame: ...

    def pause(self) -> None: ...

    def resume(self) -> None: ...

    def stop(self, timeout: float | None = ...) -> None: ...

    def wait(self, timeout: float | None = None) -> bool: ...


def _check_errors(errors: str) -> bool:
    if errors not in ("keep", "fail"):
        raise ConfigError(f"errors={errors!r} must be 'keep' (side output) or 'fail'")
    return errors == "fail"


def state_directory(state: StateStore) -> Path | None:
    """Where ``state=`` keeps keyed state: ``None`` in memory ("memory"), else a directory
    ("disk": ``streamnb-state`` under the system's temporary directory; or the one given)."""
    if state == "memory":
        return None
    if state == "disk":
        return Path(tempfile.gettempdir()) / "streamnb-state"
    if isinstance(state, os.PathLike):
        return Path(state)
    raise ConfigError(
        f"state={state!r} must be 'memory', 'disk' or a directory (a pathlib.Path) for the "
        "keyed state's files"
    )


class Execution:
    """One run of a plan: pipeline, runner, result table and side outputs."""

    def __init__(
        self,
        plan: Plan,
        *,
        errors: str,
        keep: int | None,
        max_batch: int,
        max_idle_ms: int = DEFAULT_MAX_IDLE_MS,
        state: StateStore = "memory",
        latency_ms: int = DEFAULT_LATENCY_MS,
    ) -> None:
        self.ctx = Context(fail_on_error=_check_errors(errors), state_dir=state_directory(state))
        self.table = ResultTable(plan.schema, plan.keys, keep)
        self.pipeline = Pipeline(plan.root, self.ctx, self._sink)
        self.runner = Runner(
            self.pipeline,
            self.ctx,
            max_batch=max_batch,
            max_idle_ms=max_idle_ms,
            latency_ms=latency_ms,
        )
        self.event_time = plan.status_time
        self.output_time = plan.event_time  # a plain stream's own event time

    def _sink(self, delta: Delta) -> None:
        delta = Delta(visible(delta.rows), delta.deletes)
        self.table.add(delta)
        et = self.output_time
        if et is not None and delta.rows.height and et.column in delta.rows.columns:
            # a stream without windows still has a watermark: its output's event time
            latest = et.values(delta.rows).max()
            if isinstance(latest, int):
                previous = self.ctx.watermarks.get(0, NEG_INF)
                self.ctx.watermarks[0] = max(previous, latest - et.delay)


class Query:
    """A plan running in the background. Create it with ``stream.start()``.

    ``views`` is where the ui layer keeps what it shows of the query (``"table"``: the live
    table of ``show()``, ``"chart"``: the live chart), so they live and end with it.
    """

    def __init__(
        self,
        plan: Plan,
        name: str | None = None,
        *,
        errors: ErrorPolicy = "keep",
        keep: int | None = 100_000,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_idle_ms: int = DEFAULT_MAX_IDLE_MS,
        state: StateStore = "memory",
        latency_ms: int = DEFAULT_LATENCY_MS,
    ) -> None:
        self.name = name if name is not None else f"query-{next(_names)}"
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"name={name!r} must be a non-empty string")
        self.plan = plan
        self.exception: BaseException | None = None
        self.views: dict[str, Any] = {}
        self._exec = Execution(
            plan,
            errors=errors,
            keep=keep if not plan.bounded else None,
            max_batch=max_batch,
            max_idle_ms=max_idle_ms,
            state=state,
            latency_ms=latency_ms,
        )
        self._state: QueryState = "running"
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"streamnb:{self.name}", daemon=True)

    def _launch(self) -> Query:
        with _registry_lock:
            old = _registry.get(self.name)
            _registry[self.name] = self
        if old is not None and old is not self:
            old.stop()
        self._thread.start()
        return self

    def _run(self) -> None:
        runner = self._exec.runner
        state: QueryState = "failed"
        try:
            runner.open()
            state = "finished" if runner.run() else "stopped"
        except BaseException as exc:  # the thread must report, never die silently
            self.exception = exc
        try:
            runner.close()
        except BaseException as exc:  # a sink that cannot flush at the end fails the query
            self.exception = self.exception or exc
            state = "failed"
        self._state = state
        _unregister(self)
        self._done.set()

    # -- control ---------------------------------------------------------------------------
    def pause(self) -> None:
        """Stop reading input until :meth:`resume`; state is kept."""
        if self._state == "running":
            self._exec.runner.resume_event.clear()
            self._state = "paused"

    def resume(self) -> None:
        if self._state == "paused":
            self._state = "running"
            self._exec.runner.resume_event.set()

    def stop(self, timeout: float | None = 10.0) -> None:
        """Stop after the current batch and wait for the thread to end.

        Sinks flush what they hold within ``timeout``: records a Kafka sink could not deliver
        by then go to :meth:`errors`; a sink that fails to flush makes the query ``failed``
        (:meth:`wait` raises).
        """
        ctx = self._exec.ctx
        if timeout is not None:
            deadline = time.monotonic() + timeout * STOP_CLOSE_SHARE
            ctx.deadline = deadline if ctx.deadline is None else min(ctx.deadline, deadline)
        self._exec.runner.stop_event.set()
        self._exec.runner.resume_event.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the query ends; True if it did within ``timeout``.

        Raises :class:`QueryFailed` if the query failed.
        """
        ended = self._done.wait(timeout)
        if self._state == "failed":
            raise QueryFailed(f"query {self.name!r} failed: {self.exception}") from self.exception
        return ended

    # -- observation -----------------------------------------------------------------------
    def status(self) -> Status:
        runner, ctx = self._exec.runner, self._exec.ctx
        return {
            "name": self.name,
            "state": self._state,
            "records_in": runner.records_in,
            "records_out": self._exec.table.rows_out,
            "late": ctx.late.count,
            "errors": ctx.errors.count,
            "watermark": self._watermark(),
            "lag": runner.lag(),
            "rate": round(runner.rate(), 1),
            "loading": runner.bootstrapping(),
            "held_by": runner.held_by(),
        }

    def _watermark(self) -> datetime | int | None:
        values = [w for w in self._exec.ctx.watermarks.values() if w > NEG_INF]
        et = self._exec.event_time
        if not values or et is None:
            return None
        return et.as_time(min(values))

    def result(self) -> pl.DataFrame:
        """The current result table."""
        return self._exec.table.frame()

    def late(self) -> pl.DataFrame:
        """The most recent late records (dropped from the results)."""
        return self._exec.ctx.late.frame()

    def errors(self) -> pl.DataFrame:
        """The most recent records that could not be processed, with the reason."""
        return self._exec.ctx.errors.frame()

    # -- introspection (a consistent view between batches: see engine.introspect) ----------
    def state(self, key: Any = None) -> pl.DataFrame:
        """The live keyed state of the query's stateful operator: the current aggregates per
        key (``group_by().agg()``), or the open windows' partial results (``window_start``,
        ``window_end``, the keys, the aggregates as they would be if the window closed now).

        ``key=`` keeps one key: a value (one key column), a tuple (every key column, in
        order) or a dict (some key columns by name). The state is read between two batches,
        never half-way through one; a full key is a hash lookup, whatever the state's size.
        Raises :class:`ConfigError` for a query without keyed state or an unknown key
        column.
        """
        return lookup.state_frame([self._exec.pipeline], self.name, key)

    def windows(self, key: Any = None) -> pl.DataFrame:
        """The open windows, the next to close first: ``window_start``, ``window_end``,
        ``closes_at`` (``window_end`` + grace: the watermark that closes it), ``rows`` (the
        records aggregated so far, counted by a ``pl.len()`` aggregate; null when the
        aggregation has none) and the keys. ``key=`` as in :meth:`state`."""
        return lookup.windows_frame([self._exec.pipeline], self.name, key)

    def watermarks(self) -> pl.DataFrame:
        """Every input partition: ``source`` (the topic, or the source's name), ``partition``
        (Kafka; null for a source read as one part), ``watermark`` (its latest event time
        minus the delay, as the query's event-time operator sees it; null before its first
        record), ``idle`` (it no longer holds the watermark) and ``lag`` (records not read
        yet, when the source can tell)."""
        return introspect.watermarks_frame(self._exec.runner)

    def lifecycle(self) -> dict[str, Any]:
        """The next window to close and what holds it back, as data (see
        :func:`streamnb.engine.introspect.lifecycle`); cheap enough to poll ten times a
        second."""
        return introspect.lifecycle(self._exec.runner, self.name, self._state)

    def explain(self) -> introspect.Explanation:
        """The running plan with records in / out, late and errors per operator, and, for a
        window that has not fired, why (in words)."""
        idle_ms = introspect.idle_timeouts(self.plan.sources())
        return introspect.explain(self._exec.runner, self.name, self._state, idle_ms)

    @property
    def widget(self) -> Any:
        """The live table ``show()`` attached (None without one)."""
        return self.views.get("table")

    @property
    def chart_widget(self) -> Any:
        """The live chart ``chart()`` attached (None without one)."""
        return self.views.get("chart")

    @property
    def version(self) -> int:
        """Increases whenever the result table changes (for cheap polling)."""
        return self._exec.table.version

    def __repr__(self) -> str:
        s = self.status()
        return (
            f"<Query {self.name!r} {s['state']}: {s['records_in']:,} in, "
            f"{s['records_out']:,} out, {s['late']} late, {s['errors']} errors>"
        )


def run_to_end(
    plan: Plan,
    *,
    timeout: float | None,
    errors: str,
    max_batch: int,
    state: StateStore = "memory",
) -> Execution:
    """Run a bounded plan in the calling thread (``Stream.collect``)."""
    execution = Execution(plan, errors=errors, keep=None, max_batch=max_batch, state=state)
    deadline = None if timeout is None else time.monotonic() + timeout
    execution.runner.open()
    try:
        if not execution.runner.run(deadline):
            raise TimeoutError(f"collect(timeout={timeout}) expired before the source ended")
    finally:
        execution.runner.close()
    return execution
