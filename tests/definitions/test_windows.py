"""Window specifications: validation and sizes in milliseconds."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

import streamnb as sn
from streamnb.definitions.windows import WindowSpec


def test_tumbling() -> None:
    w = sn.Tumbling("10s")
    assert w.size_ms == 10_000
    assert isinstance(w, WindowSpec)
    assert sn.Tumbling(timedelta(minutes=1)).size_ms == 60_000
    assert sn.Tumbling("1h30m").size_ms == 5_400_000


def test_hopping() -> None:
    w = sn.Hopping("1m", "10s")
    assert (w.size_ms, w.every_ms) == (60_000, 10_000)
    same = sn.Hopping("5s", "5s")
    assert (same.size_ms, same.every_ms) == (5_000, 5_000)
    assert isinstance(w, WindowSpec)


def test_session() -> None:
    w = sn.Session("30s")
    assert w.gap_ms == 30_000
    assert sn.Session(timedelta(milliseconds=5)).gap_ms == 5
    assert isinstance(w, WindowSpec)


def test_specs_are_values() -> None:
    assert sn.Tumbling("1s") == sn.Tumbling("1000ms")
    assert sn.Hopping("1m", "10s") == sn.Hopping("60s", "10000ms")
    assert sn.Session("1s") != sn.Session("2s")
    assert len({sn.Tumbling("1s"), sn.Tumbling("1000ms")}) == 1
    w = sn.Tumbling("1s")
    with pytest.raises(AttributeError):
        w.size_ms = 5  # type: ignore[misc]


def test_repr_shows_sizes() -> None:
    assert "1000" in repr(sn.Tumbling("1s"))
    assert "60000" in repr(sn.Hopping("1m", "10s")) and "10000" in repr(sn.Hopping("1m", "10s"))
    assert "30000" in repr(sn.Session("30s"))


@pytest.mark.parametrize("bad", ["10x", "", "1.5s", "-1s", -1, 0, "0s", timedelta(0)])
def test_bad_tumbling_size(bad: Any) -> None:
    with pytest.raises(sn.ConfigError, match="size="):
        sn.Tumbling(bad)


@pytest.mark.parametrize("bad", ["10x", "", "1.5s", -1, "0s"])
def test_bad_session_gap(bad: Any) -> None:
    with pytest.raises(sn.ConfigError, match="gap="):
        sn.Session(bad)


@pytest.mark.parametrize(
    ("size", "every", "name"),
    [
        ("10x", "1s", "size="),
        ("10s", "1x", "every="),
        ("10s", "", "every="),
        ("10s", -1, "every="),
        ("10s", "0s", "every="),
        ("1.5s", "1s", "size="),
    ],
)
def test_bad_hopping_durations(size: Any, every: Any, name: str) -> None:
    with pytest.raises(sn.ConfigError, match=name):
        sn.Hopping(size, every)


def test_hopping_every_larger_than_size() -> None:
    with pytest.raises(sn.ConfigError, match="every") as info:
        sn.Hopping("1s", "10s")
    assert isinstance(info.value, ValueError)
