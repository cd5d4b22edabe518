"""The changelog: where a worker's tasks keep their state, and who the worker is.

A task's checkpoint writes a snapshot of its operators (:mod:`streamnb.engine.checkpoint`) to
the task's partition of the compacted changelog topic, as records of at most 900 KB tagged with
the snapshot's number. Snapshots are incremental: a base, then deltas (the keys changed since
the snapshot before). The input offsets committed with a checkpoint carry the chain it restores
from as metadata, ``sn1:<base>:<records>;<delta>:<records>;...``. A restore reads them back
from the end of the partition: only its task writes there, so they are among the last records.

Record keys name a slot: ``b0-<i>`` / ``b1-<i>`` for the chunks of bases (alternating, so that
compaction never drops the base a committed chain still needs while the next one is written),
``d0.<k>-<i>`` / ``d1.<k>-<i>`` for the k-th delta after a base of that parity.
"""

from __future__ import annotations

import fcntl
import os
import time
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from streamnb.exceptions import ConfigError, SourceError
from streamnb.io.kafka.client import produce

METADATA_PREFIX = "sn1:"
SNAPSHOT_HEADER = "sn-snapshot"
TRANSACTION_TIMEOUT_MS = 10_000
"""A killed worker's open transaction blocks ``read_committed`` readers of its partitions
until its restart aborts it or this timeout passes."""


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "streamnb"


class Instance:
    """This worker's identity, kept in ``--state-dir``: ``<dir>/<group>/instance-<id>``.

    A worker takes the first instance directory no running worker holds (a lock file), else
    makes a new one. A worker restarted after ``kill -9`` so gets its predecessor's id, and
    with it the same ``transactional.id``: initialising the producer fences the killed one
    and aborts its open transaction at once.
    """

    def __init__(self, state_dir: Path, group: str) -> None:
        root = state_dir / group
        try:
            self.fd, self.path = self._claim(root)
        except OSError as exc:
            raise ConfigError(
                f"--state-dir {state_dir}: cannot keep the instance id: {exc}"
            ) from exc
        self.id = self.path.name.removeprefix("instance-")

    @staticmethod
    def _claim(root: Path) -> tuple[int, Path]:
        """A locked instance directory under ``root``: the first free one, else a new one."""
        root.mkdir(parents=True, exist_ok=True)
        for slot in [*sorted(root.glob("instance-*")), root / f"instance-{uuid.uuid4().hex[:8]}"]:
            slot.mkdir(exist_ok=True)
            fd = os.open(slot / "lock", os.O_CREAT | os.O_RDWR, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            return fd, slot
        raise AssertionError("unreachable: a new instance directory is never locked")

    def release(self) -> None:
        os.close(self.fd)


class Changelog:
    """Snapshots of the tasks of one query in topic ``topic``."""

    def __init__(self, topic: str, producer: Any, restorer: Any) -> None:
        self.topic, self.producer, self.restorer = topic, producer, restorer

    def write(
        self, partition: int, snapshot_id: int, records: Iterable[bytes], slot: str
    ) -> tuple[Snapshot, int]:
        """Produce a snapshot's records under keys of ``slot``, each as it is made; where
        the snapshot is, and its bytes."""
        headers = [(SNAPSHOT_HEADER, str(snapshot_id).encode())]
        count = size = 0
        for count, record in enumerate(records, start=1):
            produce(
                self.producer,
                self.topic,
                record,
                f"{slot}-{count - 1}".encode(),
                partition=partition,
                headers=headers,
            )
            size += len(record)
        return (snapshot_id, count), size

    def read(self, partition: int, chain: Sequence[Snapshot]) -> list[list[bytes]]:
        """Snapshots ``chain`` of a task (each as its records) from the end of its changelog
        partition.

        Only this task writes that partition and its snapshots follow each other, so the
        ones wanted are among the last records; reading starts as many records (and a margin)
        before the end as they hold, and goes further back while one is not found.
        """
        from confluent_kafka import TopicPartition

        low, high = self.restorer.get_watermark_offsets(
            TopicPartition(self.topic, partition), timeout=30
        )
        counts = dict(chain)
        span = sum(counts.values()) + 16
        while True:
            start = max(low, high - span)
            found = self._scan(partition, start, counts)
            if len(found) == len(counts):
                return [found[snapshot_id] for snapshot_id, _ in chain]
            if start == low:
                missing = [f"{i} ({n} records)" for i, n in chain if i not in found]
                raise SourceError(
                    f"changelog {self.topic}/{partition}: snapshot {', '.join(missing)} is "
                    "missing; the committed offsets point at it"
                )
            span *= 4

    def _scan(self, partition: int, start: int, counts: dict[int, int]) -> dict[int, list[bytes]]:
        """The last complete run of each wanted snapshot's records from ``start`` on."""
        from confluent_kafka import KafkaError, TopicPartition

        wanted = {str(i).encode(): i for i in counts}
        self.restorer.assign([TopicPartition(self.topic, partition, start)])
        parts: dict[int, list[bytes]] = {}
        complete: dict[int, list[bytes]] = {}
        deadline = time.monotonic() + 60
        try:
            while True:
                if time.monotonic() > deadline:
                    raise SourceError(f"changelog {self.topic}/{partition}: read timed out")
                messages = self.restorer.consume(1000, timeout=0.05)
                for m in messages:
                    err = m.error()
                    if err is not None and err.code() == KafkaError._PARTITION_EOF:
                        return complete
                    if err is not None:
                        raise SourceError(f"changelog {self.topic}/{partition}: {err.str()}")
                    snapshot_id = wanted.get(dict(m.headers() or []).get(SNAPSHOT_HEADER, b""))
                    if snapshot_id is None:
                        continue
                    if (m.key() or b"").rsplit(b"-", 1)[-1] == b"0":  # its first record
                        parts[snapshot_id] = []
                    run = parts.setdefault(snapshot_id, [])
                    run.append(m.value() or b"")
                    if len(run) == counts[snapshot_id]:
                        complete[snapshot_id] = run
        finally:
            self.restorer.unassign()


Snapshot = tuple[int, int]
"""A snapshot in the changelog: its number and how many records it takes."""


def pointer(chain: Sequence[Snapshot]) -> str:
    """The offset metadata of a checkpoint: the chain it restores from (a base, deltas)."""
    return METADATA_PREFIX + ";".join(f"{i}:{n}" for i, n in chain)


def parse_pointer(metadata: str) -> list[Snapshot]:
    """The chain in offset metadata (a base, then its deltas); empty when nothing was
    written."""
    where = metadata.removeprefix(METADATA_PREFIX)
    if not where:
        return []
    chain = []
    for part in where.split(";"):
        snapshot_id, count = (int(x) for x in part.split(":"))
        chain.append((snapshot_id, count))
    return chain
