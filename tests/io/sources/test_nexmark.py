"""The Nexmark generator: event mix, schema, event times, determinism, distributions, pacing."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from streamnb.definitions.eventtime import EventTime
from streamnb.engine.core import Context
from streamnb.exceptions import ConfigError
from streamnb.io.sources.nexmark import CHUNK, DEFAULT_BASE_MS, SCHEMAS, NexmarkSource, generate

DT = pl.Datetime("ms", "UTC")
NUMERIC = {"bid": 4, "auction": 7, "person": 2}


def read_all(source: NexmarkSource, size: int) -> pl.DataFrame:
    reader = source.open(Context())
    parts = []
    while not reader.done:
        df = reader.read(size, 0.0)
        if df is not None:
            assert df.height <= size
            parts.append(df)
    assert reader.read(size, 0.0) is None
    return pl.concat(parts) if parts else pl.DataFrame(schema=source.schema)


def bid_event_numbers(count: int) -> np.ndarray:
    """The event number of each of the first ``count`` bids."""
    j = np.arange(count)
    return j // 46 * 50 + 4 + j % 46


def test_kind_mix_is_exact() -> None:
    df = read_all(NexmarkSource(5000, kind="all"), 1000)
    counts = dict(df.group_by("event_type").len().iter_rows())
    assert counts == {"person": 100, "auction": 300, "bid": 4600}
    assert read_all(NexmarkSource(1000), 10_000).height == 920
    assert read_all(NexmarkSource(5000, kind="auction"), 64).height == 300
    assert read_all(NexmarkSource(5001, kind="person"), 64).height == 101


@pytest.mark.parametrize("kind", ["bid", "auction", "person", "all"])
def test_schema_and_attributes(kind: str) -> None:
    source = NexmarkSource(300, kind=kind)
    df = read_all(source, 100)
    assert df.schema == source.schema == SCHEMAS[kind]
    assert source.name == f"nexmark[{kind}]"
    assert source.bounded and not NexmarkSource(kind=kind).bounded
    assert source.event_time == EventTime("dateTime", 0, DT)
    if kind != "all":
        assert df.null_count().sum_horizontal().item() == 0


def test_column_order() -> None:
    assert SCHEMAS["bid"].names() == [
        "auction", "bidder", "price", "channel", "url", "dateTime", "extra"
    ]  # fmt: skip
    assert SCHEMAS["auction"].names() == [
        "id", "itemName", "description", "initialBid", "reserve", "dateTime", "expires",
        "seller", "category", "extra",
    ]  # fmt: skip
    assert SCHEMAS["person"].names() == [
        "id", "name", "emailAddress", "creditCard", "city", "state", "dateTime", "extra"
    ]  # fmt: skip


def test_event_times_follow_the_formula() -> None:
    base = datetime(2024, 3, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    base_ms = int(base.timestamp() * 1000)
    df = read_all(NexmarkSource(2000, kind="all", event_rate=3000, base_time=base), 333)
    expected = base_ms + np.arange(2000) * 1000 // 3000
    assert (df["dateTime"].cast(pl.Int64).to_numpy() == expected).all()
    assert df["dateTime"].is_sorted()
    bids = read_all(NexmarkSource(2000, event_rate=3000, base_time=base_ms), 333)
    n = bid_event_numbers(bids.height)
    assert (bids["dateTime"].cast(pl.Int64).to_numpy() == base_ms + n * 1000 // 3000).all()
    first = read_all(NexmarkSource(1, kind="all"), 1)["dateTime"].cast(pl.Int64).item()
    assert first == DEFAULT_BASE_MS == datetime(2026, 1, 1, tzinfo=timezone.utc).timestamp() * 1000


@pytest.mark.parametrize("kind", ["bid", "all"])
def test_output_does_not_depend_on_read_sizes(kind: str) -> None:
    events = 2 * CHUNK + 123
    expected = generate(kind, 0, events, seed=7)
    for size in (7, 1000, 100_000):
        assert_frame_equal(read_all(NexmarkSource(events, kind=kind, seed=7), size), expected)
    tail = generate(kind, 500, events - 500, seed=7)
    assert_frame_equal(tail, expected.tail(tail.height))


def test_reads_of_one_record() -> None:
    expected = generate("bid", 0, 3000, seed=3)
    assert_frame_equal(read_all(NexmarkSource(3000, seed=3), 1), expected)


def test_seeds_differ() -> None:
    a, b = generate("bid", 0, 5000, seed=1), generate("bid", 0, 5000, seed=2)
    assert not a.equals(b)
    assert (a["price"] != b["price"]).mean() > 0.9  # type: ignore[operator]


@pytest.fixture(scope="module")
def bids() -> pl.DataFrame:
    return generate("bid", 0, 200_000)


def test_hot_auctions_and_bidders(bids: pl.DataFrame) -> None:
    epoch = bid_event_numbers(bids.height) // 50
    last_auction, last_person = 1000 + 3 * epoch + 2, 1000 + epoch
    auction, bidder = bids["auction"].to_numpy(), bids["bidder"].to_numpy()
    assert abs((auction == last_auction // 100 * 100).mean() - 0.5) < 0.03
    assert abs((bidder == last_person // 100 * 100 + 1).mean() - 0.75) < 0.03
    assert (auction >= 1000).all() and (auction <= last_auction + 10).all()
    assert (auction >= last_auction - 100).all()
    assert (bidder >= 1000).all()


def test_prices_are_log_uniform(bids: pl.DataFrame) -> None:
    price = bids["price"].to_numpy()
    assert price.min() >= 100 and price.max() <= 10**8
    u = np.log10(price / 100) / 6
    assert abs(u.mean() - 0.5) < 0.01
    quartiles = np.histogram(u, bins=4, range=(0, 1))[0] / len(u)
    assert np.allclose(quartiles, 0.25, atol=0.01)


def test_channels(bids: pl.DataFrame) -> None:
    named = bids["channel"].is_in(["Google", "Facebook", "Baidu", "Apple"])
    assert abs(named.mean() - 0.5) < 0.02  # type: ignore[operator]
    others = bids.filter(~named)["channel"]
    assert others.str.contains(r"^channel-\d{1,4}$").all()
    assert bids["url"].str.starts_with("https://").all()


def test_auctions() -> None:
    auctions = generate("auction", 0, 100_000)
    assert auctions["id"].to_list() == list(range(1000, 1000 + auctions.height))
    assert (auctions["expires"] > auctions["dateTime"]).all()
    horizon_ms = 100 * 50 / 3 * 1000 / 100_000
    lifetime = (auctions["expires"] - auctions["dateTime"]).dt.total_milliseconds()
    assert (lifetime <= 2 * horizon_ms + 1).all()
    assert (auctions["reserve"] > auctions["initialBid"]).all()
    assert set(auctions["category"].unique()) == {10, 11, 12, 13, 14}
    epoch = (auctions["id"].to_numpy() - 1000) // 3
    seller = auctions["seller"].to_numpy()
    assert (seller >= 1000).all() and (seller <= 1000 + epoch).all()
    assert abs((seller == (1000 + epoch) // 100 * 100).mean() - 0.75) < 0.04


def test_persons() -> None:
    persons = generate("person", 0, 100_000)
    assert persons["id"].to_list() == list(range(1000, 1000 + persons.height))
    assert set(persons["state"].unique()) == {"AZ", "CA", "ID", "OR", "WA", "WY"}
    assert persons["emailAddress"].str.contains("@").all()
    assert persons["creditCard"].str.contains(r"^\d{4} \d{4} \d{4} \d{4}$").all()


def test_all_struct_layout() -> None:
    df = generate("all", 0, 3000, seed=5)
    for kind in ("person", "auction", "bid"):
        is_kind = df["event_type"] == kind
        assert (df[kind].is_not_null() == is_kind).all()
        rows = df.filter(is_kind).select(kind).unnest(kind)
        assert_frame_equal(rows, generate(kind, 0, 3000, seed=5))
    assert df["dateTime"].cast(pl.Int64).to_list() == [
        DEFAULT_BASE_MS + n // 100 for n in range(3000)
    ]


@pytest.mark.parametrize(("kind", "size"), [("bid", 100), ("auction", 500), ("person", 200)])
def test_average_row_sizes(kind: str, size: int) -> None:
    df = generate(kind, 0, 100_000)
    strings = df.select(pl.col(pl.String).str.len_bytes()).sum_horizontal()
    average = strings.mean() + 8 * NUMERIC[kind]  # type: ignore[operator]
    assert abs(average - size) <= 0.25 * size


def test_unpaced_lag_and_empty() -> None:
    reader = NexmarkSource(1000).open(Context())
    assert reader.lag() == 920
    reader.read(20, 0.0)
    assert reader.lag() == 900
    assert NexmarkSource().open(Context()).lag() is None
    empty = NexmarkSource(0).open(Context())
    assert empty.done and empty.read(10, 0.0) is None


def test_paced_rate() -> None:
    before = time.time_ns() // 1_000_000
    reader = NexmarkSource(kind="all", rate=2000).open(Context())
    start, total, lags = time.monotonic(), 0, []
    while time.monotonic() - start < 0.5:
        df = reader.read(10_000, 0.05)
        if df is not None:
            total += df.height
        lags.append(reader.lag())
    assert 600 <= total <= 1600  # ~1000 due after 0.5 s; wide for loaded machines
    assert all(isinstance(lag, int) and lag >= 0 for lag in lags)
    time.sleep(0.05)
    assert reader.lag() >= 50  # type: ignore[operator]
    df = reader.read(10_000, 0.0)
    assert df is not None
    first = df["dateTime"].cast(pl.Int64).min()
    assert before - 1000 <= first <= time.time_ns() // 1_000_000  # type: ignore[operator]


def test_paced_read_waits_at_most_timeout() -> None:
    reader = NexmarkSource(kind="all", rate=1).open(Context())
    first = reader.read(10, 0.0)
    assert first is not None and first.height == 1
    start = time.monotonic()
    assert reader.read(10, 0.05) is None
    assert 0.04 <= time.monotonic() - start < 0.5
    assert reader.lag() == 0


def test_paced_bounded_source_finishes() -> None:
    df = read_all(NexmarkSource(2000, rate=100_000, seed=4, base_time=0), 300)
    assert_frame_equal(df, generate("bid", 0, 2000, seed=4, base_ms=0))


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"kind": "bids"}, "kind"),
        ({"events": -1}, "events"),
        ({"events": 1.5}, "events"),
        ({"events": True}, "events"),
        ({"rate": 0}, "rate"),
        ({"rate": -3.0}, "rate"),
        ({"rate": "fast"}, "rate"),
        ({"event_rate": 0}, "event_rate"),
        ({"event_rate": 10.5}, "event_rate"),
        ({"seed": "x"}, "seed"),
        ({"base_time": "2026-01-01"}, "base_time"),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        NexmarkSource(**kwargs)  # type: ignore[arg-type]


def test_generate_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="kind"):
        generate("everything", 0, 10)
    with pytest.raises(ConfigError, match="count"):
        generate("bid", 0, -1)
