"""Vectorised JSON decoding with per-record error isolation.

A batch of JSON documents is decoded with one ``pl.read_ndjson`` call. Only when that fails
is the batch bisected to find the documents that do not decode (rare), so good data never
pays for the error path, and a bad record is reported with a reason naming its column.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

import polars as pl

JSON_SPACE = b" \t\r\n"

ErrorSink = Callable[[int, bytes, str], None]
"""Called with (index in the batch, the document, why it failed) for each bad document."""


def decode_ndjson(
    docs: list[bytes], schema: pl.Schema, on_error: ErrorSink
) -> tuple[pl.DataFrame, list[int]]:
    """Decode JSON documents (one per record) against ``schema``.

    Returns the decoded rows and, per row, the index of its document in ``docs``.
    Blank documents are skipped silently; bad ones go to ``on_error``.
    """
    frames: list[pl.DataFrame] = []
    kept: list[int] = []
    _decode(docs, 0, len(docs), schema=schema, on_error=on_error, frames=frames, kept=kept)
    if not frames:
        return schema.to_frame(), []
    return (pl.concat(frames) if len(frames) > 1 else frames[0]), kept


def _decode(
    docs: list[bytes],
    lo: int,
    hi: int,
    *,
    schema: pl.Schema,
    on_error: ErrorSink,
    frames: list[pl.DataFrame],
    kept: list[int],
) -> None:
    if lo >= hi:
        return
    chunk = docs[lo:hi]
    joined = b"\n".join(chunk)
    if joined.count(b"\n") != hi - lo - 1:
        # a document spans lines (pretty-printed); newlines are only whitespace in JSON
        joined = b"\n".join(d.replace(b"\n", b" ").replace(b"\r", b" ") for d in chunk)
    try:
        df = pl.read_ndjson(joined, schema=schema)
        if df.height != hi - lo:
            raise ValueError("blank or multi-record documents")  # positions would drift
    except Exception as exc:  # polars raises several types for documents that do not fit
        if hi - lo > 1:
            mid = (lo + hi) // 2
            _decode(docs, lo, mid, schema=schema, on_error=on_error, frames=frames, kept=kept)
            _decode(docs, mid, hi, schema=schema, on_error=on_error, frames=frames, kept=kept)
            return
        doc = docs[lo]
        if doc.strip(JSON_SPACE):
            on_error(lo, doc, why_not(doc, schema, exc))
        return
    frames.append(df)
    kept.extend(range(lo, hi))


def why_not(doc: bytes, schema: pl.Schema, exc: Exception) -> str:
    """Why one JSON document does not decode, naming the offending column when there is one."""
    try:
        value = json.loads(doc)
    except ValueError:
        return "not valid JSON"
    if not isinstance(value, dict):
        return f"not a JSON object but {type(value).__name__}"
    for key, item in value.items():
        if key in schema:
            try:
                pl.read_ndjson(json.dumps({key: item}).encode(), schema={key: schema[key]})
            except Exception as err:
                return f"column {key!r}: {str(err).splitlines()[0]}"
    return f"does not match the schema: {str(exc).splitlines()[0]}"


def infer_json_schema(docs: Sequence[bytes | None]) -> pl.Schema:
    """The schema of sample JSON documents (those that decode); String for all-null columns."""
    good = [d.replace(b"\n", b" ") for d in docs if d is not None and _is_object(d)]
    if not good:
        return pl.Schema()
    df = pl.read_ndjson(b"\n".join(good), infer_schema_length=None)
    return pl.Schema({c: (pl.String() if t == pl.Null else t) for c, t in df.schema.items()})


def _is_object(doc: bytes) -> bool:
    try:
        return isinstance(json.loads(doc), dict)
    except ValueError:
        return False
