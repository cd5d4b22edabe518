"""Writing JSON values: one JSON object per row, for ``to_kafka(format="json")`` and the
bodies of JSON Schema framed values."""

from __future__ import annotations

import polars as pl

__all__ = ["json_lines"]


def json_lines(rows: pl.DataFrame) -> list[bytes]:
    """One JSON object per row, as ``write_ndjson`` writes it (the same serializer), without
    its file writer: a few hundred microseconds less per batch, which a small batch feels.

    The struct is made eagerly (``to_struct``), so only the encoding runs as a query: a
    ``select`` of ``pl.struct(pl.all())`` plans and runs one task per column on polars'
    thread pool, 2.4x the cost in a live query at 10 000 records/s (``collect`` 1.7 s
    against 0.7 s of the query thread's 12 s)."""
    if not rows.width:
        return [b"{}"] * rows.height
    return rows.to_struct().struct.json_encode().cast(pl.Binary).to_list()
