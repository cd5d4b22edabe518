"""Durations: polars-style strings (``"500ms" "10s" "1m30s"``) or ``timedelta``."""

from __future__ import annotations

import re
from datetime import timedelta

from streamnb.exceptions import ConfigError

Duration = str | timedelta

_UNIT_MS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
_PART = re.compile(r"(\d+)(ms|s|m|h|d|w)")


def to_ms(value: Duration, *, name: str, allow_zero: bool = True) -> int:
    """Convert a duration to integer milliseconds, naming the argument in errors."""
    if isinstance(value, timedelta):
        ms = value // timedelta(milliseconds=1)
        if value != timedelta(milliseconds=ms):
            raise ConfigError(f"{name}={value!r}: durations must be whole milliseconds")
    elif isinstance(value, str):
        text = value.replace(" ", "")
        parts = _PART.findall(text)
        if not text or "".join(n + u for n, u in parts) != text:
            raise ConfigError(
                f"{name}={value!r} is not a duration; use e.g. '500ms', '10s', '1m', '2h', "
                "'1h30m' or a datetime.timedelta"
            )
        ms = sum(int(n) * _UNIT_MS[u] for n, u in parts)
    else:
        raise ConfigError(
            f"{name}={value!r} is not a duration; use a string such as '10s' or a timedelta"
        )
    if ms < 0 or (ms == 0 and not allow_zero):
        raise ConfigError(f"{name}={value!r} must be {'≥' if allow_zero else '>'} 0")
    return ms
