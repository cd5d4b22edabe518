"""Faults on the sink side, against a real broker (issue 14, docs/semantics.md §7).

A Kafka sink that cannot deliver shows it in ``status()`` and ``errors()`` within seconds,
keeps every undelivered record's bytes in ``errors()``, and ``stop()`` returns within its
timeout with no thread or client left; so does a Kafka source whose broker went down, which
reports the offsets it could not commit; start/stop cycles leak no thread and no socket;
``sn.kafka`` takes client settings and tells a refused handshake from a broker that is down.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import polars as pl
import pytest

import streamnb as sn
from streamnb.io.kafka import client as kafka_client
from streamnb.io.sources.kafka.source import KafkaSource
from tests.io.kafka import broker as kafka
from tests.io.kafka.broker import KafkaBroker
from tests.threads import stop_all_and_check_no_thread_left, streamnb_threads, wait_until

Produce = Callable[..., list[tuple[int, int]]]

# Time bounds (seconds to show a fault, stop within its timeout) and thread and socket counts:
# measured alone, after the parallel run (`make pytest`), not beside other workers' load.
pytestmark = pytest.mark.serial

SASL_CONFIG = {
    "security.protocol": "SASL_PLAINTEXT",
    "sasl.mechanism": "PLAIN",
    "sasl.username": "user",
    "sasl.password": "secret",
}


@pytest.fixture(autouse=True)
def _no_query_left() -> Iterator[None]:
    yield
    stop_all_and_check_no_thread_left()


def closed_port() -> str:
    """``127.0.0.1:<port>`` where nothing listens (a broker that is down)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def os_threads() -> int:
    return len(os.listdir("/proc/self/task"))


def sockets() -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
        except OSError:  # closed since listed
            continue
    return count


def resources() -> dict[str, int]:
    return {"threads": threading.active_count(), "os_threads": os_threads(), "sockets": sockets()}


def steady(timeout: float = 10.0) -> dict[str, int]:
    """The resources once they stay the same for half a second (clients closed just before
    are gone)."""
    deadline = time.monotonic() + timeout
    previous, now = resources(), None
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = resources()
        if now == previous:
            break
        previous = now
    return previous


def settled(before: dict[str, int], timeout: float = 30.0) -> dict[str, int]:
    """The resources once back at ``before`` (librdkafka ends its threads and closes its
    sockets shortly after a client is closed), or as they are at ``timeout``."""
    deadline = time.monotonic() + timeout
    now = resources()
    while any(now[k] > before[k] for k in before) and time.monotonic() < deadline:
        time.sleep(0.1)
        now = resources()
    return now


# -- point 6: a sink that cannot deliver -------------------------------------------------------


def test_a_sink_to_a_broker_that_is_down_shows_it_within_seconds(
    make_topic: Callable[..., str], produce: Produce, bootstrap: str
) -> None:
    source = make_topic()
    values = [{"id": i} for i in range(5)]
    produce(source, values)
    down = closed_port()
    query = (
        sn.from_kafka(source, bootstrap_servers=bootstrap, start="earliest")
        .select("id")
        .to_kafka("out", bootstrap_servers=down)
        .start()
    )
    wait_until(lambda: query.status()["errors"] > 0, timeout=5)
    assert query.status()["state"] == "running"  # the producer keeps retrying
    assert f"cannot reach Kafka at {down}" in query.errors()["reason"][0]
    wait_until(lambda: query.status()["records_out"] == 5, timeout=10)

    started = time.monotonic()
    query.stop(timeout=3)
    assert time.monotonic() - started < 3.5
    assert streamnb_threads() == []
    undelivered = query.errors().filter(query.errors()["raw"].bin.starts_with(b"{"))
    assert sorted(undelivered["raw"].to_list()) == sorted(
        f'{{"id":{i}}}'.encode() for i in range(5)
    )
    assert all("not delivered before the query stopped" in r for r in undelivered["reason"])
    assert set(undelivered["topic"]) == {"out"}


def test_failed_deliveries_surface_without_waiting_for_another_batch(
    make_topic: Callable[..., str], produce: Produce, bootstrap: str
) -> None:
    source = make_topic()
    produce(source, [{"id": i} for i in range(3)])
    query = (
        sn.from_kafka(source, bootstrap_servers=bootstrap, start="earliest")
        .select("id")
        .to_kafka("not a valid topic!", bootstrap_servers=bootstrap)
        .start()
    )
    # the three records arrive in one batch, then nothing more: the reports come on a timer
    wait_until(lambda: query.status()["errors"] == 3, timeout=10)
    errors = query.errors()
    assert query.status()["state"] == "running" and query.status()["records_in"] == 3
    assert all(r.startswith("delivery failed: ") for r in errors["reason"])
    assert sorted(errors["raw"].to_list()) == [f'{{"id":{i}}}'.encode() for i in range(3)]
    assert set(errors["topic"]) == {"not a valid topic!"}


def test_errors_fail_makes_a_failed_delivery_fail_the_query(
    make_topic: Callable[..., str], produce: Produce, bootstrap: str
) -> None:
    source = make_topic()
    produce(source, [{"id": 1}])
    query = (
        sn.from_kafka(source, bootstrap_servers=bootstrap, start="earliest")
        .select("id")
        .to_kafka("not a valid topic!", bootstrap_servers=bootstrap)
        .start(errors="fail")
    )
    wait_until(lambda: query.status()["state"] == "failed", timeout=10)
    with pytest.raises(sn.QueryFailed, match="not delivered"):
        query.wait(5)
    assert query.status()["errors"] == 1


def test_stop_returns_within_its_timeout_while_the_producer_queue_is_full() -> None:
    # more records than the producer queues (100 000): produce() waits for room that a
    # broker which is down never makes, until stop() gives up
    query = sn.nexmark().to_kafka("out", bootstrap_servers=closed_port()).start()
    wait_until(lambda: query.status()["records_in"] > 100_000, timeout=30)
    time.sleep(0.5)
    before = os_threads()
    started = time.monotonic()
    query.stop(timeout=3)
    assert time.monotonic() - started < 3.5
    assert streamnb_threads() == []
    status = query.status()
    assert status["state"] == "stopped"
    # every record that reached the sink is in errors(), undelivered, after one row saying
    # that the broker cannot be reached (errors() keeps the newest 10 000 rows)
    assert status["errors"] == status["records_out"] + 1
    reasons = set(query.errors()["reason"])
    assert len(reasons) == 1
    assert reasons.pop().startswith("not delivered before the query stopped (127.0.0.1:")
    # the producer's threads end with it
    wait_until(lambda: os_threads() <= before - 3, timeout=10)


# -- a source whose broker is down ------------------------------------------------------------


def test_stop_returns_within_its_timeout_when_the_source_broker_is_down(
    kafka_broker: KafkaBroker, make_topic: Callable[..., str], produce: Produce, bootstrap: str
) -> None:
    if kafka_broker.state_dir is None:  # skipped at stop() it would leave a query held 30 s
        pytest.skip("stop/start need the self-started broker, not STREAMNB_TEST_BOOTSTRAP")
    topic = make_topic()
    produce(topic, [{"id": i} for i in range(100)])
    group = f"g-{topic}"
    gate = threading.Event()  # holds the group's batch in the pipeline: it is not committed

    def held(batch: pl.DataFrame) -> pl.DataFrame:
        gate.wait(30)
        return batch

    grouped = (
        sn.from_kafka(topic, bootstrap_servers=bootstrap, start="earliest", group_id=group)
        .map_batches(held)
        .start()
    )
    plain = sn.from_kafka(topic, bootstrap_servers=bootstrap, start="earliest").start()
    wait_until(lambda: grouped.status()["records_in"] == plain.status()["records_in"] == 100)
    kafka_broker.stop()
    try:
        for query in (grouped, plain):
            gate.set()
            started = time.monotonic()
            query.stop(timeout=3)
            assert time.monotonic() - started < 3.5, query.name
            assert query.status()["state"] == "stopped"
        assert streamnb_threads() == []
        assert plain.status()["errors"] == 0  # no group: nothing to commit
        # the group's offsets could not be committed: said, not lost silently
        [row] = grouped.errors().to_dicts()
        assert (row["topic"], row["partition"], row["offset"]) == (topic, 0, 100)
        assert "not committed" in row["reason"] and "read these records again" in row["reason"]
    finally:
        kafka_broker.start()
    # the broker serves again, and the group re-reads what it could not commit
    kafka.produce(bootstrap, topic, [{"id": 100}])
    again = sn.from_kafka(
        topic, bootstrap_servers=bootstrap, start="committed", group_id=group
    ).start()
    try:
        wait_until(lambda: again.status()["records_in"] == 101, timeout=30)
    finally:
        again.stop()


# -- point 7: start/stop cycles leak nothing --------------------------------------------------


def test_start_stop_cycles_leave_no_thread_or_socket(
    make_topic: Callable[..., str], produce: Produce, bootstrap: str
) -> None:
    source, sink = make_topic(), make_topic()
    produce(source, [{"id": i} for i in range(10)])
    stream = sn.from_kafka(source, bootstrap_servers=bootstrap, start="earliest").to_kafka(
        sink, bootstrap_servers=bootstrap
    )

    def cycle() -> None:
        query = stream.start()
        wait_until(lambda: query.status()["records_out"] == 10, timeout=30)
        query.stop()
        assert query.status()["state"] == "stopped"

    cycle()  # process-wide threads (polars' pool, librdkafka's globals) start once
    before = steady()
    for _ in range(50):
        cycle()
    after = settled(before)
    print(f"\nresources before {before}, after 50 start/stop cycles {after}")
    assert after["threads"] <= before["threads"]
    assert after["os_threads"] <= before["os_threads"]
    assert after["sockets"] <= before["sockets"]
    assert sn.queries() == []


# -- point 12: sn.kafka with client settings ---------------------------------------------------


def test_connect_takes_client_settings_that_topics_and_peek_use(
    make_topic: Callable[..., str],
    produce: Produce,
    bootstrap: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    topic = make_topic()
    produce(topic, [{"id": 1}])
    made: list[dict[str, Any]] = []
    real = kafka_client.client_config

    def recording(*args: Any, **kwargs: Any) -> dict[str, Any]:
        config = real(*args, **kwargs)
        made.append(config)
        return config

    monkeypatch.setattr(kafka_client, "client_config", recording)
    monkeypatch.setattr(kafka_client, "_defaults", {})
    settings = {"client.id": "streamnb-faults", "socket.keepalive.enable": True}
    assert topic in sn.kafka.connect(bootstrap, config=settings)
    assert topic in sn.kafka.topics()["topic"].to_list()
    assert sn.kafka.peek(topic)["id"].to_list() == [1]
    assert len(made) == 5  # connect, topics (metadata, consumer), peek (metadata, consumer)
    assert all(c["client.id"] == "streamnb-faults" for c in made)
    source = KafkaSource(topic, schema={"id": pl.Int64})  # what from_kafka(topic) builds
    assert source.config == settings
    assert KafkaSource(topic, bootstrap_servers=bootstrap, config={}).config == {}


def test_a_sasl_setting_against_a_plaintext_listener_is_named(bootstrap: str) -> None:
    with pytest.raises(sn.SourceError) as raised:
        sn.kafka.topics(bootstrap, config=SASL_CONFIG, timeout="3s")
    message = str(raised.value)
    assert "is the broker running" not in message
    assert "security handshake" in message and "security.protocol" in message
    assert "SASL PLAIN mechanism handshake failed" in message  # librdkafka's own words
    assert "secret" not in message
    with pytest.raises(sn.SourceError, match="security handshake"):
        sn.kafka.connect(bootstrap, config=SASL_CONFIG, timeout="3s")


def test_a_tls_setting_against_a_plaintext_listener_is_named(bootstrap: str) -> None:
    with pytest.raises(sn.SourceError) as raised:
        sn.kafka.peek(
            "any", bootstrap_servers=bootstrap, config={"security.protocol": "SSL"}, timeout="3s"
        )
    message = str(raised.value)
    assert "is the broker running" not in message
    assert "security handshake" in message
    assert f"ssl://{bootstrap}" in message  # librdkafka's TLS error, whichever words it uses


def test_a_broker_that_is_down_is_still_reported_as_such() -> None:
    down = closed_port()
    with pytest.raises(sn.SourceError, match="is the broker running") as raised:
        sn.kafka.topics(down, timeout="1s")
    assert "Connection refused" in str(raised.value)
