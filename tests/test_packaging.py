"""A plain ``pip install streamnb`` (no extras) runs every core feature.

The test builds a fresh virtualenv, installs this repository into it with pip (its real base
dependencies, no extras, not editable; pip may reuse its wheel cache) and runs a script there
that reads JSON lines, CSV and Parquet files, writes Parquet, runs the Nexmark generator,
loads the ``%%stream`` magics in IPython and draws a chart. A module that imports a package
outside ``[project] dependencies`` fails it. It takes about half a minute with a warm pip
cache.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
OPTIONAL = ("pyarrow", "pandas", "fastavro")
"""Packages a plain install must neither need nor bring (extras and dev tools only)."""

SCRIPT = r"""
import importlib.util
import json
import sys
from pathlib import Path

import polars as pl

import streamnb as sn

here = Path(sys.argv[1])
out = {"streamnb": sn.__file__, "optional": {}}
for name in sys.argv[2:]:
    out["optional"][name] = importlib.util.find_spec(name) is not None

data = pl.DataFrame({"k": [1, 2, 3, 4], "t": [1000, 2000, 12000, 25000]})
data.write_ndjson(here / "in.jsonl")
with open(here / "in.jsonl", "a") as f:
    f.write("{not json\n")
data.write_csv(here / "in.csv")
data.write_parquet(here / "in.parquet")
for fmt, name in [("json", "in.jsonl"), ("csv", "in.csv"), ("parquet", "in.parquet")]:
    query = sn.from_files(here / name, format=fmt, timestamp="t", batch_size=3).start()
    assert query.wait(60), fmt
    windows = (
        sn.from_files(here / name, format=fmt, timestamp="t")
        .window(sn.Tumbling("10s"))
        .agg(pl.len().alias("n"))
        .collect()
    )
    out[fmt] = {
        "k": query.result()["k"].to_list(),
        "errors": query.errors()["position"].to_list(),
        "windows": windows.sort("window_start")["n"].to_list(),
    }

sn.from_files(here / "in.parquet", format="parquet").to_parquet(here / "out").collect()
out["to_parquet"] = pl.read_parquet(here / "out" / "*.parquet")["k"].to_list()

out["nexmark"] = sn.nexmark(events=1000).collect().height

from IPython.core.interactiveshell import InteractiveShell

shell = InteractiveShell.instance()
shell.run_line_magic("load_ext", "streamnb")
out["magic"] = "stream" in shell.magics_manager.magics["cell"]
shell.run_cell("import polars as pl\nimport streamnb as sn")
cell = shell.run_cell(
    "%%stream hot\n"
    "sn.nexmark(events=2000).window(sn.Tumbling('10s'), by='auction').agg(pl.len().alias('bids'))"
)
out["cell"] = cell.success and cell.result.wait(60)

import altair as alt

chart = alt.Chart().mark_line().encode(x="window_end:T", y="bids:Q")
stream = sn.nexmark(events=2000).window(sn.Tumbling("10s")).agg(pl.len().alias("bids"))
out["chart"] = stream.chart(chart).wait(60)

avro = {"type": "record", "name": "R", "fields": [{"name": "k", "type": "long"}]}
try:
    sn.from_records([{"k": 1}]).to_kafka(
        "t", format="avro", schema=avro, bootstrap_servers="127.0.0.1:9"
    )
except sn.ConfigError as exc:
    out["avro"] = str(exc)

print("RESULT " + json.dumps(out))
"""


def _run(args: list[str | Path], *, cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "PIP_USER")
    }
    return subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_plain_pip_install_runs_every_core_feature(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    made = _run([sys.executable, "-m", "venv", venv], cwd=tmp_path, timeout=300)
    assert made.returncode == 0, made.stderr
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")

    # -I: neither the repository (cwd) nor a user site-packages can lend a module
    pip = [python, "-I", "-m", "pip", "install", "--disable-pip-version-check", REPO]
    installed = _run(pip, cwd=tmp_path, timeout=780)
    assert installed.returncode == 0, installed.stdout[-4000:] + installed.stderr[-4000:]

    script = tmp_path / "plain.py"
    script.write_text(SCRIPT)
    data = tmp_path / "data"
    data.mkdir()
    run = _run([python, "-I", script, data, *OPTIONAL], cwd=data, timeout=300)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    lines = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, run.stdout[-4000:] + run.stderr[-4000:]
    out = json.loads(lines[-1].removeprefix("RESULT "))

    assert Path(out["streamnb"]).resolve().is_relative_to(venv.resolve())  # not the checkout
    assert out["optional"] == dict.fromkeys(OPTIONAL, False), (
        "a plain install brings an optional package: this test no longer shows streamnb "
        "runs without it"
    )
    assert out["json"] == {"k": [1, 2, 3, 4], "errors": [4], "windows": [2, 1, 1]}
    assert out["csv"] == {"k": [1, 2, 3, 4], "errors": [], "windows": [2, 1, 1]}
    assert out["parquet"] == {"k": [1, 2, 3, 4], "errors": [], "windows": [2, 1, 1]}
    assert out["to_parquet"] == [1, 2, 3, 4]
    assert out["nexmark"] > 0
    assert out["magic"] is True
    assert out["cell"] is True
    assert out["chart"] is True
    assert out["avro"] == "format='avro' needs fastavro: pip install 'streamnb[avro]'"
