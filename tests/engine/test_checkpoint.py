"""Checkpoints: a pipeline snapshotted after any batch and restored into a fresh one (as a
worker taking over a partition does) produces exactly what the uninterrupted run produces.

Every stateful operator is covered: tumbling, hopping and session windows (final and update),
the running aggregate, stream–table, interval, window and table–table joins.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import polars as pl
import pytest
from polars.testing import assert_frame_equal

import streamnb as sn
from streamnb.columns import visible
from streamnb.engine import checkpoint
from streamnb.engine.core import Context, Delta
from streamnb.engine.executor import Pipeline
from streamnb.engine.joins import TableTableJoin
from streamnb.engine.operators import GroupByOperator
from streamnb.exceptions import ConfigError

pytestmark = pytest.mark.usefixtures("state_modes")  # both state representations

BATCH = 7


def events(seed: int, n: int = 300) -> list[dict[str, object]]:
    rng = random.Random(seed)
    t = 1_000_000
    rows = []
    for i in range(n):
        t += rng.randint(0, 400)
        rows.append(
            {
                "k": rng.choice(["a", "b", "c", None]),
                "t": t - rng.randint(0, 1500),  # out of order, some late
                "v": rng.randint(-50, 50),
                "i": i,
            }
        )
    return rows


def bids(seed: int) -> sn.Stream:
    return sn.from_records(events(seed), timestamp="t", batch_size=BATCH)


def table(seed: int) -> sn.Stream:
    rng = random.Random(seed + 99)
    rows = [
        {"k": rng.choice("abcd"), "label": f"L{i}", "gone": rng.random() < 0.3}  # tombstones
        for i in range(40)
    ]
    return sn.table_from_records(rows, key="k", deleted="gone", batch_size=3)


QUERIES: dict[str, Callable[[int], sn.Stream]] = {
    "tumbling-final": lambda s: (
        bids(s)
        .with_watermark("t", "300ms")
        .window(sn.Tumbling("1s"), by="k", grace="200ms")
        .agg(pl.len().alias("n"), pl.col("v").sum(), pl.col("v").std().alias("sd"))
    ),
    "hopping-update": lambda s: (
        bids(s)
        .window(sn.Hopping("2s", "500ms"), by="k", emit="update")
        .agg(pl.col("v").max(), pl.col("i").n_unique().alias("u"))
    ),
    "session-final": lambda s: (
        bids(s)
        .with_watermark("t", "200ms")
        .window(sn.Session("600ms"), by="k", grace="100ms")
        .agg(pl.len().alias("n"), pl.col("v").mean())
    ),
    "running": lambda s: bids(s).group_by("k").agg(pl.col("v").sum(), pl.len().alias("n")),
    "stream-table": lambda s: bids(s).join(table(s), on="k", how="left"),
    "interval": lambda s: bids(s).join(
        bids(s + 1).select("k", pl.col("t"), pl.col("v").alias("w")),
        on="k",
        within="700ms",
        how="left",
    ),
    "window-join": lambda s: (
        bids(s)
        .window(sn.Tumbling("1s"), by="k")
        .agg(pl.len().alias("n"))
        .join(
            bids(s + 2).window(sn.Tumbling("1s"), by="k").agg(pl.col("v").sum().alias("total")),
            on="k",
        )
    ),
    "table-table": lambda s: (
        bids(s).group_by("k").agg(pl.len().alias("n")).join(table(s), on="k", how="left")
    ),
}


def run(
    stream: sn.Stream, cut: int | None, every: int | None = None, batch: int = BATCH
) -> pl.DataFrame:
    """Run ``stream`` to its end; after ``cut`` rounds of batches, move its state into a new
    pipeline (snapshot → bytes → restore) and carry on there. The emitted rows, in order.

    ``every``: incremental checkpoints, a base at the start and a delta every ``every``
    rounds; the move restores the base and every delta after it."""
    out: list[pl.DataFrame] = []

    def sink(delta: Delta) -> None:
        out.append(visible(delta.rows))

    ctx = Context()
    pipeline = Pipeline(stream.plan.root, ctx, sink)
    readers = [(i, step.node.source.open(ctx)) for i, step in enumerate(pipeline.sources)]
    rounds = 0
    active = list(readers)
    chain: list[bytes] = []
    while active:
        if every is not None and rounds % every == 0 and rounds != cut:
            chain.append(checkpoint.snapshot(pipeline, base=not chain))
        if rounds == cut:
            chain.append(checkpoint.snapshot(pipeline, base=not chain))
            pipeline = Pipeline(stream.plan.root, ctx, sink)  # a new owner: fresh operators
            checkpoint.restore(pipeline, chain)
        for i, reader in list(active):
            rows = reader.read(batch, 0)
            if rows is not None and rows.height:
                pipeline.push(pipeline.sources[i], rows)
            if reader.done:
                active.remove((i, reader))
                pipeline.finish(pipeline.sources[i])
        rounds += 1
    return pl.concat(out, how="diagonal_relaxed") if out else pl.DataFrame()


@pytest.mark.parametrize("name", sorted(QUERIES))
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_restored_pipeline_continues_exactly(name: str, seed: int) -> None:
    build = QUERIES[name]
    whole = run(build(seed), cut=None)
    assert whole.height > 0
    for cut in (1, 5, 17, 30):
        assert_frame_equal(run(build(seed), cut=cut), whole)


@pytest.mark.parametrize("name", sorted(QUERIES))
@pytest.mark.parametrize("seed", [1, 2])
def test_restored_from_a_base_and_its_deltas_continues_exactly(name: str, seed: int) -> None:
    """Incremental checkpoints: the keys changed since the snapshot before, replayed over a
    base (with keyed state from the first record, the ``keyed`` mode, changes and deletes of
    running aggregates and tables go through deltas)."""
    build = QUERIES[name]
    whole = run(build(seed), cut=None)
    for cut, every in ((5, 1), (17, 3), (30, 7)):
        assert_frame_equal(run(build(seed), cut=cut, every=every), whole)


def test_a_restore_starts_from_a_base() -> None:
    pipeline = Pipeline(QUERIES["table-table"](1).plan.root, Context(), lambda d: None)
    checkpoint.snapshot(pipeline)
    delta = checkpoint.snapshot(pipeline, base=False)
    with pytest.raises(ConfigError, match="whole snapshot"):
        checkpoint.restore(
            Pipeline(QUERIES["table-table"](1).plan.root, Context(), lambda d: None), delta
        )


def test_a_checkpoint_restores_only_into_its_own_query() -> None:
    tumbling = QUERIES["tumbling-final"](1)
    sessions = QUERIES["session-final"](1)
    data = checkpoint.snapshot(Pipeline(tumbling.plan.root, Context(), lambda d: None))
    with pytest.raises(ConfigError, match="another query"):
        checkpoint.restore(Pipeline(sessions.plan.root, Context(), lambda d: None), data)


def test_stateless_pipelines_have_nothing_to_checkpoint() -> None:
    stream = bids(1).filter(pl.col("v") > 0).with_columns(w=pl.col("v") * 2)
    assert not checkpoint.stateful(Pipeline(stream.plan.root, Context(), lambda d: None))
    windowed = QUERIES["tumbling-final"](1)
    assert checkpoint.stateful(Pipeline(windowed.plan.root, Context(), lambda d: None))


def test_keyed_state_goes_into_a_base_in_slices_and_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """A base of large keyed states (a running aggregate of 60 000 keys joined with a table
    of 30 000): each state pickled in slices of ``SLICE_ROWS`` rows, never whole, the
    snapshot cut into records as it is made; restored from those records, the run goes on
    exactly as the uninterrupted one."""
    monkeypatch.setattr(checkpoint, "SLICE_ROWS", 1000)
    n = 120_000
    records = pl.DataFrame({"k": [i % 60_000 for i in range(n)], "v": list(range(n))})
    customers = pl.DataFrame({"k": range(0, 60_000, 2), "name": [f"c{i}" for i in range(30_000)]})

    def build() -> sn.Stream:
        totals = sn.from_records(records).group_by("k").agg(pl.len().alias("n"), pl.col("v").max())
        return totals.join(sn.table_from_records(customers, key="k"), on="k", how="left")

    whole = run(build(), cut=None, batch=10_000)
    assert_frame_equal(run(build(), cut=9, batch=10_000), whole)

    pipeline = Pipeline(build().plan.root, Context(), lambda d: None)
    for i, step in enumerate(pipeline.sources):
        for part in (records if i == 0 else customers).iter_slices(10_000):
            pipeline.push(step, part)
    counts = {type(s.op).__name__: len(list(s.op.parts(1000))) for s in pipeline.steps if s.op}
    assert counts["GroupByOperator"] == 1 + 60 and counts["TableTableJoin"] == 1 + 60 + 30
    cut = list(checkpoint.records(pipeline, size=100_000))
    assert len(cut) > 10 and all(len(r) <= 100_000 for r in cut)
    fresh = Pipeline(build().plan.root, Context(), lambda d: None)
    checkpoint.restore(fresh, [iter(cut)])
    for old, new in zip(pipeline.steps, fresh.steps, strict=True):
        if isinstance(old.op, GroupByOperator | TableTableJoin):
            assert held(new.op) == held(old.op)


def held(op: object) -> list[list[dict[str, object]]]:
    """The rows of a running aggregate's or a table–table join's states, by key."""
    frames = [op.state] if isinstance(op, GroupByOperator) else op.states  # type: ignore[attr-defined]
    return [frame.sort("k").to_dicts() for frame in frames]
