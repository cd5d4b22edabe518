"""Window *definitions*: what a user writes in ``stream.window(...)``.

The operators that implement them live in :mod:`streamnb.engine.windowing` and
:mod:`streamnb.engine.sessions`; these classes only validate and carry the sizes.
"""

from __future__ import annotations

from dataclasses import dataclass

from streamnb.definitions.durations import Duration, to_ms
from streamnb.exceptions import ConfigError

__all__ = ["Hopping", "Session", "Tumbling", "WindowSpec"]


class WindowSpec:
    """Base class of the window specifications."""


@dataclass(frozen=True, init=False)
class Tumbling(WindowSpec):
    """Fixed, non-overlapping windows ``[k·size, (k+1)·size)`` aligned to the Unix epoch."""

    size_ms: int

    def __init__(self, size: Duration) -> None:
        object.__setattr__(self, "size_ms", to_ms(size, name="size", allow_zero=False))

    def __repr__(self) -> str:
        return f"Tumbling(size={self.size_ms}ms)"


@dataclass(frozen=True, init=False)
class Hopping(WindowSpec):
    """Overlapping windows ``[k·every, k·every + size)``; a record is in ``size/every`` of them."""

    size_ms: int
    every_ms: int

    def __init__(self, size: Duration, every: Duration) -> None:
        size_ms = to_ms(size, name="size", allow_zero=False)
        every_ms = to_ms(every, name="every", allow_zero=False)
        if every_ms > size_ms:
            raise ConfigError(
                f"Hopping(size={size!r}, every={every!r}): 'every' must not exceed 'size' "
                "(records between windows would belong to none)"
            )
        object.__setattr__(self, "size_ms", size_ms)
        object.__setattr__(self, "every_ms", every_ms)

    def __repr__(self) -> str:
        return f"Hopping(size={self.size_ms}ms, every={self.every_ms}ms)"


@dataclass(frozen=True, init=False)
class Session(WindowSpec):
    """Per-key activity sessions: records less than ``gap`` apart share a session."""

    gap_ms: int

    def __init__(self, gap: Duration) -> None:
        object.__setattr__(self, "gap_ms", to_ms(gap, name="gap", allow_zero=False))

    def __repr__(self) -> str:
        return f"Session(gap={self.gap_ms}ms)"
