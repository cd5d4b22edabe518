"""Durations: polars-style strings or ``timedelta`` → whole milliseconds."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from streamnb.definitions.durations import to_ms
from streamnb.exceptions import ConfigError


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("0s", 0),
        ("1ms", 1),
        ("500ms", 500),
        ("10s", 10_000),
        ("1m", 60_000),
        ("2h", 7_200_000),
        ("1d", 86_400_000),
        ("1w", 604_800_000),
        ("1h30m", 5_400_000),
        ("1m30s", 90_000),
        ("1s500ms", 1_500),
        ("1h 30m", 5_400_000),
    ],
)
def test_strings(text: str, ms: int) -> None:
    assert to_ms(text, name="size") == ms


@pytest.mark.parametrize(
    ("value", "ms"),
    [
        (timedelta(0), 0),
        (timedelta(milliseconds=250), 250),
        (timedelta(seconds=90), 90_000),
        (timedelta(hours=1, minutes=30), 5_400_000),
        (timedelta(days=2), 172_800_000),
    ],
)
def test_timedeltas(value: timedelta, ms: int) -> None:
    assert to_ms(value, name="size") == ms


@pytest.mark.parametrize(
    "bad",
    ["10x", "", " ", "1.5s", "-1s", "s", "10", "ten seconds", "10S", "1s-", -1, 10, 1.5, None,
     timedelta(seconds=-1), timedelta(microseconds=1500)],
)  # fmt: skip
def test_bad_values_raise_config_error_naming_the_argument(bad: Any) -> None:
    with pytest.raises(ConfigError, match="grace=") as info:
        to_ms(bad, name="grace")
    assert isinstance(info.value, ValueError)
    assert repr(bad) in str(info.value)


def test_zero_is_refused_when_not_allowed() -> None:
    assert to_ms("0s", name="delay") == 0
    with pytest.raises(ConfigError, match="size="):
        to_ms("0s", name="size", allow_zero=False)
    with pytest.raises(ConfigError, match="size="):
        to_ms(timedelta(0), name="size", allow_zero=False)
