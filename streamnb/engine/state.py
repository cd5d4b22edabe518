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

A batch so costs O(batch) whatever the number of keys held; only growth (doubling the table,
or the columns by half) touches the whole state, amortised O(1) per key. A slot's first bits
are the slot a key probes from, so a larger table is built from the old one's entries by one
sort, without the keys or their hashes. Deleted keys (a table's
tombstones) leave their row dead until it is reused by the key or compacted away.

Rows are found by hash, then checked against the keys themselves: a slot holds the top 32
bits of its key's (mixed) hash beside the row, a probe takes the first slot whose bits match,
and the keys at the rows so found are compared with the batch's in one vectorised pass. The few
whose keys differ (two keys sharing 32 hash bits and a probe sequence) probe on from the
next slot, so results never depend on the hash and a collision costs only its own keys.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from streamnb.engine.rows import rows_in

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
_MAX_LOAD = 0.7
_EMPTY = np.uint64(2**64 - 1)  # a free slot; a taken one holds (hash >> 32) << 32 | row
_LOW = np.uint64(2**32 - 1)
_HIGH = np.uint64(32)


def key_hashes(frame: pl.DataFrame, keys: Sequence[str]) -> np.ndarray:
    """The 64-bit hash of each row's keys (nulls included)."""
    return frame.select(pl.struct(list(keys)).hash(seed=_SEED)).to_series().to_numpy()


@dataclass
class Found:
    """The keys of a batch that the state holds: ``index`` (rows of the batch's key frame),
    their state ``rows`` (aligned with ``index``) and row numbers; and per key of the batch,
    the slot where its probe stopped (for a key not held, the free slot it may take)."""

    index: np.ndarray
    rows: pl.DataFrame
    row_ids: np.ndarray
    stops: np.ndarray


class KeyedState:
    """Rows with unique ``keys`` (see the module's docstring)."""

    def __init__(self, keys: Sequence[str], directory: Path | None = None) -> None:
        self.keys = list(keys)
        self.directory = directory  # None: rows in memory, else in files under it
        self.count = 0
        self.rows = rows_in(directory)  # capacity >= count; rows past count unused
        self.slots = np.full(16, _EMPTY, dtype=np.uint64)  # hash's top half and row per slot
        self.shift = np.uint64(64 - 4)
        self.alive = np.empty(0, dtype=bool)  # per row: False once deleted
        self.touched = np.empty(0, dtype=bool)  # per row: written or deleted since settle()
        self.dead = 0
        self.gone: list[pl.DataFrame] = []  # keys deleted since settle(), rows compacted away

    def __len__(self) -> int:
        return self.count - self.dead

    @property
    def nbytes(self) -> int:
        """Bytes held: the rows (with their spare capacity; on disk for ``state="disk"``), the
        row flags and the table."""
        return self.rows.nbytes + self.alive.nbytes + self.touched.nbytes + self.slots.nbytes

    # -- reading ----------------------------------------------------------------------------------
    def lookup(self, keys: pl.DataFrame, hashes: np.ndarray) -> Found:
        """The rows of ``keys`` (a frame of unique keys, ``hashes`` theirs) held here."""
        index, ids, rows, stops = self._find(keys, hashes, self.rows.names)
        if self.dead:
            live = self.alive[ids]
            index, ids, rows = index[live], ids[live], rows.filter(pl.Series(live))
        return Found(index, rows, ids, stops)

    def _find(
        self, keys: pl.DataFrame, hashes: np.ndarray, names: Sequence[str] = ()
    ) -> tuple[np.ndarray, np.ndarray, pl.DataFrame, np.ndarray]:
        """Which of ``keys`` have a row (deleted ones too), their row numbers, and those rows'
        columns ``names`` (by default the keys), in no particular order; and per key, the slot
        where its probe stopped."""
        names = list(names) or self.keys
        if not self.count or not keys.height:
            none = np.empty(0, dtype=np.int64)
            found = self._gather(none, names) if self.rows.names else pl.DataFrame()
            return none, none, found, self._home(hashes * _MIX)
        mixed = hashes * _MIX
        rows, at = self._probe(mixed, self._home(mixed))
        index = np.flatnonzero(rows >= 0)
        found = self._gather(rows[index], names)
        wrong = self._differ(keys, index, found)
        if wrong.any():  # another key's top hash bits on the probe path: probe on past it
            mask = np.int64(len(self.slots) - 1)
            again, index, found = index[wrong], index[~wrong], found.filter(pl.Series(~wrong))
            while again.size:
                rows[again], at[again] = self._probe(mixed[again], (at[again] + 1) & mask)
                again = again[rows[again] >= 0]
                more = self._gather(rows[again], names)
                wrong = self._differ(keys, again, more)
                index = np.concatenate([index, again[~wrong]])
                found = pl.concat([found, more.filter(pl.Series(~wrong))])
                again = again[wrong]
        return index, rows[index], found, at

    def _differ(self, keys: pl.DataFrame, index: np.ndarray, found: pl.DataFrame) -> np.ndarray:
        """Per row of ``found``, whether its keys differ from the looked-up keys ``index``."""
        differ = np.zeros(len(index), dtype=bool)
        for name in self.keys if index.size else ():
            same = found.get_column(name).eq_missing(keys.get_column(name).gather(index))
            differ |= ~same.to_numpy()
        return differ

    def _home(self, mixed: np.ndarray) -> np.ndarray:
        """The slot each mixed hash probes from."""
        return (mixed >> self.shift).view(np.int64)

    def _probe(self, mixed: np.ndarray, position: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per mixed hash, probing from ``position``: the row of the first slot holding the
        hash's top half (-1: none), and that slot (or the free one that ended the probe)."""
        rows = np.full(len(mixed), -1, dtype=np.int64)
        at = np.zeros(len(mixed), dtype=np.int64)
        mask = np.int64(len(self.slots) - 1)
        tags = mixed >> _HIGH
        pending = np.arange(len(mixed))
        while pending.size:  # (positions, not boolean masks, index: several times faster)
            entry = self.slots[position]
            taken = entry != _EMPTY
            same = entry >> _HIGH == tags[pending]
            same &= taken
            stop = np.flatnonzero(same | ~taken)
            at[pending[stop]] = position[stop]
            hit = np.flatnonzero(same)
            if hit.size:
                rows[pending[hit]] = (entry[hit] & _LOW).view(np.int64)
            taken &= ~same
            going = np.flatnonzero(taken)
            pending, position = pending[going], position[going]
            position += 1
            position &= mask
        return rows, at

    def _gather(self, ids: np.ndarray, names: Sequence[str] | None = None) -> pl.DataFrame:
        """Rows ``ids`` (of columns ``names``, by default all)."""
        return self.rows.gather(ids, names or self.rows.names)

    def _held(self, names: Sequence[str]) -> pl.DataFrame:
        """Columns ``names`` of every row, deleted ones too."""
        return self.rows.head(self.count, names)

    def frame(self) -> pl.DataFrame | None:
        """Every row, in insertion order (None when empty)."""
        if not len(self):
            return None
        frame = self._held(self.rows.names)
        return frame.filter(pl.Series(self.alive[: self.count])) if self.dead else frame

    # -- writing ----------------------------------------------------------------------------------
    def update(self, found: Found, rows: pl.DataFrame, columns: Sequence[str]) -> None:
        """Write ``columns`` of ``rows`` (aligned with ``found.index``) over the found rows."""
        self.touched[found.row_ids] = True
        for name in columns if found.row_ids.size else ():
            self.rows.write(name, found.row_ids, rows.get_column(name))

    def upsert(self, rows: pl.DataFrame, hashes: np.ndarray) -> None:
        """Every row of ``rows`` (unique keys) replaces its key's, or is added."""
        index, ids, _, stops = self._find(rows.select(self.keys), hashes)
        columns = [c for c in rows.columns if c not in self.keys]
        self.touched[ids] = True
        for name in columns if index.size else ():
            self.rows.write(name, ids, rows.get_column(name).gather(index))
        if self.dead and index.size:
            self.dead -= int((~self.alive[ids]).sum())
            self.alive[ids] = True
        new = np.ones(rows.height, dtype=bool)
        new[index] = False
        self.insert(rows.filter(pl.Series(new)), hashes[new], stops[new])

    def delete(self, keys: pl.DataFrame, hashes: np.ndarray) -> None:
        """Forget ``keys`` (unique); their rows stay dead until reused or compacted."""
        _, ids, _, _ = self._find(keys, hashes)
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
        fresh = KeyedState.of(self.frame(), self.keys, self.directory)
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
        return self._gather(ids, self.keys) if self.rows.names else pl.DataFrame()

    def settle(self) -> None:
        """From now on, :meth:`changes` counts from here."""
        self.touched[:] = False
        self.gone = []

    def insert(
        self, rows: pl.DataFrame, hashes: np.ndarray, stops: np.ndarray | None = None
    ) -> None:
        """Add the rows of keys not held yet (``hashes`` theirs; ``stops``: where a lookup's
        probe for them stopped, if the table has not changed since: they are placed from
        there instead of from their first slot)."""
        n = rows.height
        if not n:
            return
        if not self.rows.names:
            self.rows.create(rows.get_columns())
        ids = np.arange(self.count, self.count + n, dtype=np.int64)
        self._reserve(self.count + n)
        for column in rows.get_columns():
            self.rows.write(column.name, ids, column)
        self.alive[ids] = True
        self.touched[ids] = True
        self.count += n
        mixed = hashes * _MIX
        entries = _entries(mixed, ids)
        if self.count > _MAX_LOAD * len(self.slots):
            self._rehash(entries)
        else:
            self._place(entries, stops if stops is not None else self._home(mixed))

    def _place(self, entries: np.ndarray, position: np.ndarray) -> None:
        """Put ``entries`` into free slots from ``position`` on: each round, the entries whose
        slot is free write themselves into it, one write per slot wins, the rest move on."""
        mask = np.int64(len(self.slots) - 1)
        while entries.size:
            free = self.slots[position] == _EMPTY
            self.slots[position[free]] = entries[free]
            lost = self.slots[position] != entries
            # the others move on from a taken slot (lost ones see it taken next round)
            going = np.flatnonzero(lost)
            position = np.where(free, position, position + 1)[going]
            position &= mask
            entries = entries[going]

    def _rehash(self, added: np.ndarray) -> None:
        """A table twice as large (or more), every row placed again (``added``: the entries
        of rows not placed yet).

        An entry's first slot is the top bits of its hash's top half, so entries sort by their
        first slot, and into an empty table linear probing places them in that order, each at
        ``max(first slot, previous place + 1)``: one sort and one cumulative maximum."""
        size = len(self.slots)
        while self.count > _MAX_LOAD * size:
            size *= 2
        entries = np.concatenate([self.slots[self.slots != _EMPTY], added])
        entries.sort()
        self.slots = np.full(size, _EMPTY, dtype=np.uint64)
        self.shift = np.uint64(64 - size.bit_length() + 1)
        position = self._home(entries)
        step = np.arange(len(entries), dtype=np.int64)
        position -= step
        np.maximum.accumulate(position, out=position)
        position += step
        fits = position < size
        self.slots[position[fits]] = entries[fits]
        if not fits.all():  # the last ones go round to the table's start
            self._place(entries[~fits], np.zeros(int((~fits).sum()), dtype=np.int64))

    def _reserve(self, n: int) -> None:
        """Room for ``n`` rows in every column (growing by half)."""
        capacity = len(self.alive)
        if n <= capacity:
            return
        grown = max(n, capacity + capacity // 2, 1024)
        self.alive = np.concatenate([self.alive, np.zeros(grown - capacity, dtype=bool)])
        self.touched = np.concatenate([self.touched, np.zeros(grown - capacity, dtype=bool)])
        self.rows.reserve(grown)

    @classmethod
    def of(
        cls, frame: pl.DataFrame | None, keys: Sequence[str], directory: Path | None = None
    ) -> KeyedState:
        """A state holding ``frame``'s rows (unique keys), in files under ``directory`` if
        one is given."""
        state = cls(keys, directory)
        if frame is not None and frame.height:
            state.insert(frame, key_hashes(frame, keys))
        return state


def _entries(mixed: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The slot entries of ``rows``: their mixed hash's top half, then the row number."""
    entries = mixed >> _HIGH
    entries <<= _HIGH
    entries |= rows.view(np.uint64)
    return entries


class KeyedTable:
    """A table keyed by ``keys`` (the rows of an upsert changelog, tombstones applied) in a
    :class:`KeyedState`: a batch of changes, or of keys to look up, costs O(batch)."""

    def __init__(
        self, keys: Sequence[str], schema: pl.Schema, directory: Path | None = None
    ) -> None:
        self.keys, self.schema, self.directory = list(keys), schema, directory
        self.store = KeyedState(self.keys, directory)

    def empty(self) -> pl.DataFrame:
        """No rows, the table's columns."""
        return self.store.rows.empty() if self.store.rows.names else self.schema.to_frame()

    def frame(self) -> pl.DataFrame:
        """Every row."""
        frame = self.store.frame()
        return frame if frame is not None else self.empty()

    def load(self, frame: pl.DataFrame) -> None:
        """Hold ``frame``'s rows (unique keys) and nothing else."""
        self.store = KeyedState.of(frame, self.keys, self.directory)

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
