"""Capture mode: run notebook or module code without starting any query.

While :func:`capturing` is active, ``Stream.start(name)``, ``show()`` and ``chart()`` do not
run anything: they record the stream under its name and return a :class:`CapturedQuery`, an
inert stand-in. The worker uses this to rebuild, from the notebook's own code, exactly the
``Stream`` objects the notebook would have started.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import polars as pl

if TYPE_CHECKING:
    from streamnb.stream import Stream

_captured: ContextVar[dict[str, Stream] | None] = ContextVar("streamnb_captured", default=None)


@contextlib.contextmanager
def capturing() -> Iterator[dict[str, Stream]]:
    """Within the block, starting a stream records it (by name) instead of running it."""
    streams: dict[str, Stream] = {}
    token = _captured.set(streams)
    try:
        yield streams
    finally:
        _captured.reset(token)


def capture(stream: Stream, name: str | None) -> CapturedQuery | None:
    """Record ``stream`` if capture mode is on (then return a stand-in query), else None."""
    streams = _captured.get()
    if streams is None:
        return None
    key = name if name is not None else f"query-{len(streams) + 1}"
    streams[key] = stream
    return CapturedQuery(key, stream)


class CapturedQuery:
    """What ``start()`` returns in capture mode: the interface of a Query, doing nothing."""

    def __init__(self, name: str, stream: Stream) -> None:
        self.name = name
        self.stream = stream
        self.plan = stream.plan
        self.exception: BaseException | None = None
        self.views: dict[str, Any] = {}

    def status(self) -> dict[str, Any]:  # "captured" is no QueryState: nothing runs
        return {
            "name": self.name,
            "state": "captured",
            "records_in": 0,
            "records_out": 0,
            "late": 0,
            "errors": 0,
            "watermark": None,
            "lag": None,
            "rate": 0.0,
            "loading": {},
        }

    @property
    def version(self) -> int:
        return 0

    def result(self) -> pl.DataFrame:
        return self.stream.schema.to_frame() if self.stream.schema is not None else pl.DataFrame()

    def late(self) -> pl.DataFrame:
        return pl.DataFrame()

    def errors(self) -> pl.DataFrame:
        return pl.DataFrame()

    def wait(self, timeout: float | None = None) -> bool:
        return True

    def pause(self) -> None: ...

    def resume(self) -> None: ...

    def stop(self, timeout: float | None = None) -> None: ...
