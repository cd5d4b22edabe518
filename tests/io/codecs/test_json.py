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
