"""Prometheus metrics of a running query, over HTTP on 127.0.0.1 only."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def render(status: Mapping[str, Any]) -> str:
    """The Prometheus text exposition of one query's status."""
    name = status["name"].replace("\\", "\\\\").replace('"', '\\"')
    label = f'{{query="{name}"}}'
    watermark = status["watermark"]
    if isinstance(watermark, datetime):
        watermark = watermark.timestamp()
    metrics = [
        (
            "streamnb_records_in_total",
            "counter",
            "Records read from the sources",
            status["records_in"],
        ),
        (
            "streamnb_records_out_total",
            "counter",
            "Rows emitted to the result and sinks",
            status["records_out"],
        ),
        ("streamnb_late_records_total", "counter", "Records dropped as late", status["late"]),
        (
            "streamnb_error_records_total",
            "counter",
            "Records sent to the error side output",
            status["errors"],
        ),
        (
            "streamnb_records_per_second",
            "gauge",
            "Input rate over the last seconds",
            status["rate"],
        ),
        ("streamnb_lag_records", "gauge", "Records available but not read yet", status["lag"]),
        (
            "streamnb_watermark",
            "gauge",
            "Event-time watermark (seconds or source units)",
            watermark,
        ),
        (
            "streamnb_up",
            "gauge",
            "1 while the query runs",
            1 if status["state"] in ("running", "paused") else 0,
        ),
    ]
    if "checkpoints" in status:  # a worker running checkpointed tasks
        metrics += [
            (
                "streamnb_checkpoints_total",
                "counter",
                "Checkpoints committed (state changelog and input offsets)",
                status["checkpoints"],
            ),
            (
                "streamnb_checkpoint_duration_seconds",
                "gauge",
                "Duration of the last checkpoint: snapshots, flush and commit",
                status["checkpoint_ms"] / 1000,
            ),
            (
                "streamnb_commit_duration_seconds",
                "gauge",
                "Duration of the last commit (the transaction, or the offsets)",
                status["commit_ms"] / 1000,
            ),
            (
                "streamnb_restores_total",
                "counter",
                "Tasks restored from the changelog",
                status["restores"],
            ),
            (
                "streamnb_restore_duration_seconds",
                "gauge",
                "Duration of the last task restore",
                status["restore_ms"] / 1000,
            ),
            (
                "streamnb_snapshot_bytes",
                "gauge",
                "Bytes of state written to the changelog by the last checkpoint",
                status["snapshot_bytes"],
            ),
            ("streamnb_tasks", "gauge", "Input partitions this worker owns", len(status["tasks"])),
        ]
    lines = []
    for metric, kind, help_text, value in metrics:
        lines.append(f"# HELP {metric} {help_text}")
        lines.append(f"# TYPE {metric} {kind}")
        if value is not None:
            lines.append(f"{metric}{label} {float(value):g}")
    by_partition = status.get("lag_by_partition") or {}
    if by_partition:
        lines.append("# HELP streamnb_partition_lag_records Records not read yet, per partition")
        lines.append("# TYPE streamnb_partition_lag_records gauge")
        for partition, lag in sorted(by_partition.items()):
            lines.append(
                f'streamnb_partition_lag_records{{query="{name}",partition="{partition}"}} {lag}'
            )
    return "\n".join(lines) + "\n"


class MetricsServer:
    """Serves ``/metrics`` for ``query`` on 127.0.0.1:``port`` (0 picks a free port)."""

    def __init__(self, query: Any, port: int) -> None:
        status = query.status

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404)
                    return
                body = render(status()).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                return  # no access log on stderr

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(
            target=self.server.serve_forever, daemon=True, name="streamnb-metrics"
        )
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
