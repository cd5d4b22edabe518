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

from streamnb.engine.core import Delta

_OP = "__sn_op"
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
            self._parts = [pl.concat(self._parts)]

    def _upsert(self, delta: Delta) -> None:
        assert self.keys is not None
        if delta.deletes is not None and delta.deletes.height:
            self._parts.append(delta.deletes.with_columns(pl.lit(False).alias(_OP)))
        if delta.rows.height:
            self._parts.append(delta.rows.with_columns(pl.lit(True).alias(_OP)))
        if len(self._parts) > _FOLD_AFTER:
            self._parts = [self._fold()]

    def _fold(self) -> pl.DataFrame:
        """Latest change per key; deleted keys dropped."""
        assert self.keys is not None
        changes = pl.concat(self._parts, how="diagonal")
        return changes.unique(subset=self.keys, keep="last", maintain_order=True).filter(
            pl.col(_OP)
        )

    def frame(self) -> pl.DataFrame:
        """The current table (a copy-free snapshot)."""
        with self._lock:
            if not self._parts:
                return self.schema.to_frame() if self.schema is not None else pl.DataFrame()
            if self.keys is None:
                df = pl.concat(self._parts) if len(self._parts) > 1 else self._parts[0]
                return df.tail(self.keep) if self.keep is not None else df
            self._parts = [self._fold()]
            table = self._parts[0].drop(_OP).sort(self.keys, nulls_last=False)
            if self.schema is not None:  # only deletes seen: the value columns are missing
                table = table.select(
                    pl.col(c) if c in table.columns else pl.lit(None, t).alias(c)
                    for c, t in self.schema.items()
                )
            return table
