"""The live chart and the live table's lifecycle panel in a real browser: JupyterLab,
Debian's chromium, playwright-core.

The test writes a small notebook (a Nexmark query with ``rate=`` and ``stream.chart(...)``,
then ``q.pause()``, ``q.resume()``, ``stream.show()`` when this build has it, ``q.stop()``),
starts ``jupyter lab`` on 127.0.0.1 with a token, and runs ``live_chart.mjs`` in node, which
opens the notebook in chromium, runs the cells and checks that:

- the chart's ``<svg>`` is the same element after updates (a tag put on it survives) and
  holds more marks later;
- pausing the query stops the updates, resuming restarts them;
- the page logs no JavaScript error.

A second test (``lifecycle_panel.mjs``) shows a windowed query over a three-partition Kafka
topic whose partition 2 lags 40 s of event time behind, opens the live table's lifecycle
section with a click and checks that it renders, changes while records come, and names
partition 2 as the one holding the watermark back. Its screenshot goes to
``test-artifacts/browser/lifecycle_panel.png``, and with ``STREAMNB_UPDATE_SCREENSHOTS=1`` to
``docs/img/lifecycle-panel.png`` (the README's picture) too.

Screenshots go to ``test-artifacts/browser/``. Needs ``scripts/install-browser-deps`` (run here
when something is missing). Skipped only with ``STREAMNB_SKIP_BROWSER=1``.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from tests.io.kafka.broker import PRODUCER_DEFAULTS, client_config

HERE = Path(__file__).parent
ROOT = HERE.parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "browser"
CHROMIUM = Path(os.environ.get("STREAMNB_CHROMIUM", "/usr/bin/chromium"))
NOTEBOOK = "live_chart_test.ipynb"
BUDGET_SECONDS = 110  # the whole test, server start included, stays under two minutes

pytestmark = [
    pytest.mark.slow,
    pytest.mark.serial,  # BUDGET_SECONDS: JupyterLab and chromium on a machine left to them
    pytest.mark.timeout(180),
    pytest.mark.skipif(
        os.environ.get("STREAMNB_SKIP_BROWSER") == "1", reason="STREAMNB_SKIP_BROWSER=1"
    ),
]

SETUP = """\
import altair as alt
import polars as pl
import streamnb as sn

bids = sn.nexmark(rate=100).select("auction", "price", "dateTime")
points = alt.Chart().mark_point().encode(x="dateTime", y="price", tooltip=["auction", "price"])
"""
CHART = 'q = bids.chart(points, name="browser-chart")'
PAUSE = "q.pause()"
RESUME = "q.resume()"
AGAIN = "q.chart_widget"
KEYED = """\
by_auction = bids.group_by("auction").agg(pl.len().alias("bids"))
k = by_auction.chart(
    alt.Chart().mark_bar().encode(x="auction:O", y="bids:Q"), name="browser-keyed"
)
"""
TRIM = """\
ticks = alt.Chart().mark_tick().encode(x="price:Q")
r = bids.chart(ticks, name="browser-trim", max_rows=30)
"""
SHOW = 't = bids.filter(pl.col("price") > 0).show(name="browser-table")'
STOP = """\
for query in (q, k, r, globals().get("t")):
    if query is not None:
        query.stop()
"""


CHART_CELLS = [
    ("setup", SETUP),
    ("chart", CHART),
    ("pause", PAUSE),
    ("resume", RESUME),
    ("again", AGAIN),
    ("keyed", KEYED),
    ("trim", TRIM),
    ("show", SHOW),
    ("stop", STOP),
]


def _notebook(named: list[tuple[str, str]]) -> tuple[dict[str, Any], dict[str, int]]:
    sources = [source for _, source in named]
    cells = [
        {"cell_type": "code", "metadata": {}, "source": s, "outputs": [], "execution_count": None}
        for s in sources
    ]
    nb = {
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
            "language_info": {"name": "python"},
        },
        "cells": [{**c, "id": f"cell-{i}"} for i, c in enumerate(cells)],
    }
    return nb, {name: i for i, (name, _) in enumerate(named)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ensure_deps() -> None:
    """Chromium, playwright-core and JupyterLab: install what is missing (idempotent)."""
    module = HERE / "node_modules" / "playwright-core"
    if CHROMIUM.exists() and module.is_dir() and importlib.util.find_spec("jupyterlab"):
        return
    script = ROOT / "scripts" / "install-browser-deps"
    subprocess.run([str(script), sys.executable], check=True, cwd=ROOT, timeout=900)


def _lab_settings(settings: Path) -> None:
    """No news or update checks (the network is closed), all cells rendered."""
    notify = settings / "@jupyterlab" / "apputils-extension"
    notify.mkdir(parents=True)
    (notify / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False})
    )
    nbext = settings / "@jupyterlab" / "notebook-extension"
    nbext.mkdir(parents=True)
    (nbext / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))


Lab = tuple[str, str, dict[str, int], Path]  # url, token, cell indices by name, tmp_path


@contextmanager
def running_lab(tmp_path: Path, named: list[tuple[str, str]], notebook: str) -> Iterator[Lab]:
    """``jupyter lab`` on 127.0.0.1 with ``notebooks/<notebook>`` made of the ``named`` cells."""
    _ensure_deps()
    nb, cells = _notebook(named)
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    (notebooks / notebook).write_text(json.dumps(nb, indent=1))
    _lab_settings(tmp_path / "settings")
    token = secrets.token_hex(16)
    port = _free_port()
    env = dict(os.environ)
    # the kernel is "python": this venv's, which has streamnb
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["JUPYTER_CONFIG_DIR"] = str(tmp_path / "config")
    env["JUPYTER_RUNTIME_DIR"] = str(tmp_path / "runtime")
    env["JUPYTER_PLATFORM_DIRS"] = "1"
    env.pop("JUPYTER_TOKEN", None)
    log = (tmp_path / "lab.log").open("w")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyter",
            "lab",
            "--no-browser",
            "--allow-root",
            "--ip=127.0.0.1",
            f"--port={port}",
            "--port-retries=0",
            f"--ServerApp.token={token}",
            f"--ServerApp.root_dir={notebooks}",
            "--LabApp.expose_app_in_browser=True",
            f"--LabApp.user_settings_dir={tmp_path / 'settings'}",
            f"--LabApp.workspaces_dir={tmp_path / 'workspaces'}",
        ],
        cwd=notebooks,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if server.poll() is not None:
                pytest.fail(f"jupyter lab exited:\n{(tmp_path / 'lab.log').read_text()}")
            try:
                with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"jupyter lab did not start:\n{(tmp_path / 'lab.log').read_text()}")
                time.sleep(0.2)
        yield url, token, cells, tmp_path
    finally:
        server.terminate()
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(5)
        log.close()


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    with running_lab(tmp_path, CHART_CELLS, NOTEBOOK) as running:
        yield running


def _drive(script: str, lab: Lab, notebook: str, budget: float, **env: str) -> dict[str, Any]:
    """Run ``script`` (node) against ``lab``; its RESULT report (in ``ARTIFACTS``), checked
    for a clean exit."""
    url, token, cells, tmp_path = lab
    node = shutil.which("node")
    assert node, "node is needed (scripts/install-browser-deps)"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    environ = dict(os.environ)
    environ.update(
        SNB_LAB_URL=url,
        SNB_TOKEN=token,
        SNB_NOTEBOOK=notebook,
        SNB_CELLS=json.dumps(cells),
        SNB_ARTIFACTS=str(ARTIFACTS),
        SNB_CHROMIUM=str(CHROMIUM),
        SNB_DEADLINE_MS=str(int(budget * 1000) - 20_000),
        **env,
    )
    try:
        proc = subprocess.run(
            [node, str(HERE / script)],
            check=False,
            cwd=HERE,
            env=environ,
            capture_output=True,
            text=True,
            timeout=budget,
        )
    except subprocess.TimeoutExpired as timed_out:
        steps = timed_out.stderr.decode() if isinstance(timed_out.stderr, bytes) else ""
        pytest.fail(f"{script} ran past its {budget:.0f} s budget; its steps:\n{steps[-4000:]}")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    report: dict[str, Any] = json.loads(lines[-1][len("RESULT ") :]) if lines else {}
    name = Path(script).stem
    (ARTIFACTS / f"{name}.json").write_text(json.dumps(report, indent=2))
    detail = (
        f"\nnode stderr:\n{proc.stderr[-4000:]}\nlab log:\n"
        + ((tmp_path / "lab.log").read_text()[-3000:])
    )
    assert proc.returncode == 0 and report, f"browser run failed{detail}"
    return report


def test_live_chart_updates_in_place(lab: Lab) -> None:
    report = _drive("live_chart.mjs", lab, NOTEBOOK, BUDGET_SECONDS)
    assert report["marksLater"] > report["marksAtTag"] > 0
    assert report["paused"][0] == report["paused"][1]
    assert report["resumed"] > report["paused"][1]
    assert report["secondView"] > 0
    assert report["keyed"]["bars"] > 0
    assert report["trimmed"] == 30
    assert not report["pageErrors"], f"uncaught page errors: {report['pageErrors']}"
    assert not report["consoleErrors"], f"console errors: {report['consoleErrors']}"
    assert report.get("showWidget"), f"stream.show() displayed no widget: {report}"
    print(
        f"\nlive chart: chart cell ran in {report['chartCellMs']} ms, first marks in the browser "
        f"{report['firstUpdateMs']} ms after running it; marks {report['marksAtTag']} -> "
        f"{report['marksLater']} in the same <svg>; paused at {report['paused'][1]}, resumed to "
        f"{report['resumed']}; total {report['totalMs'] / 1000:.1f} s; screenshots in {ARTIFACTS}"
        f"; not taken: {report.get('missedScreenshots', [])}"
    )


# -- the lifecycle panel ---------------------------------------------------------------------
PANEL_NOTEBOOK = "lifecycle_panel_test.ipynb"
PANEL_BUDGET_SECONDS = 60
PANEL_PICTURE = ROOT / "docs" / "img" / "lifecycle-panel.png"
T0_MS = 1_767_268_800_000  # 2026-01-01T12:00:00Z
BEHIND_MS = 40_000


def panel_cells(topic: str, bootstrap: str) -> list[tuple[str, str]]:
    setup = f"""\
import polars as pl
import streamnb as sn

bids = sn.from_kafka({topic!r}, bootstrap_servers={bootstrap!r}, start="earliest")
"""
    show = """\
per_window = bids.window(sn.Tumbling("10s"), grace="2s").agg(pl.len().alias("records"))
q = per_window.show(name="browser-lifecycle")
"""
    return [("setup", setup), ("show", show), ("stop", "q.stop()")]


@contextmanager
def producing(bootstrap: str, topic: str) -> Iterator[Callable[[], int]]:
    """Every 0.25 s, a record on each of partitions 0, 1 and 2 of ``topic``: event time (the
    record's timestamp) 12:00:40 + 0.5 s a step on 0 and 1, 40 s earlier on 2. Yields the
    count of steps sent."""
    producer = Producer(client_config(bootstrap, PRODUCER_DEFAULTS))
    steps = [0]
    done = threading.Event()

    def send(step: int) -> None:
        for partition in (0, 1, 2):
            ts = T0_MS + step * 500 + (0 if partition == 2 else BEHIND_MS)
            value = json.dumps({"step": step, "partition": partition})
            producer.produce(topic, value.encode(), partition=partition, timestamp=ts)
        producer.flush(10)

    def loop() -> None:
        while not done.wait(0.25):
            send(steps[0])
            steps[0] += 1

    send(0)  # the query learns the JSON schema from the first records
    steps[0] = 1
    sender = threading.Thread(target=loop, name="test-producer", daemon=True)
    sender.start()
    try:
        yield lambda: steps[0]
    finally:
        done.set()
        sender.join(15)


def test_lifecycle_panel_names_the_partition_that_holds_the_watermark_back(
    tmp_path: Path, make_topic: Callable[..., str], bootstrap: str
) -> None:
    topic = make_topic(partitions=3, name=f"bids-{uuid.uuid4().hex[:8]}")
    began = time.monotonic()
    with (
        producing(bootstrap, topic) as sent,
        running_lab(tmp_path, panel_cells(topic, bootstrap), PANEL_NOTEBOOK) as lab,
    ):
        report = _drive(
            "lifecycle_panel.mjs",
            lab,
            PANEL_NOTEBOOK,
            PANEL_BUDGET_SECONDS,
            SNB_TOPIC=topic,
        )
        assert sent() > 4
    assert report["holding"] == ["2"], report
    assert report["namesPartition2"], report["laterPanel"]["sentences"]
    assert report["firstPanel"]["text"] != report["laterPanel"]["text"]
    assert sorted(row[1] for row in report["rows"]) == ["0", "1", "2"]
    assert all(row[0] == topic and row[2] == "false" for row in report["rows"])
    sentences = report["laterPanel"]["sentences"]
    assert re.fullmatch(
        r"window 12:\d\d:\d0–12:\d\d:\d0 closes at watermark 12:\d\d:\d2 \(grace 2 s\); "
        r"the watermark is 12:\d\d:\d\d(\.\d+)?",
        sentences[0],
    ), sentences
    assert not report["pageErrors"], f"uncaught page errors: {report['pageErrors']}"
    assert not report["consoleErrors"], f"console errors: {report['consoleErrors']}"
    picture = report.get("screenshot")
    if os.environ.get("STREAMNB_UPDATE_SCREENSHOTS") == "1":
        assert picture, f"no picture to update the README's with: {report['missedScreenshots']}"
        shutil.copyfile(picture, PANEL_PICTURE)
    print(
        f"\nlifecycle panel: {sentences}; {report['totalMs'] / 1000:.1f} s in the browser, "
        f"{time.monotonic() - began:.1f} s in all; picture {picture or report['missedScreenshots']}"
    )
