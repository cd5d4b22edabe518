"""The in-memory result table behind ``Query.result()`` and ``Stream.collect()``.

An append stream keeps its rows (the newest ``keep`` of them for unbounded queries). A table
(group_by results, ``emit="update"`` windows) is an upsert changelog: the materialised view
holds the latest row per key, without the keys that were deleted. Changes are appended as they
come and folded lazily (on read, or when many have piled up), so the query thread never pays
for a full rewrite per batch.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import polars as pl

from streamnb.columns import RESULT_OP
from streamnb.engine.core import Delta

_FOLD_AFTER = 64


class ResultTable:
    """Materialised output of a query."""

    def __init__(
        self, schema: pl.Schema | None, keys: Sequence[str] | None, keep: int | None
    ) -> None:
        self.schema = schema
        self.keys = list(keys) if keys else None
        self.keep = keep
        self.rows_out = 0
        self._parts: list[pl.DataFrame] = []
        self._rows = 0
        self._lock = threading.Lock()
        self.version = 0  # bumps on every change; observers poll it cheaply
        self._cache: tuple[int, pl.DataFrame] | None = None

    def add(self, delta: Delta) -> None:
        with self._lock:
            if self.keys is None:
                self._append(delta.rows)
            else:
                self._upsert(delta)
            self.rows_out += delta.rows.height
            self.version += 1

    def _append(self, rows: pl.DataFrame) -> None:
        if rows.height == 0:
            return
        self._parts.append(rows)
        self._rows += rows.height
        if self.keep is not None:
            while self._parts and self._rows - self._parts[0].height >= self.keep:
                self._rows -= self._parts.pop(0).height
        if len(self._parts) > _FOLD_AFTER:
            self._parts = [_stack(self._parts)]

    def _upsert(self, delta: Delta) -> None:
        assert self.keys is not None
        if delta.deletes is not None and delta.deletes.height:
            self._parts.append(delta.deletes.with_columns(pl.lit(False).alias(RESULT_OP)))
        if delta.rows.height:
            self._parts.append(delta.rows.with_columns(pl.lit(True).alias(RESULT_OP)))
        if len(self._parts) > _FOLD_AFTER:
            self._parts = [self._fold()]

    def _fold(self, parts: list[pl.DataFrame] | None = None) -> pl.DataFrame:
        """Latest change per key; deleted keys dropped."""
        assert self.keys is not None
        changes = pl.concat(parts if parts is not None else self._parts, how="diagonal")
        return changes.unique(subset=self.keys, keep="last", maintain_order=True).filter(
            pl.col(RESULT_OP)
        )

    def frame(self) -> pl.DataFrame:
        """The current table. Reads are cached per version and computed outside the lock,
        so frequent readers (live widgets) never hold up the query writing to it."""
        with self._lock:
            version, parts = self.version, list(self._parts)
            if self._cache is not None and self._cache[0] == version:
                return self._cache[1]
        if not parts:
            table = self.schema.to_frame() if self.schema is not None else pl.DataFrame()
        elif self.keys is None:
            table = _stack(parts) if len(parts) > 1 else parts[0]
            table = table.tail(self.keep) if self.keep is not None else table
        else:
            folded = self._fold(parts)
            with self._lock:
                if self.version == version:  # nothing arrived meanwhile: keep the fold
                    self._parts = [folded]
            table = folded.drop(RESULT_OP).sort(self.keys, nulls_last=False)
            if self.schema is not None:  # only deletes seen: the value columns are missing
                table = table.select(
                    pl.col(c) if c in table.columns else pl.lit(None, t).alias(c)
                    for c, t in self.schema.items()
                )
        with self._lock:
            self._cache = (version, table)
        return table


def _stack(parts: list[pl.DataFrame]) -> pl.DataFrame:
    """Appended parts as one frame; a source whose schema grew mid-stream (a newer Schema
    Registry version added a field) gives later parts more columns: null in the earlier."""
    if any(p.schema != parts[0].schema for p in parts):
        return pl.concat(parts, how="diagonal_relaxed")
    return pl.concat(parts)
