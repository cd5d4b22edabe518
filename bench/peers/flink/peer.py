"""The Nexmark queries of streamnb's benchmark in Apache Flink SQL (PyFlink, local MiniCluster).

Started by ./run (see there for the options). A Kafka source table per input topic (JSON, from
earliest), event time ``ts = TO_TIMESTAMP_LTZ(dateTime, 3)`` with ``WATERMARK FOR ts AS ts -
INTERVAL '4' SECOND``, the query in Flink SQL (windowing TVFs, final rows only, append), and a
Kafka sink table writing one JSON object per result row. No Python UDF: the job runs entirely
in the JVM (the Python process only submits it and watches it over the REST API).
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

BID_COLUMNS = "auction, bidder, price, channel, url, `dateTime`, extra"
LATENCY_TOPIC_PREFIX = "peers-lat-"
"""bench/peers.py's latency mode names its input topics so (``--mode auto`` looks at it)."""

# settings per mode: catch-up uses Flink's defaults, latency mode flushes network buffers and
# emits watermarks more often (see SETTINGS.md)
MODES = {
    "throughput": {
        "execution.buffer-timeout.interval": "100 ms",
        "pipeline.auto-watermark-interval": "200 ms",
    },
    "latency": {
        "execution.buffer-timeout.interval": "0 ms",
        "pipeline.auto-watermark-interval": "20 ms",
    },
}
PRODUCER = {"linger.ms": "5", "batch.size": str(256 << 10)}


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="run")
    p.add_argument("--bootstrap", default="127.0.0.1:9092")
    p.add_argument("--query")
    p.add_argument("--bids", default="bids")
    p.add_argument("--persons", default="persons")
    p.add_argument("--auctions", default="auctions")
    p.add_argument("--output")
    p.add_argument("--group")
    p.add_argument(
        "--mode",
        choices=["auto", "throughput", "latency"],
        default="auto",
        help="settings set; auto = latency when the bids topic is one of the harness's "
        f"latency-mode topics ({LATENCY_TOPIC_PREFIX}*), else throughput (Flink's defaults)",
    )
    p.add_argument("--parallelism", type=int, default=1)
    p.add_argument("--trigger", help="Spark's option; ignored")
    p.add_argument("--commit-interval-ms", help="Kafka Streams' option; ignored")
    p.add_argument("--describe", action="store_true")
    return p.parse_args()


def mode_of(a: argparse.Namespace) -> str:
    if a.mode != "auto":
        return a.mode
    return "latency" if (a.bids or "").startswith(LATENCY_TOPIC_PREFIX) else "throughput"


def settings(a: argparse.Namespace) -> str:
    from importlib.metadata import version

    connector = Path(os.environ.get("SN_FLINK_JAR", "?")).name.removesuffix(".jar")
    modes = "; ".join(
        f"{m}: " + " ".join(f"{k}={v}" for k, v in s.items()) for m, s in MODES.items()
    )
    return (
        f"Apache Flink {version('apache-flink')} (PyFlink Table API / SQL, local MiniCluster, "
        f"{connector}): parallelism={a.parallelism}, no checkpointing, heap-state backend "
        f"(default), window TVFs (TUMBLE/HOP/SESSION) with final rows only, watermark "
        f"ts - 4s, mode={a.mode} ({modes}), Kafka sink at-least-once producer "
        f"linger.ms={PRODUCER['linger.ms']} batch.size=256KiB"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ms(col: str) -> str:
    """A TIMESTAMP(3) window bound (UTC session time zone) as epoch-ms BIGINT."""
    return f"(EXTRACT(EPOCH FROM {col}) * 1000 + EXTRACT(MILLISECOND FROM {col}))"


def source_ddl(name: str, topic: str, columns: str, a: argparse.Namespace) -> str:
    return f"""
CREATE TABLE {name} (
  {columns},
  ts AS TO_TIMESTAMP_LTZ(`dateTime`, 3),
  WATERMARK FOR ts AS ts - INTERVAL '4' SECOND
) WITH (
  'connector' = 'kafka',
  'topic' = '{topic}',
  'properties.bootstrap.servers' = '{a.bootstrap}',
  'properties.group.id' = '{a.group}',
  'scan.startup.mode' = 'earliest-offset',
  'scan.topic-partition-discovery.interval' = '0',
  'format' = 'json',
  'json.fail-on-missing-field' = 'false',
  'json.ignore-parse-errors' = 'false'
)"""


def sink_ddl(columns: str, a: argparse.Namespace) -> str:
    props = ",\n  ".join(f"'properties.{k}' = '{v}'" for k, v in PRODUCER.items())
    return f"""
CREATE TABLE sink (
  {columns}
) WITH (
  'connector' = 'kafka',
  'topic' = '{a.output}',
  'properties.bootstrap.servers' = '{a.bootstrap}',
  'sink.delivery-guarantee' = 'at-least-once',
  {props},
  'format' = 'json'
)"""


BID_TYPES = (
    "auction BIGINT, bidder BIGINT, price {price}, channel STRING, url STRING, "
    "`dateTime` BIGINT, extra STRING"
)
WINDOW = "window_start BIGINT, window_end BIGINT"
HOP_COUNTS = """
  SELECT auction, COUNT(*) AS num, window_start AS starttime, window_end AS endtime
  FROM TABLE(HOP(TABLE bids, DESCRIPTOR(ts), INTERVAL '2' SECOND, INTERVAL '10' SECOND))
  GROUP BY auction, window_start, window_end"""

SQL: dict[str, tuple[str, str]] = {
    # query: (the sink table's columns = the reference's, the SELECT)
    "q0": (BID_TYPES.format(price="BIGINT"), f"SELECT {BID_COLUMNS} FROM bids"),
    "q1": (
        BID_TYPES.format(price="DOUBLE"),
        "SELECT auction, bidder, CAST(price AS DOUBLE) * 0.908 AS price, channel, url, "
        "`dateTime`, extra FROM bids",
    ),
    "q2": (
        "auction BIGINT, price BIGINT",
        "SELECT auction, price FROM bids WHERE MOD(auction, 123) = 0",
    ),
    # the Nexmark suite's window-max subquery of q7
    "q7": (
        f"{WINDOW}, price BIGINT",
        f"""
SELECT {ms("window_start")} AS window_start, {ms("window_end")} AS window_end, MAX(price) AS price
FROM TABLE(TUMBLE(TABLE bids, DESCRIPTOR(ts), INTERVAL '10' SECOND))
GROUP BY window_start, window_end""",
    ),
    # bids per auction in tumbling 1 s windows
    "w1": (
        f"{WINDOW}, auction BIGINT, bids BIGINT",
        f"""
SELECT {ms("window_start")} AS window_start, {ms("window_end")} AS window_end, auction,
  COUNT(*) AS bids
FROM TABLE(TUMBLE(TABLE bids, DESCRIPTOR(ts), INTERVAL '1' SECOND))
GROUP BY window_start, window_end, auction""",
    ),
    # the Nexmark suite's Flink q5, with the window bounds in the output
    "q5": (
        f"{WINDOW}, auction BIGINT, bids BIGINT",
        f"""
SELECT {ms("AuctionBids.starttime")} AS window_start, {ms("AuctionBids.endtime")} AS window_end,
  AuctionBids.auction, AuctionBids.num AS bids
FROM ({HOP_COUNTS}
) AS AuctionBids
JOIN (
  SELECT MAX(CountBids.num) AS maxn, CountBids.starttime, CountBids.endtime
  FROM ({HOP_COUNTS}
  ) AS CountBids
  GROUP BY CountBids.starttime, CountBids.endtime
) AS MaxBids
ON AuctionBids.starttime = MaxBids.starttime AND AuctionBids.endtime = MaxBids.endtime
  AND AuctionBids.num >= MaxBids.maxn""",
    ),
    # the Nexmark suite's Flink q8, with the window bounds in the output
    "q8": (
        f"{WINDOW}, id BIGINT, name STRING",
        f"""
SELECT {ms("P.starttime")} AS window_start, {ms("P.endtime")} AS window_end, P.id, P.name
FROM (
  SELECT id, name, window_start AS starttime, window_end AS endtime
  FROM TABLE(TUMBLE(TABLE persons, DESCRIPTOR(ts), INTERVAL '10' SECOND))
  GROUP BY id, name, window_start, window_end
) P
JOIN (
  SELECT seller, window_start AS starttime, window_end AS endtime
  FROM TABLE(TUMBLE(TABLE auctions, DESCRIPTOR(ts), INTERVAL '10' SECOND))
  GROUP BY seller, window_start, window_end
) A
ON P.id = A.seller AND P.starttime = A.starttime AND P.endtime = A.endtime""",
    ),
    # Flink merges two session windows [t, t + gap) when they touch (TimeWindow.intersects is
    # inclusive), so bids exactly 10 s apart would share a session; the reference starts a new
    # one at >= 10 s. With integer-ms event times a gap of 9 999 ms is the same rule. The
    # bounds are the session's first bid and its last bid + 10 s (the reference's).
    "q11": (
        f"{WINDOW}, bidder BIGINT, bids BIGINT",
        """
SELECT first_bid AS window_start, last_bid + 10000 AS window_end, bidder, bids
FROM (
  SELECT bidder, MIN(`dateTime`) AS first_bid, MAX(`dateTime`) AS last_bid, COUNT(*) AS bids
  FROM TABLE(SESSION(TABLE bids PARTITION BY bidder, DESCRIPTOR(ts), INTERVAL '9.999' SECOND))
  GROUP BY bidder, window_start, window_end
)""",
    ),
}


class Rest:
    """The MiniCluster's REST API (the job's status and metrics)."""

    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    def get(self, path: str) -> object:
        with urllib.request.urlopen(self.base + path, timeout=10) as r:
            return json.loads(r.read())


def first_record_watch(rest: Rest, job_id: str, done: threading.Event) -> None:
    """Print SN_FIRST_RECORD when a source operator's numRecordsOut first reads > 0.

    Polls the source operators' ``numRecordsOut`` (records handed to the chained operators)
    back to back, every 10 ms. The REST endpoint answers from its metric store, refreshed
    from the TaskManager at most every ``metrics.fetcher.update-interval`` (set to 10 ms;
    default 10 s, 0 switches it off). The first record left the source after the last poll
    that read 0 was answered from a fetch, and before the first poll that reads > 0 returned;
    the clock starts at the send time of that last zero poll (stderr shows both bounds), so it
    is off by about one poll round trip + one fetch, either way. Fallback, if no source metric
    shows up before the job ends: the job's RUNNING timestamp.
    """
    running_at: int | None = None
    metrics: dict[str, str] = {}  # source vertex id -> its numRecordsOut metric id
    sources = -1  # source vertices of the job (-1: not known yet)
    last_zero: float | None = None  # send time of the last poll that read 0 everywhere
    while not done.is_set():
        sent = time.time()
        try:
            if len(metrics) != sources:
                job = rest.get(f"/jobs/{job_id}")
                assert isinstance(job, dict)
                if running_at is None and job.get("timestamps", {}).get("RUNNING"):
                    running_at = int(job["timestamps"]["RUNNING"])
                vertices = [v["id"] for v in job["vertices"] if v["name"].startswith("Source")]
                sources = len(vertices)
                for vid in vertices:
                    if vid in metrics:
                        continue
                    names = rest.get(f"/jobs/{job_id}/vertices/{vid}/metrics")
                    assert isinstance(names, list)
                    hits = [
                        m["id"]
                        for m in names
                        if m["id"].endswith(".numRecordsOut") and "Source" in m["id"]
                    ]
                    if hits:
                        metrics[vid] = hits[0]
                sent = time.time()
            seen = []
            for vid, mid in metrics.items():
                got = rest.get(f"/jobs/{job_id}/vertices/{vid}/metrics?get={mid}")
                assert isinstance(got, list)
                if got and float(got[0]["value"]) > 0:
                    seen.append(mid)
            if seen:
                now = time.time()
                start = last_zero if last_zero is not None else sent
                print(f"SN_FIRST_RECORD {int(start * 1000)}", flush=True)
                print(
                    f"flink peer: first record between {int(start * 1000)} (last poll reading 0 "
                    f"sent) and {int(now * 1000)} (poll reading > 0 returned): {seen[0]} > 0; "
                    f"job RUNNING at {running_at}",
                    file=sys.stderr,
                    flush=True,
                )
                return
            if metrics:
                last_zero = sent
        except (OSError, KeyError, ValueError, AssertionError) as e:
            print(f"flink peer: REST poll: {e!r}", file=sys.stderr, flush=True)
            time.sleep(0.1)
        time.sleep(0.01)
    if running_at is not None:
        print(f"SN_FIRST_RECORD {running_at}", flush=True)
        print("flink peer: first record = job RUNNING (fallback)", file=sys.stderr, flush=True)


def main() -> int:
    a = parse()
    if a.describe:
        print(settings(a), flush=True)
        return 0
    if not (a.query and a.output and a.group):
        print("run: --query, --output and --group are required", file=sys.stderr)
        return 2
    if a.query not in SQL:
        print(f"SN_UNSUPPORTED query {a.query} is not implemented by this peer", flush=True)
        return 3

    from pyflink.common import Configuration
    from pyflink.datastream import StreamExecutionEnvironment
    from pyflink.table import StreamTableEnvironment

    mode = mode_of(a)
    work = tempfile.mkdtemp(prefix=f"sn-flink-{a.group}-")
    atexit.register(shutil.rmtree, work, True)
    port = free_port()
    conf = Configuration()
    for k, v in {
        "parallelism.default": str(a.parallelism),
        "pipeline.jars": Path(os.environ["SN_FLINK_JAR"]).as_uri(),
        "table.local-time-zone": "UTC",
        "rest.address": "127.0.0.1",
        "rest.bind-address": "127.0.0.1",
        "rest.bind-port": str(port),
        "metrics.fetcher.update-interval": "10 ms",
        "io.tmp.dirs": work,
        **MODES[mode],
    }.items():
        conf.set_string(k, v)
    print(f"flink peer: mode={mode}; {settings(a)}", file=sys.stderr, flush=True)
    env = StreamExecutionEnvironment.get_execution_environment(conf)
    t_env = StreamTableEnvironment.create(env)

    if a.query == "q8":
        t_env.execute_sql(
            source_ddl("persons", a.persons, "id BIGINT, name STRING, `dateTime` BIGINT", a)
        )
        t_env.execute_sql(source_ddl("auctions", a.auctions, "seller BIGINT, `dateTime` BIGINT", a))
    else:
        t_env.execute_sql(source_ddl("bids", a.bids, BID_TYPES.format(price="BIGINT"), a))
    columns, select = SQL[a.query]
    t_env.execute_sql(sink_ddl(columns, a))
    insert = f"INSERT INTO sink\n{select}"
    print(f"flink peer: {insert}", file=sys.stderr, flush=True)

    done = threading.Event()

    def stop(signum, frame):  # SIGTERM from the harness (the JVM gets it too: process group)
        done.set()
        shutil.rmtree(work, ignore_errors=True)
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        result = t_env.execute_sql(insert)
    except Exception as e:  # py4j's Py4JJavaError: the planner rejected the query
        msg = next((x for x in str(e).splitlines() if "Exception" in x), str(e)[:500])
        print(f"flink peer: the planner rejected the query: {msg}", file=sys.stderr, flush=True)
        return 1
    client = result.get_job_client()
    assert client is not None
    job_id = str(client.get_job_id())
    rest = Rest(port)
    threading.Thread(target=first_record_watch, args=(rest, job_id, done), daemon=True).start()
    while True:
        time.sleep(0.5)
        try:
            state = rest.get(f"/jobs/{job_id}")
        except OSError:
            continue
        assert isinstance(state, dict)
        if state.get("state") in ("FAILED", "CANCELED", "FINISHED"):
            done.set()
            try:
                exc = rest.get(f"/jobs/{job_id}/exceptions")
                assert isinstance(exc, dict)
                print(
                    f"flink peer: job {state['state']}: {(exc.get('root-exception') or '')[:3000]}",
                    file=sys.stderr,
                    flush=True,
                )
            except OSError:
                pass
            return 0 if state["state"] == "FINISHED" else 1


if __name__ == "__main__":
    sys.exit(main())
