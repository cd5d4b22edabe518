"""``stream.to_parquet(path)``: the output rows as Parquet part files in a directory."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from streamnb.columns import visible
from streamnb.engine.core import Context, Delta, Operator, error_rows
from streamnb.engine.source import Sink
from streamnb.exceptions import ConfigError, SinkError


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
            self.path, rows_per_file=self.rows_per_file, flush_seconds=self.flush_seconds, ctx=ctx
        )


class ParquetWriter(Operator):
    """Buffers output rows and writes ``part-NNNNNN.parquet`` files.

    A part is written once ``rows_per_file`` rows are buffered or ``flush_seconds`` have
    passed since the last write (checked on every tick, so a quiet stream's rows do not wait
    for the next batch), and at the end or stop of the query, so a live query produces a few
    files per interval, not one per micro-batch. Rows pass on unchanged.

    A part that cannot be written fails the query (:class:`SinkError`, also at ``stop()``);
    its rows go to ``errors()``, so none is lost unseen.
    """

    def __init__(
        self, path: Path, *, rows_per_file: int, flush_seconds: float, ctx: Context
    ) -> None:
        self.path = path
        self.ctx = ctx
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
        if self.buffered >= self.rows_per_file:
            self._write()
        self.tick()
        return delta

    def tick(self) -> None:
        if self.buffered and time.monotonic() - self.last_write >= self.flush_seconds:
            self._write()

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
        rows = pl.concat(self.buffer)
        self.buffer, self.buffered = [], 0
        try:
            rows.write_parquet(tmp)
            tmp.rename(target)  # readers never see a half-written part
        except OSError as exc:
            reason = f"cannot write {target}: {exc}"
            self.ctx.errors.add(
                error_rows(visible(rows), reason, source=f"to_parquet[{self.path}]")
            )
            raise SinkError(
                f"to_parquet: {reason}; its {rows.height} rows are in the query's errors()"
            ) from exc
        self.part += 1
        self.last_write = time.monotonic()
