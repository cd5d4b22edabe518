"""Shared test configuration."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# Subprocesses (`python -m streamnb`, exported jobs, kernels) import this checkout's streamnb,
# not the one the venv's editable install points at (another worktree's, perhaps).
_CHECKOUT = str(Path(__file__).resolve().parents[1])
os.environ["PYTHONPATH"] = os.pathsep.join(
    [_CHECKOUT, *(p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p)]
)

# One real Kafka broker per test session (under pytest-xdist: per worker), shared by every test
# that asks for it (tests/io/kafka, tests/ui/notebook, tests/worker, ...); it starts only when a
# test needs it.
pytest_plugins = ["tests.io.kafka.fixtures"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist (``make pytest``), the tests marked ``slow`` go first: the workers
    start on the longest tests and end on short ones together, rather than one worker still
    running a two-minute test when the others are done. The slow tests that mostly wait (on a
    broker, a kernel, a browser, pip) alternate with those that compute, so that the cores stay
    busy from the start. Otherwise collection order is kept; every worker collects, and so
    orders, the same way."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    slow = [item for item in items if item.get_closest_marker("slow")]
    if not slow:
        return
    waiting = [item for item in slow if _mostly_waits(item)]
    computing = [item for item in slow if not _mostly_waits(item)]
    alternating = [
        item for pair in itertools.zip_longest(waiting, computing) for item in pair if item
    ]
    chosen = set(alternating)
    items[:] = alternating + [item for item in items if item not in chosen]


def _mostly_waits(item: pytest.Item) -> bool:
    path = item.nodeid.split("::")[0]
    return (
        "bootstrap" in getattr(item, "fixturenames", ())
        or path.startswith("tests/ui/")
        or path == "tests/test_packaging.py"
    )


# 200 random cases per property in CI (the acceptance bar); STREAMNB_QUICK=1 for a fast loop.
settings.register_profile(
    "default", max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "quick", max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("quick" if os.environ.get("STREAMNB_QUICK") else "default")


@contextmanager
def _state_mode(mode: str, directory: Path) -> Iterator[str]:
    """``small``: keyed state where it pays (the default); ``keyed``: keyed state from the
    first record on (``streamnb.engine.state.worth_keying`` always true); ``disk``: that, with
    its rows in files under ``directory`` (``state="disk"``) whatever the query asks."""
    from streamnb.engine import rows, state

    saved = state.KEYED_MIN, state.KEYED_FROM, state.rows_in
    if mode in ("keyed", "disk"):
        state.KEYED_MIN, state.KEYED_FROM = -1, 0
    if mode == "disk":
        state.rows_in = lambda _: rows.DiskRows(directory)
    try:
        yield mode
    finally:
        state.KEYED_MIN, state.KEYED_FROM, state.rows_in = saved


@pytest.fixture(scope="module", params=["small", "keyed"])
def state_modes(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """Runs a module's tests twice, so that every oracle test checks both representations of
    operator state (see :func:`_state_mode`)."""
    with _state_mode(request.param, tmp_path_factory.mktemp("state")) as mode:
        yield mode


@pytest.fixture(scope="module", params=["small", "keyed", "disk"])
def state_stores(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """:func:`state_modes`, and a third time with keyed state in files (for the modules of
    the operators that keep keyed state: running aggregates and tables)."""
    with _state_mode(request.param, tmp_path_factory.mktemp("state")) as mode:
        yield mode
