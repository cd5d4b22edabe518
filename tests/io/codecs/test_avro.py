"""Avro decoding is strict: a message is exactly one record of the schema, or an error."""

from __future__ import annotations

import io
from typing import Any

import pytest

from streamnb.io.codecs import avro

fastavro = pytest.importorskip("fastavro")

SCHEMA = {
    "type": "record",
    "name": "R",
    "fields": [{"name": "id", "type": "long"}, {"name": "k", "type": "string"}],
}


def encode(schema: dict[str, Any], record: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, fastavro.parse_schema(schema), record)
    return buffer.getvalue()


def test_foreign_schema_trailing_bytes_and_empty_messages_are_errors() -> None:
    """Issue 14 point 4: "seven" written as a string read as the long 5; trailing bytes and
    empty messages were accepted or skipped."""
    parsed = avro.parse_schema(SCHEMA)
    good = encode(SCHEMA, {"id": 7, "k": "a"})
    foreign = encode(
        {"type": "record", "name": "R", "fields": [{"name": "id", "type": "string"}]},
        {"id": "seven"},
    )
    values = [good, foreign, good + b"\x00", b"", good[:1]]
    bad: list[tuple[int, str]] = []
    df, kept = avro.decode(
        values, parsed, avro.polars_schema(parsed), lambda i, d, why: bad.append((i, why))
    )
    assert df.to_dicts() == [{"id": 7, "k": "a"}]
    assert kept == [0]
    assert [i for i, _ in bad] == [1, 2, 3, 4]
    assert "left over" in bad[1][1]
    assert bad[2][1] == "empty message"
