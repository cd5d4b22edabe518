"""The changelog: where a worker's tasks keep their state, and who the worker is.

A task's checkpoint writes a snapshot of its operators (:mod:`streamnb.engine.checkpoint`) to
the task's partition of the compacted changelog topic, as records of at most 900 KB keyed by
their index and tagged with the snapshot's number; the input offsets committed with it carry
``sn1:<snapshot>:<records>`` as metadata. A restore reads that snapshot back from the end of the
partition: only its task writes there, so it is among the last records.
"""

from __future__ import annotations

import fcntl
import os
import time
import uuid
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

    def write(self, partition: int, snapshot_id: int, records: list[bytes]) -> str:
        """Produce a snapshot's records; the offset metadata that points at it."""
        headers = [(SNAPSHOT_HEADER, str(snapshot_id).encode())]
        for i, record in enumerate(records):
            produce(
                self.producer,
                self.topic,
                record,
                str(i).encode(),
                partition=partition,
                headers=headers,
            )
        return f"{METADATA_PREFIX}{snapshot_id}:{len(records)}"

    def read(self, partition: int, snapshot_id: int, count: int) -> bytes:
        """Snapshot ``snapshot_id`` of a task from the end of its changelog partition.

        Only this task writes that partition and its snapshots follow each other, so the one
        wanted is among the last records; reading starts ``count`` records (and a margin)
        before the end and goes further back while it is not found.
        """
        from confluent_kafka import TopicPartition

        low, high = self.restorer.get_watermark_offsets(
            TopicPartition(self.topic, partition), timeout=30
        )
        span = count + 16
        while True:
            start = max(low, high - span)
            found = self._scan(partition, start, snapshot_id, count)
            if found is not None:
                return found
            if start == low:
                raise SourceError(
                    f"changelog {self.topic}/{partition}: snapshot {snapshot_id} "
                    f"({count} records) is missing; the committed offsets point at it"
                )
            span *= 4

    def _scan(self, partition: int, start: int, snapshot_id: int, count: int) -> bytes | None:
        """The last complete run of the snapshot's records from ``start`` to the end."""
        from confluent_kafka import KafkaError, TopicPartition

        wanted = str(snapshot_id).encode()
        self.restorer.assign([TopicPartition(self.topic, partition, start)])
        parts: list[bytes] = []
        complete: bytes | None = None
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
                    headers = dict(m.headers() or [])
                    if headers.get(SNAPSHOT_HEADER) != wanted:
                        continue
                    if m.key() == b"0":
                        parts = []
                    parts.append(m.value() or b"")
                    if len(parts) == count:
                        complete = b"".join(parts)
        finally:
            self.restorer.unassign()


def parse_pointer(pointer: str) -> tuple[int, int] | None:
    """``(snapshot, records)`` from offset metadata; None when no snapshot was written."""
    where = pointer.removeprefix(METADATA_PREFIX)
    if not where:
        return None
    snapshot_id, count = (int(x) for x in where.split(":"))
    return snapshot_id, count
