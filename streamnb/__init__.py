"""streamnb: streaming queries in Jupyter, with exact event-time semantics at polars speed.

Build a query from a source, transform it with polars expressions, window and aggregate it,
then ``collect()`` it (bounded sources) or ``start()`` it in the background::

    import polars as pl
    import streamnb as sn

    top = (
        sn.nexmark(events=1_000_000)
        .window(sn.Tumbling("10s"), by="auction")
        .agg(pl.len().alias("bids"), pl.col("price").max().alias("top_price"))
        .collect()
    )
"""

from __future__ import annotations

from typing import Any as _Any

from streamnb import kafka as kafka  # sn.kafka.topics(), sn.kafka.peek(), ...
from streamnb.api import (
    from_files,
    from_kafka,
    from_records,
    nexmark,
    table_from_kafka,
    table_from_records,
)
from streamnb.definitions.windows import Hopping, Session, Tumbling
from streamnb.engine.query import Query, queries
from streamnb.exceptions import ConfigError, DecodeError, QueryFailed, SourceError, StreamnbError
from streamnb.promote import register_cell_magic as _register_cell_magic
from streamnb.sql import sql
from streamnb.stream import GroupedStream, Stream, WindowedStream
from streamnb.stream import register_frontend as _register_frontend

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "DecodeError",
    "GroupedStream",
    "Hopping",
    "Query",
    "QueryFailed",
    "Session",
    "SourceError",
    "Stream",
    "StreamnbError",
    "Tumbling",
    "WindowedStream",
    "from_files",
    "from_kafka",
    "from_records",
    "load_ipython_extension",
    "nexmark",
    "queries",
    "sql",
    "table_from_kafka",
    "table_from_records",
    "unload_ipython_extension",
]


# This module is the composition root: it sits above every layer and wires the ui into the
# api, so that ``stream.show()`` / ``stream.chart()`` reach the notebook views without the api
# importing the layer above it. The views load on first use.
def _live_table() -> _Any:
    from streamnb.ui.notebook.widgets import show

    return show


def _live_chart() -> _Any:
    from streamnb.ui.notebook.chart import chart

    return chart


_register_frontend("table", _live_table)
_register_frontend("chart", _live_chart)


def _headless_sql_cell() -> _Any:
    from streamnb.sql import headless_cell

    return headless_cell


_register_cell_magic("stream_sql", _headless_sql_cell)  # workers and jobs run %%stream_sql


# IPython looks for these on the package (``%load_ext streamnb``). They import the magics, and
# with them IPython, only when called: ``import streamnb`` stays free of IPython and ipywidgets.
def load_ipython_extension(ipython: object) -> None:
    """Register the ``%%stream`` / ``%stream`` magics (``%load_ext streamnb``)."""
    from streamnb.ui.notebook.magics import load_ipython_extension as load

    load(ipython)  # type: ignore[arg-type]


def unload_ipython_extension(ipython: object) -> None:
    """Stop the queries the magics started and remove the magics (``%unload_ext streamnb``)."""
    from streamnb.ui.notebook.magics import unload_ipython_extension as unload

    unload(ipython)  # type: ignore[arg-type]
