"""Run one query headless: sinks from the command line, clean stops, progress and metrics.

SIGTERM and SIGINT stop the query after its current batch; sinks flush and Kafka offsets
are committed before the process exits with status 0. A failed query exits with status 1.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TextIO, get_args

from streamnb.definitions.durations import Duration, to_ms
from streamnb.exceptions import ConfigError
from streamnb.io.sources.kafka import KafkaSource
from streamnb.plan import Node, SourceNode
from streamnb.stream import Stream
from streamnb.types import Guarantee, StateStore
from streamnb.ui.terminal import status_line
from streamnb.worker.metrics import MetricsServer

log = logging.getLogger("streamnb.worker")

GUARANTEES: tuple[Guarantee, ...] = get_args(Guarantee)
DEFAULT_CHECKPOINT_INTERVAL: dict[Guarantee, Duration] = {
    "at_least_once": "1s",
    "exactly_once": "100ms",
}
"""Per guarantee (Kafka Streams' ``commit.interval.ms`` defaults the same way for exactly-once):
under exactly-once a reader that reads committed sees output only when its transaction
commits, at each checkpoint, so the interval is the latency it adds."""


def with_sink(stream: Stream, sink: str | None) -> Stream:
    """``stream`` with the sink named on the command line attached."""
    if sink is None:
        return stream
    kind, _, target = sink.partition(":")
    if kind == "kafka" and target:
        # the broker (and its client settings) of the query's input, unless the
        # environment names one
        kafka = [s for s in stream.plan.sources() if isinstance(s, KafkaSource)]
        if kafka and not os.environ.get("STREAMNB_KAFKA_BOOTSTRAP"):
            return stream.to_kafka(
                target, bootstrap_servers=kafka[0].bootstrap, config=kafka[0].config
            )
        return stream.to_kafka(target)
    if kind == "parquet" and target:
        return stream.to_parquet(Path(target))
    if kind == "console" and not target:
        return stream
    raise ConfigError(f"--sink {sink!r}: use kafka:TOPIC, parquet:PATH or console")


def with_group(stream: Stream, group_id: str) -> Stream:
    """``stream`` with every Kafka source joining consumer group ``group_id``."""

    def rebuild(node: Node) -> Node:
        if isinstance(node, SourceNode) and isinstance(node.source, KafkaSource):
            return dataclasses.replace(node, source=node.source.in_group(group_id))
        if not node.inputs:
            return node
        return dataclasses.replace(node, inputs=tuple(rebuild(n) for n in node.inputs))

    plan = stream.plan
    return Stream(plan.then(rebuild(plan.root)))


def start(
    stream: Stream,
    *,
    name: str,
    guarantee: Guarantee = "at_least_once",
    group_id: str | None = None,
    checkpoint_interval: Duration | None = None,
    state_dir: Path | None = None,
    state: Literal["memory", "disk"] = "memory",
) -> Any:
    """Start ``stream`` (its sink attached) the way the worker runs it; a ``Query``-like handle.

    A query over Kafka topics runs as checkpointed tasks, one per partition number
    (:mod:`streamnb.worker.tasks`); any other query runs as in the notebook, its Kafka sources
    (if any) in consumer group ``group_id``, committing after each batch. ``state="disk"``
    keeps running aggregates' and tables' keyed state in files under ``state_dir`` (the
    operating system keeps the recently used rows in memory).
    """
    from streamnb.worker.changelog import TRANSACTION_TIMEOUT_MS, default_state_dir
    from streamnb.worker.inputs import inputs
    from streamnb.worker.tasks import TaskWorker, has_kafka_sink, partitioned_source

    if guarantee not in GUARANTEES:
        raise ConfigError(f"--guarantee {guarantee!r} must be one of {list(GUARANTEES)}")
    if checkpoint_interval is None:
        checkpoint_interval = DEFAULT_CHECKPOINT_INTERVAL.get(guarantee, "1s")
    interval = to_ms(checkpoint_interval, name="--checkpoint-interval", allow_zero=False)
    if guarantee == "exactly_once" and interval > TRANSACTION_TIMEOUT_MS // 2:
        raise ConfigError(
            f"--checkpoint-interval {checkpoint_interval}: under exactly_once a checkpoint "
            "commits the transaction that holds everything since the last one, and the broker "
            f"aborts a transaction open for {TRANSACTION_TIMEOUT_MS // 1000} s; use at most "
            f"{TRANSACTION_TIMEOUT_MS // 2000}s"
        )
    if state not in ("memory", "disk"):
        raise ConfigError(f"--state {state!r} must be 'memory' or 'disk'")
    group = group_id or f"streamnb-{name}"
    state_dir = state_dir or default_state_dir()
    tasks = partitioned_source(stream.plan)
    if guarantee == "exactly_once":
        if not tasks:
            try:
                inputs(stream.plan)
                reason = "its output goes to files, which are not transactional"
            except ConfigError as exc:
                reason = str(exc)
            raise ConfigError(
                "--guarantee exactly_once runs a query as checkpointed tasks over Kafka "
                f"topics, its offsets committed in the output's transaction: {reason}"
            )
        if not has_kafka_sink(stream.plan):
            raise ConfigError(
                "--guarantee exactly_once needs a Kafka sink: --sink kafka:TOPIC, or "
                ".to_kafka(...) in the query"
            )
    if not tasks:
        keyed: StateStore = state_dir / group / "state" if state == "disk" else "memory"
        return with_group(stream, group).start(name, state=keyed)
    return TaskWorker(
        stream.plan,
        name=name,
        group_id=group,
        guarantee=guarantee,
        checkpoint_interval_ms=interval,
        state_dir=state_dir,
        disk_state=state == "disk",
    ).start()


def run(
    stream: Stream,
    *,
    name: str,
    sink: str | None = None,
    guarantee: Guarantee = "at_least_once",
    group_id: str | None = None,
    checkpoint_interval: Duration | None = None,
    state_dir: Path | None = None,
    state: Literal["memory", "disk"] = "memory",
    metrics_port: int | None = None,
    duration: float | None = None,
    out: TextIO | None = None,
) -> int:
    """Run ``stream`` as query ``name`` until it ends or a signal stops it; the exit status."""
    out = out or sys.stderr
    query = start(
        with_sink(stream, sink),
        name=name,
        guarantee=guarantee,
        group_id=group_id,
        checkpoint_interval=checkpoint_interval,
        state_dir=state_dir,
        state=state,
    )
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("signal %s: stopping %s after the current batch", signum, name)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    server = MetricsServer(query, metrics_port) if metrics_port is not None else None
    deadline = None if duration is None else time.monotonic() + duration
    last_log = 0.0
    try:
        while query.status()["state"] in ("running", "paused") and not stop.is_set():
            if deadline is not None and time.monotonic() > deadline:
                break
            now = time.monotonic()
            if out.isatty():
                out.write("\r" + status_line(query.status()) + " " * 4)
                out.flush()
            elif now - last_log >= 5.0:
                out.write(json.dumps(_log_record(query.status())) + "\n")
                out.flush()
                last_log = now
            stop.wait(0.2)
        query.stop(timeout=60)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if server is not None:
            server.close()
    status = query.status()
    if out.isatty():
        out.write("\r" + status_line(status) + "\n")
    else:
        out.write(json.dumps(_log_record(status)) + "\n")
    if status["state"] == "failed":
        out.write(f"query {name!r} failed: {query.exception!r}\n")
        return 1
    if sink == "console" or sink is None:
        result = query.result()
        out.flush()
        print(result)
    return 0


def _log_record(s: Mapping[str, Any]) -> dict[str, Any]:
    record = dict(s)
    record["watermark"] = None if s["watermark"] is None else str(s["watermark"])
    record["time"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return record
