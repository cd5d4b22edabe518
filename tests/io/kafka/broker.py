"""A real Apache Kafka broker for tests, and small client helpers that fail in seconds.

The broker is the single-node KRaft broker of ``scripts/kafka-local`` (Kafka's jars from Maven
Central; needs Java 17+, and Maven for the first fetch), or an existing broker named by
``STREAMNB_TEST_BOOTSTRAP=host:port``. ``conftest.py`` turns these into fixtures.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypedDict, TypeVar, cast

import pytest
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic

KAFKA_LOCAL = Path(__file__).resolve().parents[3] / "scripts" / "kafka-local"
# Generous enough for the first run, which downloads ~45 MB of jars with Maven.
START_TIMEOUT_S = 600
# Held by whoever is choosing a fresh broker's ports, or has a broker stopped for a restart
# (whose ports must stay free until it is back): brokers started side by side (pytest-xdist
# workers, one broker each) never pick the same free port, or a stopped broker's.
PORTS_LOCK = Path(tempfile.gettempdir()) / "streamnb-kafka-ports.lock"
# A stopped broker that never starts again releases the lock at the end of its session; the
# others stop waiting for it after this long (and pick their ports without it).
PORTS_LOCK_WAIT_S = 120

# Small timeouts everywhere: a broken broker or test fails in seconds, not minutes.
CLIENT_DEFAULTS: dict[str, Any] = {
    "socket.timeout.ms": 5000,
    "socket.connection.setup.timeout.ms": 5000,
    "reconnect.backoff.max.ms": 1000,
}
# idempotent: a batch retried under load (a fresh topic's leader not known yet) is never
# written after the batches sent behind it, so a partition keeps the order records were sent
PRODUCER_DEFAULTS: dict[str, Any] = {
    "message.timeout.ms": 10000,
    "linger.ms": 5,
    "enable.idempotence": True,
}
CONSUMER_DEFAULTS: dict[str, Any] = {
    "session.timeout.ms": 6000,
    "heartbeat.interval.ms": 1000,
    "auto.offset.reset": "earliest",
    "enable.auto.commit": False,
}

Value = bytes | str | Mapping[str, Any] | Sequence[Any] | int | float | bool | None
T = TypeVar("T")


class KafkaRecord(TypedDict):
    topic: str
    key: bytes | None
    value: bytes | None
    partition: int
    offset: int
    timestamp: int
    headers: list[tuple[str, bytes | None]]


class KafkaBroker:
    """A broker the tests talk to: ``bootstrap``, and ``stop()`` / ``start()`` of a local one.

    ``stop()`` then ``start()`` restarts the same broker on the same data and port, so a test
    can prove nothing is lost across a broker restart. On an external broker
    (``STREAMNB_TEST_BOOTSTRAP``) both skip the calling test.
    """

    def __init__(self, bootstrap: str, state_dir: Path | None = None) -> None:
        self.bootstrap = bootstrap
        self.state_dir = state_dir
        self._ports_fd: int | None = None  # PORTS_LOCK, while held

    @property
    def is_local(self) -> bool:
        return self.state_dir is not None

    @classmethod
    def launch(cls, state_dir: Path) -> KafkaBroker:
        """Start a fresh broker whose data, logs and pid live in ``state_dir``, on free ports."""
        broker = cls("", state_dir)
        broker._hold_ports()
        try:
            out = _kafka_local("start", "--dir", str(state_dir), "--watch-pid", str(os.getpid()))
        finally:
            broker._release_ports()
        broker.bootstrap = _bootstrap_from(out)
        return broker

    def stop(self) -> None:
        """Stop the broker cleanly (SIGTERM; SIGKILL after 30 s); its data is kept. Its ports
        stay reserved (no other broker starts on them) until :meth:`start`."""
        state_dir = self._local_dir()
        self._hold_ports()
        _kafka_local("stop", "--dir", str(state_dir))

    def start(self) -> None:
        """Start the stopped broker again on the same data dir and port; waits until ready."""
        try:
            out = _kafka_local(
                "start",
                "--dir",
                str(self._local_dir()),
                "--keep-data",
                "--watch-pid",
                str(os.getpid()),
            )
        finally:
            self._release_ports()
        restarted = _bootstrap_from(out)
        assert restarted == self.bootstrap, f"broker came back on {restarted}, not {self.bootstrap}"

    def close(self) -> None:
        try:
            if self.state_dir is not None:
                _kafka_local("stop", "--dir", str(self.state_dir))
        finally:
            self._release_ports()

    def _local_dir(self) -> Path:
        if self.state_dir is None:
            pytest.skip("stop/start need the self-started broker, not STREAMNB_TEST_BOOTSTRAP")
        return self.state_dir

    def _hold_ports(self) -> None:
        if self._ports_fd is None:
            self._ports_fd = _lock(PORTS_LOCK, PORTS_LOCK_WAIT_S)

    def _release_ports(self) -> None:
        fd, self._ports_fd = self._ports_fd, None
        if fd is not None:
            os.close(fd)  # releases the flock


def _lock(path: Path, wait_s: float) -> int | None:
    """An exclusive ``flock`` on ``path`` (its fd, closed to release it), waiting up to
    ``wait_s``; None if the file cannot be opened or the wait runs out (go on unlocked: the
    lock only narrows an unlikely port race)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o666)
    except OSError:
        return None
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                return None
            time.sleep(0.1)


def _kafka_local(*args: str) -> str:
    try:
        done = subprocess.run(
            [str(KAFKA_LOCAL), *args],
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"scripts/kafka-local {' '.join(args)} took over {START_TIMEOUT_S} s")
    if done.returncode != 0:
        pytest.fail(
            f"scripts/kafka-local {' '.join(args)} failed (exit {done.returncode}); the tests "
            f"need a real Kafka broker: Java 17+ and Maven (Debian: apt-get install -y "
            f"default-jre-headless maven), or STREAMNB_TEST_BOOTSTRAP=host:port.\n{done.stderr}",
            pytrace=False,
        )
    return done.stdout


def _bootstrap_from(out: str) -> str:
    for line in out.splitlines():
        if line.startswith("BOOTSTRAP="):
            return line.removeprefix("BOOTSTRAP=")
    raise AssertionError(f"scripts/kafka-local start printed no BOOTSTRAP=: {out!r}")


def client_config(bootstrap: str, *layers: Mapping[str, Any] | None) -> dict[str, Any]:
    """``bootstrap.servers`` plus the fast-failing defaults, updated by each layer in turn."""
    conf = {"bootstrap.servers": bootstrap, **CLIENT_DEFAULTS}
    for layer in layers:
        conf.update(layer or {})
    return conf


def unique_topic_name(prefix: str = "test") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def create_topic(
    admin: AdminClient,
    partitions: int = 1,
    *,
    name: str | None = None,
    config: Mapping[str, str] | None = None,
    timeout: float = 10.0,
) -> str:
    """Create a topic and wait until every partition has a leader; returns its name."""
    name = name or unique_topic_name()
    new = NewTopic(name, num_partitions=partitions, replication_factor=1, config=dict(config or {}))
    futures = admin.create_topics([new], request_timeout=timeout, operation_timeout=timeout)
    futures[name].result(timeout=timeout)
    deadline = time.monotonic() + timeout
    while True:
        found = admin.list_topics(name, timeout=timeout).topics.get(name)
        if (
            found is not None
            and found.error is None
            and len(found.partitions) == partitions
            and all(p.leader >= 0 for p in found.partitions.values())
        ):
            return name
        if time.monotonic() > deadline:
            raise TimeoutError(f"topic {name} has no leader for every partition: {found}")
        time.sleep(0.05)


def encode(value: Value) -> bytes | None:
    """bytes as they are, str as UTF-8, anything else (dicts, lists, numbers) as JSON."""
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    return json.dumps(value).encode()


def _per_record(arg: T | Sequence[T], count: int, what: str) -> list[T]:
    if isinstance(arg, list):
        if len(arg) != count:
            raise ValueError(f"{what} has {len(arg)} items for {count} values")
        return list(arg)
    return [arg] * count  # type: ignore[list-item]


def produce(
    bootstrap: str,
    topic: str,
    values: Iterable[Value],
    *,
    key: Value | list[Value] = None,
    partition: int | list[int] | None = None,
    timestamp: int | list[int] | None = None,
    headers: Mapping[str, bytes | str] | None = None,
    config: Mapping[str, Any] | None = None,
    timeout: float = 15.0,
) -> list[tuple[int, int]]:
    """Produce ``values`` (dicts as JSON), flush, and return each record's (partition, offset).

    ``key``, ``partition`` and ``timestamp`` (ms) are one value for every record or a list with
    one per record. Raises if any record is not acknowledged.
    """
    payloads = list(values)
    n = len(payloads)
    keys = _per_record(key, n, "key")
    partitions = _per_record(partition, n, "partition")
    timestamps = _per_record(timestamp, n, "timestamp")
    producer = Producer(client_config(bootstrap, PRODUCER_DEFAULTS, config))
    delivered: dict[int, tuple[int, int]] = {}
    errors: list[KafkaError] = []

    def report(index: int) -> Callable[[KafkaError | None, Any], None]:
        def on_delivery(err: KafkaError | None, msg: Any) -> None:
            if err is not None:
                errors.append(err)
            else:
                delivered[index] = (msg.partition(), msg.offset())

        return on_delivery

    for i, value in enumerate(payloads):
        extra: dict[str, Any] = {}
        if partitions[i] is not None:
            extra["partition"] = partitions[i]
        if timestamps[i] is not None:
            extra["timestamp"] = timestamps[i]
        if headers:
            extra["headers"] = dict(headers)
        while True:
            try:
                producer.produce(
                    topic, value=encode(value), key=encode(keys[i]), on_delivery=report(i), **extra
                )
                break
            except BufferError:  # local queue full: let deliveries drain
                producer.poll(0.1)
        producer.poll(0)
    left = producer.flush(timeout)
    if errors or left:
        raise AssertionError(f"{len(errors)} records failed, {left} unacknowledged: {errors[:3]}")
    return [delivered[i] for i in range(n)]


def consume_all(
    bootstrap: str,
    topic: str,
    *,
    timeout: float = 10.0,
    isolation: str = "read_committed",
    min_count: int = 0,
    config: Mapping[str, Any] | None = None,
) -> list[KafkaRecord]:
    """Every record of every partition of ``topic``, read from the beginning up to the end.

    The end is where the broker reports end-of-partition: the high watermark, or for
    ``read_committed`` the last stable offset (an open transaction's records stay unread).
    With ``min_count`` it keeps reading until at least that many records arrived. Raises
    ``TimeoutError`` if that takes longer than ``timeout`` seconds.
    """
    consumer = Consumer(
        client_config(
            bootstrap,
            CONSUMER_DEFAULTS,
            {
                "group.id": unique_topic_name("consume-all"),
                "isolation.level": isolation,
                "enable.partition.eof": True,
            },
            config,
        )
    )
    try:
        return _read_to_end(consumer, topic, time.monotonic() + timeout, min_count)
    finally:
        consumer.close()


def _read_to_end(
    consumer: Consumer, topic: str, deadline: float, min_count: int
) -> list[KafkaRecord]:
    partitions = _wait_for_partitions(consumer, topic, deadline)
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
    records: list[KafkaRecord] = []
    at_end: set[int] = set()
    while len(at_end) < len(partitions) or len(records) < min_count:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(
                f"{topic}: read {len(records)} records (wanted at least {min_count}); "
                f"partitions at their end: {sorted(at_end)} of {partitions}"
            )
        msg = consumer.poll(min(remaining, 0.5))
        if msg is None:
            continue
        err = msg.error()
        if err is not None:
            if err.code() == KafkaError._PARTITION_EOF:
                at_end.add(cast(int, msg.partition()))
                continue
            raise AssertionError(f"consuming {topic}: {err}")
        at_end.discard(msg.partition())
        records.append(_record(msg))
    return records


def _record(msg: Message) -> KafkaRecord:
    # a consumed message always has topic, partition and offset; the stubs allow None
    _, timestamp = msg.timestamp()
    headers = msg.headers() or []
    pairs = headers.items() if isinstance(headers, dict) else headers
    return KafkaRecord(
        topic=cast(str, msg.topic()),
        key=msg.key(),
        value=msg.value(),
        partition=cast(int, msg.partition()),
        offset=cast(int, msg.offset()),
        timestamp=timestamp,
        headers=[(name, cast("bytes | None", value)) for name, value in pairs],
    )


def _wait_for_partitions(consumer: Consumer, topic: str, deadline: float) -> list[int]:
    """Partition ids of ``topic``, waiting for it to appear (a sink may not have created it)."""
    while True:
        found = consumer.list_topics(topic, timeout=5).topics.get(topic)
        if found is not None and found.error is None and found.partitions:
            return sorted(found.partitions)
        if time.monotonic() > deadline:
            raise TimeoutError(f"topic {topic} does not exist")
        time.sleep(0.1)
