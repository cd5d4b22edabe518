"""The runner's batch budget, the frozen heap and held collections: units of
``streamnb.engine.executor`` and ``streamnb.engine.heap`` (the runner itself is exercised by
every query test)."""

from __future__ import annotations

import gc
import random
import weakref

import numpy as np
import polars as pl
import pytest

import streamnb as sn
from streamnb.engine import heap
from streamnb.engine.executor import MIN_BATCH, BatchBudget


def cost(records: int, fixed: float = 0.005, per_record: float = 1e-6) -> float:
    return fixed + records * per_record * random.uniform(0.95, 1.05)


def test_the_budget_is_the_time_budget_over_the_cost_per_record() -> None:
    random.seed(1)
    budget = BatchBudget(0.02, 50_000)
    assert budget.records == 50_000  # nothing measured yet
    for _ in range(100):
        size = random.randint(100, budget.records)
        budget.took(size, cost(size))
    assert budget.per_record is not None and abs(budget.per_record - 1e-6) < 1e-7
    assert abs(budget.fixed - 0.005) < 0.001
    assert 18_000 <= budget.records <= 22_000  # 20 ms of 1 µs records


def test_full_batches_do_not_shrink_the_budget_by_their_fixed_cost() -> None:
    """Under overload every batch is as large as allowed: the average cost (fixed cost
    included) would shrink the limit batch after batch; the cost per record does not."""
    random.seed(2)
    budget = BatchBudget(0.02, 50_000)
    for _ in range(200):
        budget.took(budget.records, cost(budget.records))
    assert budget.records >= 15_000


def test_the_fit_is_the_least_squares_line_through_the_last_samples() -> None:
    """The running sums give the line a fresh fit through the last ``SAMPLES`` batches
    would, however many batches went before (numpy's least squares is the oracle)."""
    random.seed(3)
    budget = BatchBudget(0.02, 50_000)
    seen: list[tuple[int, float]] = []
    for i in range(1, 1_000):
        size = random.randint(1, 50_000) if i % 7 else random.randint(1, 30)
        seen.append((size, cost(size, fixed=random.uniform(0.0005, 0.002))))
        budget.took(*seen[-1])
        if i % 97 == 0 or i in (2, 31, 32, 33):
            last = np.array(seen[-BatchBudget.SAMPLES :], dtype=float)
            per_record, fixed = np.polyfit(last[:, 0], last[:, 1], 1)
            assert budget.per_record == pytest.approx(per_record, rel=1e-9)
            assert budget.fixed == pytest.approx(max(fixed, 0.0), rel=1e-9, abs=1e-12)


def test_the_budget_stays_within_its_bounds() -> None:
    slow = BatchBudget(0.02, 50_000)
    for size in (1_000, 2_000, 3_000, 4_000):
        slow.took(size, size * 1e-3)  # 1 ms a record: 20 would fit
    assert slow.records == MIN_BATCH
    fast = BatchBudget(0.02, 50_000)
    for size in (1_000, 2_000, 3_000, 4_000):
        fast.took(size, size * 1e-9)
    assert fast.records == 50_000


def test_the_heap_is_frozen_while_a_query_runs_and_thawed_after() -> None:
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    heap.freeze()
    heap.freeze()  # a second query
    assert gc.get_freeze_count() > 0
    heap.thaw()
    assert gc.get_freeze_count() > 0  # one still runs
    heap.thaw()
    assert gc.get_freeze_count() == 0
    sn.from_records([{"a": 1}]).collect()  # a query freezes and thaws it
    assert gc.get_freeze_count() == 0


def test_collections_are_off_while_a_hold_is_held_and_on_after_the_last() -> None:
    holds = heap._Holds()
    assert gc.isenabled()
    first, second = holds.hold(), holds.hold()
    assert not gc.isenabled() and holds.holds == 2
    first.release()
    first.release()  # released once only
    assert not gc.isenabled() and holds.holds == 1
    second.release()
    assert gc.isenabled() and holds.holds == 0


def test_a_dropped_hold_is_released() -> None:
    holds = heap._Holds()
    hold = holds.hold()
    assert not gc.isenabled()
    del hold
    assert gc.isenabled() and holds.holds == 0


def test_a_collector_disabled_before_stays_disabled() -> None:
    holds = heap._Holds()
    gc.disable()
    try:
        hold = holds.hold()
        hold.release()
        assert not gc.isenabled()
    finally:
        gc.enable()


class Node:
    def __init__(self) -> None:
        self.me = self  # a cycle: only the collector frees it


def test_holds_held_for_long_still_collect_cycles(monkeypatch: pytest.MonkeyPatch) -> None:
    """A catch-up always has a fetch in flight: releasing one of its holds once
    ``COLLECT_SECONDS`` have passed collects the young generations, and every ``FULL_EVERY``-th
    time the whole heap."""
    holds = heap._Holds()
    pipeline = holds.hold()  # never released meanwhile
    try:
        node = Node()
        dead = weakref.ref(node)
        del node
        holds.hold().release()  # before COLLECT_SECONDS: nothing collected
        assert dead() is not None
        monkeypatch.setattr(heap, "COLLECT_SECONDS", 0.0)
        full = gc.get_stats()[2]["collections"]
        holds.hold().release()
        assert dead() is None
        for _ in range(2 * heap.FULL_EVERY - 1):
            holds.hold().release()
        assert gc.get_stats()[2]["collections"] - full == 2
        assert not gc.isenabled()
    finally:
        pipeline.release()
    assert gc.isenabled()


def test_a_latency_budget_keeps_results_exact() -> None:
    data = pl.DataFrame({"k": [i % 7 for i in range(30_000)], "v": list(range(30_000))})
    expected = data.group_by("k").agg(pl.col("v").sum()).sort("k")
    query = sn.from_records(data, batch_size=3_000).group_by("k").agg(pl.col("v").sum())
    running = query.start(latency="1ms", max_batch=2_000)
    assert running.wait(60)
    assert running.result().sort("k").equals(expected)
