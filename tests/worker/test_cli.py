"""``streamnb demo``: the README's main job, run as a user runs it."""

from __future__ import annotations

import subprocess
import sys


def test_demo_prints_a_live_table_and_exits_cleanly() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "streamnb", "demo", "--duration", "3", "--rate", "5000"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "window_start" in out and "auction" in out and "bids" in out
    final_status = [line for line in out.splitlines() if line.startswith("demo: stopped")]
    assert final_status, out
    records_in = int(final_status[-1].split(" in ")[1].split()[0].replace(",", ""))
    assert 5_000 <= records_in <= 25_000  # paced at 5000/s for ~3 s


def test_unknown_command_is_a_usage_error() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "streamnb", "fly"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 2
    assert "invalid choice" in done.stderr
