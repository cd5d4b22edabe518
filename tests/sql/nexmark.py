"""Bounded Nexmark inputs for the SQL tests, and the comparison they all use.

40 000 events at 1 000 events per second of event time: 40 s, so four 10-s windows, twenty
hopping windows and many sessions. The records are replayed in batches of 1 000 (one second
of event time): a join of a window result with its input needs its partner rows to be still
held when the window's row comes out, which a batch spanning more than the join's grace
would not allow, in SQL and in the fluent API alike.
"""

from __future__ import annotations

from functools import cache

import polars as pl
from polars.testing import assert_frame_equal

import streamnb as sn
from streamnb.io.sources.nexmark import generate

EVENTS = 40_000
EVENT_RATE = 1_000
WATERMARK_DELAY = "4s"  # the Nexmark suite's


@cache
def frame(kind: str) -> pl.DataFrame:
    return generate(kind, 0, EVENTS, event_rate=EVENT_RATE)


def source(kind: str) -> sn.Stream:
    """The ``kind`` records (bid, auction, person) as a stream, event time ``dateTime``."""
    records = sn.from_records(frame(kind), timestamp="dateTime", batch_size=1_000)
    return records.with_watermark("dateTime", WATERMARK_DELAY)


def assert_same_rows(got: pl.DataFrame, want: pl.DataFrame) -> None:
    """The same columns (names, order, types) and the same rows in any order."""
    assert got.columns == want.columns
    assert got.height > 0, "an empty result compares equal to anything empty: test more data"
    assert_frame_equal(got.sort(got.columns), want.sort(want.columns))
