"""Keyed state whose per-batch cost follows the batch, not the state.

A :class:`KeyedState` holds one row per key, in columns (``polars`` Series with spare
capacity, or files: :mod:`streamnb.engine.rows`) indexed by a row number, and an
open-addressing hash table (:class:`Table`: linear probing, in numpy) from a hash of the keys
to the row. Everything is vectorised over a batch:

* **lookup**: the batch's keys probe the table in rounds; each round resolves every key whose
  probe hit its row or an empty slot, and the rest move one slot on (a handful of rounds at
  the load factor kept, each smaller than the one before);
* **update**: the found rows are written in place (``Series.scatter`` on columns the state
  owns alone);
* **insert**: new keys get the next row numbers and take the free slot where their lookup's
  probe stopped; of new keys that reach the same free slot, one takes it, the others move on.

A batch so costs O(batch) whatever the number of keys held; only growth (doubling the
table, the columns by half or a quarter) touches the whole state, amortised O(1) per key.
Deleted keys (a table's tombstones) leave their row dead until it is reused by the key or
compacted away.

Rows are found by hash, then checked against the keys themselves: a slot holds some of its
key's hash bits (a tag) beside the row, a probe takes the first slot whose tag matches, and the
keys at the rows so found are compared with the batch's in one vectorised pass. The few whose
keys differ (another key with the same tag on the probe path) probe on from the next slot, so
results never depend on the hash and a collision costs only its own keys.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
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
_MIX = np.uint64(0x9E3779B97F4A7C15)  # spreads the hash's bits over its top half
_MAX_LOAD = 0.7
_GROWTH = 2
_LARGE = 1 << 20  # rows
_TAIL = 64  # free slots past the last first slot: probes run on into them, never wrap
_HALF = np.uint64(32)
_LOW = np.uint64(2**32 - 1)


def key_hashes(frame: pl.DataFrame, keys: Sequence[str]) -> np.ndarray:
    """The 64-bit hash of each row's keys (nulls included)."""
    keys = list(keys)  # one column hashes 4x faster alone than as a struct
    key = pl.col(keys[0]) if len(keys) == 1 else pl.struct(keys)
    return frame.select(key.hash(seed=_SEED)).to_series().to_numpy()


class Table:
    """Slots from mixed key hashes to row numbers (open addressing, linear probing).

    A slot holds a row number in its low ``row_bits`` and, above it, as many of the key's
    mixed hash bits as fit (its tag); all bits set is a free slot (no row number has them
    all). Slots are 32 bits while row numbers fit in 26 (a tag of 6 bits or more), 64 beyond.
    A key's first slot is the top half of its mixed hash scaled to the table's ``size``
    (``top * size >> 32``): first slots rise with that top half, so a table is built from a
    sort. Probes run on past the last first slot into a tail of free slots, which placing
    keeps from filling up, and never wrap round.
    """

    def __init__(self, size: int, rows: int) -> None:
        self.size = size  # first slots are 0 .. size - 1
        self.row_bits = max(8, rows.bit_length())  # every row number < rows has a free bit
        self.dtype = np.dtype(np.uint32 if self.row_bits <= 26 else np.uint64)
        width = 8 * self.dtype.itemsize
        self.empty = self.dtype.type(2**width - 1)
        self.rows_mask = self.dtype.type(2**self.row_bits - 1)
        self.tags_mask = self.dtype.type(self.empty ^ self.rows_mask)
        self.tag_bits = np.uint64(2 ** (width - self.row_bits) - 1)
        self.slots = np.full(size + _TAIL, self.empty, dtype=self.dtype)

    def first(self, mixed: np.ndarray) -> np.ndarray:
        """The slot each mixed hash probes from."""
        first = mixed >> _HALF
        first *= np.uint64(self.size)
        first >>= _HALF
        return first.view(np.int64)

    def tags(self, mixed: np.ndarray) -> np.ndarray:
        """Each mixed hash's tag, in place in a slot (its row bits clear)."""
        tags = (mixed & self.tag_bits).astype(self.dtype)
        tags <<= self.dtype.type(self.row_bits)
        return tags

    def entries(self, mixed: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """The slots of ``rows``, whose keys' mixed hashes are ``mixed``."""
        entries = self.tags(mixed)
        entries |= rows.astype(self.dtype)
        return entries

    def probe(self, mixed: np.ndarray, position: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per mixed hash, probing from ``position``: the row of the first slot with its tag
        (-1: none), and that slot (or the free one that ended the probe)."""
        rows = np.full(len(mixed), -1, dtype=np.int64)
        at = np.zeros(len(mixed), dtype=np.int64)
        tags = self.tags(mixed)
        pending = np.arange(len(mixed))
        while pending.size:  # (positions, not boolean masks, index: several times faster)
            entry = self.slots[position]
            taken = entry != self.empty
            same = entry & self.tags_mask == tags[pending]
            same &= taken
            stop = np.flatnonzero(same | ~taken)
            at[pending[stop]] = position[stop]
            hit = np.flatnonzero(same)
            if hit.size:
                rows[pending[hit]] = entry[hit] & self.rows_mask
            taken &= ~same
            going = np.flatnonzero(taken)
            pending, position = pending[going], position[going]
            position += 1
        return rows, at

    def place(self, entries: np.ndarray, position: np.ndarray) -> None:
        """Put ``entries`` into free slots from ``position`` on: each round, the entries whose
        slot is free write themselves into it, one write per slot wins, the rest move on."""
        while entries.size:
            free = self.slots[position] == self.empty
            self.slots[position[free]] = entries[free]
            lost = self.slots[position] != entries
            # the others move on from a taken slot (lost ones see it taken next round)
            going = np.flatnonzero(lost)
            position = np.where(free, position, position + 1)[going]
            entries = entries[going]
            if self.slots[-1] != self.empty:  # the tail stays free at its end
                more = np.full(_TAIL, self.empty, dtype=self.dtype)
                self.slots = np.concatenate([self.slots, more])

    def held(self) -> np.ndarray:
        """The row numbers in the table, in slot order."""
        taken = self.slots[self.slots != self.empty]
        taken &= self.rows_mask
        return taken.astype(np.int64)

    @classmethod
    def of(cls, mixed: np.ndarray, size: int, rows: int, order: np.ndarray) -> Table:
        """A table of ``size`` first slots holding rows ``order`` (a permutation of 0, 1, ...,
        ``mixed`` their keys' mixed hashes), with row numbers up to ``rows``.

        Sorted by the top half of their hash, rows have ascending first slots, and linear
        probing places them in that order, each at ``max(first slot, previous place + 1)``:
        one sort and one cumulative maximum. In the slot order of a smaller table, rows are
        sorted already but for a few: the sort is a stable one, fast on such runs."""
        table = cls(size, rows)
        by = mixed[order]
        narrow = table.dtype.itemsize == 4  # then the sort carries the slots themselves
        for part in _parts(len(by)):  # (in parts: a state in files may not fit in memory twice)
            payload = table.entries(by[part], order[part]) if narrow else order[part]
            by[part] >>= _HALF
            by[part] <<= _HALF
            by[part] |= payload.astype(np.uint64)
        by.sort(kind="stable")
        last = np.int64(-1)
        for part in _parts(len(by)):
            position = table.first(by[part])
            step = np.arange(part.start, part.stop, dtype=np.int64)
            position -= step
            np.maximum.accumulate(position, out=position)
            np.maximum(position, last, out=position)
            last = position[-1]
            position += step
            end = int(position[-1]) + 1 + _TAIL
            if end > len(table.slots):
                more = np.full(end - len(table.slots), table.empty, dtype=table.dtype)
                table.slots = np.concatenate([table.slots, more])
            low = by[part] & _LOW
            if narrow:
                table.slots[position] = low
            else:
                ids = low.view(np.int64)
                table.slots[position] = table.entries(mixed[ids], ids)
        return table

    @property
    def nbytes(self) -> int:
        return self.slots.nbytes


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
        self.table = Table(16, 16)
        self.touched = np.empty(0, dtype=bool)  # per row: written or deleted since settle()
        self.alive: np.ndarray | None = None  # per row, once a key is deleted: False if so
        self.dead = 0
        self.gone: list[pl.DataFrame] = []  # keys deleted since settle(), rows compacted away

    def __len__(self) -> int:
        return self.count - self.dead

    @property
    def nbytes(self) -> int:
        """Bytes held: the rows (with their spare capacity; on disk for ``state="disk"``), the
        row flags and the table."""
        flags = self.touched.nbytes + (self.alive.nbytes if self.alive is not None else 0)
        return self.rows.nbytes + flags + self.table.nbytes

    def _live(self, ids: np.ndarray) -> np.ndarray:
        """Per row of ``ids``, whether it is alive (not deleted)."""
        return self.alive[ids] if self.alive is not None else np.ones(len(ids), dtype=bool)

    # -- reading ----------------------------------------------------------------------------------
    def lookup(self, keys: pl.DataFrame, hashes: np.ndarray) -> Found:
        """The rows of ``keys`` (a frame of unique keys, ``hashes`` theirs) held here."""
        index, ids, rows, stops = self._find(keys, hashes, self.rows.names)
        if self.dead:
            live = self._live(ids)
            index, ids, rows = index[live], ids[live], rows.filter(pl.Series(live))
        return Found(index, rows, ids, stops)

    def _find(
        self, keys: pl.DataFrame, hashes: np.ndarray, names: Sequence[str] = ()
    ) -> tuple[np.ndarray, np.ndarray, pl.DataFrame, np.ndarray]:
        """Which of ``keys`` have a row (deleted ones too), their row numbers, and those rows'
        columns ``names`` (by default the keys), in no particular order; and per key, the slot
        where its probe stopped."""
        names = list(names) or self.keys
        mixed = hashes * _MIX
        if not self.count or not keys.height:
            none = np.empty(0, dtype=np.int64)
            found = self._gather(none, names) if self.rows.names else pl.DataFrame()
            return none, none, found, self.table.first(mixed)
        rows, at = self.table.probe(mixed, self.table.first(mixed))
        index = np.flatnonzero(rows >= 0)
        found = self._gather(rows[index], names)
        wrong = self._differ(keys, index, found)
        if wrong.any():  # another key's tag on the probe path: probe on past it
            again, index, found = index[wrong], index[~wrong], found.filter(pl.Series(~wrong))
            while again.size:
                rows[again], at[again] = self.table.probe(mixed[again], at[again] + 1)
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
            held, asked = found.get_column(name), keys.get_column(name)
            if held.dtype.is_integer() and not held.has_nulls() and not asked.has_nulls():
                differ |= held.to_numpy() != asked.to_numpy()[index]  # numpy: 3x faster
            else:
                differ |= ~held.eq_missing(asked.gather(index)).to_numpy()
        return differ

    def _gather(self, ids: np.ndarray, names: Sequence[str] | None = None) -> pl.DataFrame:
        """Rows ``ids`` (of columns ``names``, by default all)."""
        return self.rows.gather(ids, names or self.rows.names)

    def _held(self, names: Sequence[str]) -> pl.DataFrame:
        """Columns ``names`` of every row, deleted ones too."""
        return self.rows.head(self.count, names)

    def slices(self, rows: int) -> Iterator[pl.DataFrame]:
        """Every row, in insertion order, in frames of up to ``rows`` rows."""
        for start in range(0, self.count, rows):
            ids = np.arange(start, min(start + rows, self.count), dtype=np.int64)
            ids = ids[self._live(ids)] if self.dead else ids
            if ids.size:
                yield self._gather(ids)

    def frame(self) -> pl.DataFrame | None:
        """Every row, in insertion order (None when empty)."""
        if not len(self):
            return None
        frame = self._held(self.rows.names)
        return frame.filter(pl.Series(self._live(np.arange(self.count)))) if self.dead else frame

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
        if self.alive is not None and index.size:
            self.dead -= int((~self.alive[ids]).sum())
            self.alive[ids] = True
        new = np.ones(rows.height, dtype=bool)
        new[index] = False
        self.insert(rows.filter(pl.Series(new)), hashes[new], stops[new])

    def delete(self, keys: pl.DataFrame, hashes: np.ndarray) -> None:
        """Forget ``keys`` (unique); their rows stay dead until reused or compacted."""
        _, ids, _, _ = self._find(keys, hashes)
        if self.alive is None:
            self.alive = np.ones(len(self.touched), dtype=bool)
        ids = ids[self.alive[ids]]
        self.alive[ids] = False
        self.touched[ids] = True
        self.dead += ids.size
        if self.dead > 1024 and 2 * self.dead > self.count:
            self._compact()

    def _compact(self) -> None:
        """The live rows only, in a table of their own (what changed since :meth:`settle`
        still known: the live rows' marks, and the deleted keys)."""
        live = self._live(np.arange(self.count))
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
        live = self._live(ids)
        rows = self._gather(ids[live]) if live.any() else None
        gone = [*self.gone, self._deleted()]
        deleted = pl.concat(gone) if sum(g.height for g in gone) else None
        return rows, deleted

    def _deleted(self) -> pl.DataFrame:
        """The keys of rows deleted since :meth:`settle` (and not written again)."""
        if self.alive is None:
            return self.rows.empty().select(self.keys) if self.rows.names else pl.DataFrame()
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
        if self.alive is not None:
            self.alive[ids] = True
        self.touched[ids] = True
        self.count += n
        if self.count > _MAX_LOAD * self.table.size or self.count >> self.table.row_bits:
            self._rehash(ids)
            return
        mixed = hashes * _MIX
        start = stops if stops is not None else self.table.first(mixed)
        self.table.place(self.table.entries(mixed, ids), start)

    def _rehash(self, added: np.ndarray) -> None:
        """A table twice as large (or more), every row placed anew from its keys' hash, read
        back from the rows (``added``: rows not placed yet). Amortised O(1) per key."""
        size = max(int(self.table.size * _GROWTH), int(self.count / _MAX_LOAD) + 1)
        mixed = key_hashes(self._held(self.keys), self.keys) * _MIX
        order = np.concatenate([self.table.held(), added])
        self.table.slots = self.table.slots[:0]  # its memory back before the new one's
        self.table = Table.of(mixed, size, len(self.touched), order)

    def _reserve(self, n: int) -> None:
        """Room for ``n`` rows in every column (growing by half, by a quarter once large:
        spare rows cost memory, a copy of the columns costs little time)."""
        capacity = len(self.touched)
        if n <= capacity:
            return
        grown = max(n, capacity + capacity // (4 if capacity >= _LARGE else 2), 1024)
        more = grown - capacity
        self.touched = np.concatenate([self.touched, np.zeros(more, dtype=bool)])
        if self.alive is not None:
            self.alive = np.concatenate([self.alive, np.zeros(more, dtype=bool)])
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


def _parts(n: int, size: int = 1 << 20) -> list[slice]:
    """``range(n)`` in slices of ``size``."""
    return [slice(start, min(start + size, n)) for start in range(0, n, size)]


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
