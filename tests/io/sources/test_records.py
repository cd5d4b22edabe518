"""``sn.from_records``: every accepted input shape, schema inference and override, bad records
routed to ``errors()`` with their position in the input (docs/semantics.md §1, §7)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import polars as pl
import pytest
from polars.testing import assert_frame_equal

import streamnb as sn

BATCH_SIZES = [1, 3, 10_000]
TIMEOUT = 30.0

DF = pl.DataFrame(
    {
        "k": ["a", "b", None, "a", "c", "b", "a"],
        "v": [1, 2, 3, None, 5, 6, 7],
        "x": [0.5, None, 1.5, 2.5, 3.5, 4.5, 5.5],
        "t": [10, 20, 30, 40, 50, 60, 70],
    }
)


def run(data: Any, **kwargs: Any) -> sn.Query:
    q = sn.from_records(data, **kwargs).start()
    assert q.wait(timeout=TIMEOUT)
    assert q.status()["state"] == "finished"
    return q


def check_errors(q: sn.Query, originals: dict[int, Any], reason: str) -> None:
    """``q.errors()`` holds exactly ``originals`` (position → input item), each with a reason
    containing ``reason`` and the record as JSON."""
    errors = q.errors().sort("position")
    assert errors["position"].to_list() == sorted(originals)
    assert q.status()["errors"] == len(originals)
    for row in errors.iter_rows(named=True):
        assert reason in row["reason"], row["reason"]
        original = originals[row["position"]]
        decoded = json.loads(row["record"])
        if isinstance(original, dict):
            assert {k: decoded.get(k) for k in original} == original
            assert all(decoded[k] is None for k in set(decoded) - set(original))
        else:
            assert decoded == original


# -- accepted shapes ------------------------------------------------------------------------------


@pytest.mark.parametrize("batch_size", BATCH_SIZES)
def test_list_of_dicts(batch_size: int) -> None:
    stream = sn.from_records(DF.to_dicts(), batch_size=batch_size)
    assert stream.schema == DF.schema
    assert stream.bounded
    assert_frame_equal(stream.collect(timeout=TIMEOUT), DF)


@pytest.mark.parametrize("batch_size", BATCH_SIZES)
def test_dataframe(batch_size: int) -> None:
    stream = sn.from_records(DF, timestamp="t", batch_size=batch_size)
    assert stream.schema == DF.schema
    assert stream.event_time == "t"
    assert_frame_equal(stream.collect(timeout=TIMEOUT), DF)


@pytest.mark.parametrize("batch_size", BATCH_SIZES)
def test_list_of_dataframes_in_order(batch_size: int) -> None:
    parts = [DF.slice(0, 3), DF.slice(3, 0), DF.slice(3, 1), DF.slice(4, 3)]
    assert_frame_equal(sn.from_records(parts, batch_size=batch_size).collect(timeout=TIMEOUT), DF)


@pytest.mark.parametrize("batch_size", BATCH_SIZES)
def test_generator_of_dicts(batch_size: int) -> None:
    def rows() -> Iterator[dict[str, Any]]:
        yield from DF.to_dicts()

    assert_frame_equal(sn.from_records(rows(), batch_size=batch_size).collect(timeout=TIMEOUT), DF)


def test_long_generator_of_dicts_is_replayed_in_order() -> None:
    n = 25_003  # more than one internal chunk
    got = sn.from_records(({"i": i, "t": i} for i in range(n)), timestamp="t").collect(
        timeout=TIMEOUT
    )
    assert got.height == n
    assert got["i"].to_list() == list(range(n))


@pytest.mark.parametrize("batch_size", BATCH_SIZES)
def test_generator_of_dataframes(batch_size: int) -> None:
    def frames() -> Iterator[pl.DataFrame]:
        for start in range(0, DF.height, 2):
            yield DF.slice(start, 2)

    got = sn.from_records(frames(), timestamp="t", batch_size=batch_size).collect(timeout=TIMEOUT)
    assert_frame_equal(got, DF)


def test_empty_inputs() -> None:
    assert sn.from_records([]).collect(timeout=TIMEOUT).height == 0
    assert sn.from_records(iter([])).collect(timeout=TIMEOUT).height == 0
    empty = DF.clear()
    assert_frame_equal(sn.from_records(empty, timestamp="t").collect(timeout=TIMEOUT), empty)


def test_datetime_values_in_dicts() -> None:
    times = [datetime(2026, 1, 1, 0, 0, s, tzinfo=timezone.utc) for s in (1, 2, 11)]
    records = [{"ts": t, "v": i} for i, t in enumerate(times)]
    got = (
        sn.from_records(records, timestamp="ts")
        .window(sn.Tumbling("10s"))
        .agg(pl.len().alias("n"))
        .collect(timeout=TIMEOUT)
    )
    assert got["n"].to_list() == [2, 1]


def test_schema_inference_widens_ints_to_floats() -> None:
    records = [{"a": 1, "t": 1}, {"a": 2.5, "t": 2}, {"a": None, "t": 3}]
    stream = sn.from_records(records)
    assert stream.schema == pl.Schema({"a": pl.Float64, "t": pl.Int64})
    assert stream.collect(timeout=TIMEOUT)["a"].to_list() == [1.0, 2.5, None]


def test_schema_inference_takes_the_first_non_null_value() -> None:
    records = [{"a": None, "t": 1}, {"a": "x", "t": 2}]
    assert sn.from_records(records).schema == pl.Schema({"a": pl.String, "t": pl.Int64})


# -- bad records --------------------------------------------------------------------------------


GOOD = [{"k": f"r{i}", "v": i, "t": 10 * i} for i in range(150)]


@pytest.mark.parametrize("batch_size", [1, 3, 7, 10_000])
def test_bad_records_go_to_errors_with_their_position(batch_size: int) -> None:
    bad: dict[int, Any] = {
        2: {"k": "wrong-type-early", "v": "oops", "t": 25},
        5: {"k": "no-time", "v": 5},
        9: 42,  # not a dict
        13: {"k": "null-time", "v": 13, "t": None},
        130: {"k": "wrong-type-late", "v": "bad", "t": 1295},
        131: "not a dict either",
    }
    data: list[Any] = list(GOOD)
    for position in sorted(bad):
        data.insert(position, bad[position])
    q = run(data, timestamp="t", batch_size=batch_size)
    assert_frame_equal(q.result(), pl.DataFrame(GOOD))
    assert q.status()["records_in"] == len(GOOD) + len(bad)  # counts reconcile (API.md §7)
    errors = q.errors().sort("position")
    assert errors["position"].to_list() == sorted(bad)
    assert q.status()["errors"] == len(bad)
    reasons = dict(zip(errors["position"], errors["reason"], strict=True))
    assert "'v'" in reasons[2] and "'v'" in reasons[130]
    assert "event time" in reasons[5] and "event time" in reasons[13]
    assert "mapping" in reasons[9] and "mapping" in reasons[131]
    for position, record in zip(errors["position"], errors["record"], strict=True):
        original = bad[position]
        decoded = json.loads(record)
        if isinstance(original, dict):
            assert {k: decoded.get(k) for k in original} == original
        else:
            assert decoded == original
    assert set(errors["source"]) == {"records"}


def test_a_non_dict_first_item_goes_to_errors() -> None:
    q = run([7, {"v": 1, "t": 1}, {"v": 2, "t": 2}], timestamp="t")
    assert q.result().to_dicts() == [{"v": 1, "t": 1}, {"v": 2, "t": 2}]
    check_errors(q, {0: 7}, "mapping")


@pytest.mark.parametrize("batch_size", [1, 4, 10_000])
def test_bad_records_from_a_generator_of_dicts(batch_size: int) -> None:
    def rows() -> Iterator[Any]:
        for i in range(10_010):
            if i == 10_005:
                yield {"v": "ten thousand and five", "t": i}
            elif i == 3:
                yield {"v": 3}
            else:
                yield {"v": i, "t": i}

    q = run(rows(), timestamp="t", batch_size=batch_size)
    assert q.result().height == 10_008
    check_errors(q, {3: {"v": 3}, 10_005: {"v": "ten thousand and five", "t": 10_005}}, "")


@pytest.mark.parametrize("batch_size", [1, 2, 10_000])
def test_positions_across_dataframes(batch_size: int) -> None:
    parts = [
        pl.DataFrame({"v": [0, 1, 2], "t": [0, None, 2]}),
        pl.DataFrame({"v": [3, 4], "t": [None, 4]}),
        pl.DataFrame({"v": [5], "t": [None]}),
    ]
    for data in (parts, iter(parts)):
        q = run(data, timestamp="t", batch_size=batch_size)
        assert q.result()["v"].to_list() == [0, 2, 4]
        check_errors(
            q, {1: {"v": 1, "t": None}, 3: {"v": 3, "t": None}, 5: {"v": 5, "t": None}}, "'t'"
        )


def test_a_dataframe_that_does_not_fit_the_schema_goes_to_errors() -> None:
    """The schema comes from the first frame; a later frame whose column has another type holds
    records that do not fit: they are error records, and the query's result stays readable."""
    parts = [
        pl.DataFrame({"a": [1, 2], "t": [1, 2]}),
        pl.DataFrame({"a": ["x"], "t": [3]}),
        pl.DataFrame({"a": [4], "t": [4]}),
    ]
    q = run(parts, timestamp="t")
    assert q.result().to_dicts() == [{"a": 1, "t": 1}, {"a": 2, "t": 2}, {"a": 4, "t": 4}]
    check_errors(q, {2: {"a": "x", "t": 3}}, "'a'")


def test_errors_of_a_clean_input_are_empty_with_their_columns() -> None:
    q = run(DF, timestamp="t")
    errors = q.errors()
    assert errors.height == 0
    assert {"position", "reason", "record"} <= set(errors.columns)
    assert q.status()["errors"] == 0


# -- schema= ------------------------------------------------------------------------------------


def test_schema_override_sets_the_types() -> None:
    records = [{"a": 1, "b": "x", "t": 1}, {"a": 2, "b": None, "t": 2}]
    schema = {"a": pl.Float32, "b": pl.String, "t": pl.Int32}
    stream = sn.from_records(records, timestamp="t", schema=schema)
    assert stream.schema == pl.Schema(schema)
    got = stream.collect(timeout=TIMEOUT)
    assert_frame_equal(got, pl.DataFrame(records, schema=schema))


def test_schema_override_can_make_an_event_time_column_datetime() -> None:
    records = [{"ts": datetime(2026, 1, 1, tzinfo=timezone.utc), "v": 1}]
    schema = {"ts": pl.Datetime("ms", "UTC"), "v": pl.Int64}
    stream = sn.from_records(records, timestamp="ts", schema=schema)
    assert stream.schema == pl.Schema(schema)
    assert stream.collect(timeout=TIMEOUT).schema == pl.Schema(schema)


def test_schema_override_wrong_string_goes_to_errors() -> None:
    records = [{"a": 1, "t": 1}, {"a": "oops", "t": 2}, {"a": 3, "t": 3}]
    q = run(records, timestamp="t", schema={"a": pl.Int64, "t": pl.Int64})
    assert q.result().to_dicts() == [{"a": 1, "t": 1}, {"a": 3, "t": 3}]
    check_errors(q, {1: records[1]}, "'a'")


@pytest.mark.parametrize(
    ("dtype", "value"),
    [(pl.Int64, 2.5), (pl.Int64, "7"), (pl.String, 5), (pl.Int64, [1, 2])],
    ids=["float-in-int", "str-in-int", "int-in-string", "list-in-int"],
)
def test_a_value_of_the_wrong_type_is_not_silently_converted(
    dtype: pl.DataType, value: Any
) -> None:
    records = [{"a": None, "t": 1}, {"a": value, "t": 2}, {"a": None, "t": 3}]
    q = run(records, timestamp="t", schema={"a": dtype, "t": pl.Int64})
    assert q.result()["t"].to_list() == [1, 3]
    check_errors(q, {1: records[1]}, "'a'")


def test_a_wrong_type_after_inference_is_not_silently_converted() -> None:
    records: list[dict[str, Any]] = [{"name": "x", "t": i} for i in range(5)]
    records.append({"name": 17, "t": 5})
    q = run(records, timestamp="t")
    assert q.result()["t"].to_list() == [0, 1, 2, 3, 4]
    check_errors(q, {5: records[5]}, "'name'")


# -- bad arguments -------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0, -1, 1.5, "3", None])
def test_bad_batch_size(bad: Any) -> None:
    with pytest.raises(sn.ConfigError, match="batch_size"):
        sn.from_records(DF, batch_size=bad)


@pytest.mark.parametrize("bad", ["text", b"bytes", {"a": 1}, 42, None])
def test_bad_data(bad: Any) -> None:
    with pytest.raises(sn.ConfigError, match="from_records"):
        sn.from_records(bad)


def test_unknown_timestamp_column() -> None:
    with pytest.raises(sn.ConfigError, match="'nope'"):
        sn.from_records(DF, timestamp="nope")
    with pytest.raises(sn.ConfigError, match="'nope'"):
        sn.from_records(DF.to_dicts(), timestamp="nope")
