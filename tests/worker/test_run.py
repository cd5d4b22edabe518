"""The headless worker: the notebook's own query, run by `streamnb run` / an exported job.

The parity test runs the same notebook in a real kernel (nbclient) and in the worker and
compares the outputs row for row.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

import streamnb as sn
from streamnb.promote import export_job, load_attribute, load_notebook_query
from streamnb.worker.metrics import render

CELLS = [
    "import polars as pl\nimport streamnb as sn\n%load_ext streamnb",
    "bids = sn.nexmark(events=150_000, seed=7)",
    "%%stream hot --show\n"
    "(bids.with_watermark('dateTime', '2s')\n"
    "     .window(sn.Hopping('2s', '1s'), by='channel')\n"
    "     .agg(pl.len().alias('n'), pl.col('price').max().alias('top')))",
    "import os\n"
    "# the query the cell above started (it may have finished already); none in a job\n"
    "q = globals().get('_')\n"
    "if isinstance(q, sn.Query):\n"
    "    q.wait(60)\n"
    "    q.result().write_parquet(os.environ['PARITY_OUT'])",
]


def notebook(path: Path, cells: list[str] = CELLS) -> Path:
    doc = {
        "cells": [
            {
                "id": f"cell-{i}",
                "cell_type": "code",
                "metadata": {},
                "source": c,
                "outputs": [],
                "execution_count": None,
            }
            for i, c in enumerate(cells)
        ],
        "metadata": {
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    path.write_text(json.dumps(doc))
    return path


def streamnb(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamnb", *args],
        cwd=cwd,
        text=True,
        capture_output=True,
        timeout=timeout,
        check=False,
    )


def expected() -> pl.DataFrame:
    bids = sn.nexmark(events=150_000, seed=7)
    return (
        bids.with_watermark("dateTime", "2s")
        .window(sn.Hopping("2s", "1s"), by="channel")
        .agg(pl.len().alias("n"), pl.col("price").max().alias("top"))
    ).collect()


def canonical(df: pl.DataFrame) -> pl.DataFrame:
    return df.sort(df.columns)


def test_parity_between_the_kernel_and_the_worker(tmp_path: Path) -> None:
    import nbformat
    from nbclient import NotebookClient

    nb_path = notebook(tmp_path / "parity.ipynb")
    kernel_out = tmp_path / "kernel.parquet"
    os.environ["PARITY_OUT"] = str(kernel_out)
    try:
        nb = nbformat.read(nb_path, as_version=4)
        NotebookClient(
            nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
        ).execute()
    finally:
        del os.environ["PARITY_OUT"]
    done = streamnb("run", nb_path.name, "--query", "hot", "--sink", "parquet:worker", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    in_kernel = pl.read_parquet(kernel_out)
    in_worker = pl.read_parquet(tmp_path / "worker" / "*.parquet")
    assert in_kernel.height > 0
    assert_frame_equal(canonical(in_worker), canonical(in_kernel))
    assert_frame_equal(canonical(in_worker), canonical(expected()))


def test_the_notebook_code_rebuilds_the_same_stream(tmp_path: Path) -> None:
    stream = load_notebook_query(notebook(tmp_path / "a.ipynb"), "hot")
    assert_frame_equal(canonical(stream.collect()), canonical(expected()))
    assert sn.queries() == []  # nothing was started while loading


def test_an_exported_job_runs_the_same_query(tmp_path: Path) -> None:
    nb_path = notebook(tmp_path / "a.ipynb")
    assert (
        streamnb("export", nb_path.name, "--query", "hot", "-o", "job.py", cwd=tmp_path).returncode
        == 0
    )
    done = run_job(tmp_path, "job.py")
    assert done.returncode == 0, done.stderr
    assert_frame_equal(
        canonical(pl.read_parquet(tmp_path / "out" / "*.parquet")), canonical(expected())
    )


def run_job(cwd: Path, job: str) -> subprocess.CompletedProcess[str]:
    """Run an exported job script into ``parquet:out`` (under ``cwd``)."""
    return subprocess.run(
        [sys.executable, job, "--sink", "parquet:out"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


INJECTION = 'x""" and __import__("pathlib").Path("INJECTED").touch() or """'
HOSTILE_NAMES = [
    INJECTION,
    "x'''\nimport pathlib; pathlib.Path('INJECTED').touch()\n'''",
    "new\nline\r\nimport pathlib; pathlib.Path('INJECTED').touch()  # \u2028 \x0c",
    "back\\slash\\",
    "quotes ' \" \"\"\" '''",
]


def one_record_query(name: str) -> list[str]:
    return ["import streamnb as sn", f"sn.from_records([{{'x': 1}}]).start(name={name!r})"]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_export_writes_names_as_literals_never_as_code(
    tmp_path: Path, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    nb_path = notebook(tmp_path / "a.ipynb", one_record_query(name))
    job = export_job(nb_path, name, tmp_path / "job.py")
    monkeypatch.chdir(tmp_path)
    stream = load_attribute(f"{job}:STREAM")  # runs the job's module code, as the job does
    assert not (tmp_path / "INJECTED").exists()
    assert stream.collect(timeout=30)["x"].to_list() == [1]


def test_an_exported_job_with_hostile_names_runs_and_injects_nothing(tmp_path: Path) -> None:
    nb_name = f"{INJECTION}.ipynb"  # a notebook's file name is user text too
    notebook(tmp_path / nb_name, one_record_query(INJECTION))
    job = f'job """ {INJECTION}.py'
    done = streamnb("export", nb_name, "--query", INJECTION, "-o", job, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    ran = run_job(tmp_path, job)
    assert ran.returncode == 0, ran.stderr
    assert not (tmp_path / "INJECTED").exists()
    assert pl.read_parquet(tmp_path / "out" / "*.parquet")["x"].to_list() == [1]
    assert json.loads(ran.stderr.strip().splitlines()[-1])["name"] == INJECTION


def test_module_attribute_locator(tmp_path: Path) -> None:
    (tmp_path / "jobs.py").write_text(
        "import polars as pl\nimport streamnb as sn\n"
        "def build():\n"
        "    return sn.from_records([{'x': i} for i in range(10)]).filter(pl.col('x') > 6)\n"
    )
    done = streamnb("run", "jobs.py:build", "--sink", "parquet:out", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert pl.read_parquet(tmp_path / "out" / "*.parquet")["x"].to_list() == [7, 8, 9]


def test_a_query_not_in_the_notebook_is_named_in_the_error(tmp_path: Path) -> None:
    notebook(tmp_path / "a.ipynb")
    done = streamnb("run", "a.ipynb", "--query", "cold", cwd=tmp_path)
    assert done.returncode == 2
    assert "'cold'" in done.stderr and "'hot'" in done.stderr


def test_exactly_once_is_refused_with_a_reason(tmp_path: Path) -> None:
    notebook(tmp_path / "a.ipynb")
    done = streamnb("run", "a.ipynb", "--query", "hot", "--guarantee", "exactly_once", cwd=tmp_path)
    assert done.returncode == 2
    assert "exactly_once" in done.stderr


def test_an_exactly_once_checkpoint_interval_past_the_transaction_timeout_is_refused(
    tmp_path: Path,
) -> None:
    """The broker aborts a transaction open longer than its timeout (10 s): a worker whose
    checkpoints, which commit it, come rarer would be fenced mid-run."""
    import streamnb as sn
    from streamnb.exceptions import ConfigError
    from streamnb.worker.run import start

    stream = sn.from_records([{"k": "a"}])
    with pytest.raises(ConfigError, match=r"--checkpoint-interval 1h: .* at most 5s"):
        start(stream, name="slow", guarantee="exactly_once", checkpoint_interval="1h")
    with pytest.raises(ConfigError, match="--checkpoint-interval 6s"):
        start(stream, name="slow", guarantee="exactly_once", checkpoint_interval="6s")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_cleanly_after_flushing(tmp_path: Path, sig: signal.Signals) -> None:
    (tmp_path / "live.py").write_text(
        "import streamnb as sn\n"
        "STREAM = sn.nexmark(rate=20_000).select('auction', 'price', 'dateTime')\n"
    )
    port = free_port()
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamnb",
            "run",
            "live.py:STREAM",
            "--sink",
            "parquet:out",
            "--metrics-port",
            str(port),
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        metrics = ""
        deadline = time.monotonic() + 30
        while (
            "streamnb_records_in_total" not in metrics
            or " 0\n" in metrics.split("streamnb_records_in_total{")[1][:60]
        ):
            assert time.monotonic() < deadline, metrics
            time.sleep(0.3)
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                    metrics = r.read().decode()
            except OSError:
                continue
        worker.send_signal(sig)
        _, err = worker.communicate(timeout=30)
    finally:
        worker.kill()
    assert worker.returncode == 0, err
    final = json.loads(err.strip().splitlines()[-1])
    assert final["state"] == "stopped"
    written = pl.read_parquet(tmp_path / "out" / "*.parquet")
    assert written.height == final["records_out"] > 0


def test_metrics_are_prometheus_text() -> None:
    text = render(
        {
            "name": 'q"1',
            "state": "running",
            "records_in": 5,
            "records_out": 3,
            "late": 1,
            "errors": 0,
            "watermark": None,
            "lag": 7,
            "rate": 2.5,
        }
    )
    assert 'streamnb_records_in_total{query="q\\"1"} 5' in text
    assert "streamnb_lag_records" in text and "streamnb_up" in text
    assert "streamnb_watermark{" not in text  # unknown values are left out


def test_secrets_in_client_config_do_not_leak_into_reprs() -> None:
    from streamnb.io.sources.kafka import KafkaSource

    source = KafkaSource.__new__(KafkaSource)
    source.topics, source.bootstrap, source.format = ["t"], "b:1", "json"
    source.config = {"sasl.password": "hunter2", "sasl.username": "me"}
    assert "hunter2" not in repr(source)
