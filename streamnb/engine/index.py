"""Rows indexed by a 64-bit key hash, any number per key, each with an expiry time.

Open session windows hold several rows per key, and lose them in time order. A
:class:`HashRuns` keeps them in *runs*: frames sorted by key hash (a run per batch, merged
with its neighbours as in a binary counter, so
a state of ``S`` rows built from batches of ``B`` has about ``log2(S / B)`` runs), each with
its rows' expiry times in ascending order and a live mask. Per batch:

* **find**: the batch's key hashes are looked up in each run by ``numpy.searchsorted``
  (O(batch · log state)); the rows of those hashes are gathered. Rows are found by hash:
  the caller matches them on the keys themselves (a join of batch-sized frames), so a hash
  collision costs a spare row, never a wrong result;
* **kill**: found rows are marked dead in place (a session merged into a new one);
* **add**: new rows become a run of their own (sorted by hash: O(batch · log batch));
* **expire**: in each run, the rows whose expiry has passed are the next ones in expiry
  order (``searchsorted`` on it): O(log run + expired rows), nothing scanned otherwise.

Dead and expired rows stay in their run until it is merged, or rewritten once more than
half of it is dead: every row is copied O(log state) times over its life.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

_MAX_RUNS = 24  # beyond, the smallest neighbours merge whatever their sizes


@dataclass
class _Run:
    rows: pl.DataFrame  # sorted by hash
    hashes: np.ndarray  # uint64, ascending
    by_expiry: np.ndarray  # row numbers in expiry order
    expiry: np.ndarray  # int64, ascending: the expiry of by_expiry's rows
    alive: np.ndarray  # bool per row
    live: int
    serial: int  # runs are numbered in the order they were made
    expired: int = 0  # by_expiry[:expired] are gone (or were killed before)

    @classmethod
    def of(cls, rows: pl.DataFrame, hashes: np.ndarray, expiry: np.ndarray, serial: int) -> _Run:
        order = np.argsort(hashes, kind="stable")
        rows, hashes, expiry = rows[order], hashes[order], expiry[order]
        by_expiry = np.argsort(expiry, kind="stable")
        n = len(hashes)
        alive = np.ones(n, dtype=bool)
        return cls(rows, hashes, by_expiry, expiry[by_expiry], alive, n, serial)

    def live_rows(self) -> tuple[pl.DataFrame, np.ndarray, np.ndarray]:
        """The live rows, their hashes and expiry times."""
        expiry = np.empty_like(self.expiry)
        expiry[self.by_expiry] = self.expiry
        if self.live == len(self.alive):
            return self.rows, self.hashes, expiry
        return self.rows.filter(pl.Series(self.alive)), self.hashes[self.alive], expiry[self.alive]


@dataclass
class Hits:
    """Rows found by :meth:`HashRuns.find`: ``rows`` and where each lies (``segments``: per
    run, the row numbers, in the order of ``rows``)."""

    rows: pl.DataFrame
    segments: list[tuple[_Run, np.ndarray]]

    def older(self, mark: int) -> np.ndarray:
        """Per row of ``rows``: whether its run was made before :meth:`HashRuns.mark`
        returned ``mark``."""
        if not self.segments:
            return np.zeros(0, dtype=bool)
        return np.concatenate([np.full(ids.size, run.serial < mark) for run, ids in self.segments])


class HashRuns:
    """Rows under a key hash (see the module's docstring); ``empty`` gives their columns."""

    def __init__(self, empty: pl.DataFrame) -> None:
        self.empty = empty.clear()
        self.runs: list[_Run] = []
        self.serial = 0

    def __len__(self) -> int:
        return sum(run.live for run in self.runs)

    @property
    def nbytes(self) -> int:
        """Memory held: the runs' rows (dead ones too) and their arrays."""
        return sum(
            int(r.rows.estimated_size())
            + r.hashes.nbytes
            + r.by_expiry.nbytes
            + r.expiry.nbytes
            + r.alive.nbytes
            for r in self.runs
        )

    def low(self) -> int | None:
        """A lower bound of the live rows' expiry times (None: no rows)."""
        lows = [int(r.expiry[r.expired]) for r in self.runs if r.live]
        return min(lows) if lows else None

    def add(self, rows: pl.DataFrame, hashes: np.ndarray, expiry: np.ndarray) -> None:
        """Hold ``rows`` (``hashes`` and ``expiry`` theirs) as a new run; see :meth:`compact`."""
        if not self.empty.width:
            self.empty = rows.clear()
        if rows.height:
            expiry = np.asarray(expiry, dtype=np.int64)
            self.runs.append(_Run.of(rows, hashes, expiry, self.serial))
            self.serial += 1

    def mark(self) -> int:
        """A mark for :meth:`since` and :meth:`Hits.older`: runs added from now on are newer."""
        return self.serial

    def since(self, mark: int) -> pl.DataFrame:
        """The live rows added since ``mark`` (unless :meth:`compact` merged them since)."""
        return self._concat([r.live_rows()[0] for r in self.runs if r.serial >= mark and r.live])

    def find(self, hashes: np.ndarray) -> Hits:
        """The live rows whose hash is one of ``hashes``."""
        wanted = np.unique(hashes)
        frames, segments = [], []
        for run in self.runs:
            if not run.live:
                continue
            start = np.searchsorted(run.hashes, wanted, side="left")
            count = np.searchsorted(run.hashes, wanted, side="right") - start
            total = int(count.sum())
            if not total:
                continue
            hit = count > 0
            start, count = start[hit], count[hit]
            # each range start..start+count, laid end to end
            ids = np.arange(total, dtype=np.int64) + np.repeat(
                start - np.cumsum(count) + count, count
            )
            ids = ids[run.alive[ids]]
            if ids.size:
                frames.append(run.rows[ids])
                segments.append((run, ids))
        rows = self._concat(frames)
        return Hits(rows, segments)

    def kill(self, hits: Hits, which: np.ndarray) -> None:
        """Forget the rows ``which`` (positions in ``hits.rows``) of ``hits``."""
        chosen = np.zeros(hits.rows.height, dtype=bool)
        chosen[which] = True
        offset = 0
        for run, ids in hits.segments:
            gone = ids[chosen[offset : offset + ids.size]]
            offset += ids.size
            gone = gone[run.alive[gone]]
            run.alive[gone] = False
            run.live -= gone.size

    def expire(self, until: int, *, take: bool = True) -> pl.DataFrame | None:
        """Forget the live rows whose expiry is ``until`` or earlier; return them (in no
        particular order) when ``take``."""
        frames = []
        for run in self.runs:
            if not run.live or run.expiry[run.expired] > until:
                continue
            end = int(np.searchsorted(run.expiry, until, side="right"))
            ids = run.by_expiry[run.expired : end]
            run.expired = end
            ids = ids[run.alive[ids]]
            run.alive[ids] = False
            run.live -= ids.size
            if take and ids.size:
                frames.append(run.rows[np.sort(ids)])
        if len(self.runs) and any(not r.live for r in self.runs):
            self.runs = [r for r in self.runs if r.live]
        return self._concat(frames) if take else None

    def frame(self) -> pl.DataFrame:
        """Every live row."""
        return self._concat([r.live_rows()[0] for r in self.runs if r.live])

    def compact(self) -> None:
        """Rewrite runs more than half dead; merge neighbouring runs of comparable sizes
        (the older at most twice the newer), and the smallest pair while there are too many."""
        runs = [r for r in self.runs if r.live]
        runs = [self._merge([r]) if 2 * r.live < len(r.alive) else r for r in runs]
        merged = True
        while merged and len(runs) > 1:
            merged = False
            for i in range(len(runs) - 2, -1, -1):
                if runs[i].live <= 2 * runs[i + 1].live:
                    runs[i : i + 2] = [self._merge(runs[i : i + 2])]
                    merged = True
                    break
        while len(runs) > _MAX_RUNS:
            i = min(range(len(runs) - 1), key=lambda j: runs[j].live + runs[j + 1].live)
            runs[i : i + 2] = [self._merge(runs[i : i + 2])]
        self.runs = runs

    def _merge(self, runs: list[_Run]) -> _Run:
        parts = [run.live_rows() for run in runs]
        rows = self._concat([p[0] for p in parts])
        hashes = np.concatenate([p[1] for p in parts])
        expiry = np.concatenate([p[2] for p in parts])
        serial = max(run.serial for run in runs)
        return _Run.of(rows, hashes, expiry, serial)

    def _concat(self, frames: list[pl.DataFrame]) -> pl.DataFrame:
        if not frames:
            return self.empty
        if len(frames) == 1 and frames[0].schema == self.empty.schema:
            return frames[0]
        return pl.concat([self.empty, *frames], how="diagonal_relaxed")

    def load(self, frame: pl.DataFrame, hashes: np.ndarray, expiry: np.ndarray) -> None:
        """Hold ``frame``'s rows and nothing else (a restore)."""
        self.runs = []
        self.add(frame, hashes, expiry)
