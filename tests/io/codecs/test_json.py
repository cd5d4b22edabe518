"""The JSON decoder shared by the Kafka source and peek: one polars call on the good path."""

from __future__ import annotations

import json
from typing import Any

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamnb.io.codecs import json as codec
from streamnb.io.codecs.json import decode_ndjson, infer_json_schema

SCHEMA = pl.Schema({"a": pl.Int64, "s": pl.String})


def _count_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    for name in ("read_ndjson", "read_json"):
        real = getattr(pl, name)

        def counting(source: Any, _real: Any = real, _name: str = name, **kw: Any) -> Any:
            calls.append(_name)
            return _real(source, **kw)

        monkeypatch.setattr(pl, name, counting)
    return calls


@pytest.mark.parametrize(
    ("n", "reader"), [(codec.SMALL, "read_json"), (codec.SMALL + 1, "read_ndjson")]
)
def test_good_documents_take_one_polars_call(
    monkeypatch: pytest.MonkeyPatch, n: int, reader: str
) -> None:
    """A small batch of flat objects takes the eager reader, a large one the parallel one."""
    calls = _count_calls(monkeypatch)
    docs = [json.dumps({"a": i, "s": str(i)}).encode() for i in range(n)]
    df, kept = decode_ndjson(docs, SCHEMA, lambda *_: None)
    assert df["a"].to_list() == list(range(n))
    assert kept == list(range(n))
    assert calls == [reader]


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


# -- the eager path for small batches gives read_ndjson's rows, or steps aside -------------

MIXED = pl.Schema({"a": pl.Int64, "f": pl.Float64, "s": pl.String, "b": pl.Boolean})

_NUMBERS = [
    "0",
    "-0",
    "7",
    "-12",
    "1.5",
    "1.0",
    "1e2",
    "1E0",
    "-0.0",
    "5e-324",
    "1e400",
    "01",
    "+1",
    ".5",
    "1.",
    "-",
    "9223372036854775807",
    "-9223372036854775808",
    "9223372036854775808",
    "18446744073709551615",
    "99999999999999999999",
    "1000000000000000000",
]
_STRINGS = [
    '""',
    '"x"',
    '"{"',
    '"["',
    '"}"',
    '"a:1.5"',
    '"\\"',
    '"\\u00e9"',
    '"\\ud800"',
    '"tab\there"',
    '"é"',
    '"\\""',
    '"\x1f"',
    '"1"',
    '"true"',
    '"nested }\n,{"',
]
_VALUES = _NUMBERS + _STRINGS + ["true", "false", "null", "{}", '{"x": 1}', "[]", "[1, 2]", "tru"]
_KEYS = ['"a"', '"f"', '"s"', '"b"', '"z"', '"é"', '"\\u0061"', "a", '"a" ']


_PLAIN = {  # values each column takes as it is, so that batches of them take the eager path
    '"a"': ["0", "7", "-12", "123456789012345678", "null"],
    '"f"': ["0.5", "-2.25", "3", "1e-3", "null"],
    '"s"': ['"x"', '""', '"https://x.com/a?b=1"', '"é"', "null"],
    '"b"': ["true", "false", "null"],
}


@st.composite
def _document(draw: st.DrawFn, odd: float) -> bytes:
    """A JSON object of the schema's columns with plain values, each piece odd (a value,
    key, spacing or shape that one reader might take differently) with probability ``odd``."""
    space = st.sampled_from(["", " ", "\t", "\r", "  "])

    def is_odd() -> bool:
        return draw(st.floats(0, 1)) < odd

    keys = draw(st.lists(st.sampled_from(list(_PLAIN)), max_size=5))
    pairs = []
    for key in keys:
        value = draw(st.sampled_from(_VALUES if is_odd() else _PLAIN[key]))
        pairs.append((draw(st.sampled_from(_KEYS)) if is_odd() else key, value))
    gap = (lambda: draw(space)) if is_odd() else (lambda: "")
    doc = "{" + ",".join(f"{gap()}{k}{gap()}:{gap()}{v}{gap()}" for k, v in pairs) + "}"
    if is_odd():
        shape = draw(st.sampled_from(["junk", "lead", "two", "half", "other"]))
        if shape == "junk":
            doc += draw(st.sampled_from(["x", "}", ",", " ", "]"]))
        elif shape == "lead":
            doc = draw(st.sampled_from([" ", "\ufeff", "\n", "["])) + doc
        elif shape == "two":
            doc = doc + "," + doc
        elif shape == "half":
            doc = doc[: draw(st.integers(0, len(doc)))]
        else:
            doc = draw(st.sampled_from(["null", "[1]", "1", '"x"', "", "\n", "{}{}"]))
    raw = doc.encode()
    if is_odd() and draw(st.booleans()):
        raw += b"\xff"  # not UTF-8
    return raw


@st.composite
def _batch(draw: st.DrawFn) -> list[bytes]:
    odd = draw(st.sampled_from([0.0, 0.02, 0.1, 0.3]))
    return draw(st.lists(_document(odd), min_size=1, max_size=12))


def _decode_all(docs: list[bytes], schema: pl.Schema) -> tuple[Any, ...]:
    bad: list[tuple[int, bytes, str]] = []
    df, kept = decode_ndjson(docs, schema, lambda i, d, why: bad.append((i, d, why)))
    return df, kept, bad


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(docs=_batch())
def test_the_eager_path_equals_read_ndjson_or_steps_aside(docs: list[bytes]) -> None:
    """Oracle: the same batch decoded with the eager path switched off (``read_ndjson`` and
    its bisection alone): the same rows, types, positions and errors, whatever the bytes."""
    df, kept, bad = _decode_all(docs, MIXED)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(codec, "_small_flat", lambda *_: None)
        ref_df, ref_kept, ref_bad = _decode_all(docs, MIXED)
    assert df.schema == ref_df.schema
    assert df.equals(ref_df), (df, ref_df)
    assert kept == ref_kept
    assert bad == ref_bad


@pytest.mark.parametrize(
    ("doc", "column"),
    [
        (b'{"a": 1.5}', "a"),
        (b'{"a": 1.0}', "a"),
        (b'{"a": 1e2}', "a"),
        (b'{"a": true}', "a"),
        (b'{"a": 99999999999999999999}', "a"),
        (b'{"a": 9223372036854775808}', "a"),
        (b'{"f": true}', "f"),
        (b'{"\\u0061": 1.5}', "a"),  # an escaped key is the same key
    ],
)
def test_values_the_eager_reader_would_coerce_are_errors(doc: bytes, column: str) -> None:
    """``pl.read_json`` takes 1.5 into an Int64 column as 1, true as 1, an overflow as null;
    ``read_ndjson`` refuses them, and so must a small batch."""
    docs = [b'{"a": 1, "f": 0.5}', doc, b'{"a": 3, "f": 2.5}']
    bad: list[tuple[int, str]] = []
    df, kept = decode_ndjson(docs, MIXED, lambda i, d, why: bad.append((i, why)))
    assert kept == [0, 2]
    assert df["a"].to_list() == [1, 3]
    assert [i for i, _ in bad] == [1] and bad[0][1].startswith(f"column {column!r}")


@pytest.mark.parametrize(
    "docs",
    [
        [b"1", b'{"a": 1},{"a": 2}'],  # one `{` a document on average, not each
        [b'{"a": 0}', b"1", b'{"a": 1},{"a": 2}'],
        [b'{"a": 0}', b'{"a": 1},{"a": 2}', b'"x"'],
    ],
)
def test_a_document_of_two_objects_is_not_two_rows(docs: list[bytes]) -> None:
    """Joined into one array, a document holding two objects beside one holding none would
    give as many rows as documents; each of them is an error instead."""
    bad: list[int] = []
    df, kept = decode_ndjson(docs, MIXED, lambda i, d, why: bad.append(i))
    good = [i for i, d in enumerate(docs) if d == b'{"a": 0}']
    assert kept == good and df["a"].to_list() == [0] * len(good)
    assert bad == [i for i in range(len(docs)) if i not in good]


def test_documents_that_join_into_one_object_are_each_errors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each document is one record. ``{"s": "}`` and ``{"}`` each start with ``{`` and end
    with ``}``, yet joined into one array they could read as one object holding a string;
    the eager path must see the row count short and step aside."""
    calls = _count_calls(monkeypatch)
    docs = [b'{"s": "}', b'{"}', b'{"a": 5}', b'{"s": "x"}']
    bad: list[int] = []
    df, kept = decode_ndjson(docs, MIXED, lambda i, d, why: bad.append(i))
    assert kept == [2, 3] and df["a"].to_list() == [5, None]
    assert bad == [0, 1]
    assert calls[0] == "read_json"  # the eager path was tried, and refused the batch


def test_a_nested_value_beside_a_raw_newline_in_a_string_is_an_error_not_a_crash() -> None:
    """Found by the test above: the nested-value check parsed the document strictly, and a raw
    newline in a string (read as a space, as in pretty-printed documents) raised instead."""
    bad: list[tuple[int, str]] = []
    df, kept = decode_ndjson(
        [b'{"s": {"x": 1}, "z": "two\nlines"}', b'{"a": 2}'],
        MIXED,
        lambda i, d, why: bad.append((i, why)),
    )
    assert kept == [1] and df["a"].to_list() == [2]
    assert bad == [(0, "column 's': an object where a string is expected")]
