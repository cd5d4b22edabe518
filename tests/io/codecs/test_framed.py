"""Registry-framed Avro bodies: one polars block per schema id, record by record only to
find bad records; resolution of a writer's columns to the reader's."""

from __future__ import annotations

import io
import json
from typing import Any

import polars as pl
import pytest

from streamnb.io.codecs import avro, framed

fastavro = pytest.importorskip("fastavro")

NESTED = {
    "type": "record",
    "name": "Bid",
    "namespace": "nexmark",
    "fields": [
        {"name": "id", "type": "long"},
        {"name": "channel", "type": {"type": "enum", "name": "Channel", "symbols": ["A", "B"]}},
        {
            "name": "bidder",
            "type": {
                "type": "record",
                "name": "Person",
                "fields": [{"name": "n", "type": "string"}],
            },
        },
        {"name": "seller", "type": ["null", "Person"], "default": None},  # a named reference
        {"name": "score", "type": "double", "default": 0.0},  # polars' parser refuses 0.0
    ],
}


def encode(record: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, fastavro.parse_schema(NESTED), record)
    return buffer.getvalue()


def rec(i: int) -> dict[str, Any]:
    return {
        "id": i,
        "channel": "AB"[i % 2],
        "bidder": {"n": "x" * (i % 7)},
        "seller": None if i % 2 else {"n": f"s{i}"},
        "score": i / 2,
    }


def test_a_schema_with_named_references_and_defaults_decodes_as_one_block(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    writer = framed.avro_writer(json.dumps(NESTED))
    monkeypatch.setattr(avro, "decode", lambda *a: pytest.fail("went record by record"))
    records = [rec(i) for i in range(100)]
    df, kept = writer.decode([encode(r) for r in records], lambda *a: pytest.fail(str(a)))
    assert df.to_dicts() == records and kept == list(range(100))
    assert df.schema["channel"] == pl.String


@pytest.mark.parametrize(
    "bad",
    [
        encode(rec(1)) + b"\x02",  # bytes left over: polars would shift every later record
        encode(rec(3))[:-1],  # truncated
        b"\xff" * 10 + b"\x01",  # garbage
        b"\x02\x40ab\x00",  # a string longer than the record
    ],
)
def test_a_bad_record_in_a_block_is_an_error_and_the_others_decode(bad: bytes) -> None:
    writer = framed.avro_writer(json.dumps(NESTED))
    good = [rec(i) for i in (10, 11, 12, 13)]
    values = [encode(good[0]), bad, encode(good[1]), encode(good[2]), encode(good[3])]
    errors: list[int] = []
    df, kept = writer.decode(values, lambda i, doc, why: errors.append(i))
    assert errors == [1]
    assert kept == [0, 2, 3, 4]
    assert df.to_dicts() == good


def test_resolution_promotes_nulls_missing_and_refuses_what_does_not_promote() -> None:
    reader = framed.Writer(
        pl.Schema({"id": pl.Int64, "s": pl.Struct({"a": pl.Float64, "b": pl.String})}),
        lambda *a: (pl.DataFrame(), []),
        frozenset({"id"}),
    )
    promotable = framed.Writer(
        pl.Schema({"id": pl.Int32, "s": pl.Struct({"a": pl.Int32}), "extra": pl.String}),
        reader.decode,
    )
    assert framed.incompatibility(promotable, reader) is None
    rows = pl.DataFrame(
        {"id": [1, 2], "s": [{"a": 5}, None], "extra": ["x", "y"]}, schema=promotable.schema
    )
    assert framed.conform(rows, reader.schema).to_dicts() == [
        {"id": 1, "s": {"a": 5.0, "b": None}},
        {"id": 2, "s": None},
    ]
    changed = framed.Writer(pl.Schema({"id": pl.String}), reader.decode)
    assert "'id'" in (framed.incompatibility(changed, reader) or "")
    missing = framed.Writer(pl.Schema({"s": reader.schema["s"]}), reader.decode)
    assert "no default" in (framed.incompatibility(missing, reader) or "")
