"""The Nexmark queries of streamnb's benchmark in Spark Structured Streaming (pyspark, local[2]).

Started by ./run (see there for the options). Reads JSON from Kafka (earliest), event time
`dateTime` (epoch ms) with `withWatermark("ts", "4 seconds")`, append output mode (windowed
queries emit final rows only), and writes one JSON object per result row to the output topic.
"""

from __future__ import annotations

import argparse
import atexit
import glob
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

QUERIES = ("q0", "q1", "q2", "q5", "q7", "q8", "q11", "w1")
BID_COLUMNS = ["auction", "bidder", "price", "channel", "url", "dateTime", "extra"]


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="run")
    p.add_argument("--bootstrap", default="127.0.0.1:9092")
    p.add_argument("--query")
    p.add_argument("--bids", default="bids")
    p.add_argument("--persons", default="persons")
    p.add_argument("--auctions", default="auctions")
    p.add_argument("--output")
    p.add_argument("--group")
    p.add_argument("--trigger", choices=["default", "1s"], default="default")
    p.add_argument("--commit-interval-ms", help="Kafka Streams' option; ignored")
    p.add_argument(
        "--min-partitions",
        type=int,
        default=2,
        help="Kafka source minPartitions: splits a topic partition's offset range "
        "into this many Spark tasks per micro-batch (2 = local[2]'s cores)",
    )
    p.add_argument("--driver-memory", default=os.environ.get("SN_SPARK_DRIVER_MEMORY", "2g"))
    p.add_argument("--describe", action="store_true")
    return p.parse_args()


def settings(a: argparse.Namespace) -> str:
    import pyspark

    return (
        f"Spark Structured Streaming {pyspark.__version__} (pyspark, local[2], "
        f"spark-sql-kafka-0-10_2.13 {pyspark.__version__}): trigger={a.trigger} "
        f"(default = next micro-batch as soon as the previous ends) "
        f"maxOffsetsPerTrigger=unset minPartitions={a.min_partitions} "
        f"spark.sql.shuffle.partitions=2 state store=HDFSBackedStateStoreProvider (default) "
        f"watermark=4s multipleWatermarkPolicy=max outputMode=append "
        f"driver.memory={a.driver_memory} "
        f"producer linger.ms=50 batch.size=256KiB"
    )


def connector_jars() -> list[str]:
    """The Ivy-resolved connector jars, minus those pyspark already ships (hadoop-client-*)."""
    import pyspark

    jar_dir = os.environ["SN_SPARK_JARS"]
    shipped = {
        Path(j).name
        for j in glob.glob(os.path.join(os.path.dirname(pyspark.__file__), "jars", "*.jar"))
    }
    jars = []
    for j in sorted(glob.glob(os.path.join(jar_dir, "*.jar"))):
        name = Path(j).name.split("_", 1)[1] if "_" in Path(j).name else Path(j).name
        if name not in shipped:
            jars.append(j)
    return jars


def main() -> int:
    a = parse()
    if a.describe:
        print(settings(a), flush=True)
        return 0
    if not (a.query and a.output and a.group):
        print("run: --query, --output and --group are required", file=sys.stderr)
        return 2
    if a.query not in QUERIES:
        print(f"SN_UNSUPPORTED query {a.query} is not implemented by this peer", flush=True)
        return 3

    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F  # noqa: N812
    from pyspark.sql import types as T  # noqa: N812
    from pyspark.sql.streaming import StreamingQueryListener

    work = tempfile.mkdtemp(prefix=f"sn-spark-{a.group}-")
    atexit.register(shutil.rmtree, work, True)
    print(f"spark peer: {settings(a)}", file=sys.stderr, flush=True)
    spark = (
        SparkSession.builder.master("local[2]")
        .appName(f"streamnb-nexmark-{a.query}")
        .config("spark.jars", ",".join(connector_jars()))
        .config("spark.driver.memory", a.driver_memory)
        .config("spark.sql.shuffle.partitions", "2")
        # q8 (two inputs): the global watermark is the max of the inputs' watermarks, as the
        # contract's "max dateTime - 4 s" (Spark's default, min, can leave the last window open
        # when the last person and the last auction differ in time)
        .config("spark.sql.streaming.multipleWatermarkPolicy", "max")
        .config("spark.ui.enabled", "false")
        .config("spark.local.dir", work)
        .config("spark.sql.streaming.checkpointLocation", os.path.join(work, "checkpoints"))
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("WARN")

    first_lock = threading.Lock()
    first_done = [False]

    def first_record(ms_epoch: int, how: str) -> None:
        with first_lock:
            if not first_done[0]:
                first_done[0] = True
                print(f"SN_FIRST_RECORD {ms_epoch}", flush=True)
                print(
                    f"spark peer: first record at {ms_epoch} ({how})", file=sys.stderr, flush=True
                )

    class FirstRecord(StreamingQueryListener):
        """Fallback: the start time of the first micro-batch that read input rows, known only
        when that batch's progress is reported (after it ended)."""

        def onQueryStarted(self, event):
            pass

        def onQueryProgress(self, event):
            p = event.progress
            if p.numInputRows > 0:
                started = datetime.fromisoformat(p.timestamp.replace("Z", "+00:00"))
                first_record(int(started.timestamp() * 1000), "listener: first batch start")

        def onQueryIdle(self, event):
            pass

        def onQueryTerminated(self, event):
            pass

    spark.streams.addListener(FirstRecord())

    def read(topic: str, schema: T.StructType):
        raw = (
            spark.readStream.format("kafka")
            .option("kafka.bootstrap.servers", a.bootstrap)
            .option("subscribe", topic)
            .option("startingOffsets", "earliest")
            .option("failOnDataLoss", "false")
            .option("minPartitions", str(a.min_partitions))
            .option("kafka.group.id", a.group)
            .load()
        )
        rows = raw.select(F.from_json(F.col("value").cast("string"), schema).alias("r")).select(
            "r.*"
        )
        return rows.withColumn("ts", F.timestamp_millis("dateTime"))

    L, S = T.LongType(), T.StringType()
    bid_schema = T.StructType(
        [T.StructField(c, t) for c, t in zip(BID_COLUMNS, [L, L, L, S, S, L, S], strict=True)]
    )
    ms = F.unix_millis
    wm = "4 seconds"
    q = a.query
    if q == "q8":
        persons = read(
            a.persons,
            T.StructType(
                [T.StructField("id", L), T.StructField("name", S), T.StructField("dateTime", L)]
            ),
        )
        auctions = read(
            a.auctions, T.StructType([T.StructField("seller", L), T.StructField("dateTime", L)])
        )
        p = persons.withWatermark("ts", wm).select(
            F.window("ts", "10 seconds").alias("pw"), "id", "name"
        )
        s = auctions.withWatermark("ts", wm).select(
            F.window("ts", "10 seconds").alias("aw"), "seller"
        )
        # inner stream-stream join on the tumbling window (event-time constraint) and id = seller,
        # then one row per (window, person): a second stateful operator after the join
        joined = p.join(s, (p.id == s.seller) & (p.pw == s.aw))
        res = (
            joined.groupBy("pw", "id")
            .agg(F.first("name").alias("name"))
            .select(
                ms(F.col("pw.start")).alias("window_start"),
                ms(F.col("pw.end")).alias("window_end"),
                "id",
                "name",
            )
        )
    else:
        bids = read(a.bids, bid_schema)
        if q == "q0":
            res = bids.select(*BID_COLUMNS)
        elif q == "q1":
            res = bids.select(
                *[
                    (F.col("price") * 0.908).alias("price") if c == "price" else c
                    for c in BID_COLUMNS
                ]
            )
        elif q == "q2":
            res = bids.where(F.col("auction") % 123 == 0).select("auction", "price")
        elif q == "q7":
            res = (
                bids.withWatermark("ts", wm)
                .groupBy(F.window("ts", "10 seconds"))
                .agg(F.max("price").alias("price"))
                .select(
                    ms(F.col("window.start")).alias("window_start"),
                    ms(F.col("window.end")).alias("window_end"),
                    "price",
                )
            )
        elif q == "w1":  # bids per auction, tumbling 1 s (the latency harness's window emit)
            res = (
                bids.withWatermark("ts", wm)
                .groupBy(F.window("ts", "1 second"), "auction")
                .agg(F.count(F.lit(1)).alias("bids"))
                .select(
                    ms(F.col("window.start")).alias("window_start"),
                    ms(F.col("window.end")).alias("window_end"),
                    "auction",
                    "bids",
                )
            )
        elif q == "q11":
            res = (
                bids.withWatermark("ts", wm)
                .groupBy(F.session_window("ts", "10 seconds").alias("s"), "bidder")
                .agg(F.count(F.lit(1)).alias("bids"))
                .select(
                    ms(F.col("s.start")).alias("window_start"),
                    ms(F.col("s.end")).alias("window_end"),
                    "bidder",
                    "bids",
                )
            )
        elif q == "q5":
            # two chained streaming aggregations in append mode (Spark >= 3.4): the counts per
            # (hopping window, auction), then per hopping window (a 2 s tumbling window on
            # window_time = end - 1 µs identifies it) the max and the auctions that reach it
            counts = (
                bids.withWatermark("ts", wm)
                .groupBy(F.window("ts", "10 seconds", "2 seconds"), "auction")
                .agg(F.count(F.lit(1)).alias("bids"))
            )
            per_window = counts.groupBy(
                F.window(F.window_time("window"), "2 seconds").alias("w2")
            ).agg(
                F.max("bids").alias("top"),
                F.collect_list(F.struct("auction", "bids")).alias("rows"),
            )
            res = per_window.select(
                "w2", F.explode(F.filter("rows", lambda r: r["bids"] == F.col("top"))).alias("r")
            ).select(
                (ms(F.col("w2.end")) - 10_000).alias("window_start"),
                ms(F.col("w2.end")).alias("window_end"),
                F.col("r.auction").alias("auction"),
                F.col("r.bids").alias("bids"),
            )
        else:
            raise AssertionError(q)

    writer = (
        res.select(F.to_json(F.struct(*res.columns)).alias("value"))
        .writeStream.format("kafka")
        .option("kafka.bootstrap.servers", a.bootstrap)
        .option("topic", a.output)
        .option("kafka.linger.ms", "50")
        .option("kafka.batch.size", str(256 << 10))
        .option("checkpointLocation", os.path.join(work, "checkpoint"))
        .outputMode("append")
        .queryName(f"nexmark_{q}")
    )
    if a.trigger == "1s":
        writer = writer.trigger(processingTime="1 second")

    def stop(signum, frame):  # SIGTERM from the harness: stop the query, then the JVM
        try:
            query.stop()
            spark.stop()
        except Exception:  # the JVM got the signal too and may be gone
            pass
        finally:
            shutil.rmtree(work, ignore_errors=True)  # os._exit skips atexit
            os._exit(0)

    from pyspark.errors import AnalysisException

    try:
        query = writer.start()
    except AnalysisException as e:  # e.g. an operator chain that append mode does not support
        print(f"SN_UNSUPPORTED Spark rejects the query plan: {str(e).splitlines()[0]}", flush=True)
        spark.stop()
        return 3
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    def watch_status() -> None:
        """SN_FIRST_RECORD when the query's status first says a batch with new data is being
        processed (polled every 20 ms), i.e. at the start of the first non-empty micro-batch."""
        while not first_done[0] and query.isActive:
            st = query.status
            if st.get("isDataAvailable") and st.get("isTriggerActive"):
                first_record(int(time.time() * 1000), "status poll")
                return
            time.sleep(0.02)

    threading.Thread(target=watch_status, daemon=True).start()
    while query.isActive:
        time.sleep(0.5)
    exc = query.exception()
    if exc is not None:
        print(f"spark peer: query failed: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
