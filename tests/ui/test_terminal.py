"""The one status line (terminal, worker progress, notebook snapshots) and its pieces."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from streamnb.ui.notebook._render import status_html
from streamnb.ui.terminal import format_watermark, status_line


def status(**changes: Any) -> dict[str, Any]:
    base = {
        "name": "enrich", "state": "running", "rate": 12_345.6, "records_in": 1_000_000,
        "records_out": 999, "lag": None, "watermark": None, "late": 3, "errors": 2,
        "loading": {},
    }  # fmt: skip
    return {**base, **changes}


def test_the_status_line_names_every_count() -> None:
    line = status_line(status(lag=42, watermark=1_700_000_000_000))
    assert line == (
        "enrich: running       12,346 rec/s  in 1,000,000  out 999  lag 42  "
        "watermark 1,700,000,000,000  late 3  errors 2"
    )


def test_a_watermark_reads_as_utc_time() -> None:
    moment = datetime(2026, 12, 1, 15, 4, 5, 600_000, tzinfo=timezone.utc)
    assert format_watermark(moment) == "2026-12-01 15:04:05"
    assert format_watermark(None) == "–"


def test_tables_still_loading_show_in_the_line_and_the_bar() -> None:
    loading = status(loading={"kafka[customers]": 0.613, "records": None})
    expected = "loading table kafka[customers]: 61 %, loading table records"
    assert status_line(loading).endswith(f"({expected})")
    assert expected in status_html(loading)
    assert "loading" not in status_line(status()) and "loading" not in status_html(status())


def test_an_input_holding_the_others_back_shows_in_the_line_and_the_bar() -> None:
    held = status(held_by={"input": "kafka[persons]", "reason": "unread records", "ms": 1234.0})
    expected = "waiting for kafka[persons] (unread records) 1.2 s"
    assert status_line(held).endswith(f"({expected})")
    assert expected in status_html(held)
    brief = status(held_by={"input": "kafka[persons]", "reason": "max_idle", "ms": 20.0})
    assert "waiting" not in status_line(brief) and "waiting" not in status_line(status())
