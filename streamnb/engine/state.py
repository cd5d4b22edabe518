"""Keyed state whose per-batch cost follows the batch, not the state.

A :class:`KeyedState` holds one row per key, in columns (``polars`` Series with spare
capacity) indexed by a row number, and an open-addressing hash table (linear probing, in
numpy) from a 64-bit hash of the keys to the row. Everything is vectorised over a batch:

* **lookup**: the batch's keys probe the table in rounds; each round resolves every key whose
  probe hit its row or an empty slot, and the rest move one slot on (a handful of rounds at
  the load factor kept, each smaller than the one before);
* **update**: the found rows are written in place (``Series.scatter`` on columns the state
  owns alone);
* **insert**: new keys get the next row numbers; in each round, of the new keys that probe
  the same empty slot, the first takes it and the others move on.

A batch so costs O(batch) whatever the number of keys held; only growth (doubling the table
or the columns) touches the whole state, amortised O(1) per key. Deleted keys (a table's
tombstones) leave their row dead until it is reused by the key or compacted away.

Rows are found by hash, then checked against the keys themselves. Two different keys with
one 64-bit hash (about one in 10^6 at 5 M keys) would make a probe ambiguous: from the first
one found, the state finds rows by a join of the batch's keys with all keys held instead
(O(state) per batch, exact), so results never depend on the hash.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

KEYED_FROM = 4
KEYED_MIN = 50_000


def worth_keying(held: int, batch: int) -> bool:
    """Whether a state of ``held`` keys is worth looking up key by key for a batch of
    ``batch`` (keys or records): beyond :data:`KEYED_FROM` times the batch and
    :data:`KEYED_MIN`. Below, one polars operation over the whole state is faster (measured
    with ``bench/keyed_state.py``: the crossover of a running ``group_by`` is near 4×)."""
    return held > max(KEYED_MIN, KEYED_FROM * batch)


_SEED = 0x5EED
_MIX = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing: the slot is the top bits
_MAX_LOAD = 0.5
_EMPTY = np.uint64(2**64 - 1)  # a free slot; a taken one holds (hash >> 32) << 32 | row
_LOW = np.uint64(2**32 - 1)
_HIGH = np.uint64(32)


def key_hashes(frame: pl.DataFrame, keys: Sequence[str]) -> np.ndarray:
    """The 64-bit hash of each row's keys (nulls included)."""
    return frame.select(pl.struct(list(keys)).hash(seed=_SEED)).to_series().to_numpy()


@dataclass
class Found:
    """The keys of a batch that the state holds: ``index`` (rows of the batch's key frame),
    their state ``rows`` (aligned with ``index``) and row numbers."""

    index: np.ndarray
    rows: pl.DataFrame
    row_ids: np.ndarray


class KeyedState:
    """Rows with unique ``keys`` (see the module's docstring)."""

    def __init__(self, keys: Sequence[str]) -> None:
        self.keys = list(keys)
        self.count = 0
        self.columns: dict[str, pl.Series] = {}  # capacity >= count; rows past count unused
        self.hashes = np.empty(0, dtype=np.uint64)  # per row
        self.slots = np.full(16, _EMPTY, dtype=np.uint64)  # hash's top half and row per slot
        self.shift = np.uint64(64 - 4)
        self.alive = np.empty(0, dtype=bool)  # per row: False once deleted
        self.touched = np.empty(0, dtype=bool)  # per row: written or deleted since settle()
        self.dead = 0
        self.gone: list[pl.DataFrame] = []  # keys deleted since settle(), rows compacted away
        self.by_join = False  # after a hash collision: rows found by a join of the keys

    def __len__(self) -> int:
        return self.count - self.dead

    @property
    def nbytes(self) -> int:
        """Memory held: the columns (with their spare capacity), the hashes and the table."""
        columns = int(sum(c.estimated_size() for c in self.columns.values()))
        return columns + self.hashes.nbytes + self.alive.nbytes + self.slots.nbytes

    # -- reading ----------------------------------------------------------------------------------
    def lookup(self, keys: pl.DataFrame, hashes: np.ndarray) -> Found:
        """The rows of ``keys`` (a frame of unique keys, ``hashes`` theirs) held here."""
        if not self.by_join:
            rows = self._probe(hashes)
            index = np.flatnonzero(rows >= 0)
            ids = rows[index]
            found = self._gather(ids)
            if self._same(keys, index, found):
                return self._live(index, ids, found)
            self.by_join = True
        index, ids = self._joined(keys)
        return self._live(index, ids, self._gather(ids))

    def _live(self, index: np.ndarray, ids: np.ndarray, rows: pl.DataFrame) -> Found:
        if self.dead:
            live = self.alive[ids]
            index, ids, rows = index[live], ids[live], rows.filter(pl.Series(live))
        return Found(index, rows, ids)

    def _find(self, keys: pl.DataFrame, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Which of ``keys`` have a row (deleted ones too), and their row numbers."""
        if not self.by_join:
            rows = self._probe(hashes)
            index = np.flatnonzero(rows >= 0)
            ids = rows[index]
            if not index.size or self._same(keys, index, self._gather(ids, self.keys)):
                return index, ids
            self.by_join = True
        return self._joined(keys)

    def _joined(self, keys: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`_find` by a join of ``keys`` with every key held (exact, O(state))."""
        if not self.count or not keys.height:
            empty = np.empty(0, dtype=np.int64)
            return empty, empty
        held = pl.DataFrame([self.columns[k].head(self.count) for k in self.keys])
        pairs = (
            keys.select(self.keys)
            .with_row_index("index")
            .join(held.with_row_index("row"), on=self.keys, how="inner", nulls_equal=True)
        )
        return (
            pairs.get_column("index").to_numpy().astype(np.int64),
            pairs.get_column("row").to_numpy().astype(np.int64),
        )

    def _same(self, keys: pl.DataFrame, index: np.ndarray, found: pl.DataFrame) -> bool:
        """Whether the rows ``found`` by hash hold the keys looked up (not a collision)."""
        for name in self.keys if index.size else ():
            if not found.get_column(name).eq_missing(keys.get_column(name).gather(index)).all():
                return False
        return True

    def _probe(self, hashes: np.ndarray) -> np.ndarray:
        """Per hash, its row number, or -1."""
        out = np.full(len(hashes), -1, dtype=np.int64)
        if not self.count or not len(hashes):
            return out
        mask = np.int64(len(self.slots) - 1)
        position = (hashes * _MIX >> self.shift).astype(np.int64)
        high = hashes >> _HIGH
        pending = np.arange(len(hashes))
        while pending.size:
            entry = self.slots[position]
            taken = entry != _EMPTY
            same = taken & (entry >> _HIGH == high[pending])  # then the whole hash
            rows = (entry[same] & _LOW).astype(np.int64)
            same[same] = self.hashes[rows] == hashes[pending[same]]
            out[pending[same]] = (entry[same] & _LOW).astype(np.int64)
            going = taken & ~same
            pending, position = pending[going], (position[going] + 1) & mask
        return out

    def _gather(self, ids: np.ndarray, names: Sequence[str] | None = None) -> pl.DataFrame:
        """Rows ``ids`` (of columns ``names``, by default all)."""
        return pl.DataFrame([self.columns[n].gather(ids) for n in names or self.columns])

    def frame(self) -> pl.DataFrame | None:
        """Every row, in insertion order (None when empty)."""
        if not len(self):
            return None
        frame = pl.DataFrame([column.head(self.count) for column in self.columns.values()])
        return frame.filter(pl.Series(self.alive[: self.count])) if self.dead else frame

    # -- writing ----------------------------------------------------------------------------------
    def update(self, found: Found, rows: pl.DataFrame, columns: Sequence[str]) -> None:
        """Write ``columns`` of ``rows`` (aligned with ``found.index``) over the found rows."""
        for name in columns if found.row_ids.size else ():
            self._write(name, found.row_ids, rows.get_column(name))

    def upsert(self, rows: pl.DataFrame, hashes: np.ndarray) -> None:
        """Every row of ``rows`` (unique keys) replaces its key's, or is added."""
        index, ids = self._find(rows.select(self.keys), hashes)
        columns = [c for c in rows.columns if c not in self.keys]
        for name in columns if index.size else ():
            self._write(name, ids, rows.get_column(name).gather(index))
        if self.dead and index.size:
            self.dead -= int((~self.alive[ids]).sum())
            self.alive[ids] = True
        new = np.ones(rows.height, dtype=bool)
        new[index] = False
        self.insert(rows.filter(pl.Series(new)), hashes[new])

    def delete(self, keys: pl.DataFrame, hashes: np.ndarray) -> None:
        """Forget ``keys`` (unique); their rows stay dead until reused or compacted."""
        _, ids = self._find(keys, hashes)
        ids = ids[self.alive[ids]]
        self.alive[ids] = False
        self.touched[ids] = True
        self.dead += ids.size
        if self.dead > 1024 and 2 * self.dead > self.count:
            self._compact()

    def _compact(self) -> None:
        """The live rows only, in a table of their own (what changed since :meth:`settle`
        still known: the live rows' marks, and the deleted keys)."""
        live = self.alive[: self.count]
        touched = self.touched[: self.count][live]
        gone = self._deleted()
        fresh = KeyedState.of(self.frame(), self.keys)
        fresh.by_join = self.by_join
        fresh.touched[: fresh.count] = touched
        fresh.gone = [*self.gone, gone] if gone.height else self.gone
        self.__dict__.update(fresh.__dict__)

    # -- incremental checkpoints ------------------------------------------------------------------
    def changes(self) -> tuple[pl.DataFrame | None, pl.DataFrame | None]:
        """What changed since :meth:`settle`: the rows written (None: none), and the keys
        deleted (None: none). O(state / 8) to find them, O(changes) to take them."""
        ids = np.flatnonzero(self.touched[: self.count])
        live = self.alive[ids]
        rows = self._gather(ids[live]) if live.any() else None
        gone = [*self.gone, self._deleted()]
        deleted = pl.concat(gone) if sum(g.height for g in gone) else None
        return rows, deleted

    def _deleted(self) -> pl.DataFrame:
        """The keys of rows deleted since :meth:`settle` (and not written again)."""
        ids = np.flatnonzero(self.touched[: self.count] & ~self.alive[: self.count])
        return self._gather(ids, self.keys) if self.columns else pl.DataFrame()

    def settle(self) -> None:
        """From now on, :meth:`changes` counts from here."""
        self.touched[:] = False
        self.gone = []

    def insert(self, rows: pl.DataFrame, hashes: np.ndarray) -> None:
        """Add the rows of keys not held yet (``hashes`` theirs; checked by :meth:`lookup`)."""
        n = rows.height
        if not n:
            return
        if not self.columns:
            self.columns = {c.name: c.clear() for c in rows.get_columns()}
        ids = np.arange(self.count, self.count + n, dtype=np.int64)
        self._reserve(self.count + n)
        for column in rows.get_columns():
            self._write(column.name, ids, column)
        self.hashes[ids] = hashes
        self.alive[ids] = True
        self.touched[ids] = True
        self.count += n
        if self.by_join:
            return
        if self.count > _MAX_LOAD * len(self.slots):
            self._rehash()
        else:
            self._place(ids)

    def _place(self, ids: np.ndarray) -> None:
        """Put rows ``ids`` into free slots of the table: each round, the rows whose slot is
        free write themselves into it, one write per slot wins, and the rest move on."""
        mask = np.int64(len(self.slots) - 1)
        hashes = self.hashes[ids]
        position = (hashes * _MIX >> self.shift).astype(np.int64)
        pending = (hashes >> _HIGH << _HIGH) | ids.astype(np.uint64)  # the slots' entries
        while pending.size:
            free = self.slots[position] == _EMPTY
            self.slots[position[free]] = pending[free]
            won = free & (self.slots[position] == pending)
            # the others move on from a taken slot (lost ones see it taken next round)
            going = ~won
            position = np.where(free, position, (position + 1) & mask)[going]
            pending = pending[going]

    def _rehash(self) -> None:
        """A table twice as large (or more), every row placed again."""
        size = len(self.slots)
        while self.count > _MAX_LOAD * size:
            size *= 2
        self.slots = np.full(size, _EMPTY, dtype=np.uint64)
        self.shift = np.uint64(64 - size.bit_length() + 1)
        self._place(np.arange(self.count, dtype=np.int64))

    def _reserve(self, n: int) -> None:
        """Room for ``n`` rows in every column (doubling)."""
        capacity = len(self.hashes)
        if n <= capacity:
            return
        grown = max(n, 2 * capacity, 1024)
        self.hashes = np.concatenate([self.hashes, np.zeros(grown - capacity, dtype=np.uint64)])
        self.alive = np.concatenate([self.alive, np.zeros(grown - capacity, dtype=bool)])
        self.touched = np.concatenate([self.touched, np.zeros(grown - capacity, dtype=bool)])
        for name, column in self.columns.items():
            spare = pl.Series(name, [None], dtype=column.dtype).extend_constant(
                None, grown - capacity - 1
            )
            self.columns[name] = pl.concat([column, spare], rechunk=True)

    def _write(self, name: str, ids: np.ndarray, values: pl.Series) -> None:
        self.touched[ids] = True
        column = self.columns[name]
        if values.dtype != column.dtype:
            wider = pl.concat([column.head(0), values.head(0)], how="vertical_relaxed").dtype
            column = self.columns[name] = column.cast(wider)
            values = values.cast(wider)
        try:
            column.scatter(ids, values)
        except pl.exceptions.ComputeError:  # lists, structs: rebuilt, O(state)
            index = np.arange(len(column), dtype=np.int64)
            index[ids] = len(column) + np.arange(len(ids), dtype=np.int64)
            self.columns[name] = pl.concat([column, values]).gather(index).rechunk()

    @classmethod
    def of(cls, frame: pl.DataFrame | None, keys: Sequence[str]) -> KeyedState:
        """A state holding ``frame``'s rows (unique keys)."""
        state = cls(keys)
        if frame is not None and frame.height:
            state.insert(frame, key_hashes(frame, keys))
        return state


class KeyedTable:
    """A table keyed by ``keys`` (the rows of an upsert changelog, tombstones applied) in a
    :class:`KeyedState`: a batch of changes, or of keys to look up, costs O(batch)."""

    def __init__(self, keys: Sequence[str], schema: pl.Schema) -> None:
        self.keys, self.schema = list(keys), schema
        self.store = KeyedState(self.keys)

    def empty(self) -> pl.DataFrame:
        """No rows, the table's columns."""
        if self.store.columns:
            return pl.DataFrame([c.head(0) for c in self.store.columns.values()])
        return self.schema.to_frame()

    def frame(self) -> pl.DataFrame:
        """Every row."""
        frame = self.store.frame()
        return frame if frame is not None else self.empty()

    def load(self, frame: pl.DataFrame) -> None:
        """Hold ``frame``'s rows (unique keys) and nothing else."""
        self.store = KeyedState.of(frame, self.keys)

    def rows_of(self, keys: pl.DataFrame) -> pl.DataFrame:
        """The rows of ``keys`` (unique) that the table holds."""
        if not len(self.store) or not keys.height:
            return self.empty()
        if not worth_keying(len(self.store), keys.height):
            return self.frame().join(keys, on=self.keys, how="semi", nulls_equal=True)
        found = self.store.lookup(keys, key_hashes(keys, self.keys))
        return found.rows if found.rows.width else self.empty()

    def upsert(self, rows: pl.DataFrame) -> None:
        """``rows`` replace their keys' (the last of a key counts)."""
        if rows.height:
            rows = rows.unique(subset=self.keys, keep="last", maintain_order=True)
            if set(self.schema.names()) == set(rows.columns):
                rows = rows.select(self.schema.names())
            self.store.upsert(rows, key_hashes(rows, self.keys))

    def delete(self, keys: pl.DataFrame) -> None:
        """Forget ``keys``."""
        if keys.height and len(self.store):
            keys = keys.select(self.keys).unique()
            self.store.delete(keys, key_hashes(keys, self.keys))

    def changes(self) -> dict[str, pl.DataFrame | None]:
        """What changed since :meth:`settle` (an incremental checkpoint)."""
        rows, deleted = self.store.changes()
        return {"rows": rows, "deleted": deleted}

    def apply(self, changes: dict[str, pl.DataFrame | None]) -> None:
        """Replay :meth:`changes` (a restore)."""
        if changes["deleted"] is not None:
            self.delete(changes["deleted"])
        if changes["rows"] is not None:
            self.upsert(changes["rows"])

    def settle(self) -> None:
        self.store.settle()
