"""``sn.from_files``: JSON lines, CSV and Parquet round trips, order, errors, schema drift."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

import streamnb as sn
from streamnb.engine.core import Context
from streamnb.io.sources.files import FilesSource

T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
EXT = {"json": "jsonl", "csv": "csv", "parquet": "parquet"}


def sample(n: int, first: int = 0) -> pl.DataFrame:
    """Records with an int key, a string, a float and an increasing UTC event time."""
    return pl.DataFrame(
        {
            "k": list(range(first, first + n)),
            "s": [f"v{i % 7}" for i in range(first, first + n)],
            "x": [i / 4 for i in range(first, first + n)],
            "t": [T0 + timedelta(milliseconds=i * 1700) for i in range(first, first + n)],
        },
        schema={"k": pl.Int64, "s": pl.String, "x": pl.Float64, "t": pl.Datetime("us", "UTC")},
    )


def write(df: pl.DataFrame, path: Path, fmt: str) -> None:
    if fmt == "json":
        df.with_columns(pl.col("t").dt.epoch("ms")).write_ndjson(path)
    elif fmt == "csv":
        df.write_csv(path)
    else:
        df.write_parquet(path)


def expected(df: pl.DataFrame, fmt: str) -> pl.DataFrame:
    """What ``from_files`` yields for ``df`` written as ``fmt`` (JSON holds epoch ms)."""
    return df.with_columns(pl.col("t").dt.epoch("ms")) if fmt == "json" else df


def split(tmp_path: Path, fmt: str, sizes: list[int]) -> pl.DataFrame:
    """Write ``sample`` in parts whose names sort differently as text and as numbers."""
    parts, first = [], 0
    for i, n in enumerate(sizes):
        part = sample(n, first)
        write(part, tmp_path / f"part-{i * 5}.{EXT[fmt]}", fmt)  # part-10 sorts before part-5
        parts.append((f"part-{i * 5}", part))
        first += n
    return pl.concat([p for _, p in sorted(parts, key=lambda x: x[0])])


@pytest.mark.parametrize("fmt", ["json", "csv", "parquet"])
@pytest.mark.parametrize("batch_size", [1, 3, 100_000])
def test_round_trip_in_file_name_order(tmp_path: Path, fmt: str, batch_size: int) -> None:
    data = split(tmp_path, fmt, [5, 0, 7, 3])
    glob = str(tmp_path / f"*.{EXT[fmt]}")
    got = sn.from_files(glob, format=fmt, batch_size=batch_size).collect()
    assert_frame_equal(got, expected(data, fmt))
    (tmp_path / "notes.txt").write_text("not data\n")
    from_dir = sn.from_files(tmp_path, format=fmt, batch_size=batch_size).collect()
    assert_frame_equal(from_dir, expected(data, fmt))


@pytest.mark.parametrize("fmt", ["json", "csv", "parquet"])
def test_tumbling_window_matches_polars(tmp_path: Path, fmt: str) -> None:
    data = sample(100)
    for name, first, n in [("a", 0, 40), ("b", 40, 25), ("c", 65, 35)]:
        write(data.slice(first, n), tmp_path / f"{name}.{EXT[fmt]}", fmt)
    stream = sn.from_files(tmp_path, format=fmt, timestamp="t", batch_size=16)
    got = stream.window(sn.Tumbling("10s")).agg(pl.len()).collect().sort("window_start")
    want = (
        expected(data, fmt)
        .group_by(
            window_start=pl.col("t") // 10_000 * 10_000
            if fmt == "json"
            else pl.col("t").dt.truncate("10s")
        )
        .agg(pl.len())
        .sort("window_start")
    )
    assert_frame_equal(got.select("window_start", "len"), want)


def test_format_aliases_and_home_expansion(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = sample(6)
    write(data, tmp_path / "a.ndjson", "json")
    monkeypatch.setenv("HOME", str(tmp_path))
    for fmt in ("json", "ndjson", "jsonl", "JSON"):
        got = sn.from_files("~/a.ndjson", format=fmt).collect()
        assert_frame_equal(got, expected(data, "json"))


def test_parquet_utc_timestamp(tmp_path: Path) -> None:
    data = sample(30)
    data.write_parquet(tmp_path / "a.parquet")
    stream = sn.from_files(tmp_path / "a.parquet", format="parquet", timestamp="t")
    assert stream.schema == data.schema
    assert stream.event_time == "t"
    assert_frame_equal(stream.collect(), data)


def test_csv_parses_dates_polars_infers(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("t,k\n2024-01-01T00:00:05Z,1\n2024-01-01T00:00:15Z,2\n")
    got = sn.from_files(tmp_path / "a.csv", format="csv", timestamp="t").collect()
    assert got.schema["t"] == pl.Datetime("us", "UTC")
    assert got["t"].to_list() == [T0 + timedelta(seconds=5), T0 + timedelta(seconds=15)]


def json_with_bad_lines(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text(
        '{"k": 1, "s": "a", "t": 1000}\n{"k": 2, "s": "b", "t": 2000}\n'
    )
    (tmp_path / "b.jsonl").write_text(
        '{"k": 3, "s": "c", "t": 3000}\n'
        "\n"  # blank lines are skipped silently
        "{not json\n"
        '{"k": "four", "s": "d", "t": 4000}\n'
        '{"k": 5, "s": "e"}\n'
        "[6]\n"
        '{"k": 7, "s": "g", "t": 7000, "extra": true}\r\n'
    )


@pytest.mark.parametrize("batch_size", [1, 3, 1000])
def test_malformed_json_lines_become_errors(tmp_path: Path, batch_size: int) -> None:
    json_with_bad_lines(tmp_path)
    q = sn.from_files(tmp_path, timestamp="t", batch_size=batch_size).start()
    assert q.wait(5)
    assert q.result()["k"].to_list() == [1, 2, 3, 7]
    assert q.status()["errors"] == 4
    errors = q.errors().sort("position")
    assert errors["source"].to_list() == ["files"] * 4
    assert errors["position"].to_list() == [3, 4, 5, 6]
    reasons = errors["reason"].to_list()
    b = str(tmp_path / "b.jsonl")
    assert reasons[0] == f"{b}:3: not valid JSON"
    assert reasons[1].startswith(f"{b}:4: column 'k'")
    assert "event time" in reasons[2] and "'t'" in reasons[2] and b in reasons[2]
    assert reasons[3].startswith(f"{b}:6: not a JSON object")
    assert errors["record"][0] == "{not json"
    assert '"four"' in errors["record"][1]


def test_errors_fail_policy_raises(tmp_path: Path) -> None:
    json_with_bad_lines(tmp_path)
    with pytest.raises(sn.StreamnbError, match="not valid JSON"):
        sn.from_files(tmp_path, timestamp="t").collect(errors="fail")


def test_csv_bad_rows_become_errors(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("k,s,t\n1,a,2024-01-01 00:00:01\n")
    (tmp_path / "b.csv").write_text(
        "k,s,t\n"
        "2,b,2024-01-01 00:00:02\n"
        "3,c\n"  # too few fields
        "4,d,2024-01-01 00:00:04,extra\n"  # too many
        "five,e,2024-01-01 00:00:05\n"  # not an integer
        "\n"
        '6,"f, quoted",2024-01-01 00:00:06\n'
        "7,g,\n"  # null event time
    )
    q = sn.from_files(tmp_path / "*.csv", format="csv", timestamp="t", batch_size=2).start()
    assert q.wait(5)
    got = q.result()
    assert got["k"].to_list() == [1, 2, 6]
    assert got["s"].to_list() == ["a", "b", "f, quoted"]
    errors = q.errors().sort("position")
    assert errors["position"].to_list() == [2, 3, 4, 6]
    b = str(tmp_path / "b.csv")
    reasons = errors["reason"].to_list()
    assert reasons[0] == f"{b}:3: expected 3 fields, got 2"
    assert reasons[1] == f"{b}:4: expected 3 fields, got 4"
    assert reasons[2] == f"{b}:5: column 'k': cannot parse 'five' as Int64"
    assert "event time" in reasons[3]


def test_schema_drift(tmp_path: Path) -> None:
    first = pl.DataFrame({"k": [1, 2], "s": ["a", "b"]})
    later = pl.DataFrame({"new": [9], "k": [3]})  # extra column, missing "s", other order
    want = pl.DataFrame({"k": [1, 2, 3], "s": ["a", "b", None]})
    for fmt in ("json", "csv", "parquet"):
        write_plain = {
            "json": pl.DataFrame.write_ndjson,
            "csv": pl.DataFrame.write_csv,
            "parquet": pl.DataFrame.write_parquet,
        }[fmt]
        folder = tmp_path / fmt
        folder.mkdir()
        write_plain(first, folder / f"1.{EXT[fmt]}")
        write_plain(later, folder / f"2.{EXT[fmt]}")
        q = sn.from_files(folder, format=fmt).start()
        assert q.wait(5)
        assert_frame_equal(q.result(), want)
        assert q.status()["errors"] == 0


def test_parquet_type_drift_reports_values_that_do_not_fit(tmp_path: Path) -> None:
    pl.DataFrame({"k": [1, 2]}).write_parquet(tmp_path / "1.parquet")
    pl.DataFrame({"k": ["3", "4", "5", "x"]}).write_parquet(tmp_path / "2.parquet")
    q = sn.from_files(tmp_path, format="parquet", batch_size=3).start()
    assert q.wait(5)
    assert q.result()["k"].to_list() == [1, 2, 3, 4, 5]
    errors = q.errors()
    assert errors["position"].to_list() == [5]
    assert "column 'k'" in errors["reason"][0] and "2.parquet row 3" in errors["reason"][0]


def test_definition_errors_name_the_problem(tmp_path: Path) -> None:
    write(sample(3), tmp_path / "a.jsonl", "json")
    (tmp_path / "iso.jsonl").write_text('{"when": "2024-01-01T00:00:00Z"}\n')
    with pytest.raises(sn.ConfigError, match=r"format='xml'.*'parquet'"):
        sn.from_files(tmp_path, format="xml")
    with pytest.raises(sn.ConfigError, match=r"nothing-\*\.csv"):
        sn.from_files(tmp_path / "nothing-*.csv", format="csv")
    with pytest.raises(sn.ConfigError, match="no csv file"):
        sn.from_files(tmp_path, format="csv")  # a directory without CSV files
    with pytest.raises(sn.ConfigError, match="'missing'"):
        sn.from_files(tmp_path / "a.jsonl", timestamp="missing")
    with pytest.raises(sn.ConfigError, match="'when'"):
        sn.from_files(tmp_path / "iso.jsonl", timestamp="when")  # an ISO string: convert it first
    with pytest.raises(sn.ConfigError, match="batch_size"):
        sn.from_files(tmp_path / "a.jsonl", batch_size=0)


def test_reads_one_file_at_a_time_and_reports_lag(tmp_path: Path) -> None:
    for i in range(3):
        sample(10, i * 10).write_parquet(tmp_path / f"{i}.parquet")
    reader = FilesSource(tmp_path, format="parquet", batch_size=4).open(Context())
    assert reader.lag() == 30
    sizes = []
    while not reader.done:
        df = reader.read(100, 0.0)
        assert df is not None
        sizes.append(df.height)
    assert sizes == [4, 4, 2] * 3
    assert reader.lag() == 0
    assert reader.read(100, 0.0) is None
    write(sample(6), tmp_path / "a.jsonl", "json")
    write(sample(6), tmp_path / "b.jsonl", "json")
    reader = FilesSource(tmp_path, batch_size=4).open(Context())
    assert reader.lag() is None  # lines of unread JSON files are unknown
    for _ in range(3):
        reader.read(100, 0.0)
    assert reader.lag() == 2 and not reader.done
