"""``stream.to_parquet(path)``: the output rows as Parquet part files in a directory."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from streamnb.engine.core import Context, Delta, Operator
from streamnb.engine.source import Sink
from streamnb.exceptions import ConfigError


@dataclass(frozen=True)
class ParquetSink(Sink):
    """``to_parquet(path, ...)``: part files under directory ``path``; each run opens its own
    :class:`ParquetWriter`."""

    path: Path
    rows_per_file: int
    flush_seconds: float

    def describe(self) -> str:
        return f"to_parquet[{self.path}]"

    def open(self, ctx: Context) -> Operator:
        return ParquetWriter(
            self.path, rows_per_file=self.rows_per_file, flush_seconds=self.flush_seconds
        )


class ParquetWriter(Operator):
    """Buffers output rows and writes ``part-NNNNNN.parquet`` files.

    A part is written once ``rows_per_file`` rows are buffered or ``flush_seconds`` have
    passed since the last write, and at the end or stop of the query, so a live query
    produces a few files per interval, not one per micro-batch. Rows pass on unchanged.
    """

    def __init__(self, path: Path, *, rows_per_file: int, flush_seconds: float) -> None:
        self.path = path
        self.rows_per_file = rows_per_file
        self.flush_seconds = flush_seconds
        self.buffer: list[pl.DataFrame] = []
        self.buffered = 0
        self.last_write = time.monotonic()
        self.part = 0
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"to_parquet({str(path)!r}): cannot create directory: {exc}"
            ) from None
        self.part = len(list(path.glob("part-*.parquet")))  # never overwrite an earlier run

    def process(self, delta: Delta) -> Delta:
        if delta.rows.height:
            self.buffer.append(delta.rows)
            self.buffered += delta.rows.height
        if self.buffered >= self.rows_per_file or (
            self.buffered and time.monotonic() - self.last_write >= self.flush_seconds
        ):
            self._write()
        return delta

    def finish(self) -> Delta | None:
        self._write()
        return None

    def close(self) -> None:
        self._write()

    def _write(self) -> None:
        if not self.buffer:
            return
        target = self.path / f"part-{self.part:06d}.parquet"
        tmp = target.with_suffix(".parquet.tmp")
        pl.concat(self.buffer).write_parquet(tmp)
        tmp.rename(target)  # readers never see a half-written part
        self.part += 1
        self.buffer, self.buffered = [], 0
        self.last_write = time.monotonic()
