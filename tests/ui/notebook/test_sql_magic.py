"""``%%stream_sql NAME [--show] [--chart SPEC]`` in a real IPython shell."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

import streamnb as sn
from streamnb.promote import load_query, write_job
from streamnb.stream import Stream
from streamnb.ui.notebook.widgets import StaticView
from tests.sql.nexmark import assert_same_rows

Run = Callable[[str], Any]
COUNTS = """
SELECT window_start, window_end, auction, COUNT(*) AS bids, MAX(price) AS top
FROM TABLE(TUMBLE(TABLE bid, DESCRIPTOR(`dateTime`), INTERVAL '1' SECOND))
GROUP BY auction, window_start, window_end
"""


def test_cell_sql_runs_over_the_notebooks_streams(run: Run) -> None:
    run("bid = sn.nexmark(events=20_000, event_rate=2_000)")
    query = run(f"%%stream_sql counts\n{COUNTS}")
    assert isinstance(query, sn.Query) and query.name == "counts"
    assert query.wait(timeout=60)
    want = sn.sql(COUNTS, bid=sn.nexmark(events=20_000, event_rate=2_000)).collect()
    assert_same_rows(query.result(), want)


def test_cell_sql_show_and_chart(run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    run("bid = sn.nexmark(events=20_000, event_rate=2_000)")
    shown = run(f"%%stream_sql shown --show\n{COUNTS}")
    assert isinstance(shown.widget, StaticView)
    assert shown.wait(timeout=60)
    seen: list[tuple[Any, str | None, list[str]]] = []

    def fake_chart(self: Stream, chart: Any, name: str | None = None, **_: Any) -> sn.Query:
        seen.append((chart, name, self.columns))
        return self.start(name)

    monkeypatch.setattr(Stream, "chart", fake_chart)
    run("spec = 21")
    charted = run(f"%%stream_sql charted --chart 'spec * 2'\n{COUNTS}")
    assert seen == [(42, "charted", ["window_start", "window_end", "auction", "bids", "top"])]
    charted.stop()


def test_unknown_table_is_a_usage_error_naming_it(run: Run, shell: InteractiveShell) -> None:
    run("bid = sn.nexmark(events=1_000)\nnot_a_stream = 3")
    with pytest.raises(UsageError, match=r"no Stream named 'bids' in the notebook.*'bid'"):
        run("%%stream_sql q\nSELECT auction FROM bids")
    with pytest.raises(UsageError, match=r"no Stream named 'not_a_stream'"):
        run("%%stream_sql q\nSELECT auction FROM not_a_stream")
    assert "q" not in [q.name for q in sn.queries()]


@pytest.mark.parametrize(
    ("line", "cell"),
    [
        ("", "SELECT auction FROM bid"),  # no NAME
        ("q --nope", "SELECT auction FROM bid"),
        ("q", "   \n"),  # no SQL
        ("q --chart 'spec *'", "SELECT auction FROM bid"),
        ("q", "SELECT auction FROM bid WHERE ("),  # a syntax error
    ],
)
def test_bad_arguments_are_usage_errors_with_the_usage_line(run: Run, line: str, cell: str) -> None:
    run("bid = sn.nexmark(events=1_000)")
    with pytest.raises(UsageError) as raised:
        run(f"%%stream_sql {line}\n{cell}")
    message = str(raised.value)
    assert "%%stream_sql" in message
    if "WHERE (" in cell:
        assert "SQL syntax error at line 1" in message
    else:
        assert "%%stream_sql NAME [--show] [--chart SPEC]" in message


def test_unsupported_sql_raises_config_error_with_its_place(run: Run) -> None:
    run("bid = sn.nexmark(events=1_000)")
    with pytest.raises(sn.ConfigError, match=r"LIMIT .*\(at line 2, column 1\)"):
        run("%%stream_sql q\nSELECT auction FROM bid\nLIMIT 3")


def test_unload_removes_the_sql_magic(shell: InteractiveShell) -> None:
    assert shell.magics_manager.magics["cell"].get("stream_sql") is not None
    shell.run_line_magic("unload_ext", "streamnb")
    try:
        assert shell.magics_manager.magics["cell"].get("stream_sql") is None
    finally:
        shell.run_line_magic("load_ext", "streamnb")


def test_headless_rebuild_of_a_sql_cell_is_the_same_query() -> None:
    """A worker or an exported job runs a notebook's %%stream_sql cell as the kernel does."""
    cells = [
        "import streamnb as sn\nbid = sn.nexmark(events=20_000, event_rate=2_000)",
        f"%%stream_sql counts --show\n{COUNTS}",
    ]
    stream = load_query(cells, "counts", "test notebook")
    assert isinstance(stream, Stream)
    want = sn.sql(COUNTS, bid=sn.nexmark(events=20_000, event_rate=2_000)).collect()
    assert_same_rows(stream.collect(), want)
    with pytest.raises(sn.ConfigError, match="no Stream named 'bid'"):
        load_query(cells[1:], "counts", "test notebook")


def test_promote_puts_the_sql_cell_in_the_job(run: Run, tmp_path: Path) -> None:
    run("bid = sn.nexmark(events=20_000, event_rate=2_000)")
    query = run(f"%%stream_sql promoted_sql\n{COUNTS}")
    assert query.wait(timeout=60)
    job = tmp_path / "job.py"
    run(f"%stream promote promoted_sql --to {job}")
    assert "run_cell_magic('stream_sql', 'promoted_sql'" in job.read_text()


def test_a_job_with_a_sql_cell_runs_the_query(tmp_path: Path) -> None:
    """The job file of ``streamnb export`` / ``%stream promote`` runs %%stream_sql headless.
    (Its cells are given here, not the session's history, which other tests fill.)"""
    cells = [
        "import streamnb as sn\nbid = sn.nexmark(events=20_000, event_rate=2_000)",
        f"%%stream_sql counts\n{COUNTS}",
    ]
    job = write_job(cells, "counts", tmp_path / "job.py", origin="test notebook")
    done = subprocess.run(
        [sys.executable, str(job)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    final = json.loads(done.stderr.strip().splitlines()[-1])
    assert final["name"] == "counts" and final["state"] == "finished"
    want = sn.sql(COUNTS, bid=sn.nexmark(events=20_000, event_rate=2_000)).collect()
    assert final["records_out"] == want.height > 0
