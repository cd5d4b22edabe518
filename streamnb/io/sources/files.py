"""``sn.from_files``: JSON-lines, CSV or Parquet files, replayed in file-name order.

Files are read one at a time and decoded in bulk by polars alone (no pyarrow: a plain
``pip install streamnb`` reads all three formats).
The schema comes from the first file; later files are conformed to it (extra columns
dropped, missing ones null). A record that cannot be decoded never stops the read: it goes
to ``Query.errors()`` with its position in the whole source and ``file:line`` in the reason.
Only a chunk whose bulk decode fails is examined record by record, so good data never pays.
"""

from __future__ import annotations

import csv
import glob
import json
import os
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import polars as pl

from streamnb.columns import LINE, POSITION
from streamnb.engine.core import Context, error_from_python, error_rows
from streamnb.engine.eventtime import split_valid
from streamnb.engine.source import PartOwner, Reader, Source, refuse_owner
from streamnb.exceptions import ConfigError, SourceError
from streamnb.io.codecs.json import why_not
from streamnb.io.sources.records import check_timestamp
from streamnb.types import FileFormat

FORMATS = {"json": "json", "ndjson": "json", "jsonl": "json", "csv": "csv", "parquet": "parquet"}
"""Accepted ``format=`` values and the format each one means."""
EXTENSIONS = {
    "json": (".json", ".jsonl", ".ndjson"),
    "csv": (".csv",),
    "parquet": (".parquet", ".pq"),
}
"""The files of a directory that are read, by format."""
_INFER_LINES = 1000
_NAME = "files"
_BOM = b"\xef\xbb\xbf"
_PARQUET_ROWS = 1 << 18
"""About how many rows of a Parquet file are decoded per read (whole batches, at least one),
then handed out in batches of ``batch_size``: a read of rows ``a:b`` decodes its row group up
to ``b``, so reading a large row group in small slices would decode it again and again."""
_JSON_SPACE = b" \t\r\n"


def find_files(path: str | Path, fmt: str) -> list[str]:
    """The files named by a path, a directory (its ``fmt`` files) or a glob, sorted."""
    text = os.path.expanduser(os.fspath(path))
    if any(c in text for c in "*?["):
        found = [p for p in glob.glob(text, recursive=True) if os.path.isfile(p)]
    elif os.path.isdir(text):
        found = [
            str(p)
            for p in Path(text).iterdir()
            if p.is_file() and p.name.lower().endswith(EXTENSIONS[fmt])
        ]
    else:
        found = [text] if os.path.isfile(text) else []
    if not found:
        raise ConfigError(f"from_files(path={os.fspath(path)!r}): no {fmt} file matches {text!r}")
    return sorted(found)


def _json_schema(files: list[str]) -> pl.Schema:
    """Inferred from the first valid lines of the first file that has any."""
    for path in files:
        valid: list[bytes] = []
        with open(path, "rb") as f:
            for line in f:
                try:
                    if isinstance(json.loads(line.removeprefix(_BOM)), dict):
                        valid.append(line.removeprefix(_BOM))
                except ValueError:
                    continue
                if len(valid) >= _INFER_LINES:
                    break
        if valid:
            try:
                return pl.read_ndjson(b"".join(valid), infer_schema_length=None).schema
            except pl.exceptions.PolarsError:  # values of clashing types: trust the first line
                return pl.read_ndjson(valid[0]).schema
    return pl.Schema()


def _scan_parquet(path: str) -> pl.LazyFrame:
    """One Parquet file, its name taken literally (``find_files`` already expanded globs)."""
    return pl.scan_parquet(path, glob=False, hive_partitioning=False)


def _learn_schema(files: list[str], fmt: str) -> pl.Schema:
    try:
        if fmt == "parquet":
            schema = _scan_parquet(files[0]).collect_schema()
        elif fmt == "csv":
            schema = pl.scan_csv(
                files[0], try_parse_dates=True, infer_schema_length=_INFER_LINES
            ).collect_schema()
        else:
            schema = _json_schema(files)
    except (OSError, pl.exceptions.PolarsError) as exc:
        raise SourceError(f"cannot read {files[0]!r}: {str(exc).splitlines()[0]}") from exc
    # a column that is null in every sampled record: keep later values as text
    return pl.Schema({k: pl.String if v == pl.Null else v for k, v in schema.items()})


def _convert(col: pl.Expr, have: pl.DataType, want: pl.DataType) -> pl.Expr:
    """``col`` (of type ``have``) as ``want``; null where a value does not convert."""
    if have == pl.String:
        if isinstance(want, pl.Datetime):
            return col.str.to_datetime(
                time_unit=want.time_unit or "us", time_zone=want.time_zone, strict=False
            )
        if want == pl.Date:
            return col.str.to_date(strict=False)
        if want == pl.Time:
            return col.str.to_time(strict=False)
        if want == pl.Boolean:
            return col.str.to_lowercase().replace_strict(
                {"true": True, "false": False}, default=None, return_dtype=pl.Boolean
            )
    return col.cast(want, strict=False)


def _where(prefix: str, number: pl.Expr) -> pl.Expr:
    return pl.concat_str(pl.lit(prefix), number.cast(pl.String))


def conform(df: pl.DataFrame, schema: pl.Schema, where: pl.Expr, ctx: Context) -> pl.DataFrame:
    """Give ``df`` (with ``POSITION``) the columns and types of ``schema``.

    Extra columns are dropped and missing ones are null. A row with a non-null value that
    does not convert goes to the errors (the reason names the column and starts with
    ``where``, evaluated on the row) and is left out.
    """
    exprs: list[pl.Expr] = []
    fails: list[pl.Expr] = []
    for name, dtype in schema.items():
        if name not in df.columns:
            exprs.append(pl.lit(None, dtype).alias(name))
            continue
        have = df.schema[name]
        if have == dtype:
            exprs.append(pl.col(name))
            continue
        new = _convert(pl.col(name), have, dtype)
        exprs.append(new.alias(name))
        what = (
            pl.concat_str(
                pl.lit(f"column {name!r}: cannot parse '"), pl.col(name), pl.lit(f"' as {dtype}")
            )
            if have == pl.String
            else pl.lit(f"column {name!r}: {have} value not {dtype}")
        )
        fails.append(pl.when(pl.col(name).is_not_null() & new.is_null()).then(what))
    out = df.select(*exprs, POSITION)
    if not fails:
        return out
    reasons = df.select(pl.concat_str(where, pl.lit(": "), pl.coalesce(fails))).to_series()
    bad = reasons.is_not_null()
    if not bad.any():
        return out
    rows = df.filter(bad).drop(POSITION, LINE, strict=False)
    errors = error_rows(rows, "", source=_NAME, positions=df.get_column(POSITION).filter(bad))
    ctx.reject(errors.with_columns(reasons.filter(bad).alias("reason")))
    return out.filter(~bad)


class _JsonCursor:
    """The unread lines of one JSON-lines file."""

    def __init__(self, path: str, start: int, schema: pl.Schema, ctx: Context) -> None:
        self.path, self.end, self.schema, self.ctx = path, start, schema, ctx  # end: so far
        self.lines = Path(path).read_bytes().removeprefix(_BOM).split(b"\n")
        if self.lines[-1] == b"":
            self.lines.pop()
        self.offset = 0

    @property
    def exhausted(self) -> bool:
        return self.offset >= len(self.lines)

    def remaining(self) -> int:
        return len(self.lines) - self.offset

    def take(self, limit: int) -> pl.DataFrame:
        lo, self.offset = self.offset, min(self.offset + limit, len(self.lines))
        frames, count = self._decode(lo, self.offset, self.end)
        self.end += count
        if not frames:
            return self.schema.to_frame().with_columns(pl.lit(None, pl.Int64).alias(POSITION))
        return pl.concat(frames) if len(frames) > 1 else frames[0]

    def close(self) -> None:
        self.lines = []

    def _decode(self, lo: int, hi: int, first: int) -> tuple[list[pl.DataFrame], int]:
        """Frames of lines ``lo:hi`` (bisecting when they do not decode) and their record count."""
        try:
            df = pl.read_ndjson(b"\n".join(self.lines[lo:hi]), schema=self.schema)
        except Exception as exc:  # polars raises several types for lines that do not fit
            if hi - lo > 1:
                mid = (lo + hi) // 2
                left, n = self._decode(lo, mid, first)
                right, m = self._decode(mid, hi, first + n)
                return left + right, n + m
            line = self.lines[lo]
            if not line.strip(_JSON_SPACE):
                return [], 0
            reason = f"{self.path}:{lo + 1}: {self._why(line, exc)}"
            self.ctx.reject(error_from_python(_NAME, first, reason, line.rstrip(b"\r")))
            return [], 1
        positions = pl.int_range(first, first + df.height, dtype=pl.Int64, eager=True)
        return [df.with_columns(positions.alias(POSITION))], df.height

    def _why(self, line: bytes, exc: Exception) -> str:
        return why_not(line, self.schema, exc)


class _FrameCursor:
    """The unread rows of one CSV or Parquet file, as a sequence of decoded frames."""

    def __init__(self, frames: Iterator[pl.DataFrame], rows: int, end: int) -> None:
        self.frames, self.rows, self.end = frames, rows, end  # end: position after the file
        self.frame: pl.DataFrame | None = None
        self.offset = self.seen = 0
        self._advance()

    def _advance(self) -> None:
        while self.frame is None or self.offset >= self.frame.height:
            self.frame, self.offset = next(self.frames, None), 0
            if self.frame is None:
                return
            self.seen += self.frame.height

    @property
    def exhausted(self) -> bool:
        return self.frame is None

    def remaining(self) -> int:
        ahead = self.frame.height - self.offset if self.frame is not None else 0
        return max(self.rows - self.seen, 0) + ahead

    def take(self, limit: int) -> pl.DataFrame:
        assert self.frame is not None
        df = self.frame.slice(self.offset, limit)
        self.offset += df.height
        self._advance()
        return df

    def close(self) -> None:
        close = getattr(self.frames, "close", None)
        if close is not None:
            close()


class FilesSource(Source):
    """JSON-lines, CSV or Parquet files (a path, a directory or a glob) in file-name order."""

    def __init__(
        self,
        path: str | Path,
        *,
        format: FileFormat = "json",
        timestamp: str | None = None,
        batch_size: int = 50_000,
    ) -> None:
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ConfigError(f"batch_size={batch_size!r} must be a positive integer")
        fmt = FORMATS.get(format.lower()) if isinstance(format, str) else None
        if fmt is None:
            raise ConfigError(
                f"format={format!r} is not supported; expected one of "
                f"{', '.join(repr(f) for f in FORMATS)}"
            )
        self.name = "files"
        self.bounded = True
        self.format = fmt
        self.batch_size = batch_size
        self.files = find_files(path, fmt)
        self.schema: pl.Schema = _learn_schema(self.files, fmt)
        first = f"the first file {self.files[0]!r}"
        self.event_time = check_timestamp(timestamp, self.schema, first)

    def open(self, ctx: Context, *, owner: PartOwner | None = None) -> Reader:
        refuse_owner(self, owner)
        return _FilesReader(self, ctx)


class _FilesReader(Reader):
    def __init__(self, source: FilesSource, ctx: Context) -> None:
        self.source, self.ctx, self.schema = source, ctx, source.schema
        self.pending = deque(source.files)
        self.cursor: _JsonCursor | _FrameCursor | None = None
        self.path = ""
        self._sizes: dict[str, int] = {}

    def read(self, max_records: int, timeout: float) -> pl.DataFrame | None:
        limit = min(max_records, self.source.batch_size)
        try:
            while self.cursor is None or self.cursor.exhausted:
                if not self.pending:
                    self.done = True
                    return None
                start = self.cursor.end if self.cursor is not None else 0
                self.close()
                self.path = self.pending.popleft()
                self.cursor = self._open(self.path, start)
            df = self.cursor.take(limit)
        except (OSError, pl.exceptions.PolarsError) as exc:
            raise SourceError(f"cannot read {self.path!r}: {str(exc).splitlines()[0]}") from exc
        if self.cursor.exhausted and not self.pending:
            self.done = True
        positions = df.get_column(POSITION)
        df = df.drop(POSITION)
        et = self.source.event_time
        if et is not None:
            df, errors = split_valid(df, et.column, source=_NAME, positions=positions)
            if errors is not None:
                self.ctx.reject(errors.with_columns(pl.col("reason") + f" ({self.path})"))
        return df

    def _open(self, path: str, start: int) -> _JsonCursor | _FrameCursor:
        if self.source.format == "json":
            return _JsonCursor(path, start, self.schema, self.ctx)
        if self.source.format == "csv":
            df, end = self._read_csv(path, start)
            return _FrameCursor(iter([df]), df.height, end)
        rows = self._rows(path)
        return _FrameCursor(self._parquet(path, start), rows, start + rows)

    def _read_csv(self, path: str, start: int) -> tuple[pl.DataFrame, int]:
        """The file's records (with ``POSITION``; bad rows went to the errors), the end."""
        with open(path, newline="", encoding="utf-8-sig", errors="replace") as f:
            header = next(csv.reader(f), [])
        if not header:
            empty = self.schema.to_frame().with_columns(pl.lit(None, pl.Int64).alias(POSITION))
            return empty, start
        columns = [c for c in header if c in self.schema]
        columns += [header[-1]] if header[-1] not in self.schema else []
        try:
            df = pl.read_csv(
                path,
                columns=columns,
                schema_overrides={c: self.schema.get(c, pl.String) for c in columns},
            )
        except pl.exceptions.PolarsError:
            return self._read_csv_exactly(path, start)
        # polars reads a short row (or a blank line) as trailing nulls: check such files exactly
        if df.get_column(header[-1]).null_count():
            return self._read_csv_exactly(path, start)
        df = df.with_columns(pl.int_range(start, start + df.height, dtype=pl.Int64).alias(POSITION))
        where = _where(f"{path} row ", pl.col(POSITION) - start)
        return conform(df, self.schema, where, self.ctx), start + df.height

    def _read_csv_exactly(self, path: str, start: int) -> tuple[pl.DataFrame, int]:
        """Row by row (rare): rows with the wrong number of fields or bad values are errors."""
        rows: list[list[str]] = []
        lines: list[int] = []
        positions: list[int] = []
        position = start
        with open(path, newline="", encoding="utf-8-sig", errors="replace") as f:
            reader = csv.reader(f)
            header = next(reader, [])
            end = reader.line_num
            for fields in reader:
                line, end = end + 1, reader.line_num
                if not fields:
                    continue  # blank line
                if len(fields) == len(header):
                    rows.append(fields)
                    lines.append(line)
                    positions.append(position)
                else:
                    reason = f"{path}:{line}: expected {len(header)} fields, got {len(fields)}"
                    self.ctx.reject(error_from_python(_NAME, position, reason, fields))
                position += 1
        df = pl.DataFrame(rows, schema=dict.fromkeys(header, pl.String), orient="row")
        df = df.with_columns(pl.all().replace("", None)).with_columns(
            pl.Series(POSITION, positions, dtype=pl.Int64), pl.Series(LINE, lines, dtype=pl.Int64)
        )
        where = _where(f"{path}:", pl.col(LINE))
        return conform(df, self.schema, where, self.ctx), position

    def _parquet(self, path: str, start: int) -> Iterator[pl.DataFrame]:
        """The file's rows in batches of ``batch_size`` (with ``POSITION``), conformed."""
        scan = _scan_parquet(path)
        names = scan.collect_schema().names()
        columns = [c for c in names if c in self.schema] or names[:1]  # one keeps the row count
        scan = scan.select(columns)
        where = _where(f"{path} row ", pl.col(POSITION) - start)
        size = self.source.batch_size
        step = size * max(1, _PARQUET_ROWS // size)  # whole batches: only the last is short
        offset, rows = 0, self._rows(path)
        while offset < rows:
            chunk = scan.slice(offset, step).collect()
            if not chunk.height:
                return
            first = start + offset
            chunk = chunk.with_columns(
                pl.int_range(first, first + chunk.height, dtype=pl.Int64).alias(POSITION)
            )
            offset += chunk.height
            for lo in range(0, chunk.height, size):
                yield conform(chunk.slice(lo, size), self.schema, where, self.ctx)

    def _rows(self, path: str) -> int:
        """The number of rows of a Parquet file, from its footer."""
        if path not in self._sizes:
            self._sizes[path] = _scan_parquet(path).select(pl.len()).collect().item()
        return self._sizes[path]

    def lag(self) -> int | None:
        ahead = self.cursor.remaining() if self.cursor is not None else 0
        if self.pending and self.source.format != "parquet":
            return None
        try:
            return ahead + sum(self._rows(p) for p in self.pending)
        except (OSError, pl.exceptions.PolarsError):
            return None

    def close(self) -> None:
        if self.cursor is not None:
            self.cursor.close()
