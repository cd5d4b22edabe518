"""Keyed state (``streamnb.engine.state``): a batch's keys found, updated and added whatever
the state holds, against a dict; and the running ``group_by`` built on it, against polars,
with its partials combined element-wise, and with hash collisions forced (it must fall back
to whole-frame state and stay exact)."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import streamnb as sn
from streamnb.engine import operators, state
from streamnb.engine.core import Delta
from streamnb.engine.operators import GroupByOperator
from streamnb.engine.state import KeyedState, key_hashes
from tests.definitions.test_aggregates import assert_same, engine, expected, frames

pytestmark = pytest.mark.usefixtures("state_stores")  # every state representation

PAIRED = [  # every aggregate whose partials combine element-wise
    pl.len().alias("n"),
    pl.col("i").count().alias("count"),
    pl.col("i").sum().alias("sum"),
    pl.col("i").min().alias("min"),
    pl.col("f").max().alias("max"),
    pl.col("f").mean().alias("mean"),
    pl.col("i").first().alias("first"),
    pl.col("f").last().alias("last"),
]


def test_keyed_state_finds_updates_and_adds_keys_like_a_dict() -> None:
    rng = random.Random(7)
    keys = ["k", "j"]
    store, oracle = KeyedState(keys), dict[tuple[Any, ...], int]()
    for _ in range(60):  # through several doublings of the table and the columns
        n = rng.randint(0, 400)
        batch = pl.DataFrame(
            {
                "k": [rng.choice([None, *"abcdefgh"]) for _ in range(n)],
                "j": [rng.randint(0, 300) for _ in range(n)],
                "v": [rng.randint(0, 9) for _ in range(n)],
            },
            schema={"k": pl.String, "j": pl.Int64, "v": pl.Int64},
        ).unique(subset=keys, keep="last", maintain_order=True)
        hashes = key_hashes(batch.select(keys), keys)
        found = store.lookup(batch.select(keys), hashes)
        want = [i for i, row in enumerate(batch.select(keys).iter_rows()) if row in oracle]
        assert found.index.tolist() == want
        held = found.rows["v"].to_list() if want else []
        assert held == [oracle[r] for r in batch[want].select(keys).rows()]
        store.update(found, batch[found.index], ["v"])
        new = np.ones(batch.height, dtype=bool)
        new[found.index] = False
        store.insert(batch.filter(pl.Series(new)), hashes[new])
        oracle.update({(k, j): v for k, j, v in batch.iter_rows()})
        assert len(store) == len(oracle)
    frame = store.frame()
    assert frame is not None
    assert {(k, j): v for k, j, v in frame.iter_rows()} == oracle


@pytest.mark.parametrize("batch_size", [1, 7, 1000])
@settings(max_examples=40, deadline=None)
@given(df=frames(), keys=st.sampled_from([["k"], ["k", "j"], ["j"]]))
def test_group_by_with_element_wise_combine_equals_polars(
    batch_size: int, df: pl.DataFrame, keys: list[str]
) -> None:
    assert_same(engine(df, keys, PAIRED, batch_size), expected(df, keys, PAIRED))


def test_keys_that_share_a_hash_are_told_apart_by_their_keys(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Eight hash values for 200 keys: every probe meets other keys with the same hash bits."""

    def weak(frame: pl.DataFrame, keys: Any) -> np.ndarray:
        return key_hashes(frame, keys) % np.uint64(8)

    monkeypatch.setattr(operators, "key_hashes", weak)
    monkeypatch.setattr(state, "key_hashes", weak)
    monkeypatch.setattr(state, "KEYED_MIN", -1)  # keyed from the first batch on
    monkeypatch.setattr(state, "KEYED_FROM", 0)
    rng = random.Random(3)
    df = pl.DataFrame(
        {"k": [f"k{rng.randint(0, 200)}" for _ in range(3000)], "i": range(3000)},
        schema={"k": pl.String, "i": pl.Int64},
    ).with_columns(j=pl.lit(1), f=pl.col("i").cast(pl.Float64))
    op = GroupByOperator(["k"], sn.from_records(df).group_by("k").agg(PAIRED).plan.root.aggregation)  # type: ignore[attr-defined]
    out = [op.process(Delta(batch)).rows for batch in df.iter_slices(97)]
    assert op.store is not None and len(op.store) == df.get_column("k").n_unique()
    last = pl.concat(out).unique(subset="k", keep="last", maintain_order=True)
    assert_same(last.sort("k"), expected(df, ["k"], PAIRED))
