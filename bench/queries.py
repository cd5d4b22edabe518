"""The Nexmark queries of the benchmark suite, on a stream of bids, with batch references.

Every benchmark script (in memory, Kafka, notebook) builds its queries from here, so they
all measure the same thing. Each :class:`NexmarkQuery` has

* ``build(bids)``: the streamnb query on a ``Stream`` of bids (columns ``auction bidder
  price channel url dateTime extra``, ``dateTime`` a ``pl.Datetime``);
* ``reference(bids)``: the same result computed by plain polars on the whole, in-order
  ``pl.DataFrame`` of bids (nothing is late when the data is in order, so a window query is
  a ``group_by`` on floored window starts and a session query a per-key gap split).

Windowed queries use the suite's watermark: event time − 4 s.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import benchutil  # noqa: F401  (puts the repository on sys.path)
import polars as pl

import streamnb as sn

__all__ = [
    "QUERIES",
    "SUITE",
    "WATERMARK_DELAY",
    "NexmarkQuery",
    "bid_source",
    "compare",
    "hot_items",
    "q5_counts",
    "q5_counts_reference",
]

WATERMARK_DELAY = "4s"
"""Watermark delay of the Nexmark suite."""

_T = pl.col("dateTime").cast(pl.Int64)  # epoch ms (the generator's unit)
_DT = pl.Datetime("ms", "UTC")


@dataclass(frozen=True)
class NexmarkQuery:
    """One query: how to build it, how to compute it in batch, and its in-memory target."""

    name: str
    title: str
    build: Callable[[sn.Stream], sn.Stream]
    reference: Callable[[pl.DataFrame], pl.DataFrame]
    target: float
    """In-memory target, events/s on the 2-core machine (BENCH.md)."""
    windowed: bool
    suite: bool = True
    """One of the Nexmark suite's queries (BENCH.md); the others (``w1``) are measured by the
    latency harness (``peers.py``) only, and are left out of the scripts' default query lists."""


def bid_source(frames: Sequence[pl.DataFrame], batch_size: int = 50_000) -> sn.Stream:
    """Pre-generated bid frames replayed in order, event time ``dateTime``."""
    return sn.from_records(list(frames), timestamp="dateTime", batch_size=batch_size)


def _watermarked(bids: sn.Stream) -> sn.Stream:
    return bids.with_watermark("dateTime", WATERMARK_DELAY)


# -- q0 – q2: stateless ----------------------------------------------------------------------
def q0(bids: sn.Stream) -> sn.Stream:
    """Pass-through."""
    return bids


def q1(bids: sn.Stream) -> sn.Stream:
    """Currency conversion, dollar to euro."""
    return bids.with_columns(price=pl.col("price") * 0.908)


def q2(bids: sn.Stream) -> sn.Stream:
    """Selection: a few auctions."""
    return bids.filter(pl.col("auction") % 123 == 0).select("auction", "price")


def q0_reference(bids: pl.DataFrame) -> pl.DataFrame:
    return bids


def q1_reference(bids: pl.DataFrame) -> pl.DataFrame:
    return bids.with_columns(price=pl.col("price") * 0.908)


def q2_reference(bids: pl.DataFrame) -> pl.DataFrame:
    return bids.filter(pl.col("auction") % 123 == 0).select("auction", "price")


# -- q5: hot items -----------------------------------------------------------------------------
HOP_SIZE_MS, HOP_EVERY_MS = 10_000, 2_000


def hot_items(rows: pl.DataFrame) -> pl.DataFrame:
    """The auctions whose bid count is their window's maximum.

    Exact on a micro-batch of *final* window rows only because the engine emits each
    window's rows together, in one batch, when the window closes (see bench/README.md).
    """
    return rows.filter(pl.col("bids") == pl.col("bids").max().over("window_start"))


def q5_counts(bids: sn.Stream) -> sn.Stream:
    """Bids per auction in hopping windows of 10 s every 2 s (q5 before the max step)."""
    return (
        _watermarked(bids)
        .window(sn.Hopping(f"{HOP_SIZE_MS}ms", f"{HOP_EVERY_MS}ms"), by="auction")
        .agg(pl.len().alias("bids"))
    )


def q5(bids: sn.Stream) -> sn.Stream:
    return q5_counts(bids).map_batches(hot_items)


def q5_counts_reference(bids: pl.DataFrame) -> pl.DataFrame:
    per_record = -(-HOP_SIZE_MS // HOP_EVERY_MS)
    last = _T // HOP_EVERY_MS * HOP_EVERY_MS
    starts = (
        bids.select(
            pl.col("auction"),
            _T.alias("t"),
            (last - pl.int_ranges(0, per_record) * HOP_EVERY_MS).alias("ws"),
        )
        .explode("ws")
        .filter(pl.col("ws") + HOP_SIZE_MS > pl.col("t"))
    )
    return (
        starts.group_by("ws", "auction")
        .agg(pl.len().alias("bids"))
        .select(
            pl.col("ws").cast(_DT).alias("window_start"),
            (pl.col("ws") + HOP_SIZE_MS).cast(_DT).alias("window_end"),
            "auction",
            "bids",
        )
    )


def q5_reference(bids: pl.DataFrame) -> pl.DataFrame:
    return hot_items(q5_counts_reference(bids))


# -- q7: highest bid (the window max part) ------------------------------------------------------
TUMBLE_MS = 10_000


def q7(bids: sn.Stream) -> sn.Stream:
    """Maximum price per tumbling 10 s window (the join back to the bids is not done)."""
    return _watermarked(bids).window(sn.Tumbling(f"{TUMBLE_MS}ms")).agg(pl.col("price").max())


def q7_reference(bids: pl.DataFrame) -> pl.DataFrame:
    ws = _T // TUMBLE_MS * TUMBLE_MS
    return (
        bids.group_by(ws.alias("ws"))
        .agg(pl.col("price").max())
        .select(
            pl.col("ws").cast(_DT).alias("window_start"),
            (pl.col("ws") + TUMBLE_MS).cast(_DT).alias("window_end"),
            "price",
        )
    )


# -- w1: window emit with many rows (latency harness) ---------------------------------------------
W1_MS = 1_000


def w1(bids: sn.Stream) -> sn.Stream:
    """Bids per auction in tumbling 1 s windows, emitted final: a window emits every second,
    with a row per auction, so its emit latency has many samples (not a Nexmark query)."""
    return (
        _watermarked(bids)
        .window(sn.Tumbling(f"{W1_MS}ms"), by="auction")
        .agg(pl.len().alias("bids"))
        .select("window_start", "window_end", "auction", "bids")
    )


def w1_reference(bids: pl.DataFrame) -> pl.DataFrame:
    ws = _T // W1_MS * W1_MS
    return (
        bids.group_by(ws.alias("ws"), "auction")
        .agg(pl.len().alias("bids"))
        .select(
            pl.col("ws").cast(_DT).alias("window_start"),
            (pl.col("ws") + W1_MS).cast(_DT).alias("window_end"),
            "auction",
            "bids",
        )
    )


# -- q11: user sessions --------------------------------------------------------------------------
GAP_MS = 10_000


def q11(bids: sn.Stream) -> sn.Stream:
    """Bids per bidder session, inactivity gap 10 s."""
    return (
        _watermarked(bids)
        .window(sn.Session(f"{GAP_MS}ms"), by="bidder")
        .agg(pl.len().alias("bids"))
    )


def q11_reference(bids: pl.DataFrame) -> pl.DataFrame:
    ordered = bids.select("bidder", _T.alias("t")).sort("bidder", "t", maintain_order=True)
    new = (pl.col("t") - pl.col("t").shift(1)).over("bidder").fill_null(GAP_MS) >= GAP_MS
    sessions = ordered.with_columns(new.cast(pl.Int64).cum_sum().alias("session"))
    return (
        sessions.group_by("session")
        .agg(
            pl.col("bidder").first(),
            pl.col("t").min().alias("s"),
            pl.col("t").max().alias("m"),
            pl.len().alias("bids"),
        )
        .select(
            pl.col("s").cast(_DT).alias("window_start"),
            (pl.col("m") + GAP_MS).cast(_DT).alias("window_end"),
            "bidder",
            "bids",
        )
    )


QUERIES: dict[str, NexmarkQuery] = {
    q.name: q
    for q in [
        NexmarkQuery("q0", "pass-through", q0, q0_reference, 2e6, windowed=False),
        NexmarkQuery("q1", "price × 0.908", q1, q1_reference, 2e6, windowed=False),
        NexmarkQuery("q2", "auction % 123 == 0", q2, q2_reference, 2e6, windowed=False),
        NexmarkQuery("q5", "hot items, hopping 10 s / 2 s", q5, q5_reference, 1e6, windowed=True),
        NexmarkQuery("q7", "window max part, tumbling 10 s", q7, q7_reference, 1e6, windowed=True),
        NexmarkQuery("q11", "user sessions, gap 10 s", q11, q11_reference, 3e5, windowed=True),
        NexmarkQuery(
            "w1",
            "bids per auction, tumbling 1 s",
            w1,
            w1_reference,
            1e6,
            windowed=True,
            suite=False,
        ),
    ]
}


SUITE = [name for name, q in QUERIES.items() if q.suite]
"""The Nexmark suite's queries of ``QUERIES`` (the scripts' default query lists)."""


def compare(got: pl.DataFrame, want: pl.DataFrame) -> str | None:
    """None when the two frames hold the same rows (in any order), else what differs."""
    if got.columns != want.columns:
        return f"columns {got.columns} != {want.columns}"
    if got.schema != want.schema:
        return f"schema {dict(got.schema)} != {dict(want.schema)}"
    if got.height != want.height:
        return f"{got.height} rows, expected {want.height}"
    a, b = got.sort(got.columns), want.sort(want.columns)
    if a.equals(b):
        return None
    differ = (a.with_row_index("row") if a.width else a).filter(
        pl.any_horizontal(*(pl.col(c).ne_missing(b.get_column(c)) for c in a.columns))
    )
    return f"{differ.height} rows differ, first: {differ.head(3).to_dicts()}"
