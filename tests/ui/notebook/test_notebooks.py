"""Every notebook in notebooks/ runs headless (nbclient, a real kernel) and passes its checks.

Each notebook ends with a cell that waits for its bounded queries and asserts on the results,
so a run that finishes without a cell error is a pass. The kafka notebook gets the session's
broker through ``STREAMNB_KAFKA_BOOTSTRAP``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[3]
NOTEBOOKS = ROOT / "notebooks"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"

pytestmark = pytest.mark.slow


def execute(name: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Run ``notebooks/<name>.ipynb`` in a fresh kernel (cwd: notebooks/); return it, executed."""
    # the kernel imports streamnb from this working tree, installed or not
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    monkeypatch.setenv("PYTHONPATH", path)
    notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    client = NotebookClient(
        notebook,
        timeout=120,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )
    client.execute()
    return notebook


def outputs(notebook: Any) -> list[dict[str, Any]]:
    return [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]


def test_the_notebooks_are_stored_without_outputs() -> None:
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        notebook = nbformat.read(path, as_version=4)
        nbformat.validate(notebook)
        assert outputs(notebook) == [], f"{path.name} has outputs"


def check_live_views(notebook: Any) -> None:
    """It displayed a live view, and a live table, each with a static fallback."""
    live_tables = [o for o in outputs(notebook) if WIDGET_VIEW in o.get("data", {})]
    assert live_tables, "no live view was displayed"
    for output in live_tables:  # a frontend without widgets still gets a table or a chart
        kinds = set(output["data"])
        assert "text/html" in kinds or any(k.startswith("application/vnd.vegalite") for k in kinds)
    tables = [o for o in live_tables if "streamnb-table" in o["data"].get("text/html", "")]
    assert tables, "no live table with a static HTML table"


@pytest.mark.parametrize("name", ["quickstart", "dashboard", "promote"])
def test_notebook_runs_headless(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    check_live_views(execute(name, monkeypatch))


def test_kafka_notebook_runs_against_a_broker(
    bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STREAMNB_KAFKA_BOOTSTRAP", bootstrap)
    notebook = execute("kafka", monkeypatch)
    texts = [str(o.get("data", {}).get("text/plain", "")) for o in outputs(notebook)]
    assert any("bids-" in t and "partitions" in t for t in texts)  # %stream topics


def test_explore_notebook_names_the_slow_input_and_looks_up_a_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    notebook = execute("explore", monkeypatch)
    check_live_views(notebook)
    texts = [
        str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", ""))
        for o in outputs(notebook)
    ]
    explained = next(t for t in texts if t.startswith("query 'activity' (running)"))
    assert "input nexmark[auction] is at " in explained and "behind the others" in explained
    assert "held back by nexmark[auction]\n" in texts
    lookup = next(t for t in texts if "top_price" in t)  # the state of auction 1000
    assert "│ 1000" in lookup and "shape: (1, 3)" in lookup
    panels = [
        o["data"]["text/html"]
        for o in outputs(notebook)
        if "streamnb-lifecycle" in o.get("data", {}).get("text/html", "")
    ]
    assert panels, "the live table's static fallback has no lifecycle section"
