"""Running polars expressions on the small frames of a live query, without its thread pool.

polars runs an expression on a DataFrame (``with_columns``, ``select``, ``filter``) as a query
whose work it hands to its thread pool, and the calling thread waits for the pool: two thread
wake-ups, whatever the size of the frame. On this project's 2-core VMs a wake-up costs tens
of microseconds (a Python thread ping-pong: 86 µs a round trip), so the hand-off costs about
100 µs, most of what a light batch of a live query costs. Measured on 78 bids (hot loop):

===============================================  ============  ==============
operation                                        through pool  sequential
===============================================  ============  ==============
``with_columns(pl.col("price") * 0.908)``        132 µs        19 µs (``_seq``)
``select("auction", "price", "dateTime")``       118 µs        19 µs (``_seq``)
``filter(pl.col("auction") % 123 == 0)``         174 µs        (none)
===============================================  ============  ==============

Below :data:`SMALL_ROWS` rows these helpers give the same frame by polars' sequential
variants, which evaluate the expressions one after the other on the calling thread; above
it, the pool's parallelism pays for its hand-off and they call the usual methods. ``filter``
has no sequential variant (``select_seq(pl.all().filter(...))`` measured slower, 201 µs), so
it is left to polars.
"""

from __future__ import annotations

from typing import Any

import polars as pl

SMALL_ROWS = 10_000
"""Frames up to this many rows are computed on the calling thread (see the module's
docstring): a batch of a live query under a light load holds tens to hundreds of rows."""


def with_columns(frame: Any, *exprs: Any, **named: Any) -> Any:
    """``frame.with_columns(*exprs, **named)``, on the calling thread when ``frame`` is a small
    DataFrame (a LazyFrame, planned and not run, as it is)."""
    if isinstance(frame, pl.DataFrame) and frame.height <= SMALL_ROWS:
        return frame.with_columns_seq(*exprs, **named)
    return frame.with_columns(*exprs, **named)


def select(frame: Any, *exprs: Any, **named: Any) -> Any:
    """``frame.select(*exprs, **named)``, on the calling thread when ``frame`` is a small
    DataFrame (a LazyFrame, planned and not run, as it is)."""
    if isinstance(frame, pl.DataFrame) and frame.height <= SMALL_ROWS:
        return frame.select_seq(*exprs, **named)
    return frame.select(*exprs, **named)
