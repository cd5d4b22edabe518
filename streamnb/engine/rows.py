"""Where keyed state keeps its rows: in memory (polars Series) or on disk (memory-mapped files).

:class:`~streamnb.engine.state.KeyedState` numbers its rows and reads and writes them by
number, a batch at a time. :class:`MemoryRows` keeps each column as a polars Series with spare
capacity, written in place with ``scatter``. :class:`DiskRows` (``state="disk"``) keeps them in
files under a directory, mapped into memory, so the operating system keeps the recently used
pages in RAM and writes the rest back: a state larger than memory runs instead of being killed.

On disk, a row is one fixed-size record (numpy structured dtype) holding every column: numbers,
booleans and temporal values as themselves, strings and binary values as an offset and a
length into an append-only heap file; a validity byte per column marks nulls. A row read or
written touches one page of records (and its strings' heap pages), not one page per column.
Columns of other types (lists, structs, ...) stay in memory, as :class:`MemoryRows`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl

_FIXED: dict[type[pl.DataType], str] = {
    pl.Int8: "i1",
    pl.Int16: "i2",
    pl.Int32: "i4",
    pl.Int64: "i8",
    pl.UInt8: "u1",
    pl.UInt16: "u2",
    pl.UInt32: "u4",
    pl.UInt64: "u8",
    pl.Float32: "f4",
    pl.Float64: "f8",
    pl.Boolean: "?",
    pl.Date: "i4",
    pl.Datetime: "i8",
    pl.Duration: "i8",
    pl.Time: "i8",
}
_BYTES = (pl.String, pl.Binary)
_OFFSET, _LENGTH, _VALID = "{}\0off", "{}\0len", "{}\0valid"


class MemoryRows:
    """Columns in memory with spare capacity (rows past the count unused): numbers, booleans
    and temporal values as numpy arrays of their physical values (a validity array beside
    one once it holds a null), other types as polars Series written with ``scatter``. numpy
    gathers and scatters a batch's rows 2-4x faster than polars does (measured: 28 K rows of
    a 6 M-row Int64 column, 0.12 ms against 0.5 to gather, 0.18 against 0.35 to scatter)."""

    def __init__(self) -> None:
        self.dtypes: dict[str, pl.DataType] = {}
        self.arrays: dict[str, np.ndarray] = {}  # columns of numbers, booleans, times
        self.valid: dict[str, np.ndarray] = {}  # of those, the ones that have held a null
        self.series: dict[str, pl.Series] = {}  # the other columns
        self.capacity = 0

    @property
    def names(self) -> list[str]:
        return list(self.dtypes)

    @property
    def nbytes(self) -> int:
        arrays = sum(a.nbytes for a in [*self.arrays.values(), *self.valid.values()])
        return int(arrays + sum(s.estimated_size() for s in self.series.values()))

    def create(self, columns: Sequence[pl.Series]) -> None:
        """Columns like ``columns`` (no rows yet)."""
        self.dtypes = {c.name: c.dtype for c in columns}
        self.arrays, self.valid, self.series = {}, {}, {}
        for column in columns:
            self._hold(column.name, column.clear())

    def _hold(self, name: str, column: pl.Series) -> None:
        """Keep ``column`` (of ``self.capacity`` rows) as column ``name``."""
        self.arrays.pop(name, None)
        self.valid.pop(name, None)
        self.series.pop(name, None)
        kind = _kind(column.dtype)
        if kind in ("number", "bool"):
            physical = column.to_physical().fill_null(0 if kind == "number" else False)
            self.arrays[name] = physical.to_numpy().copy()
            if column.null_count():
                self.valid[name] = column.is_not_null().to_numpy().copy()
        else:
            self.series[name] = column

    def empty(self) -> pl.DataFrame:
        return pl.DataFrame([pl.Series(n, [], dtype=d) for n, d in self.dtypes.items()])

    def reserve(self, capacity: int) -> None:
        """Room for ``capacity`` rows."""
        more = capacity - self.capacity
        for group in (self.arrays, self.valid):
            for name, array in group.items():
                grown = np.zeros(capacity, dtype=array.dtype)
                grown[: self.capacity] = array
                group[name] = grown
        for name, column in self.series.items():
            spare = pl.Series(name, [None], dtype=column.dtype).extend_constant(None, more - 1)
            self.series[name] = pl.concat([column, spare], rechunk=True)
        self.capacity = capacity

    def gather(self, ids: np.ndarray, names: Sequence[str]) -> pl.DataFrame:
        others = [n for n in names if n in self.series]
        # one gather of the Series: polars takes them in parallel
        taken = pl.DataFrame([self.series[n] for n in others])[ids] if others else None
        return pl.DataFrame(
            [
                taken.get_column(n) if n in self.series else self._column(n, ids)  # type: ignore[union-attr]
                for n in names
            ]
        )

    def _column(self, name: str, ids: np.ndarray | slice) -> pl.Series:
        """Rows ``ids`` of the numpy-held column ``name``."""
        column = pl.Series(name, self.arrays[name][ids]).cast(self.dtypes[name])
        valid = self.valid.get(name)
        if valid is None:
            return column
        valid = valid[ids]
        return column if valid.all() else column.set(pl.Series(~valid), None)

    def head(self, count: int, names: Sequence[str]) -> pl.DataFrame:
        return pl.DataFrame(
            [
                self.series[n].head(count) if n in self.series else self._column(n, slice(count))
                for n in names
            ]
        )

    def write(self, name: str, ids: np.ndarray, values: pl.Series) -> None:
        dtype = self.dtypes[name]
        if values.dtype != dtype:
            wider = _wider(dtype, values.dtype)
            if wider != dtype:  # every row rewritten, O(state)
                self._hold(name, self.head(self.capacity, [name]).to_series().cast(wider))
                self.dtypes[name] = wider
            values = values.cast(wider)
        if name in self.series:
            self._scatter(name, ids, values)
            return
        nulls = values.null_count()
        if nulls and name not in self.valid:
            self.valid[name] = np.ones(self.capacity, dtype=bool)
        if name in self.valid:
            self.valid[name][ids] = values.is_not_null().to_numpy() if nulls else True
        physical = values.to_physical()
        if nulls:
            physical = physical.fill_null(False if physical.dtype == pl.Boolean else 0)
        self.arrays[name][ids] = physical.to_numpy()

    def _scatter(self, name: str, ids: np.ndarray, values: pl.Series) -> None:
        column = self.series[name]
        try:
            column.scatter(ids, values)
        except pl.exceptions.ComputeError:  # lists, structs: rebuilt, O(state)
            index = np.arange(len(column), dtype=np.int64)
            index[ids] = len(column) + np.arange(len(ids), dtype=np.int64)
            self.series[name] = pl.concat([column, values]).gather(index).rechunk()


class DiskRows:
    """Columns in memory-mapped files under ``directory`` (a new directory of its own inside
    it, removed when these rows are dropped). See the module's docstring."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(prefix="keyed-", dir=directory))
        self._removal = weakref.finalize(self, shutil.rmtree, self.path, True)
        self.dtypes: dict[str, pl.DataType] = {}
        self.others = MemoryRows()  # columns no record can hold
        self.record = np.dtype([])
        self.capacity = 0
        self.records: np.ndarray = np.empty(0, dtype=self.record)
        self.heap_size = 0
        self._heap: np.ndarray | None = None  # mapped heap, while its size is current

    @property
    def names(self) -> list[str]:
        return list(self.dtypes)

    @property
    def nbytes(self) -> int:
        """Bytes on disk (the files), and of the columns held in memory."""
        return self.capacity * self.record.itemsize + self.heap_size + self.others.nbytes

    def create(self, columns: Sequence[pl.Series]) -> None:
        self.dtypes = {c.name: c.dtype for c in columns}
        self.others.create([c for c in columns if _kind(c.dtype) is None])
        self.record = _record(self.dtypes)
        self._map(0)

    def empty(self) -> pl.DataFrame:
        return pl.DataFrame([pl.Series(n, [], dtype=d) for n, d in self.dtypes.items()])

    def close(self) -> None:
        """Remove the files now."""
        self.records = np.empty(0, dtype=self.record)
        self._heap = None
        self._removal()

    # -- the files ----------------------------------------------------------------------------
    def _map(self, capacity: int) -> None:
        """Map the record file at ``capacity`` records (growing it, sparse, if it is shorter)."""
        path = self.path / "records"
        with open(path, "ab") as file:
            file.truncate(max(capacity * self.record.itemsize, os.path.getsize(path)))
        self.capacity = capacity
        self.records = (
            np.memmap(path, dtype=self.record, mode="r+", shape=(capacity,))
            if capacity and self.record.itemsize
            else np.zeros(capacity, dtype=self.record)
        )

    def reserve(self, capacity: int) -> None:
        self.others.reserve(capacity)
        self.records = np.empty(0, dtype=self.record)  # unmapped before it grows
        self._map(capacity)

    def _append(self, data: np.ndarray) -> int:
        """Append ``data`` (bytes) to the heap; where it starts."""
        start = self.heap_size
        with open(self.path / "heap", "ab") as file:
            file.write(data.tobytes())
        self.heap_size += len(data)
        self._heap = None
        return start

    def _heap_bytes(self) -> np.ndarray:
        if self._heap is None or len(self._heap) != self.heap_size:
            self._heap = (
                np.memmap(self.path / "heap", dtype=np.uint8, mode="r")
                if self.heap_size
                else np.empty(0, dtype=np.uint8)
            )
        return self._heap

    # -- rows ----------------------------------------------------------------------------------
    def gather(self, ids: np.ndarray, names: Sequence[str]) -> pl.DataFrame:
        records = self.records[ids]  # one read per row, every column at once
        return pl.DataFrame([self._column(n, records, ids) for n in names])

    def head(self, count: int, names: Sequence[str]) -> pl.DataFrame:
        # a view of the mapped records: each column read alone, not every record copied
        return pl.DataFrame([self._column(n, self.records[:count], slice(count)) for n in names])

    def _column(self, name: str, records: np.ndarray, ids: np.ndarray | slice) -> pl.Series:
        dtype = self.dtypes[name]
        kind = _kind(dtype)
        if kind is None:
            others = (
                self.others.head(len(records), [name])
                if isinstance(ids, slice)
                else self.others.gather(ids, [name])
            )
            return others.to_series()
        if kind == "bytes":
            values = self._strings(records[_OFFSET.format(name)], records[_LENGTH.format(name)])
            series = pl.Series(name, values).cast(dtype)
        else:
            series = pl.Series(name, records[name]).cast(dtype)
        valid = records[_VALID.format(name)]
        return series if valid.all() else series.set(pl.Series(~valid), None)

    def _strings(self, offsets: np.ndarray, lengths: np.ndarray) -> pl.Series:
        """The heap's byte strings at ``offsets`` with ``lengths``, as a Binary Series."""
        import pyarrow as pa

        lengths = lengths.astype(np.int64)
        ends = np.cumsum(lengths)
        starts = ends - lengths
        at = np.repeat(offsets.astype(np.int64) - starts, lengths) + np.arange(
            ends[-1] if len(ends) else 0, dtype=np.int64
        )
        data = self._heap_bytes()[at] if at.size else np.empty(0, dtype=np.uint8)
        bounds = np.concatenate([[0], ends]).astype(np.int64)
        array = pa.LargeBinaryArray.from_buffers(
            pa.large_binary(), len(lengths), [None, pa.py_buffer(bounds), pa.py_buffer(data)]
        )
        return pl.Series(pl.from_arrow(array))

    def write(self, name: str, ids: np.ndarray, values: pl.Series) -> None:
        dtype = self.dtypes[name]
        if values.dtype != dtype:
            wider = _wider(dtype, values.dtype)
            if wider != dtype:
                self._retype(name, wider)
            values = values.cast(wider)
        kind = _kind(self.dtypes[name])
        if kind is None:
            self.others.write(name, ids, values)
            return
        valid = values.is_not_null().to_numpy()
        if kind == "bytes":
            binary = values.cast(pl.Binary).fill_null(b"").to_arrow()
            buffers = binary.buffers()
            bounds = np.frombuffer(buffers[1], dtype=np.int64)[
                binary.offset : binary.offset + len(binary) + 1
            ]
            data = np.frombuffer(buffers[2], dtype=np.uint8)[bounds[0] : bounds[-1]]
            start = self._append(data)
            self.records[_OFFSET.format(name)][ids] = start + bounds[:-1] - bounds[0]
            self.records[_LENGTH.format(name)][ids] = np.diff(bounds)
        else:
            physical = values.to_physical().fill_null(0 if kind == "number" else False)
            self.records[name][ids] = physical.to_numpy()
        self.records[_VALID.format(name)][ids] = valid

    def _retype(self, name: str, dtype: pl.DataType) -> None:
        """Column ``name`` becomes ``dtype`` (a wider one): every row rewritten, O(state)."""
        count = self.capacity
        old = self.head(count, self.names)
        self.records = np.empty(0, dtype=self.record)
        (self.path / "records").unlink()
        self.dtypes[name] = dtype
        self.others.create([c for c in old.get_columns() if _kind(self.dtypes[c.name]) is None])
        self.others.capacity = 0
        self.record = _record(self.dtypes)
        self._map(0)
        self.reserve(count)
        ids = np.arange(count, dtype=np.int64)
        for column in old.get_columns():
            self.write(column.name, ids, column.cast(self.dtypes[column.name]))


def rows_in(directory: Path | None) -> MemoryRows | DiskRows:
    """Rows in memory (``None``) or in files under ``directory``."""
    return MemoryRows() if directory is None else DiskRows(directory)


def _kind(dtype: pl.DataType) -> str | None:
    """How a record holds a value of ``dtype``: "number", "bool", "bytes", or not (None)."""
    if isinstance(dtype, _BYTES):
        return "bytes"
    if dtype.base_type() in _FIXED:
        return "bool" if dtype == pl.Boolean else "number"
    return None


def _record(dtypes: dict[str, pl.DataType]) -> np.dtype:
    """The numpy record of a row holding columns of ``dtypes``."""
    fields: list[tuple[str, str]] = []
    for name, dtype in dtypes.items():
        kind = _kind(dtype)
        if kind == "bytes":
            fields += [(_OFFSET.format(name), "u8"), (_LENGTH.format(name), "u4")]
        elif kind is not None:
            fields.append((name, _FIXED[dtype.base_type()]))
        if kind is not None:
            fields.append((_VALID.format(name), "?"))
    return np.dtype(fields)


def _wider(a: pl.DataType, b: pl.DataType) -> pl.DataType:
    """The type both ``a`` and ``b`` values fit (polars' relaxed concat)."""
    frames = [pl.DataFrame(schema={"x": a}), pl.DataFrame(schema={"x": b})]
    return pl.concat(frames, how="vertical_relaxed").schema["x"]
