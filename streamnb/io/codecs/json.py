"""Vectorised JSON decoding with per-record error isolation.

A batch of JSON documents is decoded with one polars call. Only when that fails is the batch
bisected to find the documents that do not decode (rare), so good data never pays for the
error path, and a bad record is reported with a reason naming its column.
Empty and blank documents are errors too (a record must be accounted for), and so is an
object or array where the schema has a string: polars would turn it into its JSON text.

``pl.read_ndjson`` is the decoder whose result is the contract. It plans a lazy scan on every
call, about 0.3-0.5 ms whatever the size, which is most of a small batch's cost (a batch of a
lightly loaded query holds tens to hundreds of records). A small batch of flat objects is read
instead as one JSON array by the eager ``pl.read_json``, but only where both give the same
rows (see :func:`_small_flat`): 0.04 ms for 20 bids against 0.63 ms, 0.34 against 0.65 for
150 (``bench/json_decode.py``).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Sequence
from functools import cache

import polars as pl

JSON_SPACE = b" \t\r\n"

BOM = b"\xef\xbb\xbf"

SMALL = 500
"""Batches up to this many documents may take the eager path. Its cost grows faster: the
scan for coerced values (:func:`_lax_values`) costs about 0.9 µs a document, and by 1 000
bids the eager path is slower than ``read_ndjson`` (``bench/json_decode.py``)."""

_EAGER_TYPES = (pl.Int64, pl.Float64, pl.String, pl.Boolean)
"""The column types the eager reader takes exactly as ``read_ndjson`` does, once the values
it would coerce are ruled out (see :func:`_lax_values`)."""

ErrorSink = Callable[[int, bytes, str], None]
"""Called with (index in the batch, the document, why it failed) for each bad document."""


def decode_ndjson(
    docs: list[bytes], schema: pl.Schema, on_error: ErrorSink
) -> tuple[pl.DataFrame, list[int]]:
    """Decode JSON documents (one per record) against ``schema``.

    Returns the decoded rows and, per row, the index of its document in ``docs``.
    Bad documents (empty and blank ones included) go to ``on_error``.
    """
    frames: list[pl.DataFrame] = []
    kept: list[int] = []
    # one buffer for the decoder and for the byte scans (no other copy of a large batch:
    # fresh pages of a batch-sized buffer cost as much as scanning it; the eager path of a
    # small one joins it again, with the commas of a JSON array)
    joined = b"\n".join(docs)
    one_line = joined.count(b"\n") == len(docs) - 1
    # no document can hold an object or an array: each has one ``{`` (its own), no ``[``
    flat = b"[" not in joined and joined.count(b"{") == len(docs)
    if one_line and flat:
        df = _small_flat(docs, joined, schema)
        if df is not None:
            return df, list(range(len(docs)))
    _decode(
        docs,
        0,
        len(docs),
        schema=schema,
        on_error=on_error,
        frames=frames,
        kept=kept,
        joined=joined if one_line else None,
    )
    if not frames:
        return schema.to_frame(), []
    df = pl.concat(frames) if len(frames) > 1 else frames[0]
    if flat:  # the common batch skips the column check (see _without_nested_strings)
        return df, kept
    return _without_nested_strings(df, kept, docs, schema, on_error)


def _small_flat(docs: list[bytes], joined: bytes, schema: pl.Schema) -> pl.DataFrame | None:
    """``read_ndjson``'s rows for a small batch of flat one-line documents, read as one JSON
    array by ``pl.read_json``; ``None`` wherever the two might differ (the caller then takes
    the ``read_ndjson`` path).

    ``joined`` is ``docs`` joined by newlines, where no document holds a newline, a ``[``, or
    any ``{`` but one. Then each document starting with ``{`` and ending with ``}``, and the
    array holding as many rows as there are documents, proves each document one object: all
    ``{`` open objects, and one that closed early, late, or inside another would leave a
    ``}`` or ``,`` where JSON allows neither, or fewer rows. Without backslashes, every
    ``"name":`` is a key, so :func:`_lax_values` can see each value the eager reader would
    coerce (``read_ndjson`` refuses them). Both readers keep a repeated key's first value.
    """
    n = len(docs)
    if (
        n > SMALL
        or not schema
        or not all(dtype in _EAGER_TYPES for dtype in schema.dtypes())
        or not joined.startswith(b"{")
        or not joined.endswith(b"}")
        or joined.count(b"}\n{") != n - 1
        or b"\\" in joined
    ):
        return None
    lax = _lax_values(tuple(schema.items()))
    if lax is not None and lax.search(joined):
        return None
    try:
        df = pl.read_json(b"[" + b"\n,".join(docs) + b"]", schema=schema)
    except Exception:  # a document that does not decode: the bisecting path names it
        return None
    return df if df.height == n else None


@cache
def _lax_values(columns: tuple[tuple[str, pl.DataType], ...]) -> re.Pattern[bytes] | None:
    """A pattern for the values ``pl.read_json`` coerces and ``read_ndjson`` refuses: a
    number with a fraction or an exponent, or one of 19 digits or more (it may overflow:
    ``read_json`` gives null), or a boolean, in an Int64 column; a boolean in a Float64
    column. Conservative: a match only sends the batch to ``read_ndjson``."""
    ints = [name for name, dtype in columns if dtype == pl.Int64]
    floats = [name for name, dtype in columns if dtype == pl.Float64]
    parts = []
    if ints:
        parts.append(_key_pattern(ints) + rb"(?:-?[0-9]+[.eE]|-?[0-9]{19}|[tf])")
    if floats:
        parts.append(_key_pattern(floats) + rb"[tf]")
    return re.compile(b"|".join(parts)) if parts else None


def _key_pattern(names: list[str]) -> bytes:
    keys = b"|".join(re.escape(json.dumps(name, ensure_ascii=False).encode()) for name in names)
    return b"(?:" + keys + rb")[ \t\r]*:[ \t\r]*"


def _without_nested_strings(
    df: pl.DataFrame, kept: list[int], docs: list[bytes], schema: pl.Schema, on_error: ErrorSink
) -> tuple[pl.DataFrame, list[int]]:
    """Drop the rows whose string column held an object or array (reported to ``on_error``).

    polars reads ``{"k": {"x": 1}}`` into a String column as the text ``'{"x": 1}'``; only a
    decoded string that starts with ``{`` or ``[`` can be one, and only those documents are
    parsed again to tell a nested value from a string that looks like one.
    """
    strings = [c for c, t in schema.items() if t == pl.String]
    if not strings or not df.height:
        return df, kept
    suspect = df.select(
        pl.any_horizontal(
            pl.col(c).str.starts_with("{") | pl.col(c).str.starts_with("[") for c in strings
        ).fill_null(False)
    ).to_series()
    if not suspect.any():
        return df, kept
    nested = [False] * df.height
    for row in suspect.arg_true().to_list():  # the suspects only
        # not strict: a pretty-printed document's raw newlines in strings decoded as spaces
        value = json.loads(docs[kept[row]], strict=False)
        column = next((c for c in strings if isinstance(value.get(c), (dict, list))), None)
        if column is not None:
            nested[row] = True
            kind = "an object" if isinstance(value[column], dict) else "an array"
            on_error(
                kept[row], docs[kept[row]], f"column {column!r}: {kind} where a string is expected"
            )
    if not any(nested):
        return df, kept
    good = pl.Series(nested).not_()
    return df.filter(good), [i for i, g in zip(kept, good.to_list(), strict=True) if g]


def _decode(
    docs: list[bytes],
    lo: int,
    hi: int,
    *,
    schema: pl.Schema,
    on_error: ErrorSink,
    frames: list[pl.DataFrame],
    kept: list[int],
    joined: bytes | None = None,
) -> None:
    """Decode ``docs[lo:hi]`` (``joined``: those documents already joined by newlines, none
    of them holding one), bisecting to the bad documents when the batch does not decode."""
    if lo >= hi:
        return
    if joined is None:
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
        on_error(lo, docs[lo], why_not(docs[lo], schema, exc))
        return
    frames.append(df)
    kept.extend(range(lo, hi))


def why_not(doc: bytes, schema: pl.Schema, exc: Exception) -> str:
    """Why one JSON document does not decode, naming the offending column when there is one."""
    if not doc:
        return "empty message"
    if not doc.strip(JSON_SPACE):
        return "blank message (only whitespace)"
    if doc.startswith(BOM):
        return "starts with a UTF-8 byte-order mark, which JSON must not (write it without one)"
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
    """The schema of sample JSON documents (those that are objects); String for all-null
    columns.

    Each column takes the kind of value most documents give it (number, string, bool, object,
    array; ints and floats are both numbers). A document that disagrees is left out of the
    sample, so one bad record cannot turn an Int64 column into String: it becomes an error
    when it is decoded instead.
    """
    objects: list[tuple[bytes, dict[str, object]]] = []
    for doc in docs:
        value = _object(doc) if doc is not None else None
        if value is not None:
            objects.append((doc.replace(b"\n", b" "), value))  # type: ignore[union-attr]
    kinds: dict[str, Counter[str]] = {}
    for _, value in objects:
        for key, item in value.items():
            if item is not None:
                kinds.setdefault(key, Counter())[_kind(item)] += 1
    usual = {key: counts.most_common(1)[0][0] for key, counts in kinds.items()}
    good = [
        doc
        for doc, value in objects
        if all(item is None or _kind(item) == usual[key] for key, item in value.items())
    ]
    if not good:
        return pl.Schema()
    df = pl.read_ndjson(b"\n".join(good), infer_schema_length=None)
    return pl.Schema({c: (pl.String() if t == pl.Null else t) for c, t in df.schema.items()})


def _kind(value: object) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    return type(value).__name__


def _object(doc: bytes) -> dict[str, object] | None:
    try:
        value = json.loads(doc)
    except ValueError:
        return None
    return value if isinstance(value, dict) and not doc.startswith(BOM) else None
