"""The Nexmark generator: a deterministic, vectorised stream of persons, auctions and bids.

Event ``n`` is a person when ``n % 50 == 0``, an auction when ``n % 50`` is 1..3 and a bid
otherwise; its event time is ``base + n * 1000 // event_rate`` milliseconds. Events are made
in fixed chunks of :data:`CHUNK` event numbers, each from a numpy generator seeded with
``(seed, chunk, kind)``, so the output never depends on how it is read (batch sizes, pacing)
and :func:`generate` reproduces exactly what a :class:`NexmarkSource` yields. Strings are
gathered from tables built once per process, which keeps generation far above 2 M events/s.
"""

from __future__ import annotations

import math
import time
from bisect import bisect_left
from datetime import datetime, timedelta, timezone
from functools import cache

import numpy as np
import polars as pl

from streamnb.definitions.eventtime import EventTime
from streamnb.engine.core import Context
from streamnb.engine.source import PartOwner, Reader, Source, refuse_owner
from streamnb.exceptions import ConfigError
from streamnb.types import Kind

__all__ = ["CHUNK", "DEFAULT_BASE_MS", "SCHEMAS", "NexmarkSource", "generate"]

CHUNK = 16_384
"""Event numbers per generation chunk (the unit of seeding)."""
DEFAULT_BASE_MS = 1_767_225_600_000
"""2026-01-01T00:00:00Z: the event time of event 0 for unpaced sources."""
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

_INT, _STR, _DT = pl.Int64(), pl.String(), pl.Datetime("ms", "UTC")
_OFFSETS = {"person": (0,), "auction": (1, 2, 3), "bid": tuple(range(4, 50)),
            "all": tuple(range(50))}  # fmt: skip
_CODES = {"person": 0, "auction": 1, "bid": 2}
_SIZES = {"person": 200, "auction": 500, "bid": 100}
_MAX_EXTRA, _VARIANTS, _TABLE = 511, 32, 4096

PERSON_SCHEMA = pl.Schema({"id": _INT, "name": _STR, "emailAddress": _STR, "creditCard": _STR,
                           "city": _STR, "state": _STR, "dateTime": _DT,
                           "extra": _STR})  # fmt: skip
AUCTION_SCHEMA = pl.Schema({"id": _INT, "itemName": _STR, "description": _STR, "initialBid": _INT,
                            "reserve": _INT, "dateTime": _DT, "expires": _DT, "seller": _INT,
                            "category": _INT, "extra": _STR})  # fmt: skip
BID_SCHEMA = pl.Schema({"auction": _INT, "bidder": _INT, "price": _INT, "channel": _STR,
                        "url": _STR, "dateTime": _DT, "extra": _STR})  # fmt: skip
ALL_SCHEMA = pl.Schema({"event_type": _STR, "person": pl.Struct(PERSON_SCHEMA),
                        "auction": pl.Struct(AUCTION_SCHEMA), "bid": pl.Struct(BID_SCHEMA),
                        "dateTime": _DT})  # fmt: skip
SCHEMAS = {"person": PERSON_SCHEMA, "auction": AUCTION_SCHEMA, "bid": BID_SCHEMA, "all": ALL_SCHEMA}

_FIRST = ["Peter", "Paul", "Luke", "John", "Saul", "Vicky", "Kate", "Julie", "Sarah", "Deiter",
          "Walter"]  # fmt: skip
_LAST = ["Shultz", "Abrams", "Spencer", "White", "Bartels", "Walton", "Smith", "Jones", "Noris"]
_CITIES = ["Phoenix", "Los Angeles", "San Francisco", "Boise", "Portland", "Bend", "Redmond",
           "Seattle", "Kent", "Cheyenne"]  # fmt: skip
_NAMED_CHANNELS = ["Google", "Facebook", "Baidu", "Apple"]


@cache
def _tables() -> dict[str, tuple[pl.Series, np.ndarray]]:
    """String tables to gather from, each with the byte length of every entry.

    Shared by every generator (fixed content: only the indices drawn are random).
    """
    rng = np.random.default_rng(0x4E58)
    pool = bytes(rng.integers(97, 123, 1 << 17, dtype=np.uint8)).decode()

    def words(count: int, low: int, high: int) -> list[str]:
        starts, lengths = rng.integers(0, 1 << 16, count), rng.integers(low, high + 1, count)
        return [pool[s : s + k] for s, k in zip(starts, lengths, strict=True)]

    starts = rng.integers(0, len(pool) - _MAX_EXTRA, (_MAX_EXTRA + 1) * _VARIANTS)
    extra = [pool[s : s + i // _VARIANTS] for i, s in enumerate(starts)]
    emails = zip(words(_TABLE, 7, 7), words(_TABLE, 5, 5), strict=True)
    paths = words(10_004, 5, 5)
    urls = [f"https://www.nexmark.com/{p}?channel_id={k}" for k, p in enumerate(paths[:10_000])]
    tables = {
        "extra": extra,
        "name": [f"{first} {last}" for first in _FIRST for last in _LAST],
        "email": [f"{user}@{domain}.com" for user, domain in emails],
        "digits": [f"{k:04d}" for k in range(10_000)],
        "city": _CITIES,
        "state": ["AZ", "CA", "ID", "OR", "WA", "WY"],
        "item": words(_TABLE, 5, 20),
        "description": words(_TABLE, 20, 100),
        "channel": [f"channel-{k}" for k in range(10_000)] + _NAMED_CHANNELS,
        "url": urls + [f"https://www.nexmark.com/{p}" for p in paths[10_000:]],
    }
    return {
        key: (pl.Series(values, dtype=pl.String), np.array([len(v) for v in values], np.int64))
        for key, values in tables.items()
    }


def _count(kind: str, x: int) -> int:
    """How many records of ``kind`` the events ``0 .. x-1`` contain."""
    offsets = _OFFSETS[kind]
    q, r = divmod(x, 50)
    return q * len(offsets) + bisect_left(offsets, r)


def _event_of(kind: str, j: int) -> int:
    """The event number of record ``j`` of ``kind``."""
    offsets = _OFFSETS[kind]
    q, r = divmod(j, len(offsets))
    return q * 50 + offsets[r]


def _extra(rng: np.random.Generator, remainder: np.ndarray) -> pl.Series:
    """Padding strings of ``remainder`` ± 20 % bytes."""
    u = rng.random(len(remainder)) * _VARIANTS
    variant = u.astype(np.int64)
    length = np.clip(remainder * (0.8 + 0.4 * (u - variant)), 0, _MAX_EXTRA)
    return _tables()["extra"][0].gather(length.astype(np.int64) * _VARIANTS + variant)


def _price(u: np.ndarray) -> np.ndarray:
    """Log-uniform prices from 100 to 10^8."""
    return np.rint(np.power(10.0, 6.0 * u) * 100.0).astype(np.int64)


def _recent_person(last: np.ndarray, u: np.ndarray, hot_offset: int) -> np.ndarray:
    """¾ the hot person ``(last // 100) * 100 + hot_offset``, else one of the last 1000."""
    active = np.minimum(1000, last - 999)
    recent = last - ((u - 0.75) * 4 * active).astype(np.int64)
    return np.where(u < 0.75, last // 100 * 100 + hot_offset, recent)


def _persons(n: np.ndarray, rng: np.random.Generator, dt: pl.Series) -> pl.DataFrame:
    t, m = _tables(), len(n)
    i = rng.integers(0, [[len(_FIRST) * len(_LAST)], [_TABLE], [len(_CITIES)], [6]], (4, m))
    cc = [t["digits"][0].gather(rng.integers(0, 10_000, m)) for _ in range(4)]
    fixed = 16 + t["name"][1][i[0]] + 17 + 19 + t["city"][1][i[2]] + 2
    df = pl.DataFrame({
        "id": 1000 + n // 50,
        "name": t["name"][0].gather(i[0]),
        "emailAddress": t["email"][0].gather(i[1]),
        "creditCard": pl.select(pl.concat_str(*cc, separator=" ")).to_series(),
        "city": t["city"][0].gather(i[2]),
        "state": t["state"][0].gather(i[3]),
        "dateTime": dt,
    })  # fmt: skip
    return df.with_columns(extra=_extra(rng, _SIZES["person"] - fixed))


def _auctions(n: np.ndarray, rng: np.random.Generator, ms: np.ndarray, rate: int) -> pl.DataFrame:
    t, m, epoch = _tables(), len(n), n // 50
    u = rng.random((5, m))
    item, description = rng.integers(0, _TABLE, (2, m))
    horizon = 100 * 50 / 3 * 1000 / rate  # event time that 100 more auctions take
    initial = _price(u[0])
    df = pl.DataFrame({
        "id": 1000 + 3 * epoch + n % 50 - 1,
        "itemName": t["item"][0].gather(item),
        "description": t["description"][0].gather(description),
        "initialBid": initial,
        "reserve": initial + _price(u[1]),
        "dateTime": pl.Series(ms).cast(_DT),
        "expires": pl.Series(ms + 1 + (u[2] * max(2 * horizon, 1)).astype(np.int64)).cast(_DT),
        "seller": _recent_person(1000 + epoch, u[3], 0),
        "category": 10 + (u[4] * 5).astype(np.int64),
    })  # fmt: skip
    fixed = 56 + t["item"][1][item] + t["description"][1][description]
    return df.with_columns(extra=_extra(rng, _SIZES["auction"] - fixed))


def _bids(n: np.ndarray, rng: np.random.Generator, dt: pl.Series) -> pl.DataFrame:
    t, epoch = _tables(), n // 50
    u = rng.random((4, len(n)))
    last = 1000 + 3 * epoch + 2
    low = np.maximum(last - 100, 1000)
    recent = low + ((u[0] - 0.5) * 2 * (last + 11 - low)).astype(np.int64)
    named = 10_000 + (u[3] * 8).astype(np.int64)  # one of the 4 names when u < 0.5
    channel = np.where(u[3] < 0.5, named, ((u[3] - 0.5) * 20_000).astype(np.int64))
    df = pl.DataFrame({
        "auction": np.where(u[0] < 0.5, last // 100 * 100, recent),
        "bidder": _recent_person(1000 + epoch, u[1], 1),
        "price": _price(u[2]),
        "channel": t["channel"][0].gather(channel),
        "url": t["url"][0].gather(channel),
        "dateTime": dt,
    })  # fmt: skip
    fixed = 32 + t["channel"][1][channel] + t["url"][1][channel]
    return df.with_columns(extra=_extra(rng, _SIZES["bid"] - fixed))


class _Generator:
    """Makes the records of one kind by record index, caching the last chunk."""

    def __init__(self, kind: str, event_rate: int, seed: int, base_ms: int) -> None:
        self.kind, self.event_rate, self.base_ms = kind, event_rate, base_ms
        self.seed = seed % 2**64
        self.cached: tuple[int, pl.DataFrame] | None = None

    def chunk(self, kind: str, c: int) -> pl.DataFrame:
        """The records of ``kind`` among the events of chunk ``c``."""
        offsets = np.array(_OFFSETS[kind], np.int64)
        j = np.arange(_count(kind, c * CHUNK), _count(kind, (c + 1) * CHUNK), dtype=np.int64)
        n = j // len(offsets) * 50 + offsets[j % len(offsets)]
        ms = self.base_ms + n * 1000 // self.event_rate
        if kind == "all":
            return self._interleave(c, n, ms)
        rng = np.random.default_rng([self.seed, c, _CODES[kind]])
        if kind == "auction":
            return _auctions(n, rng, ms, self.event_rate)
        dt = pl.Series(ms).cast(_DT)
        return _persons(n, rng, dt) if kind == "person" else _bids(n, rng, dt)

    def _interleave(self, c: int, n: np.ndarray, ms: np.ndarray) -> pl.DataFrame:
        code = np.searchsorted([1, 4], n % 50, side="right")
        columns = [pl.Series("event_type", ["person", "auction", "bid"]).gather(code)]
        for kind, k in _CODES.items():
            mask = code == k
            index = np.where(mask, np.cumsum(mask) - 1, np.nan)
            rows = pl.Series(index, nan_to_null=True).cast(pl.UInt32)
            columns.append(self.chunk(kind, c).to_struct(kind).gather(rows))
        return pl.DataFrame([*columns, pl.Series("dateTime", ms).cast(_DT)])

    def records(self, j0: int, j1: int) -> pl.DataFrame:
        """Records ``j0 .. j1-1`` of the kind."""
        kind, parts = self.kind, []
        while j0 < j1:
            c = _event_of(kind, j0) // CHUNK
            if self.cached is None or self.cached[0] != c:
                self.cached = (c, self.chunk(kind, c))
            first = _count(kind, c * CHUNK)
            take = min(j1, _count(kind, (c + 1) * CHUNK)) - j0
            parts.append(self.cached[1].slice(j0 - first, take))
            j0 += take
        return pl.concat(parts) if parts else pl.DataFrame(schema=SCHEMAS[kind])


def _check_int(name: str, value: object, low: int | None = None) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
        raise ConfigError(f"{name}={value!r} must be an integer")
    if low is not None and value < low:
        raise ConfigError(f"{name}={value!r} must be at least {low}")
    return int(value)


def _check_kind(kind: object) -> str:
    if kind not in _OFFSETS:
        raise ConfigError(f"kind={kind!r} must be one of {', '.join(map(repr, _OFFSETS))}")
    return str(kind)


def generate(
    kind: str,
    start: int,
    count: int,
    *,
    event_rate: int = 100_000,
    seed: int = 0,
    base_ms: int = DEFAULT_BASE_MS,
) -> pl.DataFrame:
    """The records of ``kind`` among events ``start .. start+count-1``.

    Parameters
    ----------
    kind
        ``"bid"``, ``"auction"``, ``"person"`` or ``"all"`` (one interleaved frame).
    start, count
        The range of event numbers (events of every kind are counted).
    event_rate, seed, base_ms
        As for :class:`NexmarkSource`; ``base_ms`` is the epoch-ms time of event 0.

    Returns
    -------
    pl.DataFrame
        Exactly what a source with the same settings yields for those events.
    """
    kind = _check_kind(kind)
    start, count = _check_int("start", start, 0), _check_int("count", count, 0)
    event_rate, seed = _check_int("event_rate", event_rate, 1), _check_int("seed", seed)
    gen = _Generator(kind, event_rate, seed, _check_int("base_ms", base_ms))
    return gen.records(_count(kind, start), _count(kind, start + count))


class NexmarkSource(Source):
    """Nexmark persons, auctions and bids, generated on the fly.

    Parameters
    ----------
    events
        Total events of every kind to generate (``kind="bid"`` with 1000 yields 920 bids);
        ``None`` for an unbounded stream.
    kind
        ``"bid"``, ``"auction"``, ``"person"``, or ``"all"`` for one stream with an
        ``event_type`` column and a struct column per kind (null where not that kind).
    rate
        Events per second of wall clock; ``None`` generates as fast as it is read.
    event_rate
        Events per second of event time: event ``n`` has ``dateTime = base + n*1000 //
        event_rate`` ms.
    seed
        Seeds every random choice; the output does not depend on read sizes.
    base_time
        Event time of event 0 (a datetime, naive meaning UTC, or epoch ms); by default
        2026-01-01T00:00:00Z, or the wall clock at ``open()`` when ``rate`` is given.
    """

    def __init__(
        self,
        events: int | None = None,
        *,
        kind: Kind = "bid",
        rate: float | None = None,
        event_rate: int = 100_000,
        seed: int = 0,
        base_time: datetime | int | None = None,
    ) -> None:
        self.kind = _check_kind(kind)
        self.events = None if events is None else _check_int("events", events, 0)
        if rate is not None and not (
            isinstance(rate, (int, float)) and not isinstance(rate, bool) and 0 < rate < math.inf
        ):
            raise ConfigError(f"rate={rate!r} must be a positive number of events per second")
        self.rate = rate
        self.event_rate = _check_int("event_rate", event_rate, 1)
        self.seed = _check_int("seed", seed)
        if isinstance(base_time, datetime):
            utc = base_time if base_time.tzinfo else base_time.replace(tzinfo=timezone.utc)
            self.base_ms: int | None = (utc - _EPOCH) // timedelta(milliseconds=1)
        else:
            self.base_ms = None if base_time is None else _check_int("base_time", base_time)
        self.name = f"nexmark[{self.kind}]"
        self.schema = SCHEMAS[self.kind]
        self.bounded = self.events is not None
        self.event_time = EventTime("dateTime", 0, _DT)

    def open(self, ctx: Context, *, owner: PartOwner | None = None) -> Reader:
        refuse_owner(self, owner)
        return _NexmarkReader(self)


class _NexmarkReader(Reader):
    def __init__(self, source: NexmarkSource) -> None:
        base_ms = source.base_ms
        if base_ms is None:
            base_ms = DEFAULT_BASE_MS if source.rate is None else time.time_ns() // 1_000_000
        self.source, self.kind = source, source.kind
        self.gen = _Generator(source.kind, source.event_rate, source.seed, base_ms)
        self.position = 0  # the next record (index among records of the kind)
        self.end = None if source.events is None else _count(self.kind, source.events)
        self.done = self.end == 0
        self.start = time.monotonic()

    def _due(self, rate: float) -> int:
        """Records whose scheduled wall time ``start + event_number / rate`` has passed."""
        due_events = int((time.monotonic() - self.start) * rate + 1e-9) + 1
        if self.source.events is not None:
            due_events = min(due_events, self.source.events)
        return _count(self.kind, due_events)

    def read(self, max_records: int, timeout: float) -> pl.DataFrame | None:
        rate = self.source.rate
        if self.done or max_records < 1:
            return None
        if rate is None:
            due = self.position + max_records
        elif (due := self._due(rate)) <= self.position:  # nothing is due yet: wait for one
            wait = self.start + _event_of(self.kind, self.position) / rate - time.monotonic()
            time.sleep(max(0.0, min(wait, timeout)))
            if (due := self._due(rate)) <= self.position:
                return None
        stop = min(due, self.position + max_records)
        if self.end is not None:
            stop = min(stop, self.end)
        df = self.gen.records(self.position, stop)
        self.position = stop
        self.done = self.end is not None and stop >= self.end
        return df

    def has_unread(self) -> bool:
        """Records are due: always, unpaced; paced, once their wall time has come."""
        rate = self.source.rate
        return not self.done and (rate is None or self._due(rate) > self.position)

    def lag(self) -> int | None:
        if self.source.rate is not None:
            return max(0, self._due(self.source.rate) - self.position)
        return None if self.end is None else self.end - self.position
