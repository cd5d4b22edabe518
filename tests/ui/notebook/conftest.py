"""Fixtures for the notebook layer: a real IPython shell with the extension, thread hygiene.

The shell is ``InteractiveShell.instance()`` with history off (TESTING.md); never mix it with
``IPython.testing.globalipapp``. The Kafka broker fixtures (``tests/io/kafka/fixtures.py``) start
only for the tests that ask for ``bootstrap``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from IPython.core.interactiveshell import InteractiveShell
from traitlets.config import Config

from tests.threads import stop_all_and_check_no_thread_left


@pytest.fixture(autouse=True)
def no_thread_left_behind() -> Iterator[None]:
    yield
    stop_all_and_check_no_thread_left()


@pytest.fixture(scope="session")
def ipython() -> InteractiveShell:
    config = Config()
    config.HistoryAccessor.enabled = False
    return InteractiveShell.instance(config=config)


@pytest.fixture
def shell(ipython: InteractiveShell) -> Iterator[InteractiveShell]:
    """The shell with ``%load_ext streamnb`` done; unloaded (stopping its queries) after."""
    ipython.run_line_magic("load_ext", "streamnb")
    ipython.run_cell("import polars as pl\nimport streamnb as sn", store_history=True)
    try:
        yield ipython
    finally:  # %config writes the shell's config: put the defaults back for the next test
        ipython.run_line_magic("config", "StreamMagics.max_rows = 20")
        ipython.run_line_magic("config", "StreamMagics.max_updates_per_second = 10.0")
        ipython.run_line_magic("unload_ext", "streamnb")


@pytest.fixture
def run(shell: InteractiveShell) -> Callable[[str], Any]:
    """``run(source)``: run a cell, raise its error, return its result."""

    def run(source: str) -> Any:
        result = shell.run_cell(source, store_history=True)
        result.raise_error()
        return result.result

    return run
