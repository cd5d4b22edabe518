"""The JSON decoder shared by the Kafka source and peek: one polars call on the good path."""

from __future__ import annotations

import json
from typing import Any

import polars as pl
import pytest

from streamnb.io.codecs.json import decode_ndjson, infer_json_schema

SCHEMA = pl.Schema({"a": pl.Int64, "s": pl.String})


def test_good_documents_take_one_polars_call(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = pl.read_ndjson

    def counting(source: Any, **kw: Any) -> pl.DataFrame:
        calls.append(1)
        return real(source, **kw)

    monkeypatch.setattr(pl, "read_ndjson", counting)
    docs = [json.dumps({"a": i, "s": str(i)}).encode() for i in range(1000)]
    df, kept = decode_ndjson(docs, SCHEMA, lambda *_: None)
    assert df["a"].to_list() == list(range(1000))
    assert kept == list(range(1000))
    assert len(calls) == 1


def test_bad_documents_are_isolated_with_reasons() -> None:
    docs = [b'{"a": 1, "s": "x"}', b"{oops", b'{"a": "two"}', b"[3]", b"", b'{"a": 5}']
    bad: list[tuple[int, bytes, str]] = []
    df, kept = decode_ndjson(docs, SCHEMA, lambda i, d, why: bad.append((i, d, why)))
    assert df["a"].to_list() == [1, 5]
    assert kept == [0, 5]
    assert [(i, why) for i, _, why in bad] == [
        (1, "not valid JSON"),
        (2, bad[1][2]),
        (3, "not a JSON object but list"),
        (4, "empty message"),
    ]
    assert bad[1][2].startswith("column 'a'")


def test_pretty_printed_documents_decode() -> None:
    docs = [b'{\n  "a": 1,\n  "s": "x"\n}', b'{"a": 2, "s": "y"}']
    df, kept = decode_ndjson(docs, SCHEMA, lambda *_: pytest.fail("no error expected"))
    assert df.to_dicts() == [{"a": 1, "s": "x"}, {"a": 2, "s": "y"}]
    assert kept == [0, 1]


def test_schema_inference_skips_what_does_not_decode() -> None:
    schema = infer_json_schema([b"{bad", None, b'{"a": 1, "n": null}', b'{"a": 2, "s": "z"}'])
    assert schema == pl.Schema({"a": pl.Int64, "n": pl.String, "s": pl.String})


def test_empty_and_blank_documents_are_errors() -> None:
    """Issue 14 point 1: they were skipped silently, so the counts did not add up."""
    docs = [b'{"a": 1}', b"", b"   ", b"\n", b'{"a": 2}']
    bad: list[tuple[int, str]] = []
    _, kept = decode_ndjson(docs, SCHEMA, lambda i, d, why: bad.append((i, why)))
    assert kept == [0, 4]
    assert bad == [
        (1, "empty message"),
        (2, "blank message (only whitespace)"),
        (3, "blank message (only whitespace)"),
    ]


def test_a_nested_value_in_a_string_column_is_an_error() -> None:
    """Issue 14 point 5: polars turned {"x": 1} into the string '{"x": 1}'."""
    docs = [
        b'{"a": 1, "s": {"x": 1}}',
        b'{"a": 2, "s": [1, 2]}',
        b'{"a": 3, "s": "{looks nested, is a string}"}',
        b'{"a": 4, "s": "plain"}',
    ]
    bad: list[tuple[int, str]] = []
    df, kept = decode_ndjson(docs, SCHEMA, lambda i, d, why: bad.append((i, why)))
    assert df.to_dicts() == [{"a": 3, "s": "{looks nested, is a string}"}, {"a": 4, "s": "plain"}]
    assert kept == [2, 3]
    assert bad == [
        (0, "column 's': an object where a string is expected"),
        (1, "column 's': an array where a string is expected"),
    ]


def test_a_byte_order_mark_has_a_reason_that_says_so() -> None:
    """Issue 14 point 12c: the reason was polars' 'InternalError(TapeError)'."""
    bad: list[str] = []
    decode_ndjson([b'\xef\xbb\xbf{"a": 1}'], SCHEMA, lambda i, d, why: bad.append(why))
    assert len(bad) == 1 and "byte-order mark" in bad[0] and "TapeError" not in bad[0]


def test_one_bad_record_in_the_sample_does_not_change_a_column_type() -> None:
    """Issue 14 point 3: one {"id": "two"} among ints made the column String."""
    docs = [json.dumps({"id": i, "v": 0.5}).encode() for i in range(20)]
    docs.insert(3, b'{"id": "two", "v": 1}')
    docs.insert(0, b"garbage")
    assert infer_json_schema(docs) == pl.Schema({"id": pl.Int64, "v": pl.Float64})
    mixed = [b'{"n": 1}', b'{"n": 2.5}']  # ints and floats are both numbers: Float64
    assert infer_json_schema(mixed) == pl.Schema({"n": pl.Float64})
