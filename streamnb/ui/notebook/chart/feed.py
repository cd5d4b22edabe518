"""The feed protocol: result tables in, the messages that the chart's views apply out.

This module owns :class:`Feed`, which turns successive result tables into numbered messages:
``reset`` (a snapshot of the newest ``max_rows`` rows), ``append`` (the new rows of an append
stream) and ``upsert`` (changed rows and deleted keys of a keyed table). The JavaScript side
(``static/chart_widget.js``) applies them with ``view.change``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import polars as pl

from streamnb.ui.notebook.chart.rows import json_rows

__all__ = ["Feed"]


class Feed:
    """Turns successive result tables into the messages the views apply.

    Append streams send their new rows (the view drops the oldest beyond ``max_rows``);
    tables send upserts and deletes by key. Each message has the next sequence number.
    """

    def __init__(self, keys: tuple[str, ...] | list[str] | None, max_rows: int) -> None:
        self.keys = list(keys) if keys else None
        self.max_rows = max_rows
        self.seq = 0  # the last message's number; 0 = nothing sent
        self.rows_out = 0  # append streams: records_out at the last message
        self.by_key: dict[str, dict[str, Any]] = {}

    def _key(self, row: Mapping[str, Any]) -> str:
        assert self.keys is not None
        return json.dumps([row.get(k) for k in self.keys], separators=(",", ":"), default=str)

    def reset(self, frame: pl.DataFrame, rows_out: int) -> dict[str, Any]:
        """A snapshot: the whole (newest ``max_rows`` of the) table."""
        rows = json_rows(frame.tail(self.max_rows))
        self.seq += 1
        self.rows_out = rows_out
        msg: dict[str, Any] = {"type": "reset", "seq": self.seq, "rows": rows}
        if self.keys is not None:
            keys = [self._key(r) for r in rows]
            self.by_key = dict(zip(keys, rows, strict=True))
            msg["keys"] = list(self.by_key)
            msg["rows"] = list(self.by_key.values())
        return msg

    def update(self, frame: pl.DataFrame, rows_out: int) -> dict[str, Any] | None:
        """The change since the last message, or None if there is none."""
        if self.seq == 0:
            return self.reset(frame, rows_out)
        if self.keys is None:
            new = rows_out - self.rows_out
            if new <= 0:
                return None
            if new >= self.max_rows or new > frame.height:
                return self.reset(frame, rows_out)
            self.seq += 1
            self.rows_out = rows_out
            return {"type": "append", "seq": self.seq, "rows": json_rows(frame.tail(new))}
        rows = json_rows(frame.tail(self.max_rows))
        current = {self._key(r): r for r in rows}
        changed = [k for k, r in current.items() if self.by_key.get(k) != r]
        deletes = [k for k in self.by_key if k not in current]
        if not changed and not deletes:
            return None
        if len(changed) + len(deletes) > len(current):
            return self.reset(frame, rows_out)
        self.seq += 1
        self.by_key = current
        return {
            "type": "upsert",
            "seq": self.seq,
            "keys": changed,
            "rows": [current[k] for k in changed],
            "deletes": deletes,
        }
