"""Prometheus metrics of a running query, and lookups of its live state, over HTTP on
127.0.0.1 only.

* ``GET /metrics``: the Prometheus text exposition of its status;
* ``GET /state/<query>``: its keyed state as JSON (``query.state()``), read between batches;
  ``?key=<k>`` keeps one key (repeat ``key=`` for several key columns, in order, or name them:
  ``?channel=3&bidder=7``). Values are read as JSON when they parse (``3`` is a number,
  ``"3"`` a string), else as text, then converted to the key column's type. Answers
  ``{"query", "key", "rows": [{column: value}, ...]}``, datetimes as ISO 8601 strings; 404
  for another query's name and 400 for a key that does not fit, each with ``{"error"}``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from streamnb.exceptions import ConfigError


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


def _key_value(text: str) -> Any:
    """A key value from a query string: JSON when it parses, else the text itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_key(query_string: str) -> Any:
    """``key=`` of ``query.state()`` from ``/state/<query>?...`` (``None``: every key)."""
    pairs = parse_qsl(query_string, keep_blank_values=True)
    values = [_key_value(v) for k, v in pairs if k == "key"]
    named = {k: _key_value(v) for k, v in pairs if k != "key"}
    if values and named:
        raise ConfigError("give key=... or the key columns by name (?col=value), not both")
    if named:
        return named
    if len(values) > 1:
        return tuple(values)
    return values[0] if values else None


def _json_value(value: Any) -> Any:
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="backslashreplace")
    return str(value)  # anything else a column can hold, as its text


def state_answer(query: Any, name: str, query_string: str) -> tuple[int, dict[str, Any]]:
    """The HTTP status and JSON body of ``GET /state/<name>?<query_string>``."""
    if name != query.name:
        return 404, {"error": f"no query named {name!r}; this worker runs {query.name!r}"}
    try:
        key = parse_key(query_string)
        rows = query.state(key=key).to_dicts()
    except ConfigError as exc:
        return 400, {"error": str(exc)}
    return 200, {"query": name, "key": key, "rows": rows}


class MetricsServer:
    """Serves ``/metrics`` and ``/state/<query>`` for ``query`` on 127.0.0.1:``port`` (0
    picks a free port)."""

    def __init__(self, query: Any, port: int) -> None:
        status = query.status

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urlsplit(self.path)
                if url.path.startswith("/state/"):
                    code, answer = state_answer(query, unquote(url.path[7:]), url.query)
                    self._send(code, "application/json", json.dumps(answer, default=_json_value))
                    return
                if url.path != "/metrics":
                    self.send_error(404)
                    return
                self._send(200, "text/plain; version=0.0.4", render(status()))

            def _send(self, code: int, content_type: str, text: str) -> None:
                body = text.encode()
                self.send_response(code)
                self.send_header("Content-Type", content_type)
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
