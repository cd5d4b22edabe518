"""``GET /state/<query>?key=<k>`` on a running worker's metrics port: the query's live keyed
state as JSON, gathered from whichever task holds the key (API.md §9)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from streamnb.exceptions import ConfigError
from streamnb.worker.metrics import parse_key

Produce = Callable[..., list[tuple[int, int]]]

JOB = """
import os
import polars as pl
import streamnb as sn

stream = (
    sn.from_kafka(
        os.environ["STATE_INPUT"],
        bootstrap_servers=os.environ["STATE_BOOTSTRAP"],
        timestamp="t",
        start="earliest",
        schema={"k": pl.String, "t": pl.Int64, "v": pl.Int64},
    )
    .group_by("k")
    .agg(pl.len().alias("n"), pl.col("v").sum().alias("total"))
)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(port: int, path: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def oracle(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return (
        pl.DataFrame(records)
        .group_by("k")
        .agg(pl.len().alias("n"), pl.col("v").sum().alias("total"))
        .sort("k")
        .to_dicts()
    )


def produce_keyed(produce: Produce, topic: str, records: list[dict[str, Any]]) -> None:
    """Each key to one partition of three (its hash's, as a keyed producer would)."""
    for p in range(3):
        mine = [r for r in records if int(r["k"][1:]) % 3 == p]
        produce(topic, mine, partition=p)


def test_state_endpoint_of_a_running_worker(
    tmp_path: Path, make_topic: Callable[..., str], produce: Produce, bootstrap: str
) -> None:
    topic = make_topic(partitions=3)
    records = [{"k": f"k{i % 10}", "t": 1_000 * i, "v": i} for i in range(200)]
    produce_keyed(produce, topic, records)
    (tmp_path / "job.py").write_text(JOB)
    port = free_port()
    env = {
        **os.environ,
        "STATE_INPUT": topic,
        "STATE_BOOTSTRAP": bootstrap,
        "PYTHONPATH": os.pathsep.join([str(Path.cwd()), os.environ.get("PYTHONPATH", "")]),
    }
    log = open(tmp_path / "worker.log", "wb")  # noqa: SIM115
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamnb",
            "run",
            "job.py:stream",
            "--group-id",
            f"state-{topic}",
            "--state-dir",
            str(tmp_path / "state"),
            "--metrics-port",
            str(port),
        ],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )

    def logs() -> str:
        return (tmp_path / "worker.log").read_text(errors="replace")[-3000:]

    def state_becomes(expected: list[dict[str, Any]], timeout: float = 60) -> None:
        deadline, body = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            assert worker.poll() is None, logs()
            try:
                code, body = get(port, "/state/stream")
            except OSError:  # not listening yet
                code = 0
            if code == 200 and body["rows"] == expected:
                return
            time.sleep(0.2)
        raise AssertionError(f"state {body} never became {expected}\n{logs()}")

    try:
        state_becomes(oracle(records))
        # one key: from the task that holds it
        code, body = get(port, "/state/stream?key=k7")
        assert code == 200, body
        assert body == {
            "query": "stream",
            "key": "k7",
            "rows": [r for r in oracle(records) if r["k"] == "k7"],
        }
        assert get(port, "/state/stream?k=k3")[1]["rows"] == [
            r for r in oracle(records) if r["k"] == "k3"
        ]
        assert get(port, "/state/stream?key=k99") == (
            200,
            {"query": "stream", "key": "k99", "rows": []},
        )
        # errors: another query's name, a key column it does not have, too many values
        code, body = get(port, "/state/other?key=k1")
        assert code == 404 and "no query named 'other'" in body["error"]
        code, body = get(port, "/state/stream?colour=red")
        assert code == 400 and "'colour'" in body["error"]
        code, body = get(port, "/state/stream?key=k1&key=k2")
        assert code == 400 and "key columns" in body["error"]
        # more records: the state follows
        more = [{"k": f"k{i % 4}", "t": 1_000 * i, "v": 1} for i in range(200, 260)]
        produce_keyed(produce, topic, more)
        state_becomes(oracle(records + more))
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
            assert 'streamnb_records_in_total{query="stream"} 260' in answer.read().decode()
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(60)
        except subprocess.TimeoutExpired:
            worker.kill()
        log.close()
    assert worker.returncode == 0, logs()


def test_query_string_keys() -> None:
    assert parse_key("") is None
    assert parse_key("key=7") == 7
    assert parse_key("key=%22007%22") == "007"  # a JSON string stays one
    assert parse_key("key=abc") == "abc"
    assert parse_key("key=1&key=x") == (1, "x")
    assert parse_key("a=1&b=x") == {"a": 1, "b": "x"}
    with pytest.raises(ConfigError, match="not both"):
        parse_key("key=1&b=x")
