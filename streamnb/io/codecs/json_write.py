"""Writing JSON values: one JSON object per row, for ``to_kafka(format="json")`` and the
bodies of JSON Schema framed values."""

from __future__ import annotations

import polars as pl

__all__ = ["json_lines"]


def json_lines(rows: pl.DataFrame) -> list[bytes]:
    """One JSON object per row, as ``write_ndjson`` writes it (the same serializer), without
    its file writer: a few hundred microseconds less per batch, which a small batch feels."""
    if not rows.width:
        return [b"{}"] * rows.height
    encoded = rows.select(pl.struct(pl.all()).struct.json_encode()).to_series()
    return encoded.cast(pl.Binary).to_list()
